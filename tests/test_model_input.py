"""Chips reach the models in their stored dtype and are harmonised, quantised and
thresholded where the models run with the host's bits: the GPU route runs here on the CPU
(staging without pinned memory, the same tensor code), against the numpy route."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resflow.archive import Archive
from resflow.chips import SourceChip
from resflow.harmonise import Scaling, harmonise
from resflow.masks import building_mask
from resflow.model_input import (
    SourceImages,
    Staging,
    harmonise_tensor,
    travels_stored,
    wire_dtype,
)
from resflow.models import (
    BuildingSegmenter,
    FeatureExtractor,
    SegmentationDecoder,
    load_imagenet_lite0,
)
from resflow.stages import decode, decode_quantised, encode, quantise_tensor
from resflow.store.format import NOT_MAPPED, quantise, quantised_threshold

CPU = torch.device("cpu")
EDGE = 48


def _stored(dtype: str, bands: int, rng: np.random.Generator) -> np.ndarray:
    """Pixels over the dtype's whole range (its extremes included), ``(bands, E, E)``."""
    kind = np.dtype(dtype)
    if kind.kind == "f":
        pixels = rng.normal(500.0, 300.0, (bands, EDGE, EDGE)).astype(kind)
        pixels[0, 0, :4] = [np.nan, np.inf, -np.inf, 1e30]
        return pixels
    info = np.iinfo(kind)
    pixels = rng.integers(info.min, info.max, (bands, EDGE, EDGE), dtype=kind, endpoint=True)
    pixels[:, 0, :2] = [info.min, info.max]
    return pixels


SCENES = [  # dtype, stored bands, R/G/B bands, nodata
    ("uint8", 3, (0, 1, 2), 0.0),
    ("uint8", 4, (2, 1, 0), None),       # RGBN read as BGR: reordered, NIR unused
    ("uint16", 1, (0, 0, 0), 0.0),       # panchromatic: one band feeds three channels
    ("uint16", 3, (2, 1, 0), 65535.0),
    ("int16", 3, (0, 1, 2), -32768.0),
    ("uint32", 3, (0, 1, 2), None),      # no table: arithmetic on values above 2**31
    ("float32", 4, (0, 1, 2), -9999.0),
    ("float64", 3, (1, 1, 2), None),
]


def _scene_chips(dtype: str, bands: int, rgb: tuple[int, int, int], nodata: float | None,
                 count: int, seed: int) -> list[SourceChip]:
    """``count`` chips of one scene, read as :meth:`Archive.read_sources` reads them."""
    rng = np.random.default_rng(seed)
    stats = {"low": rng.uniform(0, 200, bands).tolist(),
             "high": rng.uniform(300, 60000, bands).tolist()}
    if dtype == "uint32":
        stats["high"] = [4.0e9] * bands
    scaling = Scaling.of(dtype, rgb, stats)
    chips = []
    for _ in range(count):
        stored = _stored(dtype, bands, rng)
        if nodata is not None:
            stored[:, 5:9, 5:9] = nodata
        _, valid = harmonise(stored, nodata, rgb, stats)
        chips.append(SourceChip(stored[list(scaling.bands)], valid, scaling))
    return chips


@pytest.mark.parametrize(("dtype", "bands", "rgb", "nodata"), SCENES)
def test_harmonise_tensor_gives_the_hosts_bits(dtype, bands, rgb, nodata):
    chips = _scene_chips(dtype, bands, rgb, nodata, 3, seed=len(dtype) + bands)
    scaling = chips[0].scaling
    pixels, valid = Staging(CPU).send([np.stack([c.pixels for c in chips]),
                                       np.stack([c.valid for c in chips])])
    assert pixels.dtype == wire_dtype(dtype) and pixels.element_size() == np.dtype(dtype).itemsize
    got = harmonise_tensor(scaling, pixels, valid).numpy()
    for chip, image in zip(chips, got, strict=True):
        expected = chip.harmonised().image
        assert image.dtype == np.float32
        assert np.array_equal(image, expected)  # bit for bit, NaN-free
        assert not image[:, ~chip.valid].any()


def test_the_gpu_route_on_the_cpu_blocks_mixed_scenes_as_the_host_does():
    """One block holds chips of five scenes in turn, four sent as stored and a float64 one
    harmonised on the host (fewer bytes); packed through staging, it equals the host's
    block, padding rows included."""
    scenes = [*SCENES[:4], SCENES[-1]]
    assert [travels_stored(Scaling.of(d, rgb, {"low": [0] * b, "high": [1] * b}))
            for d, b, rgb, _ in scenes] == [True] * 4 + [False]
    chips = [chip for i, scene in enumerate(scenes)
             for chip in _scene_chips(*scene, count=2, seed=10 + i)]
    order = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    images = SourceImages([chips[i] for i in order])
    device_route = SourceImages(images.chips, on_device=True)
    for rows in (3, 10, 12):
        host = list(images.blocks(rows, CPU))
        moved = list(device_route.blocks(rows, CPU))
        assert [count for _, count in host] == [count for _, count in moved]
        for (a, _), (b, _) in zip(host, moved, strict=True):
            assert a.shape == b.shape == (rows, 3, EDGE, EDGE)
            assert torch.equal(a, b)


def test_staging_packs_arrays_of_any_dtype_and_grows_its_buffers():
    """Arrays come out as sent (same bytes, wire dtype), in turn through both buffers,
    with buffers grown for bigger blocks and earlier results left intact."""
    staging = Staging(CPU)
    rng = np.random.default_rng(3)
    sent, received = [], []
    for size in (4, 9, 2, 17, 17):
        arrays = [rng.integers(0, 65535, (size, 3, 5), dtype=np.uint16),
                  rng.random((size, 7)) > 0.5,
                  rng.random(size * 3 + 1)]
        sent.append(arrays)
        received.append(staging.send(arrays))
    for arrays, tensors in zip(sent, received, strict=True):
        for array, tensor in zip(arrays, tensors, strict=True):
            assert tensor.dtype == wire_dtype(array.dtype) and tensor.shape == array.shape
            assert np.array_equal(tensor.numpy().view(array.dtype), array)


def test_a_scene_whose_scaling_overflows_is_caught_before_the_model():
    scaling = Scaling.of("float64", (0, 1, 2), {"low": [-1e308] * 3, "high": [1e308] * 3})
    assert not scaling.always_finite
    pixels = np.full((3, 4, 4), 1e308)  # (v - low) / span = inf / inf
    chip = SourceChip(pixels, np.ones((4, 4), bool), scaling)
    assert not chip.finite() and not np.isfinite(chip.harmonised().image).all()
    assert Scaling.of("uint16", (0, 0, 0), {"low": [0.0], "high": [9.0]}).always_finite


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 126.99999999 / 254, 127.0 / 254, 1.0])
def test_quantise_tensor_matches_the_store_and_the_mask(threshold):
    rng = np.random.default_rng(4)
    probability = rng.random((3, 32, 32), dtype=np.float32)
    probability[0, 0, :5] = (np.arange(5, dtype=np.float32) + 0.5) / 254  # ties: half to even
    probability[1, 0, :3] = [0.0, 1.0, threshold]
    valid = rng.random((3, 32, 32)) > 0.2
    stored, above = quantise_tensor(torch.from_numpy(probability), torch.from_numpy(valid),
                                    threshold)
    for i in range(3):
        expected = quantise(np.where(valid[i], probability[i], 0.0))
        mask = building_mask(expected, quantised_threshold(threshold), 0)
        assert np.array_equal(above[i].numpy(), mask)
        expected[~valid[i]] = NOT_MAPPED
        assert np.array_equal(stored[i].numpy(), expected)


@pytest.fixture(scope="module")
def segmenter() -> BuildingSegmenter:
    torch.manual_seed(7)
    return BuildingSegmenter(load_imagenet_lite0(), SegmentationDecoder()).eval()


@pytest.fixture(scope="module")
def extractor(segmenter: BuildingSegmenter) -> FeatureExtractor:
    return FeatureExtractor(segmenter.encoder).eval()


def test_stage3_quantised_on_the_device_equals_decode_then_quantise(sample_archive: Path,
                                                                   segmenter, extractor):
    """Real chips, the GPU route on the CPU end to end: encoder maps equal, decoded and
    quantised on the device as on the host; a chip whose probabilities are NaN is flagged."""
    archive = Archive.open(sample_archive)
    refs = archive.chips(["sample_geotiff"])[:3]
    chips = archive.read_sources(refs, 16)
    host_features, maps = encode(SourceImages(chips), extractor, halo=16,
                                 batch_size=2, device=CPU)
    device_features, device_maps = encode(SourceImages(chips, on_device=True),
                                          extractor, halo=16, batch_size=2, device=CPU)
    assert np.array_equal(host_features, device_features)
    size = chips[0].valid.shape
    valid = [chip.valid for chip in chips]
    quantised = decode_quantised(device_maps, valid, segmenter, threshold=0.4, size=size,
                                 batch_size=2, device=CPU)
    probability = decode(maps, segmenter, size=size, batch_size=2, device=CPU)
    for chip, got, prob in zip(chips, quantised, probability, strict=True):
        expected = quantise(np.where(chip.valid, prob, 0.0))
        assert got.finite
        assert np.array_equal(got.above, building_mask(expected, quantised_threshold(0.4), 0))
        expected[~chip.valid] = NOT_MAPPED
        assert np.array_equal(got.probability, expected)
    broken = [tuple(torch.full_like(level, float("nan")) for level in maps[0]), maps[1]]
    flags = [c.finite for c in decode_quantised(broken, valid[:2], segmenter, threshold=0.4,
                                                size=size, batch_size=2, device=CPU)]
    assert flags == [False, True]
