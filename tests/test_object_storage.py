"""Archives, sources and outputs in object storage: a real S3 server on loopback (moto).

Rasters are read in place from ``s3://`` URLs at ingest, the archive and the output store
live in the bucket, the Dask and Spark engines map from and to it, transient errors are
retried and counted, a run that could not write resumes to the same bytes as a clean run,
missing objects are named by URL, and credentials never reach a message or a report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from resflow import storage
from resflow.archive import Archive
from resflow.cli import app
from resflow.config import IngestConfig, RunConfig
from resflow.errors import InputError
from resflow.graph import run_graph
from resflow.ingestion import ingest
from resflow.local import LocalExecutor
from resflow.store import lock, object_lock
from resflow.store.lock import StoreLocked
from resflow.store.writer import OutputStore
from tests.fixtures_data import ATLANTA_LABELS, SHORT_HALO, TINY_TRAINING
from tests.fixtures_engines import build_engine
from tests.fixtures_storage import SECRET
from tests.objectstore import FaultyS3

ARRAYS = ("probability", "mask", "chip_bucket")
RUN = {"partition_chips": 4, "window": 2, "halo": SHORT_HALO}
"""Partitions of one 2 x 2-chip window: each 3 x 3-chip scene is four tasks, so a run can be
stopped part-way."""
RUN_SETS = [item for key, value in RUN.items() for item in ("--set", f"{key}={value}")]
""":data:`RUN` as ``resflow run`` options."""


@pytest.fixture(scope="module")
def bucket(s3: FaultyS3, cropped_sources: Path) -> str:
    """A fresh bucket holding the cropped sample GeoTIFFs under ``src/``."""
    import fsspec

    name = f"resflow-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for source in cropped_sources.iterdir():
        fs.put(str(source), f"{name}/src/{source.name}")
    return name


@pytest.fixture(scope="module")
def s3_archive(bucket: str, cropped_sources: Path) -> str:
    url = f"s3://{bucket}/archive.zarr"
    result = ingest([f"s3://{bucket}/src/"], url, IngestConfig(chip=256))
    assert result.ok and len(result.ingested) == len(list(cropped_sources.iterdir())), result
    return url


@pytest.fixture(scope="module")
def reference(engine_gallery: Path, cropped_sources: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same rasters ingested and mapped on local disk: what every object-storage run
    must equal."""
    folder = tmp_path_factory.mktemp("s3-reference")
    archive = folder / "archive.zarr"
    result = ingest(sorted(cropped_sources.iterdir()), archive, IngestConfig(chip=256))
    assert result.ok, result
    out = folder / "maps.zarr"
    run_graph(RunConfig(archive=str(archive), out=str(out), gallery=engine_gallery,
                        backend="local", **RUN),
              LocalExecutor(gpus=[], progress=False))
    return out


def arrays(location: str | Path) -> dict[tuple[str, str], np.ndarray]:
    store = OutputStore.open(location)
    return {(scene, name): store.read_array(scene, name)[...]
            for scene in store.groups for name in ARRAYS}


def assert_same_maps(location: str | Path, reference: Path) -> None:
    got, want = arrays(location), arrays(reference)
    assert got.keys() == want.keys()
    for key, array in got.items():
        assert np.array_equal(array, want[key]), f"{location}: {key} differs"


def objects(location: str | Path) -> dict[str, bytes]:
    """Every map and ledger object of a store, by key: equal bytes mean equal stores."""
    fs, root = storage.filesystem(storage.normalise(location))
    keys = [k for k in fs.find(root) if any(f"/{a}/c/" in k for a in ARRAYS)]
    return {k[len(root):]: fs.cat_file(k) for k in keys}


def test_ingest_reads_rasters_in_place_from_urls(s3_archive: str, reference: Path) -> None:
    remote = Archive.open(s3_archive)
    local = Archive.open(reference.parent / "archive.zarr")
    assert remote.scenes.keys() == local.scenes.keys()
    for name, info in remote.scenes.items():
        assert info.sha256 == local.scenes[name].sha256
        assert info.source.startswith("s3://")
        np.testing.assert_array_equal(remote.image(name)[...], local.image(name)[...])


@pytest.mark.parametrize("backend", ["dask", "spark"])
def test_engines_map_from_and_to_object_storage(backend: str, request: pytest.FixtureRequest,
                                                s3_archive: str, bucket: str,
                                                engine_gallery: Path, reference: Path) -> None:
    out = f"s3://{bucket}/maps-{backend}.zarr"
    config = RunConfig(archive=s3_archive, out=out, gallery=engine_gallery, backend=backend,
                       **RUN)
    with build_engine(backend, request) as executor:
        result = run_graph(config, executor)
    assert not result.failures and result.report.store_retries == 0
    assert result.report.out == out and OutputStore.open(out).complete
    assert_same_maps(out, reference)
    assert objects(out) == objects(reference)
    ds = xr.open_zarr(out, group="ms1")  # readers open the bucket as they open a folder
    assert ds.probability.dtype == np.float64 and float(ds.probability.max()) <= 1.0


def test_transient_errors_are_retried_and_counted(faults: FaultyS3, s3_archive: str,
                                                  bucket: str, engine_gallery: Path,
                                                  reference: Path) -> None:
    out = f"s3://{bucket}/maps-flaky.zarr"
    faults.fail("PUT", r"/probability/c/", 3)  # throttled writes (503 SlowDown)
    faults.fail("GET", r"/archive\.zarr/scenes/.*/image/c/", 2, status=500)  # reads
    config = RunConfig(archive=s3_archive, out=out, gallery=engine_gallery, backend="local",
                       **RUN)
    result = run_graph(config, LocalExecutor(gpus=[], progress=False))
    assert faults.injected == 5
    # a retry is one read or write tried again; chunks fetched together fail together
    retries = result.report.store_retries
    assert 2 <= retries <= 5
    assert f"({retries} storage retries)" in result.report.summary_line()
    assert not result.failures and OutputStore.open(out).complete
    assert_same_maps(out, reference)


def test_gdal_reads_of_urls_have_time_limits_the_environment_may_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "5")  # GDAL reads it from the environment
    options = storage.gdal_options("https://example.org/scene.tif")
    assert options == {"GDAL_HTTP_CONNECTTIMEOUT": "10", "GDAL_HTTP_MAX_RETRY": "2",
                       "GDAL_HTTP_RETRY_DELAY": "1"}
    assert storage.gdal_options(Path("scene.tif")) == {}


def _uploaded(bucket: str, folder: str, cropped_sources: Path) -> tuple[str, str]:
    """A cropped source under a key of its own (GDAL caches what it read of a URL): its URL
    and the pattern of its object's path."""
    import fsspec

    source = min(cropped_sources.iterdir())
    url = f"s3://{bucket}/{folder}/{source.name}"
    fsspec.filesystem("s3", skip_instance_cache=True).put(str(source), url)
    return url, rf"/{folder}/{source.name}$"


def test_a_stalled_raster_read_is_abandoned_and_tried_again(
        faults: FaultyS3, bucket: str, cropped_sources: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # GDAL's own variable wins over resflow's 60 s, so the stall ends within a second
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    url, key = _uploaded(bucket, "stalled", cropped_sources)
    release = faults.hold("GET", key, 1, agent="GDAL/")  # GDAL's first read
    result = ingest([url], tmp_path / "a.zarr", IngestConfig(chip=256))
    assert result.ok and len(result.ingested) == 1, result
    assert faults.injected == 1 and faults.in_flight == 1  # ingest went on without its answer
    release.set()
    assert wait_for(faults.quiet, within_s=30)


def test_a_raster_whose_server_never_answers_is_refused_naming_that_cause(
        faults: FaultyS3, bucket: str, cropped_sources: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    url, key = _uploaded(bucket, "unanswered", cropped_sources)
    faults.hold("GET", key, 1, agent="GDAL/")  # released when the test's faults are cleared
    result = ingest([url], tmp_path / "a.zarr", IngestConfig(chip=256))
    (refusal,) = result.refused
    assert refusal["source"] == url and "the server stopped answering" in refusal["fix"]
    assert "GDAL_HTTP_TIMEOUT" in refusal["fix"]


def test_a_run_that_could_not_write_resumes_to_the_same_bytes(
        faults: FaultyS3, request: pytest.FixtureRequest, s3_archive: str, bucket: str,
        engine_gallery: Path, reference: Path) -> None:
    """Writes of one shard are refused (403) on every try: the run finishes the rest, is
    not complete, and ``--resume`` on Dask rewrites just that shard, to the bytes of a
    clean run."""
    out = f"s3://{bucket}/maps-resumed.zarr"
    faults.fail("PUT", r"/ms1/mask/c/0/0$", 1000, status=403)
    config = RunConfig(archive=s3_archive, out=out, gallery=engine_gallery, backend="dask",
                       **RUN)
    with build_engine("dask", request) as executor:
        first = run_graph(config, executor)
    assert first.failures and all("writing its shard failed" in f.problem
                                  for f in first.failures)
    assert {f.ref.scene for f in first.failures} == {"ms1"}
    assert not OutputStore.open(out).complete
    faults.clear()
    with build_engine("dask", request) as executor:
        resumed = run_graph(config.model_copy(update={"resume": True}), executor)
    assert resumed.report.chips == len(first.failures) and not resumed.failures
    assert OutputStore.open(out).complete
    assert objects(out) == objects(reference)


def test_missing_objects_are_named_by_their_url(s3: FaultyS3, bucket: str,
                                                tmp_path: Path) -> None:
    missing = f"s3://{bucket}/no-such-scene.tif"
    result = ingest([missing], tmp_path / "a.zarr")
    (refusal,) = result.refused
    assert refusal["source"] == missing and "no object" in refusal["problem"]
    with pytest.raises(InputError, match=f"s3://{bucket}/nothing.zarr: the archive does not"):
        Archive.open(f"s3://{bucket}/nothing.zarr")


def test_credentials_never_reach_messages_or_reports(s3_archive: str, bucket: str,
                                                     engine_gallery: Path) -> None:
    out = f"s3://{bucket}/maps-cli.zarr"
    done = CliRunner().invoke(app, ["run", s3_archive, "--out", out, "--backend", "local",
                                    "--gallery", str(engine_gallery), *RUN_SETS])
    assert done.exit_code == 0, done.output
    assert out in done.output
    report = storage.read_bytes(storage.join(out, "run_report.json")).decode()
    root = storage.read_bytes(storage.join(out, "zarr.json")).decode()
    for text in (done.output, report, root):
        assert SECRET not in text
    assert json.loads(report)["config"]["out"] == out


def test_a_gallery_in_the_bucket_is_read_through_a_verified_local_copy(
        s3_archive: str, bucket: str, engine_gallery: Path, reference: Path,
        tmp_path: Path) -> None:
    """Every process reads the gallery from a local copy keyed by its manifest: the maps are
    those of the same gallery on disk, and a changed manifest is fetched again."""
    import fsspec

    from resflow.inference.caches import gallery_folder

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.put(str(engine_gallery), f"{bucket}/gallery", recursive=True)
    url = f"s3://{bucket}/gallery"
    copy = gallery_folder(url)
    assert copy != engine_gallery and (copy / "manifest.json").read_bytes() == \
        (engine_gallery / "manifest.json").read_bytes()
    out = f"s3://{bucket}/maps-gallery-url.zarr"
    run_graph(RunConfig(archive=s3_archive, out=out, gallery=url, backend="local",
                        **RUN), LocalExecutor(gpus=[], progress=False))
    assert_same_maps(out, reference)
    assert gallery_folder(url) == copy  # the same manifest: the same copy, not fetched again


def test_train_and_gallery_show_read_an_archive_and_a_gallery_by_url(
        bucket: str, tiny_archive: Path, tmp_path: Path) -> None:
    """``resflow train`` reads its archive from the bucket and writes the gallery to local
    disk: the same gallery files, byte for byte, as training on the archive on local disk
    with the same seed (training is deterministic, wherever its inputs live). ``resflow
    gallery show`` reads that gallery back from the bucket, prints its test scores and draws
    its mosaic."""
    import fsspec

    from resflow.training.train import train

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.put(str(tiny_archive), f"{bucket}/tiny.zarr", recursive=True)
    archive = f"s3://{bucket}/tiny.zarr"
    sets = [item for key, value in TINY_TRAINING.items() for item in ("--set", f"{key}={value}")]
    runner = CliRunner()
    trained = runner.invoke(app, ["train", archive, "--labels", str(ATLANTA_LABELS), "--out",
                                  str(tmp_path / "gallery"), *sets])
    assert trained.exit_code == 0, trained.output
    manifest = json.loads((tmp_path / "gallery" / "manifest.json").read_text())
    assert manifest["data"]["archive"] == archive
    local = train(tiny_archive, [ATLANTA_LABELS], tmp_path / "local", seed=0, **TINY_TRAINING)
    assert manifest["files"] == local.manifest["files"]
    assert manifest["buckets"] == local.manifest["buckets"]
    fs.put(str(tmp_path / "gallery"), f"{bucket}/gallery-trained", recursive=True)
    png = tmp_path / "mosaic.png"
    shown = runner.invoke(app, ["gallery", "show", f"s3://{bucket}/gallery-trained",
                                "--archive", archive, "--out", str(png)])
    assert shown.exit_code == 0, shown.output
    assert "ensemble" in shown.output and "pixel_iou" in shown.output  # the test scores
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_killed_mid_write_resumes_to_the_same_bytes(
        faults: FaultyS3, s3_archive: str, bucket: str, engine_gallery: Path, reference: Path,
        tmp_path: Path) -> None:
    """``resflow run`` against the bucket, SIGKILLed with its writes in flight (the server
    slows them down), then ``--resume``: the store's objects are a clean run's, byte for
    byte."""
    from tests.processes import (
        BIN,
        chips_done,
        kill_tree,
        resflow,
        started,
        tree,
        wait_until,
    )

    out = f"s3://{bucket}/maps-killed.zarr"
    args = ["run", s3_archive, "--out", out, "--backend", "local", "--gallery",
            str(engine_gallery), *RUN_SETS]
    faults.fail("PUT", r"maps-killed\.zarr/.*/c/", 10_000, delay_s=0.3)
    with started([str(BIN / "resflow"), *args], tmp_path / "killed.log") as proc:
        wait_until(lambda: chips_done(out) >= 1, "a first chip", proc)
        kill_tree(tree(proc.pid))
    # requests the server held back still land: the ledger says what did, once they have
    wait_until(faults.quiet, "the held-back requests to land", timeout=60)
    done_before = chips_done(out)
    assert 0 < done_before < len(Archive.open(s3_archive).chips())
    assert not OutputStore.open(out).complete
    faults.clear()
    resumed = resflow(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at {done_before}/" in resumed.stderr  # "resuming ... at N/M chips"
    assert OutputStore.open(out).complete
    assert objects(out) == objects(reference)


HOLD_LEASE = """
import sys
from resflow.archive import Archive
from resflow.store import object_lock
from resflow.store.writer import OutputStore
object_lock.acquire(sys.argv[1], lease_s=float(sys.argv[3]))
OutputStore.create(sys.argv[1], Archive.open(sys.argv[2]), run_config={})
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_store_in_the_bucket_has_one_writer_and_a_killed_writer_lets_go(
        s3_archive: str, bucket: str) -> None:
    """A run writing to a bucket holds a lease on ``<out>.lock`` and renews it: a second
    run, with or without ``--overwrite``, is refused naming the first and deletes nothing.
    Killed with ``kill -9``, the first leaves its lease behind, which a run on the same host
    takes over at once (the process is gone) and gives back when done."""
    out, archive = f"s3://{bucket}/leased.zarr", Archive.open(s3_archive)
    fs, lock_key = storage.filesystem(object_lock.lock_location(out))
    writer = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, out, s3_archive, "2"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "holding"
        first = json.loads(fs.cat_file(lock_key))
        renewed = wait_for(lambda: json.loads(fs.cat_file(lock_key))["expires"]
                           > first["expires"], within_s=20)
        assert renewed, "the writer never renewed its lease"
        for resume, overwrite in ((False, True), (True, False)):
            with pytest.raises(StoreLocked, match=f"process {writer.pid} on .*lease"):
                OutputStore.create(out, archive, overwrite=overwrite, resume=resume,
                                   run_config={})
        assert fs.exists(f"{bucket}/leased.zarr/zarr.json")  # the first run's output stays
    finally:
        writer.kill()
        writer.wait()
    assert json.loads(fs.cat_file(lock_key))["pid"] == writer.pid  # left behind
    store = OutputStore.create(out, archive, resume=True, run_config={})  # taken over
    assert json.loads(fs.cat_file(lock_key))["pid"] == os.getpid()
    store.record_unfinished({})
    assert not fs.exists(lock_key)


def test_a_lease_from_another_host_is_refused_until_it_ends(s3_archive: str,
                                                           bucket: str) -> None:
    """A lock object naming a run on another host is refused while its lease lasts (that
    run may be alive) and taken over once it has ended without renewal."""
    out = f"s3://{bucket}/elsewhere.zarr"
    fs, lock_key = storage.filesystem(object_lock.lock_location(out))
    ends = time.time() + 2
    fs.pipe_file(lock_key, json.dumps({"pid": 1, "host": "elsewhere.example",
                                       "started_utc": "2026-01-01T00:00:00+00:00",
                                       "expires": ends, "expires_utc": "soon"}).encode())
    with pytest.raises(StoreLocked, match=r"process 1 on elsewhere\.example") as refused:
        OutputStore.create(out, Archive.open(s3_archive), run_config={})
    assert object_lock.lock_location(out) in refused.value.fix
    assert not fs.exists(f"{bucket}/elsewhere.zarr/zarr.json")
    assert wait_for(lambda: free(out), within_s=30), "the ended lease still refuses"
    OutputStore.create(out, Archive.open(s3_archive), run_config={}).record_unfinished({})
    assert not fs.exists(lock_key)


def wait_for(condition: Callable[[], bool], within_s: float) -> bool:
    """Whether ``condition()`` came true within ``within_s`` seconds (polled)."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def free(out: str) -> bool:
    try:
        lock.check_free(out)
    except StoreLocked:
        return False
    return True
