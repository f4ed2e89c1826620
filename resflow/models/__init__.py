"""The models of the three stages: Lite0 backbone, hashing head, building segmenter."""

from resflow.models.efficientnet import (
    EMBEDDING_DIM,
    IMAGENET_WEIGHTS_SHA256,
    EfficientNetLite0,
    FeatureExtractor,
    imagenet_weights_path,
    load_imagenet_lite0,
)
from resflow.models.hashing import HashingHead, hamming_nearest
from resflow.models.segmentation import BuildingSegmenter, SegmentationDecoder

__all__ = [
    "EMBEDDING_DIM",
    "IMAGENET_WEIGHTS_SHA256",
    "BuildingSegmenter",
    "EfficientNetLite0",
    "FeatureExtractor",
    "HashingHead",
    "SegmentationDecoder",
    "hamming_nearest",
    "imagenet_weights_path",
    "load_imagenet_lite0",
]
