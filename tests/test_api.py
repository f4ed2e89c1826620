"""The Python API: ``resflow.run`` and ``resflow.open_maps``, as a notebook uses them.

``run`` on the local engine and on a Dask cluster the caller already has writes the same
maps, leaves the caller's cluster running, prints nothing and says where the dashboard is;
settings are refused as the CLI refuses them, naming the field, before anything is written.
``open_maps`` gives one DataTree node per scene with the archive scene's grid, CRS and
transform, probabilities decoded to floats with NaN exactly where nothing was mapped, from
a folder or an ``s3://`` URL; anything that is not an output store is refused by name.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
from affine import Affine
from pyproj import CRS

import resflow
from resflow.archive import Archive
from resflow.errors import BackendError, ConfigError, ResflowError
from resflow.harmonise import valid_mask
from resflow.ingestion import ingest
from resflow.report import RunReport
from resflow.samples import sample_path
from resflow.store.format import PROBABILITY_SCALE
from resflow.store.writer import OutputStore
from tests.fixtures_data import SHORT_HALO
from tests.objectstore import FaultyS3

ARRAYS = ("probability", "mask", "chip_bucket")


@pytest.fixture(scope="module")
def local_maps(cropped_archive: Path, engine_gallery: Path,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunReport]:
    """The cropped archive mapped by ``resflow.run`` on the local engine: the store and report."""
    out = tmp_path_factory.mktemp("api") / "maps.zarr"
    report = resflow.run(cropped_archive, out, backend="local", gallery=engine_gallery,
                         device="cpu", partition_chips=4, window=2, halo=SHORT_HALO)
    return out, report


def stored_arrays(location: Path | str) -> dict[tuple[str, str], np.ndarray]:
    """Every scene's stored arrays, as written (uint8 and int16, not decoded)."""
    store = OutputStore.open(location)
    return {(scene, name): store.read_array(scene, name)[...]
            for scene in store.groups for name in ARRAYS}


@pytest.mark.slow
def test_local_engine_and_a_dask_client_write_the_same_maps(
        local_maps: tuple[Path, RunReport], dask_client: Any, cropped_archive: Path,
        engine_gallery: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    local_out, local_report = local_maps
    out = tmp_path / "maps.zarr"
    with caplog.at_level(logging.INFO, logger="resflow"):
        report = resflow.run(cropped_archive, out, client=dask_client, gallery=engine_gallery,
                             device="cpu", partition_chips=4, window=2, halo=SHORT_HALO,
                             plan="regrouped")
    assert isinstance(report, RunReport)
    assert (report.backend, local_report.backend) == ("dask", "local")
    assert report.config["plan"] == "regrouped"
    assert report.chips == local_report.chips > 0 and not report.errors
    assert report.cluster.details["scheduler"] == dask_client.scheduler.address
    assert f"dask dashboard: {dask_client.dashboard_link}" in caplog.messages
    expected = stored_arrays(local_out)
    got = stored_arrays(out)
    assert got.keys() == expected.keys()
    for key, array in expected.items():
        np.testing.assert_array_equal(got[key], array, err_msg=str(key))
    # the caller's cluster is used as is and left running
    assert dask_client.status == "running"
    assert dask_client.submit(sum, [1, 2]).result() == 3


@pytest.mark.parametrize(("settings", "field"), [
    ({"batch_size": 0}, "batch_size"),
    ({"plan": "fast"}, "plan"),
    ({"bach_size": 4}, "bach_size"),
    ({"dask": {"workers": 0}}, "dask.workers"),
    ({"dask": {"wokers": 2}}, "dask.wokers"),
    ({"sets": ["batch_size=4"]}, "sets"),  # a parameter of the config loader, not a setting
    ({"origin": "x"}, "origin"),
])
def test_bad_settings_are_refused_naming_the_field(settings: dict[str, Any], field: str,
                                                   cropped_archive: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "maps.zarr"
    with pytest.raises(ConfigError, match=f"field '{field}'") as refused:
        resflow.run(cropped_archive, out, **settings)
    assert "command line" not in str(refused.value)  # the settings are arguments here
    assert not out.exists()


def test_a_client_must_be_the_engines_session(dask_client: Any, cropped_archive: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "maps.zarr"
    with pytest.raises(BackendError, match="client: the 'local' engine cannot run on an "
                       "existing cluster"):
        resflow.run(cropped_archive, out, backend="local", client=dask_client)
    with pytest.raises(BackendError, match=r"runs on a pyspark.sql.SparkSession, not a "
                       r"distributed.client.Client. Fix: pass backend='dask'"):
        resflow.run(cropped_archive, out, backend="spark", client=dask_client)
    with pytest.raises(BackendError, match="unknown backend 'dusk'"):
        resflow.run(cropped_archive, out, backend="dusk")
    assert not out.exists()


def test_open_maps_gives_each_scene_on_its_archive_grid(local_maps: tuple[Path, RunReport],
                                                        cropped_archive: Path) -> None:
    out, report = local_maps
    maps = resflow.open_maps(out)
    archive = Archive.open(cropped_archive)
    groups = OutputStore.open(out).groups
    assert isinstance(maps, xr.DataTree)
    assert sorted(maps.children) == sorted(groups.values())
    assert maps.attrs["complete"] is True
    assert maps.attrs["run_report"]["summary"] == report.summary_line()
    assert maps.attrs["bucket_models"] == {"0": "mono", "1": "bucket-1", "2": "mono",
                                           "3": "mono"}
    for name, info in archive.scenes.items():
        scene = maps[groups[name]].to_dataset()
        assert scene.attrs["scene"] == name
        assert scene.probability.shape == (info.height, info.width)
        assert scene.rio.crs == CRS.from_wkt(info.crs_wkt)
        assert scene.rio.transform().almost_equals(Affine(*info.transform))
        stored = OutputStore.open(out).read_array(name, "probability")[...]
        np.testing.assert_allclose(scene.probability.values, stored / PROBABILITY_SCALE)


@pytest.mark.slow
def test_probability_is_nan_exactly_where_nothing_was_mapped(
        engine_gallery: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A SpaceNet tile whose empty third is declared nodata: those pixels are not mapped."""
    with rasterio.open(sample_path("rotterdam-ms2")) as src:
        profile, pixels = {**src.profile, "nodata": 0}, src.read()
    raster = tmp_path / "partly_empty.tif"
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(pixels)
    archive = tmp_path / "archive.zarr"
    assert ingest([raster], archive).ok
    capfd.readouterr()
    report = resflow.run(archive, tmp_path / "maps.zarr", backend="local",
                         gallery=engine_gallery, device="cpu")
    assert capfd.readouterr() == ("", "")  # no bars, no lines: a library call is quiet
    assert report.empty_chips > 0 and not report.errors
    (name, info), = Archive.open(archive).scenes.items()
    not_mapped = ~valid_mask(Archive.open(archive).image(name)[...], info.nodata)
    assert 0.2 < not_mapped.mean() < 0.5
    scene = resflow.open_maps(tmp_path / "maps.zarr")[name]
    probability = scene.probability.values
    np.testing.assert_array_equal(np.isnan(probability), not_mapped)
    np.testing.assert_array_equal(np.isnan(scene.mask.values), not_mapped)
    assert np.nanmin(probability) >= 0.0 and np.nanmax(probability) <= 1.0


def test_open_maps_reads_object_storage_as_a_folder(local_maps: tuple[Path, RunReport],
                                                    s3: FaultyS3) -> None:
    import fsspec

    out, _ = local_maps
    bucket = f"resflow-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    fsspec.filesystem("s3", skip_instance_cache=True).put(str(out), f"{bucket}/maps.zarr",
                                                         recursive=True)
    from_s3 = resflow.open_maps(f"s3://{bucket}/maps.zarr")
    xr.testing.assert_identical(from_s3, resflow.open_maps(out))


def test_open_maps_refuses_what_is_not_an_output(cropped_archive: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nothing.zarr"
    with pytest.raises(ResflowError, match=f"{missing}: no output store is there"):
        resflow.open_maps(missing)
    with pytest.raises(ResflowError, match=f"{cropped_archive}: not a resflow output store"):
        resflow.open_maps(cropped_archive)


def test_import_resflow_loads_no_engine_torch_or_xarray() -> None:
    """``resflow.run`` and ``resflow.open_maps`` are imported on first use, and using them
    by name imports nothing heavy until they are called."""
    script = textwrap.dedent("""
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dask", "distributed", "pyspark", "torch", "xarray"):
                    raise ImportError(f"{name} is blocked for this test")
                return None

        sys.meta_path.insert(0, Blocker())
        import resflow
        from resflow import open_maps, run

        assert {"run", "open_maps"} <= set(dir(resflow))
        assert run.__module__ == open_maps.__module__ == "resflow.api.mapping"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")

