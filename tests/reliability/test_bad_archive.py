"""Bad inputs, tried systematically: each one a clear per-input error, the rest mapped.

One folder holds a good scene beside every kind of bad input. Ingest refuses what it cannot
read (truncated, zero-byte, not a raster, no CRS, complex SAR, 2 bands); the run maps the
rest and reports, per input: the ingest refusals, a scene without a valid pixel, and a chip
whose pixels harmonise to NaN (float64 values near the dtype's limit overflow the scaling),
which is caught in the graph and recorded instead of killing the run. The run exits 1, keeps
its report, stays marked incomplete (one chip is missing from its ledger), and leaves nothing
in its temporary directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from resflow.archive import Archive
from resflow.resolution import DEFAULT_GSD_M
from resflow.samples import sample_path
from resflow.store.format import NO_DATA_CHIP, NOT_MAPPED
from resflow.store.reader import describe
from resflow.store.writer import OutputStore
from tests.processes import LOCAL_ENV, resflow

pytestmark = pytest.mark.slow  # whole runs on every engine

GRID = from_origin(500000, 5700000, DEFAULT_GSD_M, DEFAULT_GSD_M)  # mapped as it is


def _raster(path: Path, pixels: np.ndarray, *, crs: str | None = "EPSG:32631",
            nodata: float | None = None, **extra) -> Path:
    profile = {"driver": "GTiff", "height": pixels.shape[1], "width": pixels.shape[2],
               "count": pixels.shape[0], "dtype": pixels.dtype.name, "transform": GRID,
               "nodata": nodata, **extra}
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(pixels)
    return path


def _noise(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 1000).astype(dtype)


def bad_folder(folder: Path, good: Path) -> dict[str, str]:
    """Write every case into ``folder``, beside a copy of the raster ``good``; returns file
    name -> the text its error must hold."""
    folder.mkdir()
    shutil.copy(good, folder / "good.tif")
    nan_inf = _noise((3, 200, 200), "float32")
    nan_inf[0, 10:20, 10:20] = np.nan
    nan_inf[1, 50:60, 50:60] = np.inf
    _raster(folder / "nan_inf.tif", nan_inf)
    _raster(folder / "tiny.tif", _noise((3, 40, 30), "uint8"))
    extreme = np.where(np.indices((1, 64, 64)).sum(0) % 2 == 0, -1.7e308, 1.7e308)
    _raster(folder / "extreme.tif", extreme.astype("float64"))
    _raster(folder / "allnodata.tif", np.zeros((1, 64, 64), "uint16"), nodata=0)
    (folder / "zero.tif").touch()
    data = sample_path("atlanta-pan").read_bytes()
    (folder / "truncated.tif").write_bytes(data[: len(data) // 3])
    (folder / "notes.tif").write_text("not a raster, despite the name\n")
    _raster(folder / "nocrs.tif", _noise((1, 32, 32), "uint16"), crs=None)
    _raster(folder / "sar.tif", (_noise((1, 32, 32), "float32") * (1 + 1j)).astype("complex64"))
    _raster(folder / "twoband.tif", _noise((2, 32, 32), "uint16"))
    return {
        "zero.tif": "empty (0 bytes)", "truncated.tif": "truncated or corrupt",
        "notes.tif": "not a readable raster", "nocrs.tif": "has no CRS",
        "sar.tif": "complex pixels", "twoband.tif": "2-band raster has no default RGB",
        "allnodata.tif": "holds no valid pixel", "extreme.tif": "hold NaN or Inf",
    }


@pytest.fixture(scope="module")
def bad_archive(cropped_sources: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    expected = bad_folder(tmp / "rasters", cropped_sources / sample_path("rotterdam-ms1").name)
    archive = tmp / "mixed.zarr"
    done = resflow("ingest", str(tmp / "rasters"), "--out", str(archive), "--chip", "128")
    assert done.returncode != 0  # some inputs were refused, and ingest says so
    assert sorted(Archive.open(archive).scenes) == ["allnodata", "extreme", "good", "nan_inf",
                                                    "tiny"]
    return archive, expected


@pytest.mark.parametrize("backend", ["dask", "spark"])
def test_bad_inputs_are_reported_and_the_rest_is_mapped(backend: str, bad_archive,
                                                         run_config_file: Path,
                                                         tmp_path: Path) -> None:
    archive, expected = bad_archive
    out = tmp_path / "maps.zarr"
    scratch = tmp_path / "tmp"  # the run's temporary location, empty again once it ends
    scratch.mkdir()
    done = resflow("run", str(archive), "--out", str(out), "--config", str(run_config_file),
                   "--backend", backend, env={**LOCAL_ENV, "TMPDIR": str(scratch)})
    assert done.returncode == 1, done.stderr[-3000:]
    assert not list(scratch.iterdir()), f"temporary files left: {list(scratch.rglob('*'))}"
    report = json.loads((out / "run_report.json").read_text())
    for name, text in expected.items():
        errors = [e for e in report["errors"] if e["source"].endswith(f"/{name}")]
        assert len(errors) == 1, (name, report["errors"])
        assert text in errors[0]["problem"], errors[0]
        assert f"{name}" in done.stderr  # printed as well, one line per input
    assert len(report["errors"]) == len(expected)

    # every chip but the failed one is mapped; the output says it is not finished
    desc = describe(out)
    assert not desc["complete"] and desc["failed_chips"] == 1
    assert desc["chips_done"] == desc["chips_total"] - 1
    store = OutputStore.open(out)
    nan_inf = store.read_array("nan_inf", "probability")[...]
    # the failed chip and the nodata block are not mapped (255), never "no building" (0)
    assert nan_inf.shape == (200, 200) and (nan_inf[10:20, 10:20] == NOT_MAPPED).all()
    assert (nan_inf[50:60, 50:60] == NOT_MAPPED).all() and (nan_inf < NOT_MAPPED).any()
    assert store.read_array("tiny", "probability").shape == (40, 30)
    assert (store.read_array("allnodata", "probability")[...] == NOT_MAPPED).all()
    assert (store.ledger("allnodata") == NO_DATA_CHIP).all()
    info = resflow("info", str(out))
    assert "INCOMPLETE" in info.stdout and "1 chips failed" in info.stdout
