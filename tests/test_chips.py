"""Chips tile each scene exactly once; halo reads are right at edges and corners; km^2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyproj import CRS

from resflow.archive import Archive
from resflow.chips import chip_grid, symmetric_index, window_km2
from resflow.failures import ChipFailure, read_chips
from resflow.harmonise import harmonise


@pytest.mark.parametrize(("height", "width", "chip"), [(900, 900, 256), (300, 1, 64), (5, 7, 4)])
def test_grid_tiles_exactly_once(height: int, width: int, chip: int) -> None:
    cover = np.zeros((height, width), dtype=int)
    for _, _, y0, x0, h, w in chip_grid(height, width, chip):
        cover[y0:y0 + h, x0:x0 + w] += 1
    assert (cover == 1).all()


def test_archive_chips_tile_every_scene_once(sample_archive: Path) -> None:
    archive = Archive.open(sample_archive)
    refs = archive.chips()
    assert refs == sorted(refs)
    for name, info in archive.scenes.items():
        cover = np.zeros((info.height, info.width), dtype=int)
        for r in (r for r in refs if r.scene == name):
            cover[r.y0:r.y0 + r.height, r.x0:r.x0 + r.width] += 1
            assert r.chip == 256 and 0 <= r.valid_fraction <= 1
        assert (cover == 1).all(), name
    assert sum(r.km2 for r in refs if r.scene == "sample_geotiff") == pytest.approx(0.2025)


def test_symmetric_index_is_dask_reflect_for_wide_halos() -> None:
    x = np.arange(5)
    for pad in (1, 4, 12):
        expected = np.pad(x, pad, mode="symmetric")  # dask's boundary="reflect"
        assert (x[symmetric_index(np.arange(-pad, 5 + pad), 5)] == expected).all()


@pytest.mark.parametrize("halo", [0, 32, 300])
def test_halo_reads_match_padding_of_the_whole_scene(native_archive: Path, halo: int) -> None:
    archive = Archive.open(native_archive)
    for name in ("ms1", "rmnp-rgb"):
        info = archive.scenes[name]
        full = np.asarray(archive.image(name)[...])
        side = 2 * info.chip + 2 * halo  # room for the last chip's padding
        padded = np.pad(full, ((0, 0), (halo, side), (halo, side)), mode="symmetric")
        for ref in archive.chips([name]):  # first, edge and corner chips
            got = archive.read_chip(ref, halo=halo)
            n = info.chip + 2 * halo
            assert got.image.shape == (3, n, n) and got.valid.shape == (n, n)
            window = padded[:, ref.y0:ref.y0 + n, ref.x0:ref.x0 + n]
            image, valid = harmonise(window, info.nodata, info.rgb, info.stats)
            np.testing.assert_array_equal(got.image, image)
            np.testing.assert_array_equal(got.valid, valid)


@pytest.mark.parametrize("halo", [0, 32, 300])
def test_reading_many_chips_at_once_equals_reading_each(sample_archive: Path, halo: int) -> None:
    """Runs of side-by-side chips are read as one slab; any order, scenes mixed, gaps."""
    archive = Archive.open(sample_archive)
    refs = archive.chips()
    picked = [*refs[::-1][::2], *refs[1::4]]  # reversed, gaps, a repeat, several scenes
    together = archive.read_chips(picked, halo=halo)
    assert len(together) == len(picked)
    for ref, got in zip(picked, together, strict=True):
        alone = archive.read_chip(ref, halo=halo)
        np.testing.assert_array_equal(got.image, alone.image)
        np.testing.assert_array_equal(got.valid, alone.valid)


def test_an_unreadable_chip_fails_alone(sample_archive: Path) -> None:
    """When reading chips together raises, each is read alone: only the bad one fails."""
    archive = Archive.open(sample_archive)
    refs = archive.chips(["sample_geotiff"])[:4]
    bad = refs[2]

    def read(chips):
        if bad in chips:
            raise OSError("chunk checksum mismatch")
        return archive.read_chips(chips)

    failures: list[ChipFailure] = []
    kept, pixels = read_chips(refs, read, "stage1-features", failures)
    assert kept == [r for r in refs if r != bad] and len(pixels) == 3
    assert [(f.ref, f.stage) for f in failures] == [(bad, "stage1-features")]
    assert "reading the chip failed (OSError: chunk checksum mismatch)" in failures[0].problem


def test_km2_projected_and_geographic() -> None:
    utm = CRS.from_epsg(32631).to_wkt()
    assert window_km2((0.5, 0, 0, 0, -0.5, 0), utm, 0, 0, 2000, 1000) == pytest.approx(0.5)
    feet = CRS.from_epsg(2263).to_wkt()  # NAD83 / New York Long Island, US survey feet
    assert window_km2((1, 0, 0, 0, -1, 0), feet, 0, 0, 1000, 1000) == pytest.approx(
        0.0929, rel=1e-3)
    wgs84 = CRS.from_epsg(4326).to_wkt()
    equator = window_km2((1, 0, 0, 0, -1, 1), wgs84, 0, 0, 1, 1)
    assert equator == pytest.approx(12308.8, rel=1e-3)  # one degree square at the equator
    north = window_km2((1, 0, 0, 0, -1, 61), wgs84, 0, 0, 1, 1)
    # about cos(latitude) smaller; the ellipsoid adds about 1 %
    assert north == pytest.approx(equator * np.cos(np.radians(60.5)), rel=2e-2)
