"""Chips tile each scene exactly once; halo reads are right at edges and corners; km^2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pyproj import CRS

from resflow.archive import Archive
from resflow.chips import chip_grid, symmetric_index, window_km2
from resflow.harmonise import harmonise
from resflow.inference.clock import Clock
from resflow.inference.settings import STAGE1, GraphSettings
from resflow.inference.window_work import WindowFailed, read_window, windows_of
from resflow.retries import RetryCount
from resflow.windows import window_of

CPU = torch.device("cpu")


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


@pytest.mark.parametrize("halo", [0, 32, pytest.param(300, marks=pytest.mark.slow)])
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


@pytest.mark.parametrize("halo", [0, 32, pytest.param(300, marks=pytest.mark.slow)])
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


def test_a_one_chip_window_reads_as_its_chip(sample_archive: Path) -> None:
    """A prediction window of one chip is that chip's halo read, at scene edges too."""
    archive = Archive.open(sample_archive)
    info = archive.scenes["ms1"]
    for ref in archive.chips(["ms1"])[-2:]:  # the last column and corner: reflected reads
        window = window_of(ref, 1, info.height, info.width)
        (chip,) = archive.read_sources([ref], 40)
        read = archive.read_window(window, 40)
        np.testing.assert_array_equal(read.pixels, chip.pixels)
        np.testing.assert_array_equal(read.valid, chip.valid)


def test_an_unreadable_window_fails_its_chips_alone(sample_archive: Path,
                                                    tmp_path: Path) -> None:
    """A window holding a corrupt chunk fails every chip of it with a reason; a window
    beside it still reads."""
    copy = tmp_path / "archive.zarr"
    shutil.copytree(sample_archive, copy)
    chunk = copy / "scenes" / "sample_geotiff" / "image" / "c" / "0" / "0" / "0"
    chunk.write_bytes(b"not a zstd frame")
    archive = Archive.open(copy)
    settings = GraphSettings(archive=copy, gallery=None, out=tmp_path / "o.zarr", window=2)
    refs = archive.chips(["sample_geotiff"])[:4]
    (bad, bad_chips), (good, _) = windows_of(settings, archive, refs).items()
    assert bad_chips == refs[:2]
    with pytest.raises(WindowFailed, match="reading its window of chips failed") as failed:
        read_window(settings, archive, bad, STAGE1, RetryCount(), Clock())
    assert failed.value.stage == STAGE1
    source = read_window(settings, archive, good, STAGE1, RetryCount(), Clock())
    assert source.valid.shape == (512 + 2 * settings.halo,) * 2


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
