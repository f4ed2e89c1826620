"""Stage functions give a chip the same bits alone, in any batch, order, size or thread count;
one encoder pass gives stage 1 and stage 3 what two passes gave; stage 3 batches by model."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from resflow.archive import Archive
from resflow.devices import resolve_device
from resflow.errors import ConfigError
from resflow.gallery import write_gallery
from resflow.inference.clock import Clock
from resflow.inference.settings import STAGE1, GraphSettings
from resflow.inference.window_work import (
    cut_window,
    embed_window,
    map_window,
    read_window,
    windows_of,
)
from resflow.models import (
    BuildingSegmenter,
    FeatureExtractor,
    HashingHead,
    SegmentationDecoder,
    hamming_nearest,
    load_imagenet_lite0,
)
from resflow.retries import RetryCount
from resflow.stages import decode, encode, extract_features, map_codes, segment
from resflow.store.format import NOT_MAPPED, quantise

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoder():
    return load_imagenet_lite0()


@pytest.fixture(scope="module")
def chips() -> np.ndarray:
    return np.random.default_rng(0).random((5, 3, 64, 64), dtype=np.float32)


def _decoder(seed: int) -> SegmentationDecoder:
    torch.manual_seed(seed)
    decoder = SegmentationDecoder()
    for module in decoder.modules():  # non-trivial inference statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    return decoder.eval()


def _segmenter(encoder, seed: int) -> BuildingSegmenter:
    return BuildingSegmenter(encoder, _decoder(seed)).eval()


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


HALO = 16


@pytest.fixture(scope="module")
def halo_reads() -> np.ndarray:
    """Chips of 64 px read with a 16 px halo (96 px, a multiple of the encoder's stride),
    one with a nodata corner reaching into the chip, one of 100 px that must be padded."""
    reads = np.random.default_rng(4).random((4, 3, 64 + 2 * HALO, 64 + 2 * HALO),
                                            dtype=np.float32)
    reads[1, :, :40, :40] = 0.0
    return reads


@pytest.mark.parametrize("batch_size", [1, 3])
def test_one_encoder_pass_segments_as_the_segmenter_does(encoder, halo_reads, batch_size):
    """Stage 3 from stage 1's maps is bit for bit the segmenter's own two-pass result, so
    maps change only where routing does."""
    segmenter = _segmenter(encoder, 0)
    features, maps = encode(halo_reads, FeatureExtractor(encoder), halo=HALO,
                            batch_size=batch_size, device=CPU)
    assert len(maps) == len(halo_reads) and all(len(m) == 5 for m in maps)
    assert [m.shape[0] for m in maps[0]] == [1] * 5
    size = halo_reads.shape[-2:]
    decoded = decode(maps, segmenter, size=size, batch_size=batch_size, device=CPU)
    assert np.array_equal(decoded, segment(halo_reads, segmenter, batch_size=2, device=CPU))
    assert np.array_equal(features, extract_features(halo_reads, FeatureExtractor(encoder),
                                                     halo=HALO, batch_size=2, device=CPU))
    odd = np.random.default_rng(5).random((2, 3, 100, 100), dtype=np.float32)
    _, odd_maps = encode(odd, FeatureExtractor(encoder), halo=HALO, batch_size=1, device=CPU)
    assert odd_maps[0][0].shape[-1] == 64  # reflect-padded to 128 px, as the segmenter pads
    assert np.array_equal(decode(odd_maps, segmenter, size=(100, 100), batch_size=1,
                                 device=CPU),
                          segment(odd, segmenter, batch_size=1, device=CPU))


def test_embedding_pools_the_chip_cells_of_the_halo_read(encoder, halo_reads, chips):
    """The halo shapes the features, but only the chip's own data pixels weigh in the
    pooling; without a halo the embedding is the plain Lite0 one of the two-pass graph."""
    features, _ = encode(halo_reads, FeatureExtractor(encoder), halo=HALO, batch_size=1,
                         device=CPU)
    with torch.inference_mode():
        x = torch.from_numpy(halo_reads)
        head = F.relu6(encoder._bn1(encoder._conv_head(encoder.feature_maps(x)[-1])))
        # 96 px -> 3 x 3 cells of 32 px; the halo (16 px) is half of every border cell
        data = (x.amax(dim=1, keepdim=True) > 0).float()
        data[..., :HALO, :] = 0
        data[..., -HALO:, :] = 0
        data[..., :, :HALO] = 0
        data[..., :, -HALO:] = 0
        weights = F.adaptive_avg_pool2d(data, (3, 3))
        expected = (head * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))
        plain = encoder.features(torch.from_numpy(chips))
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-4, atol=5e-5)
    outside = halo_reads.copy()  # other halo pixels: other features, the same weighting
    outside[:, :, :HALO] = 0.0
    moved, _ = encode(outside, FeatureExtractor(encoder), halo=HALO, batch_size=1, device=CPU)
    assert not np.array_equal(moved, features)
    no_halo, _ = encode(chips, FeatureExtractor(encoder), halo=0, batch_size=1, device=CPU)
    assert np.array_equal(no_halo, np.concatenate([
        extract_features(chips[i:i + 1], FeatureExtractor(encoder), batch_size=1, device=CPU)
        for i in range(len(chips))]))
    np.testing.assert_allclose(no_halo, plain.numpy(), rtol=1e-4, atol=5e-5)


@pytest.fixture(scope="module")
def two_model_gallery(tmp_path_factory):
    """Three buckets: 0 and 2 served by ``mono``, 1 by its own decoder."""
    out = tmp_path_factory.mktemp("gallery")
    torch.manual_seed(0)
    return write_gallery(
        out, bucket_codes=np.array([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]], bool),
        head=HashingHead(hidden=32, bits=4),
        decoders={"mono": _decoder(1), "bucket-1": _decoder(2)},
        buckets=[{"chips": 1, "labelled_chips": 0}] * 3, gsd_m=0.3, info={})


@pytest.mark.parametrize("bucket", [0, 1])
def test_a_window_is_segmented_as_its_model_maps_the_window(two_model_gallery,
                                                            sample_archive: Path,
                                                            tmp_path: Path, bucket: int):
    """One encoder pass over a window of chips, decoded by the bucket's model and cut into
    its chips, gives each chip exactly the segmenter's own map of the window there."""
    gallery = two_model_gallery
    archive = Archive.open(sample_archive)
    settings = GraphSettings(archive=sample_archive, gallery=gallery.path, out=tmp_path,
                             halo=32, window=2)
    refs = archive.chips(["sample_geotiff"])[:3]  # two windows: chips 0-1 and chip 2
    (first, pair), (second, single) = windows_of(settings, archive, refs).items()
    assert pair == refs[:2] and single == refs[2:] and first.shape == second.shape == (512, 512)
    clock, retries = Clock(), RetryCount()
    source = read_window(settings, archive, first, STAGE1, retries, clock)
    embedding = embed_window(settings, gallery, CPU, source, STAGE1, clock)
    assert embedding.shape == (1, 1280) and source.valid.shape == (576, 576)
    served, chip = map_window(settings, gallery, CPU, source, STAGE1, clock, bucket=bucket)
    assert served == bucket
    mapped = cut_window(settings, first, pair, source, chip, bucket, clock)
    image = source.harmonised().image[None]
    whole = segment(image, gallery.segmenter(bucket), batch_size=1, device=CPU)[0]
    expected = np.where(source.valid, quantise(whole), NOT_MAPPED)
    for ref in pair:
        probability, mask, served = mapped[ref]
        assert served == bucket and probability.shape == mask.shape == (ref.height, ref.width)
        assert np.array_equal(probability, first.crop(expected, ref, 32))
    assert np.array_equal(extract_features(image, gallery.feature_extractor(), halo=32,
                                           batch_size=1, device=CPU), embedding)
