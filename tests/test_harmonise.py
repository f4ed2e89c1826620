"""Band harmonisation: selection per source, robust scaling from ingest stats, nodata masked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from resflow.archive import Archive
from resflow.errors import InputError
from resflow.harmonise import StatsSampler, band_names, harmonise, select_rgb, valid_mask
from resflow.ingestion import ingest
from resflow.samples import sample_path
from tests.fixtures_data import NATIVE


def test_band_names_from_descriptions_colours_and_source_rules() -> None:
    x = Path("x.tif")
    assert band_names(x, 2, ["Red", "NIR"], ["undefined"] * 2) == ("red", "nir")
    assert band_names(x, 1, [None], ["gray"]) == ("pan",)
    assert band_names(x, 3, [None] * 3, ["red", "green", "blue"]) == ("red", "green", "blue")
    assert band_names(Path("LC09_x.tif"), 3, [None] * 3, ["gray", "undefined", "undefined"]
                      ) == ("blue", "green", "red")
    assert band_names(x, 4, [None] * 4, ["gray"] + ["undefined"] * 3) == ("b1", "b2", "b3", "b4")


def test_an_alpha_band_is_never_imagery() -> None:
    x = Path("x.tif")
    rgba = ["red", "green", "blue", "alpha"]
    assert band_names(x, 4, [None] * 4, rgba) == ("red", "green", "blue", "alpha")
    assert band_names(x, 2, [None] * 2, ["gray", "alpha"]) == ("pan", "alpha")
    assert band_names(x, 4, [None] * 4, ["alpha", "red", "green", "blue"]) == (
        "alpha", "red", "green", "blue")
    assert band_names(Path("LC08_x.tif"), 4, [None] * 4, ["gray", "undefined", "undefined",
                                                         "alpha"]) == (
        "blue", "green", "red", "alpha")
    assert band_names(x, 3, [None] * 3, ["undefined", "alpha", "undefined"]) == (
        "b1", "alpha", "b3")


def test_rgb_selection_per_source() -> None:
    assert select_rgb("a", ("pan",)) == (0, 0, 0)
    assert select_rgb("a", ("blue", "green", "red")) == (2, 1, 0)
    assert select_rgb("a", ("b1", "b2", "b3", "b4")) == (0, 1, 2)
    assert select_rgb("a", ("red", "green", "blue", "nir")) == (0, 1, 2)
    assert select_rgb("a", ("b1", "b2", "b3", "b4"), override=(3, 2, 1)) == (3, 2, 1)
    with pytest.raises(InputError, match="no default RGB mapping"):
        select_rgb("a", ("b1", "b2"))
    with pytest.raises(InputError, match=r"\(1,2,3, counted from 1\).* numbered 1\. Fix"):
        select_rgb("a", ("pan",), override=(0, 1, 2))


def test_rgb_override_counts_the_source_bands_from_1() -> None:
    """An override names the source's bands; with an alpha band left out (numbers 1, 2, 4 of
    an alpha-third raster) it maps to the stored bands and messages say the numbers."""
    assert select_rgb("a", ("r", "g", "b"), override=(3, 1, 0), numbers=(1, 2, 4)) == (2, 1, 0)
    with pytest.raises(InputError) as err:
        select_rgb("a.tif", ("b1", "b2", "b3", "b4"), override=(4, 2, 1))
    assert "(5,3,2, counted from 1)" in str(err.value) and "numbered 1 to 4" in str(err.value)
    assert "0-based" not in str(err.value) and "from 1 to 4" in err.value.fix
    with pytest.raises(InputError, match="numbered 1, 2, 4"):
        select_rgb("a", ("r", "g", "b"), override=(2, 1, 0), numbers=(1, 2, 4))


def test_nodata_nan_and_inf_are_invalid_and_zero() -> None:
    px = np.array([[[np.nan, 1.0, 5.0, np.inf, 10.0]], [[1.0, 1.0, 5.0, 1.0, -9.0]]])
    assert valid_mask(px, -9.0).tolist() == [[False, True, True, False, True]]
    both = np.full((2, 1, 1), -9.0)
    assert not valid_mask(both, -9.0).any()
    image, valid = harmonise(px, -9.0, (0, 1, 1), {"low": [0.0, 0.0], "high": [10.0, 5.0]})
    assert image.dtype == np.float32 and image.shape == (3, 1, 5)
    assert image[:, ~valid].max() == 0
    np.testing.assert_allclose(image[0, 0, [1, 2, 4]], [0.1, 0.5, 1.0])
    assert image.min() >= 0 and image.max() <= 1


def test_stats_subsample_is_bounded_and_robust(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("resflow.harmonise.STATS_SAMPLE_PIXELS", 10_000)
    rng = np.random.default_rng(0)
    scene = rng.uniform(100, 200, size=(1, 1000, 1000))
    scene[0, 0, :50] = 1e9  # outliers must not move the high percentile
    sampler = StatsSampler(1000, 1000, None)
    for y0 in range(0, 1000, 256):
        for x0 in range(0, 1000, 256):
            sampler.add(y0, x0, scene[:, y0:y0 + 256, x0:x0 + 256])
    kept = sum(p.shape[1] for p in sampler._parts)
    assert kept <= 10_000
    stats = sampler.stats()
    assert stats["low"][0] == pytest.approx(102, abs=1.5)
    assert stats["high"][0] == pytest.approx(198, abs=1.5)


@pytest.mark.parametrize("sample", ["atlanta-pan", "landsat8", "rotterdam-ms1", "rgbn",
                                    "rmnp-rgb"])
def test_every_source_reads_as_three_channels_in_unit_range(sample: str, tmp_path: Path) -> None:
    out = tmp_path / "a.zarr"
    ingest([sample_path(sample)], out, NATIVE)
    archive = Archive.open(out)
    (info,) = archive.scenes.values()
    assert len(info.stats["low"]) == len(info.band_names)
    ref = archive.chips()[0]
    pixels = archive.read_chip(ref, halo=8)
    assert pixels.image.dtype == np.float32 and pixels.image.shape == (3, 272, 272)
    assert pixels.image.min() >= 0 and pixels.image.max() <= 1
    assert pixels.image[:, ~pixels.valid].size == 0 or pixels.image[:, ~pixels.valid].max() == 0
    if info.band_names == ("pan",):
        np.testing.assert_array_equal(pixels.image[0], pixels.image[2])


def test_landsat_blue_green_red_is_reordered(tmp_path: Path) -> None:
    out = tmp_path / "a.zarr"
    ingest([sample_path("landsat8")], out, NATIVE)
    archive = Archive.open(out)
    (info,) = archive.scenes.values()
    ref = archive.chips()[10]
    raw = np.asarray(archive.image(info.name)[:, ref.y0:ref.y0 + 4, ref.x0:ref.x0 + 4])
    red = np.clip((raw[2] - info.stats["low"][2]) / (info.stats["high"][2] - info.stats["low"][2]),
                  0, 1)
    np.testing.assert_allclose(archive.read_chip(ref).image[0, :4, :4], red, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
@pytest.mark.parametrize("rgb", [(0, 0, 0), (2, 1, 0)])
def test_integer_pixels_scale_bit_for_bit_as_floats(dtype: str, rgb: tuple[int, ...]) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    px = rng.integers(info.min, info.max, size=(3, 40, 50), endpoint=True).astype(dtype)
    px[:, 0, :7] = 3  # every band at nodata: invalid
    stats = {"low": [5.0, float(info.min), 7.5], "high": [200.0, float(info.max), 7.5]}
    image, valid = harmonise(px, 3, rgb, stats)
    reference, reference_valid = harmonise(px.astype(np.float64), 3, rgb, stats)
    assert image.dtype == np.float32 and not valid[0, :7].any()
    np.testing.assert_array_equal(valid, reference_valid)
    assert image.tobytes() == reference.tobytes()
