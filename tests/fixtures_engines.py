"""Engine fixtures: one Dask cluster and one Spark session shared by the whole test session.

:func:`build_engine` builds any installed backend for the contract suite: the local, Dask and
Spark engines on what this session shares (never a cluster of their own), any other backend
from its default settings.

The Spark session runs on ``local-cluster[2,2,1024]``: two standalone workers (separate JVMs,
so stage-level resource profiles are honoured as on a real cluster) of two cores each, each
worker claiming one of two declared GPUs through a discovery script. Two cores per executor
and ``spark.task.resource.gpu.amount=0.5`` let two tasks share one device, so a test can see
a profile asking a whole GPU serialise them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from resflow.executor import Executor

REPO_ROOT = Path(__file__).resolve().parents[1]

# Each worker runs the script once at start; the first to create the claim directory takes
# device 0, the other device 1, as two workers on a two-GPU host would be configured.
DISCOVERY_SCRIPT = """#!/bin/sh
if mkdir "{claims}/gpu0" 2>/dev/null; then
  echo '{{"name": "gpu", "addresses": ["0"]}}'
else
  echo '{{"name": "gpu", "addresses": ["1"]}}'
fi
"""


SHORT_LIVED_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
"""JVM options for the suite's many short Spark JVMs: the quick compiler alone and one GC
thread. Each test's JVM lives seconds, so the optimising compiler's work never pays back; on
2 cores these cut the Spark tests' CPU time by about a quarter (188 to 142 CPU seconds for
the resume and contract tests on Spark)."""


def pytest_configure(config: pytest.Config) -> None:
    # Every JVM the session starts inherits it: the Spark session's driver and executors,
    # and those of `resflow run` subprocesses and the standalone cluster. A user's own
    # JAVA_TOOL_OPTIONS is left as it is.
    os.environ.setdefault("JAVA_TOOL_OPTIONS", SHORT_LIVED_JVM)


def java_missing() -> str | None:
    """Why Spark cannot start here (no Java), or None when a ``java`` is found."""
    home = os.environ.get("JAVA_HOME")
    if shutil.which("java") or (home and (Path(home) / "bin" / "java").is_file()):
        return None
    return ("Spark needs Java 17: no `java` on the PATH and no JAVA_HOME "
            "(apt install openjdk-17-jre-headless, or conda's openjdk=17)")


@pytest.fixture(scope="session")
def engine_gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seeded gallery (4 buckets of 16-bit codes; bucket 1 has its own decoder, the
    others use mono), so engine tests do not depend on the bundled gallery's training."""
    import numpy as np
    import torch

    from resflow.gallery import write_gallery
    from resflow.models.hashing import HashingHead
    from resflow.models.segmentation import SegmentationDecoder
    from resflow.resolution import DEFAULT_GSD_M

    torch.manual_seed(0)
    codes = np.random.default_rng(0).random((4, 16)) > 0.5
    out = tmp_path_factory.mktemp("gallery") / "engine-gallery"
    write_gallery(out, bucket_codes=codes, buckets=[{"chips": 1, "labelled_chips": 1}] * 4,
                  head=HashingHead(bits=16),
                  decoders={"mono": SegmentationDecoder(), "bucket-1": SegmentationDecoder()},
                  gsd_m=DEFAULT_GSD_M, info={"seed": 0})
    return out


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    """A Client on a LocalCluster of 2 worker processes x 1 thread, dashboard on a free port."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0")
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def gpu_discovery_script(directory: Path) -> Path:
    """Write the two-GPU discovery script (and its claim directory) under ``directory``."""
    claims = directory / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    script = directory / "discover_gpus.sh"
    script.write_text(DISCOVERY_SCRIPT.format(claims=claims))
    script.chmod(0o755)
    return script


@pytest.fixture(scope="session")
def spark_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A SparkSession on ``local-cluster[2,2,1024]`` whose two executors have one GPU each."""
    if why := java_missing():
        pytest.skip(why)
    from resflow_spark import SparkExecutor
    from resflow_spark.settings import SparkConfig

    script = gpu_discovery_script(tmp_path_factory.mktemp("spark-gpus"))
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    config = SparkConfig(
        master="local-cluster[2,2,1024]",
        conf={
            "spark.worker.resource.gpu.amount": "1",
            "spark.worker.resource.gpu.discoveryScript": str(script),
            "spark.executor.resource.gpu.amount": "1",
            "spark.task.resource.gpu.amount": "0.5",
            # task functions defined in test modules are imported by reference
            "spark.executorEnv.PYTHONPATH": pythonpath,
        },
    )
    executor = SparkExecutor(config, progress=False)
    executor.spark.sparkContext.setLogLevel("ERROR")
    try:
        yield executor.spark
    finally:
        executor.close()


def _local(request: pytest.FixtureRequest) -> Executor:
    from resflow.local import LocalExecutor

    return LocalExecutor(gpus=[], progress=False)


def _dask(request: pytest.FixtureRequest) -> Executor:
    from resflow_dask import DaskExecutor

    return DaskExecutor(client=request.getfixturevalue("dask_client"), gpus=[], progress=False)


def _spark(request: pytest.FixtureRequest) -> Executor:
    from resflow_spark import SparkExecutor

    return SparkExecutor(spark=request.getfixturevalue("spark_session"), progress=False)


ON_SHARED_SESSION: dict[str, Callable[[pytest.FixtureRequest], Executor]] = {
    "local": _local, "dask": _dask, "spark": _spark}
"""Backends built on this session's shared cluster or session: closing them releases nothing."""


def build_engine(name: str, request: pytest.FixtureRequest) -> Executor:
    """Installed backend ``name`` for a test: on the shared session where it has one, else
    as ``resflow run --backend <name> --device cpu`` would build it from its default settings.
    """
    if name in ON_SHARED_SESSION:
        return ON_SHARED_SESSION[name](request)
    from resflow.plugins import load_backend

    return load_backend(name).from_settings(device="cpu", progress=False)
