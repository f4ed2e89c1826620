"""Stage functions give a chip the same bits alone, in any batch, order, size or thread count."""

import numpy as np
import pytest
import torch

from resflow.devices import resolve_device
from resflow.errors import ConfigError
from resflow.models import (
    BuildingSegmenter,
    FeatureExtractor,
    HashingHead,
    SegmentationDecoder,
    hamming_nearest,
    load_imagenet_lite0,
)
from resflow.stages import extract_features, map_codes, segment

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoder():
    return load_imagenet_lite0()


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    return np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)


def _segmenter(encoder, seed: int) -> BuildingSegmenter:
    torch.manual_seed(seed)
    decoder = SegmentationDecoder()
    for module in decoder.modules():  # non-trivial inference statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return BuildingSegmenter(encoder, decoder).eval()


def _one_by_one(stage, chips, model):
    return np.concatenate(
        [stage(chips[i : i + 1], model, batch_size=1, device=CPU) for i in range(len(chips))]
    )


@pytest.mark.parametrize("stage", ["features", "segment"])
def test_batching_order_and_threads_do_not_change_bits(stage, encoder, chips):
    run, model = (
        (extract_features, FeatureExtractor(encoder))
        if stage == "features"
        else (segment, _segmenter(encoder, 0))
    )
    reference = run(chips, model, batch_size=2, device=CPU)
    assert np.array_equal(_one_by_one(run, chips, model), reference)
    assert np.array_equal(run(chips, model, batch_size=4, device=CPU), reference)
    order = np.array([3, 0, 4, 2, 1])
    assert np.array_equal(run(chips[order], model, batch_size=3, device=CPU), reference[order])
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert np.array_equal(run(chips, model, batch_size=5, device=CPU), reference)
    finally:
        torch.set_num_threads(previous)
    assert torch.get_num_threads() == previous


def test_output_shapes_and_ranges(encoder, chips):
    features = extract_features(chips, FeatureExtractor(encoder), batch_size=2, device=CPU)
    assert features.shape == (5, 1280) and features.dtype == np.float32
    probability = segment(chips, _segmenter(encoder, 0), batch_size=2, device=CPU)
    assert probability.shape == (5, 64, 64) and probability.dtype == np.float32
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    empty = np.zeros((0, 3, 64, 64), np.float32)
    assert extract_features(empty, FeatureExtractor(encoder), batch_size=2, device=CPU).shape == (
        0,
        1280,
    )


def test_segmenter_is_deterministic_for_a_seed(encoder, chips):
    first = segment(chips[:2], _segmenter(encoder, 7), batch_size=2, device=CPU)
    again = segment(chips[:2], _segmenter(encoder, 7), batch_size=2, device=CPU)
    other = segment(chips[:2], _segmenter(encoder, 8), batch_size=2, device=CPU)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_map_codes_is_independent_of_batch_and_seeded():
    features = np.random.default_rng(1).normal(size=(70, 1280)).astype(np.float32)
    torch.manual_seed(3)
    head = HashingHead(bits=12).eval()
    torch.manual_seed(3)
    twin = HashingHead(bits=12).eval()
    refs = np.random.default_rng(2).random((6, 12)) > 0.5
    codes, bucket = map_codes(features, head, refs)
    assert codes.shape == (70, 12) and codes.dtype == bool
    assert bucket.shape == (70,) and set(bucket) <= set(range(6))
    for i in (0, 33, 69):
        one_codes, one_bucket = map_codes(features[i : i + 1], twin, refs)
        assert np.array_equal(one_codes[0], codes[i]) and one_bucket[0] == bucket[i]
    with torch.inference_mode():
        assert np.array_equal(head.codes(torch.from_numpy(features)).numpy(), codes)


def test_hamming_nearest_breaks_ties_to_lowest_bucket():
    refs = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=bool)
    codes = np.array([[1, 0, 1, 0], [1, 1, 0, 1], [0, 0, 1, 1], [1, 1, 0, 0]], dtype=bool)
    # row 0 is at distance 2 from all three refs; row 3 equals refs 0 and 2
    assert hamming_nearest(codes, refs).tolist() == [0, 0, 1, 0]


def test_resolve_device_on_cpu_only_host():
    assert resolve_device("cpu", assigned="1") == CPU
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(ConfigError, match="no GPU"):
            resolve_device("cuda")
