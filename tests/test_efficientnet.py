"""The from-scratch Lite0 reproduces the ImageNet classifier its weights were trained as."""

import numpy as np
import pytest
import torch
from skimage import data
from torch.nn import functional as F

from resflow.models.efficientnet import (
    IMAGENET_WEIGHTS_SHA256,
    EfficientNetLite0,
    file_sha256,
    imagenet_weights_path,
    load_imagenet_lite0,
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = (967, 968)  # espresso, cup


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    return load_imagenet_lite0()


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    return F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)


def test_weights_file_matches_published_checksum():
    assert file_sha256(imagenet_weights_path()) == IMAGENET_WEIGHTS_SHA256


def test_strict_load_uses_every_key(lite0):
    state = torch.load(imagenet_weights_path(), weights_only=True, map_location="cpu")
    assert set(lite0.state_dict()) == set(state)
    for key, tensor in state.items():
        assert torch.equal(lite0.state_dict()[key], tensor), key
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008


def test_classifies_skimage_photos(lite0):
    batch = torch.cat([_imagenet_input(data.chelsea()), _imagenet_input(data.coffee())])
    with torch.inference_mode():
        probabilities = lite0(batch).softmax(dim=1)
    top = probabilities.argmax(dim=1).tolist()
    assert top[0] in CAT_CLASSES
    assert top[1] in COFFEE_CLASSES
    assert probabilities.max(dim=1).values.min() > 0.5


def test_features_and_feature_maps_shapes(lite0):
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        assert lite0.features(x).shape == (2, 1280)
        maps = lite0.feature_maps(x)
    assert [m.shape[1] for m in maps] == [16, 24, 40, 112, 320]
    assert [m.shape[-1] for m in maps] == [48, 24, 12, 6, 3]
