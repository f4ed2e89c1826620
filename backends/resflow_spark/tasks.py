"""What runs in Spark's Python workers: the task wrapper and the regroup's key functions.

Kept apart from the executor so a task pickles only these small functions, never the session;
pyspark is imported inside them, so importing the engine does not import Spark.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any

from resflow.executor import TaskEnv, stable_partition


def task_gpu() -> str | None:
    """The torch ordinal of the GPU Spark assigned to the running task, or ``None``.

    Spark's addresses are physical GPU numbers (its discovery script reads nvidia-smi);
    torch numbers the GPUs this process sees (:func:`resflow.gpu_numbers.torch_ordinal`).
    """
    from pyspark import TaskContext

    from resflow.gpu_numbers import torch_ordinal, visible_devices_env

    context = TaskContext.get()
    info = context.resources().get("gpu") if context is not None else None
    if info is None or not info.addresses:
        return None
    return str(torch_ordinal(info.addresses[0], visible_devices_env()))


def run_partition(
    fn: Callable[[list[Any], TaskEnv], list[Any]], stage: str, index: int, records: Iterable[Any],
    *, devices: Sequence[str] = (),
) -> Iterator[Any]:
    """Run one stage function on one partition with the device Spark gave the task.

    ``devices`` are the GPUs of a GPU stage under ``local[N]``, where Spark assigns none:
    partition ``i`` then runs on ``devices[i mod len(devices)]``, as on the local engine.
    """
    gpu = task_gpu()
    if gpu is None and devices:
        gpu = devices[index % len(devices)]
    yield from fn(list(records), TaskEnv("spark", stage, index, gpu))


def report_partition(accumulator: Any, task: Callable[[int, Iterable[Any]], Iterator[Any]],
                     index: int, records: Iterable[Any]) -> list[Any]:
    """Run ``task`` on partition ``index``, then add ``index`` to ``accumulator``, which
    tells the driver the partition is done (:mod:`resflow_spark.progress`)."""
    out = list(task(index, records))
    accumulator.add(frozenset((index,)))
    return out


def unpack(partition: list[Any]) -> list[Any]:
    """The records of one partition parallelized as a single element."""
    return partition


def keyed(key: Callable[[Any], Hashable], record: Any) -> tuple[Hashable, Any]:
    """``(key(record), record)``: the pair ``partitionBy`` routes by its first element."""
    return key(record), record


def key_partition(key: Hashable, npartitions: int) -> int:
    """Spark's ``partitionFunc``: resflow's stable partition, identical on every engine."""
    return stable_partition(key, npartitions)
