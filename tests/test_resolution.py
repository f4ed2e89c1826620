"""Working ground resolution: measured in metres for any CRS, resampled at ingest with the
footprint and georeferencing kept, coarse scenes skipped and named, mismatches refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from resflow.archive import Archive
from resflow.config import IngestConfig, RunConfig
from resflow.errors import InputError
from resflow.gallery import DEFAULT_PATH, Gallery
from resflow.ingestion import ingest
from resflow.preflight import check_run
from resflow.resolution import DEFAULT_GSD_M, ground_resolution, working_grid
from resflow.samples import sample_path

UTM = rasterio.crs.CRS.from_epsg(32616)


def _write(path: Path, crs: str, transform, size: int = 512, bands: int = 3) -> Path:
    """A real GeoTIFF whose pixels are a smooth ramp plus 8-px checks (aliasing shows)."""
    yy, xx = np.mgrid[0:size, 0:size]
    ramp = (xx + yy) * 100 // (2 * size) + 50 * (((yy // 8) + (xx // 8)) % 2)
    data = np.stack([ramp + 40 * b for b in range(bands)]).astype(np.uint8)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands,
                       dtype="uint8", crs=crs, transform=transform) as dst:
        dst.write(data)
    return path


def _footprint(info) -> tuple[float, float, float, float]:
    a, _, c, _, e, f = info.transform
    return c, f + e * info.height, c + a * info.width, f


GRIDS = {
    # name: (CRS, transform at about 0.25 m on the ground, 2x finer than the working grid)
    "utm-north-up": ("EPSG:32616", from_origin(733601.0, 3725139.0, 0.25, 0.25)),
    "geographic-4326": ("EPSG:4326", from_origin(-84.48, 33.64, 0.25 / 92_700, 0.25 / 110_900)),
    "web-mercator-3857": ("EPSG:3857", from_origin(3628312.9, 39135.8, 0.25, 0.25)),
}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_resampled_scene_keeps_crs_and_footprint(name: str, tmp_path: Path) -> None:
    crs, transform = GRIDS[name]
    src = _write(tmp_path / f"{name}.tif", crs, transform)
    result = ingest([src], tmp_path / "a.zarr", IngestConfig(gsd=0.5, chip=128))
    assert result.ok, result.refused
    info = Archive.open(tmp_path / "a.zarr").scenes[name]
    with rasterio.open(src) as ds:
        assert rasterio.crs.CRS.from_wkt(info.crs_wkt) == ds.crs
        assert np.allclose(_footprint(info), tuple(ds.bounds), rtol=0, atol=1e-9)
    assert info.gsd_m == pytest.approx(0.5, rel=0.02)
    assert info.resampling == "average" and info.source_gsd_m == pytest.approx(0.25, rel=0.02)
    assert abs(info.height - 256) <= 1 and abs(info.width - 256) <= 1


def test_downsampling_averages_blocks_so_checks_do_not_alias(tmp_path: Path) -> None:
    src = _write(tmp_path / "s.tif", "EPSG:32616", from_origin(733601.0, 3725139.0, 0.25, 0.25))
    ingest([src], tmp_path / "a.zarr", IngestConfig(gsd=0.5, chip=128))
    stored = np.asarray(Archive.open(tmp_path / "a.zarr").image("s")[...])
    with rasterio.open(src) as ds:
        blocks = ds.read().astype(float).reshape(3, 256, 2, 256, 2).mean(axis=(2, 4))
    # GDAL's average rounds to the integer dtype: each pixel is its 2 x 2 block's mean.
    assert np.abs(stored - blocks).max() <= 0.5


def test_upsampled_and_native_scenes(tmp_path: Path) -> None:
    coarse = _write(tmp_path / "one_metre.tif", "EPSG:32616",
                    from_origin(733601.0, 3725139.0, 1.0, 1.0), size=64)
    result = ingest([coarse, sample_path("atlanta-pan")], tmp_path / "a.zarr",
                    IngestConfig(gsd=0.5, chip=128))
    scenes = Archive.open(tmp_path / "a.zarr").scenes
    assert (scenes["one_metre"].height, scenes["one_metre"].resampling) == (128, "bilinear")
    atlanta = scenes["sample_geotiff"]
    assert atlanta.resampling == "none" and (atlanta.height, atlanta.width) == (900, 900)
    assert result.ok


def test_native_setting_keeps_every_grid(tmp_path: Path) -> None:
    src = _write(tmp_path / "s.tif", "EPSG:32616", from_origin(733601.0, 3725139.0, 0.25, 0.25))
    ingest([src], tmp_path / "a.zarr", IngestConfig(gsd=None, chip=128))
    info = Archive.open(tmp_path / "a.zarr").scenes["s"]
    assert (info.height, info.resampling) == (512, "none")


def test_km2_is_ground_area_in_web_mercator(tmp_path: Path) -> None:
    # 0.25 web-mercator metres at 27.6 N are 0.25 * cos(27.6 deg) ground metres.
    y = 3200000.0
    src = _write(tmp_path / "m.tif", "EPSG:3857", from_origin(9520000.0, y, 0.25, 0.25))
    ingest([src], tmp_path / "a.zarr", IngestConfig(gsd=None, chip=128))
    arc = Archive.open(tmp_path / "a.zarr")
    lat = np.degrees(2 * np.arctan(np.exp((y - 64) / 6378137.0)) - np.pi / 2)
    expected = (512 * 0.25 * np.cos(np.radians(lat))) ** 2 / 1e6
    assert arc.scenes["m"].km2 == pytest.approx(expected, rel=0.01)
    assert sum(r.km2 for r in arc.chips()) == pytest.approx(expected, rel=0.01)


def test_ground_resolution_in_metres_for_every_crs() -> None:
    utm = ground_resolution(UTM.to_wkt(), (0.5, 0, 733601, 0, -0.5, 3725139), 900, 900)
    merc = ground_resolution(rasterio.crs.CRS.from_epsg(3857).to_wkt(),
                             (1.0, 0, 0, 0, -1.0, 3228135.0), 10, 10)
    lat = 2 * np.arctan(np.exp((3228135.0 - 5) / 6378137.0)) - np.pi / 2  # 28.0 N
    assert utm == pytest.approx(0.5, rel=1e-3)
    assert merc == pytest.approx(np.cos(lat), rel=2e-3)  # sphere vs ellipsoid: 0.2 %


def test_coarse_scene_is_skipped_named_and_never_mapped(tmp_path: Path) -> None:
    result = ingest([sample_path("landsat8"), sample_path("atlanta-pan")], tmp_path / "a.zarr")
    assert [r["name"] for r in result.too_coarse] == ["LC08_L1TP_224078_20200518_20200518_01_RT"]
    arc = Archive.open(tmp_path / "a.zarr")
    assert list(arc.scenes) == ["sample_geotiff"]
    (skipped,) = arc.skipped_records()
    assert skipped["source_gsd_m"] == pytest.approx(30, rel=0.05)
    assert "too coarse" in skipped["reason"]
    assert all(r.scene == "sample_geotiff" for r in arc.chips())
    from typer.testing import CliRunner

    from resflow.cli import app

    shown = CliRunner().invoke(app, ["info", str(tmp_path / "a.zarr")])
    assert "skipped LC08_L1TP_224078_20200518_20200518_01_RT" in shown.output
    assert "too coarse" in shown.output


def test_run_refuses_an_archive_at_another_resolution(tmp_path: Path) -> None:
    ingest([sample_path("atlanta-pan")], tmp_path / "a.zarr", IngestConfig(gsd=0.5))
    with pytest.raises(InputError, match=r"--gsd 0.3") as err:
        check_run(RunConfig(archive=tmp_path / "a.zarr", out=tmp_path / "o.zarr"))
    assert "sample_geotiff" in str(err.value)
    assert not (tmp_path / "o.zarr").exists()


def test_ingest_default_is_the_default_gallerys_resolution() -> None:
    manifest = json.loads((DEFAULT_PATH / "manifest.json").read_text())
    assert manifest["resolution"]["gsd_m"] == DEFAULT_GSD_M == Gallery.load().gsd_m
    assert IngestConfig().gsd == DEFAULT_GSD_M


def test_working_grid_tiles_the_source_footprint_exactly() -> None:
    grid = working_grid(UTM.to_wkt(), (0.3, 0, 1000, 0, -0.3, 2000), 1001, 777, 0.5)
    assert grid.width * grid.transform[0] == pytest.approx(777 * 0.3)
    assert grid.height * grid.transform[4] == pytest.approx(-1001 * 0.3)
    assert grid.transform[2] == 1000 and grid.transform[5] == 2000
