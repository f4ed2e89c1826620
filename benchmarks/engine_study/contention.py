"""How many cores other work took while a measurement ran.

On a shared machine a slow repetition is usually someone else's test suite. Each timed
measurement therefore records ``others_cores``: the machine's busy CPU seconds minus those
of this process and its descendants (the engines' workers), divided by the wall time. 0.0
means the machine was ours; 1.0 on a 2-core machine means half of it was not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil


def _machine_busy_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def ours_s() -> dict[int, float]:
    """CPU seconds so far of this process and each descendant, by pid."""
    me = psutil.Process()
    seconds: dict[int, float] = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            cpu = proc.cpu_times()
        except psutil.Error:
            continue
        seconds[proc.pid] = cpu.user + cpu.system
    return seconds


def ours_during(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds our processes used between two :func:`ours_s` samples.

    Summed per process over those alive at the end: one that exited in between (an idle
    Spark Python worker reaped, a restarted Dask worker) must not take its whole lifetime's
    CPU time off the total.

    >>> ours_during({1: 5.0, 2: 40.0}, {1: 7.5, 3: 1.0})
    3.5
    """
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


@contextmanager
def contention() -> Iterator[dict[str, float]]:
    """Measure the block: yields a dict filled on exit with ``wall_s`` and ``others_cores``.

    CPU time of descendants that exit inside the block is not seen, so ``others_cores`` can
    overstate slightly; it is clipped at 0.
    """
    record: dict[str, float] = {}
    busy, ours, start = _machine_busy_s(), ours_s(), time.perf_counter()
    try:
        yield record
    finally:
        wall = time.perf_counter() - start
        others = (_machine_busy_s() - busy) - ours_during(ours, ours_s())
        record.update(wall_s=wall, others_cores=max(0.0, others / wall) if wall else 0.0)
