"""What runs on the Dask workers: the task wrapper and the regroup's reduce side.

Kept apart from the executor so a task pickles only these small functions, never the client;
free of dask imports, like the executor's module (the preload plugin, a ``WorkerPlugin``,
lives in :mod:`resflow_dask.preload`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resflow.executor import TaskEnv
from resflow.tickets import SharedDevices


@dataclass(frozen=True)
class GpuPlan:
    """How a GPU task on this cluster finds its device.

    ``devices`` non-empty: the workers of a host share these GPUs through device tickets,
    at most ``per_device`` tasks per device. ``pinned``: each worker sees only its own GPU
    (dask-cuda), which is ``"0"`` inside the worker. Neither: the task runs without a GPU.
    ``ticket_dir`` None: each worker uses its own user's private directory
    (:func:`resflow.tickets.default_ticket_dir`).
    """

    devices: tuple[str, ...]
    ticket_dir: str | None
    pinned: bool = False
    per_device: int = 1


def run_partition(
    fn: Callable[[list[Any], TaskEnv], list[Any]],
    records: list[Any],
    stage: str,
    partition: int,
    gpu: GpuPlan | None,
) -> list[Any]:
    """Run one stage function on one partition. On GPUs the host's workers share, the task
    carries the tickets and holds one around its device work only (``TaskEnv.gpu_held``)."""
    if gpu is not None and gpu.devices:
        shared = SharedDevices(gpu.devices, gpu.per_device, gpu.ticket_dir)
        return list(fn(records, TaskEnv("dask", stage, partition, tickets=shared)))
    address = "0" if gpu is not None and gpu.pinned else None
    return list(fn(records, TaskEnv("dask", stage, partition, address)))


def concat_pieces(index: int, *pieces: list[list[Any]]) -> list[Any]:
    """The reduce side of the regroup: output partition ``index`` from every input's split."""
    return [record for split in pieces for record in split[index]]
