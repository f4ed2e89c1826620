"""``resflow run`` joins clusters started apart from it, as a user would run them.

A ``dask scheduler`` with two ``dask worker`` processes, and a Spark standalone master and
worker started with the ``spark-class`` launcher shipped inside pyspark; everything bound to
127.0.0.1, every process killed (its whole tree, by pid) at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from resflow.archive import Archive
from resflow.config import RunConfig
from resflow.plugins import engine_models
from resflow.store.writer import OutputStore
from tests import processes
from tests.fixtures_data import SHORT_HALO
from tests.processes import BIN, free_port, port_open, wait_until

pytestmark = pytest.mark.slow  # clusters of processes started apart, and whole runs on them

LOCAL = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}


@contextmanager
def started(cmd: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own session, logging to ``log``; kill its whole tree on exit."""
    with processes.started(cmd, log, env=LOCAL) as proc:
        yield proc


def resflow_run(archive: Path, gallery: Path, out: Path, *flags: str) -> str:
    """``resflow run`` to its end (with the tests' short halo), its summary line."""
    done = subprocess.run([str(BIN / "resflow"), "run", str(archive), "--gallery", str(gallery),
                           "--out", str(out), "--set", f"halo={SHORT_HALO}", *flags],
                          capture_output=True, text=True, env=LOCAL, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def probability(out: Path) -> dict[str, np.ndarray]:
    store = OutputStore.open(out)
    assert store.complete
    return {scene: store.read_array(scene, "probability")[...] for scene in store.groups}


@pytest.fixture(scope="module")
def dask_output(cropped_archive: Path, engine_gallery: Path,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("join-dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with ExitStack() as stack:
        stack.enter_context(started(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", f"127.0.0.1:{free_port()}"], tmp / "scheduler.log"))
        wait_until(lambda: port_open(port), "the Dask scheduler", timeout=90)
        stack.enter_context(started(
            [str(BIN / "dask"), "worker", address, "--host", "127.0.0.1", "--nworkers", "2",
             "--nthreads", "1", "--no-dashboard", "--local-directory", str(tmp)],
            tmp / "workers.log"))
        with Client(address, timeout="20s") as client:  # both workers joined, then the run
            client.wait_for_workers(2, timeout=90)
        summary = resflow_run(cropped_archive, engine_gallery, tmp / "out.zarr",
                              "--backend", "dask", "--scheduler-address", address)
    report = json.loads((tmp / "out.zarr" / "run_report.json").read_text())
    assert report["config"]["dask"]["scheduler_address"] == address  # the run's own settings
    return tmp / "out.zarr", summary


@pytest.fixture(scope="module")
def spark_output(cropped_archive: Path, engine_gallery: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import pyspark

    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    tmp = tmp_path_factory.mktemp("join-spark")
    port, ui = free_port(), free_port()
    master = f"spark://127.0.0.1:{port}"

    def alive_workers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as page:
                return json.load(page).get("aliveworkers", 0) >= 1
        except OSError:
            return False

    with ExitStack() as stack:
        stack.enter_context(started(
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(port), "--webui-port", str(ui)], tmp / "master.log"))
        wait_until(lambda: port_open(port), "the Spark master", timeout=90)
        stack.enter_context(started(
            [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host",
             "127.0.0.1", "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()),
             "--work-dir", str(tmp / "work")], tmp / "worker.log"))
        wait_until(alive_workers, "the Spark worker", timeout=90)
        summary = resflow_run(cropped_archive, engine_gallery, tmp / "out.zarr",
                              "--backend", "spark", "--spark-master", master,
                              "--plan", "regrouped")
    return tmp / "out.zarr", summary


def test_run_joins_a_running_dask_cluster(dask_output, cropped_archive: Path) -> None:
    out, summary = dask_output
    n = len(Archive.open(cropped_archive).chips())
    assert summary.startswith(f"resflow: {n} chips") and "on dask (2 workers x 1 thread)" in summary
    assert probability(out)


def test_run_joins_a_spark_standalone_cluster(spark_output, dask_output) -> None:
    """RESFlow's regrouped plan on a Spark standalone cluster writes the maps of the fused
    plan on a Dask cluster, bit for bit."""
    out, summary = spark_output
    assert "on spark (1 worker x 1 thread)" in summary
    report = json.loads((out / "run_report.json").read_text())
    assert report["config"]["plan"] == "regrouped"
    rebuilt = RunConfig.model_validate(report["config"],  # the report reproduces the run
                                       context={"engines": engine_models()})
    assert rebuilt.engine_settings("spark").master.startswith("spark://127.0.0.1:")
    reference = probability(dask_output[0])
    for scene, array in probability(out).items():
        assert np.array_equal(array, reference[scene])


def test_a_scheduler_without_workers_is_refused(cropped_archive: Path, engine_gallery: Path,
                                                tmp_path: Path) -> None:
    """Joining a scheduler whose workers never come fails with the command that starts
    them, instead of waiting for ever, and writes nothing."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "out.zarr"
    with started([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                  "--dashboard-address", f"127.0.0.1:{free_port()}"], tmp_path / "scheduler.log"):
        wait_until(lambda: port_open(port), "the Dask scheduler", timeout=90)
        done = subprocess.run(
            [str(BIN / "resflow"), "run", str(cropped_archive), "--gallery", str(engine_gallery),
             "--out", str(out), "--backend", "dask", "--scheduler-address", address,
             "--set", "dask.worker_wait_s=2"], capture_output=True, text=True, env=LOCAL,
            timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "the scheduler has no workers after 2 s" in done.stderr
    assert f"dask worker {address}" in done.stderr
    assert not out.exists()
