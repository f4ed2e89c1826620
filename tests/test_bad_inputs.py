"""Each bad input gives one message naming the file, the problem and the fix; the rest ingest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.windows
from pyproj import CRS
from rasterio.transform import from_origin
from typer.testing import CliRunner

import resflow
from resflow.archive import Archive
from resflow.cli import app
from resflow.config import IngestConfig, RunConfig
from resflow.errors import InputError, ResflowError
from resflow.ingestion import ingest
from resflow.preflight import check_run
from resflow.samples import sample_path
from resflow.store.lock import StoreLocked
from resflow.store.writer import OutputStore
from resflow.training.labels import load_labels, rasterise

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


def _paletted(path: Path) -> Path:
    """Palette indices, not colours: a 1-band GeoTIFF with a colour table."""
    _write(path, dtype="uint8")
    with rasterio.open(path, "r+") as ds:
        ds.write_colormap(1, {0: (0, 0, 0, 255), 1: (230, 40, 30, 255)})
    return path


def _other_format(path: Path) -> Path:
    """A well-formed, georeferenced raster in a format ingest does not open (PCIDSK), named
    like a GeoTIFF."""
    profile = {"driver": "PCIDSK", "width": 8, "height": 8, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32631", "transform": UTM_GRID}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.ones((3, 8, 8), dtype="uint8"))
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
    "paletted": (lambda d: _paletted(d / "classes.tif"), "band 1 is paletted"),
    "other-format": (lambda d: _other_format(d / "dressed.tif"),
                     "not a readable raster in a format ingest opens"),
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


DISK_FULL = """
import resource, signal, sys
from typer.testing import CliRunner
from resflow.cli import app
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[3])  # no file over this many bytes: a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
result = CliRunner().invoke(app, ["ingest", sys.argv[2], "--out", sys.argv[1]])
print(result.exit_code, result.stderr, sep="\\n")
"""


@pytest.mark.slow
def test_a_full_disk_stops_ingest_naming_the_archive_and_keeps_its_scenes(
        tmp_path: Path) -> None:
    """A write the archive's disk refuses (here: files capped at 32 KiB, as a full disk
    would) is the archive's problem, not the source's: the ingest stops with exit code 2
    naming the archive and the fix, the scenes already there stay, and once there is room
    the same command adds the scene."""
    out = tmp_path / "a.zarr"
    assert ingest([sample_path(GOOD)], out).ingested == ["ms1"]
    pan = str(sample_path("atlanta-pan"))
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(out), pan, "32768"],
                          capture_output=True, text=True, timeout=300)
    code, _, message = done.stdout.partition("\n")
    assert code == "2", done.stdout + done.stderr[-2000:]
    assert f"{out}: scenes/" in message and "writing the archive failed" in message
    assert "truncated or corrupt" not in message and "free space" in message
    assert list(Archive.open(out).scenes) == ["ms1"]
    again = ingest([pan, sample_path(GOOD)], out)
    assert again.skipped == ["ms1"] and len(again.ingested) == 1 and not again.refused
    new = tmp_path / "new.zarr"  # not even the archive's own metadata fits: nothing is left
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(new), pan, "8"],
                          capture_output=True, text=True, timeout=300)
    code, _, message = done.stdout.partition("\n")
    assert code == "2" and f"{new}: the archive cannot be created or written" in message
    assert not new.exists()


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


# --- outputs: nothing lost to a mixed or a concurrent run -----------------------------------

def _scene(folder: Path, seed: int) -> Path:
    """A 300 x 300 RGB GeoTIFF at 0.3 m named ``scene.tif`` (2 x 2 chips of 256), pixels
    drawn from ``seed``: two seeds give two images on one grid under one scene name."""
    folder.mkdir()
    path = folder / "scene.tif"
    pixels = np.random.default_rng(seed).integers(1, 255, (3, 300, 300), dtype="uint8")
    with rasterio.open(path, "w", driver="GTiff", width=300, height=300, count=3,
                       dtype="uint8", crs="EPSG:32631",
                       transform=from_origin(500000, 5700000, 0.3, 0.3)) as ds:
        ds.write(pixels)
    return path


@pytest.fixture
def two_archives(tmp_path: Path) -> tuple[Archive, Archive]:
    """Two archives with the same scene name and grid but different source images."""
    archives = []
    for seed in (1, 2):
        out = tmp_path / f"archive{seed}.zarr"
        assert ingest([_scene(tmp_path / f"src{seed}", seed)], out,
                      IngestConfig(chip=256)).ok
        archives.append(Archive.open(out))
    return archives[0], archives[1]


def test_resume_from_another_archive_with_the_same_scenes_is_refused(
        two_archives: tuple[Archive, Archive], tmp_path: Path) -> None:
    first, other = two_archives
    assert first.scenes.keys() == other.scenes.keys()
    out = tmp_path / "maps.zarr"
    store = OutputStore.create(out, first, run_config={})
    store.record_unfinished({})
    assert OutputStore.check_target(out, first, resume=True, run_config={}) == "resume"
    with pytest.raises(ResflowError, match="started from another source for scene 'scene'"
                       ) as refused:
        OutputStore.create(out, other, resume=True, run_config={})
    assert "--overwrite" in refused.value.fix


HOLD = """
import sys
import resflow
from resflow.archive import Archive
from resflow.store.writer import OutputStore
OutputStore.create(sys.argv[1], Archive.open(sys.argv[2]), run_config={})
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_concurrent_overwrite_is_refused_while_a_run_writes(
        two_archives: tuple[Archive, Archive], tmp_path: Path) -> None:
    archive = two_archives[0]
    out = tmp_path / "maps.zarr"
    writer = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(archive.path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "holding"
        for resume, overwrite in ((False, True), (True, False)):
            with pytest.raises(StoreLocked, match=f"process {writer.pid} on "):
                OutputStore.check_target(out, archive, overwrite=overwrite, resume=resume,
                                         run_config={})  # what `resflow run` checks first
            with pytest.raises(StoreLocked, match=f"process {writer.pid} on "):
                OutputStore.create(out, archive, overwrite=overwrite, resume=resume,
                                   run_config={})
        assert (out / "zarr.json").is_file()  # the first run's output is untouched
    finally:
        writer.kill()  # as kill -9 would: its lock file stays, naming a dead process
        writer.wait()
    assert (tmp_path / "maps.zarr.lock").is_file()
    store = OutputStore.create(out, archive, resume=True, run_config={})  # taken over
    store.record_unfinished({})
    assert not (tmp_path / "maps.zarr.lock").exists()


def test_a_run_whose_exports_would_replace_files_is_refused_before_any_work(
        two_archives: tuple[Archive, Archive], tmp_path: Path) -> None:
    """The footprints file, or a COG named after one of the archive's scenes, already there:
    the run is refused before it starts, naming the file and --overwrite, and leaves it."""
    archive = two_archives[0]
    footprints, cogs = tmp_path / "buildings.gpkg", tmp_path / "cogs"
    cogs.mkdir()
    footprints.write_bytes(b"an earlier export")
    (cogs / "scene_mask.tif").write_bytes(b"an earlier COG")
    base = {"archive": str(archive.path), "out": str(tmp_path / "maps.zarr")}
    for exports, existing in (({"footprints": str(footprints)}, footprints),
                              ({"cog_dir": str(cogs)}, cogs / "scene_mask.tif")):
        with pytest.raises(ResflowError, match="already exists and would be replaced") as err:
            check_run(RunConfig(**base, **exports))
        assert err.value.where == str(existing) and "--overwrite" in err.value.fix
        check_run(RunConfig(**base, **exports, overwrite=True))
    assert footprints.read_bytes() == b"an earlier export" and not (tmp_path / "maps.zarr").exists()


def test_a_deleted_archive_chunk_fails_its_chips_and_resume_maps_them(
        two_archives: tuple[Archive, Archive], tmp_path: Path) -> None:
    archive = two_archives[0]  # RGB without nodata: a chunk's fill value would look valid
    chunk = archive.path / "scenes" / "scene" / "image" / "c" / "0" / "1" / "1"
    kept = chunk.read_bytes()
    chunk.unlink()
    out = tmp_path / "maps.zarr"
    report = resflow.run(archive.path, out, backend="local", device="cpu")
    failed = [e for e in report.errors if "chunk(s) holding its pixels are missing" in
              e["problem"]]
    assert failed and all("scenes/scene/image/c/0/1/1" in e["problem"] for e in failed)
    assert ("scene", 1, 1) not in OutputStore.open(out).done_chips()
    assert not OutputStore.open(out).complete
    chunk.write_bytes(kept)
    report = resflow.run(archive.path, out, backend="local", device="cpu", resume=True)
    assert not report.errors and OutputStore.open(out).complete


def test_a_lock_left_by_a_run_on_another_host_is_refused_until_removed(
        two_archives: tuple[Archive, Archive], tmp_path: Path) -> None:
    archive, out = two_archives[0], tmp_path / "maps.zarr"
    left = tmp_path / "maps.zarr.lock"
    left.write_text(json.dumps({"pid": 1, "host": "elsewhere.example",
                                "started_utc": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(StoreLocked, match=r"process 1 on elsewhere\.example") as refused:
        OutputStore.create(out, archive, run_config={})
    assert str(left) in refused.value.fix and not out.exists()
    left.unlink()
    OutputStore.create(out, archive, run_config={}).record_unfinished({})


# --- labels ---------------------------------------------------------------------------------

def test_a_label_ring_that_is_not_closed_names_the_file_and_feature(tmp_path: Path) -> None:
    square = [[500000, 5700000], [500010, 5700000], [500010, 5699990], [500000, 5699990]]
    features = [{"type": "Feature", "properties": {},
                 "geometry": {"type": "Polygon", "coordinates": [ring]}}
                for ring in ([*square, square[0]], square)]  # the second never closes
    path = tmp_path / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features, "crs": {
        "type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32631"}}}))
    with pytest.warns(RuntimeWarning, match="Non closed ring"), \
            pytest.raises(InputError, match=r"labels.geojson: layer 'labels', feature 1: the "
                          "geometry cannot be built") as refused:
        load_labels(path)
    assert "close the feature's rings" in refused.value.fix


def test_a_mask_larger_than_memory_is_burnt_window_by_window(tmp_path: Path) -> None:
    """A 200 000 x 200 000 mask (40 GB as pixels, a few KB as a sparse GeoTIFF) labels a
    window without being read whole."""
    path = tmp_path / "mask.tif"
    grid = from_origin(500000, 5700000, 0.5, 0.5)
    with rasterio.open(path, "w", driver="GTiff", width=200_000, height=200_000, count=1,
                       dtype="uint8", crs="EPSG:32631", transform=grid, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate",
                       sparse_ok=True) as dst:
        block = np.zeros((256, 256), np.uint8)
        block[10:20, 30:50] = 1
        dst.write(block, 1, window=rasterio.windows.Window(512, 256, 256, 256))
    assert path.stat().st_size < 10 << 20
    ids = rasterise([load_labels(path)], CRS.from_epsg(32631).to_wkt(), tuple(grid)[:6],
                    (256, 512, 256, 256))
    assert ids.max() == 1 and np.count_nonzero(ids) == 10 * 20 and ids[10, 30] == 1


# --- archives whose metadata was damaged or edited -------------------------------------------

def _edit_attrs(scene: Path, edit) -> None:
    document = json.loads((scene / "zarr.json").read_text())
    edit(document["attributes"])
    (scene / "zarr.json").write_text(json.dumps(document))


DAMAGED = {
    "malformed zarr.json": (lambda scene: (scene / "zarr.json").write_text(
        (scene / "zarr.json").read_text()[:-20]), "scenes/scene/zarr.json",
        "metadata is not valid"),
    "height edited": (lambda scene: _edit_attrs(scene, lambda a: a.update(height=600)),
                      "scenes/scene/image/zarr.json", "attributes say (3, 600, 300)"),
    "valid_fraction deleted": (lambda scene: shutil.rmtree(scene / "valid_fraction"),
                               "scenes/scene/valid_fraction/zarr.json", "cannot be opened"),
    "attribute removed": (lambda scene: _edit_attrs(scene, lambda a: a.pop("chip")),
                          "scenes/scene/zarr.json", "attribute 'chip' is missing"),
}


@pytest.fixture(params=sorted(DAMAGED))
def damaged(request: pytest.FixtureRequest, two_archives: tuple[Archive, Archive],
            tmp_path: Path) -> tuple[Path, str, str]:
    """A copy of an archive damaged one way: the copy, the file a refusal must name, and
    what the refusal must say."""
    edit, where, problem = DAMAGED[request.param]
    archive = tmp_path / "damaged.zarr"
    shutil.copytree(two_archives[0].path, archive)
    edit(archive / "scenes" / "scene")
    return archive, str(archive / where), problem


def test_a_damaged_archive_is_refused_by_file_before_any_work(
        damaged: tuple[Path, str, str], tmp_path: Path) -> None:
    archive, where, problem = damaged
    out = tmp_path / "maps.zarr"
    with pytest.raises(InputError) as refused:
        resflow.run(archive, out, backend="local", device="cpu")
    assert refused.value.where == where and problem in refused.value.problem
    assert "ingest the source again" in refused.value.fix
    assert not out.exists()


def test_training_on_a_damaged_archive_is_refused_by_file_before_any_work(
        damaged: tuple[Path, str, str], tmp_path: Path) -> None:
    from resflow.training.train import train

    archive, where, problem = damaged
    with pytest.raises(InputError) as refused:
        train(archive, [sample_path("atlanta-labels")], tmp_path / "gallery")
    assert refused.value.where == where and problem in refused.value.problem
    assert not (tmp_path / "gallery").exists()


def test_ingest_onto_a_file_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    result = CliRunner().invoke(app, ["ingest", str(sample_path(GOOD)), "--out", str(out)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{out}: the archive location is a file" in result.stderr
    assert out.read_text() == "mine"


def test_ingest_into_a_folder_that_is_not_an_archive_is_refused_and_left_alone(
        tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"mine")
    result = CliRunner().invoke(app, ["ingest", str(sample_path(GOOD)), "--out", str(out)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{out}: the folder holds files but is not an archive" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ingest([sample_path(GOOD)], empty).ingested == ["ms1"]  # an empty folder will do


def test_an_output_where_nothing_can_be_written_is_refused_by_name(
        two_archives: tuple[Archive, Archive]) -> None:
    """/proc takes no new folders, even from root: the run is refused naming the output."""
    out = Path("/proc/resflow-test/maps.zarr")
    with pytest.raises(ResflowError, match="the output cannot be written here") as refused:
        OutputStore.create(out, two_archives[0], run_config={})
    assert refused.value.where == str(out) and "--out" in refused.value.fix
