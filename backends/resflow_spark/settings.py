"""The Spark engine's settings: the ``spark:`` section of a run config and its command-line flags.

Pydantic only, no pyspark import: resflow validates a config (a master URL included) and
builds ``resflow --help`` without importing Spark or starting a JVM.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from resflow.executor import CliOption

__all__ = ["CLI_OPTIONS", "MASTER_PATTERN", "SparkConfig", "is_local_master"]

MASTER_PATTERN = (r"local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]"
                  r"|spark://[^/\s]+:\d+(,[^/\s]+:\d+)*|yarn|k8s://\S+")
"""Master URLs resflow accepts: the forms Spark's own ``SparkContext`` parses."""


def is_local_master(master: str) -> bool:
    """Whether ``master`` runs every task inside the driver's JVM (``local``, ``local[N]``,
    ``local[N,F]``), where Spark schedules no GPUs; ``local-cluster[...]`` has executors.

    >>> is_local_master("local[4]"), is_local_master("local-cluster[2,1,1024]")
    (True, False)
    """
    return master == "local" or master.startswith("local[")


class SparkConfig(BaseModel):
    """Spark backend: ``local[2]`` by default, or any master URL.

    GPU sharing is on by default. On a cluster (``local-cluster``, ``spark://``, ``yarn``,
    ``k8s://``) whose executors declare GPUs (``spark.executor.resource.gpu.amount`` and a
    discovery script, set under ``conf``), each GPU task asks ``gpu_per_task`` of a GPU, so
    ``1 / gpu_per_task`` tasks share a device, and runs on the address Spark assigned. Under
    ``local[N]`` Spark schedules no GPUs: resflow spreads the tasks of a GPU stage over
    ``gpus`` by partition (task ``i`` gets ``gpus[i mod len(gpus)]``), so the ``N`` tasks
    running at once share the devices evenly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    master: str = Field(
        "local[2]", description="local[N], local-cluster[..], spark://, yarn, k8s://")
    executor_cores: int = Field(1, ge=1, description="cores per executor (cluster masters)")
    executor_memory: str = Field("1g", description="memory per executor (cluster masters)")
    gpu_per_task: float = Field(
        0.25, gt=0, le=1, description="GPU share of a GPU task on a cluster whose executors "
        "declare GPUs: 0.25 lets four tasks share one device. No effect under local[N], where "
        "N bounds the tasks at once, nor on executors without GPUs")
    gpus: list[str] | None = Field(
        None, description="local[N] only: GPU numbers (as torch numbers them in the driver) "
        "the tasks of a GPU stage are spread over, task i on gpus[i mod len]; None = every GPU "
        "the driver sees, [] = none. Cluster masters use Spark's own GPU addresses")
    ui_host: str = Field("127.0.0.1", description="bind address of the Spark UI")
    task_max_failures: int = Field(
        4, ge=1, description="attempts per task before the run fails; a task lost with its "
        "executor or Python worker is retried (local[N] becomes local[N,F])")
    python: str | None = Field(
        None, description="the Python the executors run. None = this interpreter on local "
        "and standalone (spark://) masters, whose hosts share its path; on yarn and k8s:// "
        "the packed environment's, e.g. ./environment/bin/python with spark.archives "
        "env.tar.gz#environment in conf (unset there: Spark's own default)")
    conf: dict[str, str] = Field(default_factory=dict, description="extra spark.* settings")

    @field_validator("master")
    @classmethod
    def _known_master(cls, master: str) -> str:
        """Refuse a master URL Spark would not parse, before any JVM starts."""
        if not re.fullmatch(MASTER_PATTERN, master):
            raise ValueError(f"{master!r} is not a Spark master URL: use local[N], "
                             "local-cluster[workers,cores,MiB], spark://host:port, yarn or "
                             "k8s://https://host:port")
        return master


CLI_OPTIONS = (
    CliOption("--spark-master", "master",
              "Spark master URL, e.g. spark://127.0.0.1:7077 or local-cluster[2,1,1024]"),
    CliOption("--workers", "master", "N in the master local[N] (--spark-master wins)",
              type=int, template="local[{}]"),
)
"""The flags ``resflow run`` and ``resflow demo`` add for the Spark engine; ``--spark-master``
is declared first, so it wins over ``--workers`` when both are given."""
