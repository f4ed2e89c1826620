"""Which partitions of a Spark stage finished, told to the driver while the job runs.

Spark's status tracker counts a stage's finished tasks but does not say which, and a run
counts chips by partition. So a watched stage's tasks add their partition number to an
accumulator (:func:`resflow_spark.tasks.report_partition`); Spark merges each finished
task's update on the driver as it arrives, and a thread polling the accumulators calls
``done(partition)`` once per partition.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from pyspark import Accumulator, AccumulatorParam


class PartitionsDone(AccumulatorParam):
    """An accumulator of partition numbers: a set, so a retried task counts once."""

    def zero(self, value: frozenset[int]) -> frozenset[int]:
        return frozenset()

    def addInPlace(self, value1: frozenset[int], value2: frozenset[int]) -> frozenset[int]:
        return value1 | value2


class TaskReports:
    """Context manager calling each watched stage's ``done(partition)`` while a job runs.

    Parameters
    ----------
    watched
        ``(accumulator, done)`` per watched stage.
    interval
        Seconds between polls of the accumulators.
    """

    def __init__(self, watched: list[tuple[Accumulator, Callable[[int], None]]], *,
                 interval: float = 0.5) -> None:
        self.watched = watched
        self.interval = interval
        self._told: list[set[int]] = [set() for _ in watched]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="resflow-progress", daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._tell()

    def _tell(self) -> None:
        for (accumulator, done), told in zip(self.watched, self._told, strict=True):
            for partition in sorted(accumulator.value - told):
                told.add(partition)
                done(partition)

    def __enter__(self) -> TaskReports:
        if self.watched:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.watched:
            self._stop.set()
            self._thread.join()
            self._tell()  # the updates merged since the last poll
