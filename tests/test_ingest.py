"""GeoTIFF -> Zarr -> GeoTIFF round trips, xarray read-back, re-runs, changes, interruptions."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr

from resflow.archive import Archive
from resflow.config import IngestConfig
from resflow.ingestion import ingest
from resflow.samples import DATA_DIR, list_samples, sample_path
from tests.fixtures_data import NATIVE

RASTERS = [s for s in list_samples("raster")]


@pytest.fixture(scope="module")
def all_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every bundled sample (the whole data folder) ingested at chip 256."""
    out = tmp_path_factory.mktemp("all") / "all.zarr"
    result = ingest([DATA_DIR], out, NATIVE)
    assert len(result.ingested) == len(RASTERS)
    # The label mask is stored without georeferencing and is refused, not ingested.
    assert [r["source"] for r in result.refused] == [str(sample_path("atlanta-mask"))]
    return out


def _scene_of(archive: Archive, source: Path) -> str:
    (name,) = [n for n, i in archive.scenes.items() if i.source == str(source.resolve())]
    return name


@pytest.mark.parametrize("sample", RASTERS, ids=lambda s: s.name)
def test_geotiff_zarr_geotiff_is_pixel_exact(all_samples: Path, sample, tmp_path: Path) -> None:
    archive = Archive.open(all_samples)
    info = archive.scenes[_scene_of(archive, sample.path)]
    back = tmp_path / "back.tif"
    pixels = np.asarray(archive.image(info.name)[...])
    with rasterio.open(back, "w", driver="GTiff", width=info.width, height=info.height,
                       count=len(info.band_names), dtype=info.dtype, crs=info.crs_wkt,
                       transform=rasterio.Affine(*info.transform), nodata=info.nodata) as dst:
        dst.write(pixels)
    with rasterio.open(sample.path) as src, rasterio.open(back) as out:
        np.testing.assert_array_equal(out.read(), src.read())
        assert out.dtypes == src.dtypes and out.nodata == src.nodata
        assert out.crs == src.crs and out.transform == src.transform


@pytest.mark.parametrize("sample", RASTERS, ids=lambda s: s.name)
def test_plain_xarray_and_rioxarray_read_back(all_samples: Path, sample, tmp_path: Path) -> None:
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    archive = Archive.open(all_samples)
    name = _scene_of(archive, sample.path)
    ds = xr.open_zarr(all_samples, group=f"scenes/{name}", mask_and_scale=False)
    with rasterio.open(sample.path) as src:
        assert ds.image.dims == ("band", "y", "x") and ds.image.dtype == src.dtypes[0]
        assert ds.image.rio.crs == src.crs
        assert ds.image.rio.transform().almost_equals(src.transform, precision=1e-9)
        assert ds.image.rio.nodata == src.nodata
        ds.image.rio.to_raster(tmp_path / "rio.tif")
        with rasterio.open(tmp_path / "rio.tif") as out:
            np.testing.assert_array_equal(out.read(), src.read())
            assert out.crs == src.crs


def test_metadata_kept(all_samples: Path) -> None:
    archive = Archive.open(all_samples)
    landsat = archive.scenes[_scene_of(archive, sample_path("landsat8"))]
    assert landsat.band_names == ("blue", "green", "red") and landsat.rgb == (2, 1, 0)
    atlanta = archive.scenes[_scene_of(archive, sample_path("atlanta-pan"))]
    assert atlanta.nodata == 0 and atlanta.dtype == "uint16" and len(atlanta.sha256) == 64
    assert atlanta.chip == 256 and atlanta.stats["low"][0] < atlanta.stats["high"][0]
    group = zarr.open_group(all_samples, path="scenes/sample_geotiff", mode="r")
    assert group["image"].chunks == (1, 256, 256)


def _copy(name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(sample_path(name), folder))


def test_rerun_is_a_noop(tmp_path: Path) -> None:
    src = _copy("rotterdam-ms1", tmp_path / "in")
    out = tmp_path / "a.zarr"
    assert ingest([src], out).ingested == ["ms1"]
    chunk_files = sorted((out / "scenes" / "ms1" / "image").rglob("c/*/*/*"))
    mtimes = [p.stat().st_mtime_ns for p in chunk_files]
    again = ingest([src], out)
    assert again.ingested == [] and again.skipped == ["ms1"]
    assert [p.stat().st_mtime_ns for p in chunk_files] == mtimes


def test_changed_source_is_redone(tmp_path: Path) -> None:
    src = _copy("rgbn", tmp_path / "in")
    out = tmp_path / "a.zarr"
    ingest([src], out, NATIVE)
    with rasterio.open(src, "r+") as ds:
        band = ds.read(1)
        band[:10, :10] = 7
        ds.write(band, 1)
    result = ingest([src], out, NATIVE)
    assert result.ingested == ["rgbn"] and result.skipped == []
    archive = Archive.open(out)
    assert (np.asarray(archive.image("rgbn")[0, :10, :10]) == 7).all()


def test_scene_without_complete_marker_is_hidden_then_redone(tmp_path: Path) -> None:
    src = _copy("rotterdam-ms2", tmp_path / "in")
    out = tmp_path / "a.zarr"
    ingest([src], out)
    zarr.open_group(out, path="scenes/ms2", mode="r+").attrs["complete"] = False
    assert Archive.open(out).scenes == {}
    result = ingest([src], out)
    assert result.ingested == ["ms2"]
    assert list(Archive.open(out).scenes) == ["ms2"]


@pytest.mark.slow
def test_killed_ingest_is_detected_and_redone(tmp_path: Path) -> None:
    src = _copy("landsat8", tmp_path / "in")
    out = tmp_path / "a.zarr"
    chunks = out / "scenes" / src.stem / "image" / "c"
    script = textwrap.dedent(f"""
        import os, threading, time
        from pathlib import Path
        from resflow.config import IngestConfig
        from resflow.ingestion import ingest
        cfg = IngestConfig(chip=64, window_rows=64, workers=1, gsd=None, max_gsd=1e6)
        threading.Thread(target=ingest, args=([{str(src)!r}], {str(out)!r}, cfg),
                         daemon=True).start()
        while not Path({str(chunks)!r}).exists():
            time.sleep(0.001)
        os._exit(9)  # dies mid-write, as a killed process would
    """)
    done = subprocess.run([sys.executable, "-c", script], timeout=120, env=os.environ.copy())
    assert done.returncode == 9
    assert Archive.open(out).scenes == {}
    result = ingest([src], out, IngestConfig(chip=64, gsd=None, max_gsd=1e6))
    assert result.ingested == [src.stem]
    archive = Archive.open(out)
    with rasterio.open(src) as ds:
        np.testing.assert_array_equal(np.asarray(archive.image(src.stem)[...]), ds.read())


def test_a_failed_ingest_leaves_no_archive_behind(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from resflow.cli import app

    out = tmp_path / "a.zarr"
    missing = tmp_path / "nothere.tif"
    result = CliRunner().invoke(app, ["ingest", str(missing), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert str(missing) in result.stderr and "not kept" in result.stdout
    assert not out.exists()
    assert ingest([missing], out).removed and not out.exists()


def test_a_failed_ingest_never_removes_an_archive_that_was_there(tmp_path: Path) -> None:
    src = _copy("rotterdam-ms1", tmp_path / "in")
    out = tmp_path / "a.zarr"
    ingest([src], out)
    result = ingest([tmp_path / "nothere.tif"], out)
    assert not result.removed and result.refused
    assert list(Archive.open(out).scenes) == ["ms1"]
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert not ingest([tmp_path / "nothere.tif"], empty).removed and empty.is_dir()
