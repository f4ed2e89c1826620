"""``resflow predict`` and ``resflow.predict``: a GeoTIFF to maps, COGs, footprints and STAC
in one folder, with the maps of ``ingest`` then ``run`` byte for byte; the archive kept only
where asked; ``--resume`` finishing what an interrupted job left and refusing other
sources; refusals that leave nothing behind.

The inputs are crops of the bundled Atlanta sample (4 chips, and 1 chip each), mapped by the
bundled gallery on the local engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import zarr
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import box
from typer.testing import CliRunner

import resflow
from resflow.archive import Archive
from resflow.cli import app
from resflow.errors import ConfigError, InputError
from resflow.ingestion import ingest
from resflow.samples import sample_path

runner = CliRunner()
ARRAYS = ("probability", "mask", "chip_bucket")
RUN = ["--backend", "local", "--device", "cpu"]


def crop(path: Path, left: int, top: int, size: int) -> Path:
    """A ``size`` x ``size`` pixel window of the Atlanta sample (0.5 m) as a GeoTIFF."""
    with rasterio.open(sample_path("atlanta-pan")) as src:
        profile = {**src.profile, "width": size, "height": size,
                   "transform": src.transform @ Affine.translation(left, top)}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=Window(left, top, size, size)))
    return path


def stored(maps: Path) -> dict[tuple[str, str], np.ndarray]:
    """Every scene's stored arrays, as written (not decoded)."""
    root = zarr.open_group(maps, mode="r")
    return {(scene, name): root[scene][name][...]
            for scene in root.attrs["scenes"].values() for name in ARRAYS}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 x 300 pixels of the Atlanta sample: 4 chips at the working 0.3 m."""
    return crop(tmp_path_factory.mktemp("src") / "atlanta.tif", 300, 300, 300)


@pytest.fixture(scope="module")
def predicted(scene: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``resflow predict`` of ``scene`` on the local engine: the folder."""
    out = tmp_path_factory.mktemp("predict") / "buildings"
    result = runner.invoke(app, ["predict", str(scene), "--out", str(out), *RUN])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_maps_equal_ingest_then_run(predicted: Path, scene: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.zarr"
    assert ingest([scene], archive).ingested == ["atlanta"]
    resflow.run(archive, tmp_path / "maps.zarr", backend="local", device="cpu", stac=False)
    ours, theirs = stored(predicted / "maps.zarr"), stored(tmp_path / "maps.zarr")
    assert ours.keys() == theirs.keys() and len(ours) == len(ARRAYS)
    for key, values in theirs.items():
        np.testing.assert_array_equal(ours[key], values, err_msg=str(key))
    assert not (predicted / "archive.zarr").exists()  # removed after success by default
    assert sorted(p.name for p in predicted.iterdir()) == [
        "cogs", "footprints.gpkg", "maps.zarr", "predict.json", "stac"]


@pytest.mark.slow
def test_cogs_footprints_and_stac_open_georeferenced(predicted: Path, scene: Path,
                                                     tmp_path: Path) -> None:
    info = Archive.open(ingest([scene], tmp_path / "a.zarr").path).scenes["atlanta"]
    cogs = sorted((predicted / "cogs").glob("*.tif"))
    assert [c.name for c in cogs] == ["atlanta_mask.tif", "atlanta_probability.tif"]
    for cog in cogs:
        with rasterio.open(cog) as ds:
            assert ds.crs == rasterio.crs.CRS.from_wkt(info.crs_wkt)
            assert ds.transform == rasterio.Affine(*info.transform)
            assert (ds.height, ds.width) == (info.height, info.width)
    buildings = gpd.read_file(predicted / "footprints.gpkg")
    assert len(buildings) > 0 and buildings.crs.to_epsg() == 4326
    with rasterio.open(scene) as src:
        bounds = gpd.GeoSeries([box(*src.bounds)], crs=src.crs).to_crs(4326).iloc[0]
    assert buildings.geometry.within(bounds.buffer(1e-6)).all()
    collection = pystac.Collection.from_file(str(predicted / "stac" / "collection.json"))
    (item,) = collection.get_items(recursive=True)
    hrefs = [Path(asset.get_absolute_href()) for asset in item.assets.values()]
    assert set(cogs) <= set(hrefs) and all(href.exists() for href in hrefs)


@pytest.mark.slow
def test_resume_after_a_finished_job_does_nothing(predicted: Path, scene: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in predicted.rglob("*")}
    result = runner.invoke(app, ["predict", str(scene), "--out", str(predicted), *RUN,
                                   "--resume"])
    assert result.exit_code == 0 and "nothing to do" in result.stdout, result.output
    assert {p: p.stat().st_mtime_ns for p in predicted.rglob("*")} == before


@pytest.mark.slow
def test_a_finished_folder_is_refused_without_resume_and_other_sources_on_resume(
        predicted: Path, scene: Path, tmp_path: Path) -> None:
    again = runner.invoke(app, ["predict", str(scene), "--out", str(predicted), *RUN])
    assert again.exit_code == 2 and "--resume" in again.stderr, again.output
    other = crop(tmp_path / "other.tif", 0, 0, 150)
    refused = runner.invoke(app, ["predict", str(other), "--out", str(predicted), *RUN,
                                    "--resume"])
    assert refused.exit_code == 2, refused.output
    assert "other sources" in refused.stderr and str(scene) in refused.stderr


@pytest.mark.slow
def test_resume_reuses_the_archive_and_the_finished_chips_and_overwrite_starts_again(
        tmp_path: Path) -> None:
    sources = [crop(tmp_path / f"{name}.tif", left, 0, 150)
               for name, left in (("west", 0), ("east", 450))]
    out = tmp_path / "buildings"
    done = resflow.predict(sources, out, backend="local", device="cpu", keep_archive=True)
    assert done.archive == out / "archive.zarr" and done.archive.exists()
    assert not done.refused and done.report.chips == 2
    finished = stored(out / "maps.zarr")
    # An interrupted job: the east scene not written yet, the store not complete.
    root = zarr.open_group(out / "maps.zarr", mode="r+")
    root.attrs["complete"] = False
    root["east"]["probability"][...] = 255
    root["east"]["chip_bucket"][...] = -2
    west = {p: p.stat().st_mtime_ns for p in (out / "maps.zarr" / "west").rglob("*")}
    archive = {p: p.stat().st_mtime_ns for p in done.archive.rglob("*")}
    result = runner.invoke(app, ["predict", *map(str, sources), "--out", str(out), *RUN,
                                 "--resume", "--keep-archive"])
    assert result.exit_code == 0, result.output
    assert stored(out / "maps.zarr").keys() == finished.keys()
    for key, values in stored(out / "maps.zarr").items():
        np.testing.assert_array_equal(values, finished[key], err_msg=str(key))
    assert {p: p.stat().st_mtime_ns for p in (out / "maps.zarr" / "west").rglob("*")} == west
    assert {p: p.stat().st_mtime_ns for p in done.archive.rglob("*")} == archive
    # --overwrite starts again: only the new sources' files are left
    west_only = runner.invoke(app, ["predict", str(sources[0]), "--out", str(out), *RUN,
                                    "--overwrite"])
    assert west_only.exit_code == 0, west_only.output
    assert {scene for scene, _ in stored(out / "maps.zarr")} == {"west"}
    assert sorted(p.name for p in (out / "cogs").iterdir()) == [
        "west_mask.tif", "west_mask.tif.aux.xml", "west_probability.tif"]
    assert not (out / "archive.zarr").exists()


def test_a_missing_file_is_named_and_leaves_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nothere.tif"
    out = tmp_path / "buildings"
    result = runner.invoke(app, ["predict", str(missing), "--out", str(out), *RUN])
    assert result.exit_code == 2, result.output
    assert f"error: {missing}: the file does not exist" in result.stderr
    assert not out.exists()
    out.mkdir()  # an empty folder that was there stays, empty
    with pytest.raises(InputError, match="the file does not exist"):
        resflow.predict([missing], out, backend="local")
    assert out.is_dir() and not any(out.iterdir())


def test_a_folder_of_other_files_is_never_written(tmp_path: Path) -> None:
    out = tmp_path / "buildings"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["predict", str(sample_path("atlanta-pan")), "--out",
                                   str(out), *RUN])
    assert result.exit_code == 2 and "not a resflow predict output" in result.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_settings_are_refused_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "buildings"
    with pytest.raises(ConfigError, match="field 'cog_dir'"):
        resflow.predict([sample_path("atlanta-pan")], out, cog_dir=tmp_path / "cogs")
    bad = runner.invoke(app, ["predict", str(sample_path("atlanta-pan")), "--out",
                                str(out), "--threshold", "2"])
    assert bad.exit_code == 2 and "threshold" in bad.stderr, bad.output
    assert not out.exists()


def test_print_config_shows_the_folders_layout(tmp_path: Path) -> None:
    out = tmp_path / "buildings"
    result = runner.invoke(app, ["predict", "a.tif", "--out", str(out), "--set",
                                   "threshold=0.6", "--print-config"])
    assert result.exit_code == 0, result.output
    assert f"archive: {out / 'archive.zarr'}" in result.stdout
    assert f"cog_dir: {out / 'cogs'}" in result.stdout and "threshold: 0.6" in result.stdout
    assert not out.exists()


def test_the_record_names_the_sources(tmp_path: Path) -> None:
    from resflow.prediction import PredictFolder, abandon, start

    folder = PredictFolder.at(tmp_path / "buildings")
    job = start(folder, ["a.tif", "s3://bucket/b.tif"], resume=False, overwrite=False)
    record = json.loads(folder.record.read_text())
    assert record["sources"] == [str(Path("a.tif").absolute()), "s3://bucket/b.tif"]
    abandon(job)
    assert not folder.path.exists()
    with pytest.raises(ConfigError, match="local folder"):
        PredictFolder.at("s3://bucket/buildings")
