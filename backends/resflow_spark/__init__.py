"""resflow on PySpark: ``local[N]`` by default, or any master URL (local-cluster, spark://, ...).

Stages are ``mapPartitionsWithIndex`` over an RDD of chip references; the regroup is a
``partitionBy`` with resflow's stable key partitioner. When the executors have GPUs, GPU stages
carry a stage-level ``ResourceProfile`` asking a fractional ``gpu`` per task, and each task
reads its device from ``TaskContext.get().resources()["gpu"].addresses``. Under ``local[N]``
Spark schedules no GPUs, so the tasks of a GPU stage are spread over the driver's GPUs by
partition instead (``SparkConfig.gpus``). Python workers are reused
(``spark.python.worker.reuse``) so the per-process model cache lives across tasks, and are
forked from a daemon that has imported the task code once (:mod:`resflow_spark.daemon`).

pyspark is imported only when an executor is built, so resflow reads this engine's settings
and flags (:mod:`resflow_spark.settings`) without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from resflow.endpoints import check_endpoint
from resflow.executor import CPU, Executor, StageResources, stage_key, visible_gpus
from resflow_spark.settings import CLI_OPTIONS, SparkConfig, is_local_master
from resflow_spark.tasks import key_partition, keyed, report_partition, run_partition, unpack

if TYPE_CHECKING:
    from pyspark import RDD
    from pyspark.sql import SparkSession

__all__ = ["SparkExecutor"]


@dataclass(frozen=True)
class SparkCollection:
    """An RDD plus the resflow stage names of each Spark stage it will run as.

    Spark fuses narrow stages; ``segments`` holds the resflow stages between shuffles, so the
    job's description in the Spark UI says what its Spark stages compute.
    """

    rdd: RDD
    segments: tuple[tuple[str, ...], ...]


def _is_local_master(master: str) -> bool:
    return master.startswith(("local", "spark://127.0.0.1", "spark://localhost"))


def _with_retries(master: str, max_failures: int) -> str:
    """``local[N]`` as ``local[N,F]``: local mode reads task attempts from the master URL only
    (``spark.task.maxFailures`` is ignored there), and would otherwise never retry a task
    whose Python worker died.

    >>> _with_retries("local[2]", 4), _with_retries("local-cluster[2,1,1024]", 4)
    ('local[2,4]', 'local-cluster[2,1,1024]')
    """
    match = re.fullmatch(r"local(?:\[(\*|\d+)\])?", master)
    return f"local[{match.group(1) or 1},{max_failures}]" if match else master


def executor_python(config: SparkConfig) -> str | None:
    """The Python the executors run: the configured one; else this interpreter where the
    executors share this host's paths (local and standalone masters); else None, leaving
    Spark's own default, since on YARN or Kubernetes the driver's path means nothing on the
    executors (ship a packed environment and name its Python instead).

    >>> from resflow_spark.settings import SparkConfig
    >>> executor_python(SparkConfig(master="yarn")) is None
    True
    >>> executor_python(SparkConfig(master="yarn", python="./environment/bin/python"))
    './environment/bin/python'
    """
    if config.python is not None or "spark.pyspark.python" in config.conf:
        return config.python or config.conf["spark.pyspark.python"]
    if config.master.startswith(("yarn", "k8s://")):
        return None
    return sys.executable


def _build_session(config: SparkConfig) -> SparkSession:
    """A session configured for resflow: reused Python workers, this interpreter, quiet console."""
    from pyspark.sql import SparkSession

    if _is_local_master(config.master):
        # the driver's RPC and UI bind here; remote executors could not reach 127.0.0.1
        os.environ.setdefault("SPARK_LOCAL_IP", config.ui_host)
    if config.master.startswith("spark://"):
        check_endpoint("spark.master", config.master,
                       "start the master (`spark-class org.apache.spark.deploy.master.Master`) "
                       "or check the host and port")
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(_with_retries(config.master, config.task_max_failures))
        .appName("resflow")
        .config("spark.task.maxFailures", str(config.task_max_failures))
        .config("spark.python.worker.reuse", "true")
        .config("spark.python.daemon.module", "resflow_spark.daemon")
        .config("spark.ui.showConsoleProgress", "false")
    )
    python = executor_python(config)
    if python is not None:
        os.environ.setdefault("PYSPARK_PYTHON", python)
        builder = builder.config("spark.pyspark.python", python)
    if not config.master.startswith("local"):
        # local[N] and local-cluster[workers,cores,memory] carry their own executor shape
        builder = builder.config("spark.executor.cores", str(config.executor_cores)).config(
            "spark.executor.memory", config.executor_memory
        )
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


class SparkExecutor(Executor):
    """Run the graph on Spark.

    Parameters
    ----------
    config
        Session settings (master URL, executor size, GPU share per task, extra ``spark.*``).
    spark
        An existing ``SparkSession`` to use as is (never stopped here); overrides ``config``'s
        master and session settings.
    progress
        Show the run's progress.
    gpus
        Under ``local[N]`` only: the GPUs the tasks of a GPU stage are spread over by
        partition. ``None`` = ``config.gpus``, else every GPU torch sees in the driver.
    """

    name = "spark"
    session = ("spark", "pyspark.sql", "SparkSession")
    config_model = SparkConfig
    cli_options = CLI_OPTIONS
    requires = ("pyspark",)

    def __init__(
        self,
        config: SparkConfig | None = None,
        *,
        spark: SparkSession | None = None,
        progress: bool = True,
        gpus: Sequence[str] | None = None,
    ) -> None:
        config = config or SparkConfig()
        self._owns_session = spark is None
        self.spark = spark if spark is not None else _build_session(config)
        self.sc = self.spark.sparkContext
        self.gpu_share = config.gpu_per_task
        self.progress = progress
        self._watchers: dict[str, Callable[[int], None]] = {}
        #: ``(accumulator, done)`` of the watched stages of the collections built since the
        #: last collect
        self._reports: list[tuple[Any, Callable[[int], None]]] = []
        declared = gpus if gpus is not None else config.gpus
        #: GPUs the tasks of a GPU stage are spread over under local[N] (no Spark scheduling)
        self.local_gpus: tuple[str, ...] = (
            tuple(visible_gpus() if declared is None else declared)
            if is_local_master(self.sc.master) else ())


    @classmethod
    def environment(cls) -> dict[str, str]:
        return {"java": java_version()}

    # -- cluster facts -------------------------------------------------------------------

    def executor_gpus(self) -> float:
        """GPUs per executor the cluster declares (``spark.executor.resource.gpu.amount``)."""
        return float(self.sc.getConf().get("spark.executor.resource.gpu.amount", "0"))

    def _stage_profiles_supported(self) -> bool:
        # stage-level task profiles need a cluster manager; plain local[N] refuses them
        return not is_local_master(self.sc.master)

    @property
    def dashboard_link(self) -> str | None:
        return self.sc.uiWebUrl

    def describe(self) -> dict[str, Any]:
        conf = self.sc.getConf()
        local = is_local_master(self.sc.master)
        # the JVM's executor list includes the driver, which runs no tasks unless local[N]
        executors = 1 if local else max(1, self.sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
        cores = conf.get("spark.executor.cores", None)
        threads = int(cores) if cores else max(1, self.sc.defaultParallelism // executors)
        return {
            "backend": self.name,
            "master": self.sc.master,
            "spark_version": self.sc.version,
            "workers": executors,
            "threads_per_worker": threads,
            "gpus": list(self.local_gpus) or int(self.executor_gpus() * executors),
            "gpu_per_task": self.gpu_share,
            "ui": self.dashboard_link,
        }

    # -- the contract --------------------------------------------------------------------

    def from_partitions(self, partitions: Sequence[Sequence[Any]]) -> SparkCollection:
        parts = [list(p) for p in partitions]
        rdd = self.sc.parallelize(parts, max(1, len(parts))).flatMap(unpack)
        return SparkCollection(rdd.setName(stage_key("partitions")), ((),))

    def map_partitions(
        self,
        coll: SparkCollection,
        fn: Callable[[list[Any], Any], list[Any]],
        *,
        name: str,
        resources: StageResources = CPU,
    ) -> SparkCollection:
        devices = self.local_gpus if resources.uses_gpu else ()
        task = partial(run_partition, fn, name, devices=devices)
        watcher = self._watchers.get(name)
        if watcher is not None:
            from resflow_spark.progress import PartitionsDone

            accumulator = self.sc.accumulator(frozenset(), PartitionsDone())
            self._reports.append((accumulator, watcher))
            task = partial(report_partition, accumulator, task)
        rdd = coll.rdd.mapPartitionsWithIndex(task, preservesPartitioning=True)
        rdd.setName(stage_key(name))
        if resources.uses_gpu and self.executor_gpus() > 0 and self._stage_profiles_supported():
            from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

            requests = TaskResourceRequests().cpus(resources.cpus).resource("gpu", resources.gpu)
            rdd = rdd.withResources(ResourceProfileBuilder().require(requests).build)
        *done, current = coll.segments
        return SparkCollection(rdd, (*done, (*current, name)))

    def group_by_key(
        self, coll: SparkCollection, key: Callable[[Any], Hashable], npartitions: int, *,
        blocks: int = 1,
    ) -> SparkCollection:
        # Spark's sort-based shuffle is one stage whatever the fan-in: blocks are not needed
        rdd = (
            coll.rdd.map(partial(keyed, key))
            .partitionBy(npartitions, partial(key_partition, npartitions=npartitions))
            .values()
        )
        *done, current = coll.segments
        segments = (*done, (*current, "regroup"), ("regroup",))
        return SparkCollection(rdd.setName(stage_key("regroup")), segments)

    def collect(self, coll: SparkCollection) -> list[Any]:
        from resflow_spark.interrupts import cancel_on_interrupt
        from resflow_spark.progress import TaskReports

        labels = [stage_key("+".join(seg) or "partitions") for seg in coll.segments]
        self.sc.setJobDescription(" -> ".join(labels))
        reports, self._reports = self._reports, []
        with TaskReports(reports), cancel_on_interrupt(self.sc):
            return coll.rdd.collect()

    def on_task_done(self, name: str, done: Callable[[int], None]) -> None:
        self._watchers[name] = done

    def close(self) -> None:
        if self._owns_session:
            self.spark.stop()


def java_version() -> str:
    """First line of ``java -version`` (Spark needs Java 17+), or why it is unavailable."""
    java = shutil.which("java")
    if java is None:
        return "not found (the spark backend needs Java 17 or 21 on PATH)"
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"failed to run ({exc})"
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0] if lines else "no version output"
