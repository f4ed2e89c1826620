"""Each bad input gives one message naming the file, the problem and the fix; the rest ingest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from typer.testing import CliRunner

from resflow.archive import Archive
from resflow.cli import app
from resflow.ingest import ingest
from resflow.samples import sample_path

GOOD = "rotterdam-ms1"
UTM_GRID = from_origin(500000, 5700000, 1, 1)


def _write(path: Path, dtype: str = "uint16", crs: str | None = "EPSG:32631",
           transform=UTM_GRID) -> Path:
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": dtype}
    if crs:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.ones((1, 8, 8), dtype=dtype))
    return path


def _truncated(path: Path) -> Path:
    data = sample_path("atlanta-pan").read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _container(path: Path) -> Path:
    """A netCDF file of two variables: GDAL opens it as zero bands plus subdatasets."""
    import xarray as xr

    grid = (("y", "x"), np.ones((8, 8)))
    xr.Dataset({"a": grid, "b": grid}).to_netcdf(path, engine="scipy")
    return path


BAD = {
    "missing": (lambda d: d / "absent.tif", "does not exist"),
    "zero-byte": (lambda d: (d / "empty.tif").touch() or d / "empty.tif", "empty (0 bytes)"),
    "truncated": (lambda d: _truncated(d / "cut.tif"), "truncated or corrupt"),
    "corrupt": (lambda d: (d / "noise.tif").write_bytes(bytes(range(256)) * 8) and d / "noise.tif",
                "not a readable raster"),
    "not-a-raster": (lambda d: Path(shutil.copy(sample_path("atlanta-labels"), d / "labels.tif")),
                     "not a readable raster"),
    "no-crs": (lambda d: _write(d / "nocrs.tif", crs=None), "has no CRS"),
    "no-transform": (lambda d: _write(d / "notransform.tif", transform=None), "no geotransform"),
    "complex-sar": (lambda d: _write(d / "sar.tif", dtype="complex64"), "complex pixels"),
    "zero-bands": (lambda d: _container(d / "two-vars.nc"), "zero bands"),
    "empty-folder": (lambda d: (d / "nothing").mkdir() or d / "nothing", "no raster files"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_input_is_refused_and_others_ingest(case: str, tmp_path: Path) -> None:
    make, problem = BAD[case]
    bad = make(tmp_path)
    out = tmp_path / "a.zarr"
    result = ingest([bad, sample_path(GOOD)], out)
    assert result.ingested == ["ms1"]
    (record,) = result.refused
    assert problem in record["problem"]
    assert Path(record["where"]).name == bad.name and record["fix"]
    archive = Archive.open(out)
    assert list(archive.scenes) == ["ms1"] and archive.refused == result.refused


def test_truncated_pixels_leave_no_scene(tmp_path: Path) -> None:
    bad = _truncated(tmp_path / "cut.tif")
    out = tmp_path / "a.zarr"
    result = ingest([bad, sample_path(GOOD)], out)
    assert [r["source"] for r in result.refused] == [str(bad.resolve())]
    assert list(Archive.open(out).scenes) == ["ms1"]
    alone = ingest([bad], tmp_path / "b.zarr")  # nothing written: nothing left behind
    assert alone.removed and not (tmp_path / "b.zarr").exists()


def test_cli_exit_codes_and_messages(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "a.zarr"
    partial = runner.invoke(app, ["ingest", str(tmp_path / "absent.tif"), str(sample_path(GOOD)),
                                  "--out", str(out)])
    assert partial.exit_code == 1
    assert "absent.tif: the file does not exist. Fix: check the path" in partial.stderr
    nothing = runner.invoke(app, ["ingest", str(tmp_path / "absent.tif"), "--out",
                                  str(tmp_path / "b.zarr")])
    assert nothing.exit_code == 2 and not (tmp_path / "b.zarr").exists()
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "refused inputs: 1" in info.stdout
    assert "absent.tif: the file does not exist" in info.stdout


def test_malformed_config_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text("chip: 7\n")
    result = CliRunner().invoke(app, ["ingest", str(sample_path(GOOD)), "--out",
                                      str(tmp_path / "a.zarr"), "--config", str(cfg)])
    assert result.exit_code == 2
    assert "field 'chip'" in result.stderr and result.stderr.count("\n") == 1
    cfg.write_text("chip: [unclosed\n")
    result = CliRunner().invoke(app, ["ingest", str(sample_path(GOOD)), "--out",
                                      str(tmp_path / "a.zarr"), "--config", str(cfg)])
    assert result.exit_code == 2 and "not valid YAML" in result.stderr
