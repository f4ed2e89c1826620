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


def _ours_s() -> float:
    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            cpu = proc.cpu_times()
        except psutil.Error:
            continue
        total += cpu.user + cpu.system
    return total


@contextmanager
def contention() -> Iterator[dict[str, float]]:
    """Measure the block: yields a dict filled on exit with ``wall_s`` and ``others_cores``.

    CPU time of descendants that exit inside the block is not seen, so ``others_cores`` can
    overstate slightly; it is clipped at 0.
    """
    record: dict[str, float] = {}
    busy, ours, start = _machine_busy_s(), _ours_s(), time.perf_counter()
    try:
        yield record
    finally:
        wall = time.perf_counter() - start
        others = (_machine_busy_s() - busy) - (_ours_s() - ours)
        record.update(wall_s=wall, others_cores=max(0.0, others / wall) if wall else 0.0)
