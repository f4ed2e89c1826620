"""The Dask engine's settings: the ``dask:`` section of a run config and its command-line flags.

Pydantic only, no dask import: resflow validates a config and builds ``resflow --help``
without importing Dask.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from resflow.executor import CliOption

__all__ = ["CLI_OPTIONS", "DaskConfig"]


class DaskConfig(BaseModel):
    """Dask backend: an embedded cluster on this host, or ``scheduler_address`` to join one.

    GPU sharing is on by default: on a host with GPUs the embedded cluster declares one
    ``GPU`` resource per worker and each GPU task asks ``gpu_per_task`` of it, so
    ``round(1 / gpu_per_task)`` tasks (4 at the default 0.25) share a device at once; the
    workers get that many threads unless ``threads_per_worker`` says otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheduler_address: str | None = Field(
        None, description="tcp://host:port of a running scheduler")
    workers: int = Field(
        2, ge=1, description="embedded cluster: worker processes; with dask-cuda installed on a "
        "GPU host, one worker per GPU instead")
    threads_per_worker: int | None = Field(
        None, ge=1, description="embedded cluster: threads per worker; None = 1 on a CPU host, "
        "and on a GPU host as many as share one GPU (round(1 / gpu_per_task), 4 by default) so "
        "a worker keeps its device busy")
    dashboard_address: str = Field("127.0.0.1:8787", description="bind address of the dashboard")
    gpu_per_task: float = Field(
        0.25, gt=0, le=1, description="GPU share a GPU task declares: 0.25 lets four tasks share "
        "one device. No effect on a CPU host")
    gpus: list[str] | None = Field(
        None, description="GPU numbers the workers of one host share through device tickets; "
        "None = detect on an embedded cluster")
    ticket_dir: Path | None = Field(
        None, description="device-ticket lock directory shared by one host's workers; "
        "None = <tmp>/resflow-tickets-<uid>, private to the user running the workers")
    worker_wait_s: float = Field(
        60, gt=0, description="joining a cluster: seconds to wait for its first worker")
    processes_per_gpu: int | None = Field(
        None, ge=1, le=64, description="embedded cluster on a GPU host: worker processes per "
        "GPU, sharing the GPUs through device tickets held around device work only, so the "
        "host work of one GPU's tasks runs under that many interpreter locks; None = one "
        "dask-cuda worker per GPU where dask-cuda is installed, else `workers` processes")

    def worker_count(self, gpus: int) -> int:
        """Worker processes of an embedded cluster on a host with ``gpus`` GPUs that share
        them through tickets (no dask-cuda worker per GPU).

        >>> DaskConfig().worker_count(2), DaskConfig(processes_per_gpu=4).worker_count(2)
        (2, 8)
        """
        if self.processes_per_gpu is not None and gpus:
            return gpus * self.processes_per_gpu
        return self.workers

    def worker_threads(self, has_gpus: bool) -> int:
        """Threads per worker of an embedded cluster on a host with or without GPUs.

        A GPU worker with one thread would run one task at a time and leave its device idle
        while that task reads and writes chips; with ``1 / gpu_per_task`` threads the
        worker's ``GPU`` resource, not its thread count, bounds the tasks on the device.

        Examples
        --------
        >>> DaskConfig().worker_threads(has_gpus=False), DaskConfig().worker_threads(True)
        (1, 4)
        """
        if self.threads_per_worker is not None:
            return self.threads_per_worker
        return max(1, round(1 / self.gpu_per_task)) if has_gpus else 1


CLI_OPTIONS = (
    CliOption("--scheduler-address", "scheduler_address",
              "join a running Dask cluster, e.g. tcp://127.0.0.1:8786"),
    CliOption("--workers", "workers", "worker processes of the embedded cluster", type=int),
)
"""The flags ``resflow run`` and ``resflow demo`` add for the Dask engine."""
