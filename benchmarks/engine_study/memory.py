"""Peak resident memory of the benchmark process and of every worker process it started.

A run report measures only the driver (``peak_rss_mb``), but on Dask and Spark the models
and chips live in worker processes. Engines start their workers as descendants of this
process (Dask nannies and workers, Spark's JVM and its Python workers), so the same code
measures every engine: before a run, each process's peak (Linux ``VmHWM``) is reset by
writing ``5`` to ``/proc/<pid>/clear_refs``; after it, each process's ``VmHWM`` is the peak
of that run alone, even in workers that live across runs. A worker is a descendant Python
process that used CPU during the run, so idle helpers (a nanny, multiprocessing's resource
tracker, a finished engine's leftovers) never pass for one.
"""

from __future__ import annotations

import re
from pathlib import Path

import psutil

_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def _processes() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def descendant_pids() -> set[int]:
    """Pids of this process's descendants now: diff two calls to find an engine's workers."""
    return {proc.pid for proc in _processes()[1:]}


def _owned(proc: psutil.Process, roots: set[int]) -> bool:
    """Whether ``proc`` is one of ``roots`` or descends from one (Spark forks workers late)."""
    try:
        return proc.pid in roots or any(p.pid in roots for p in proc.parents())
    except psutil.Error:
        return False


#: CPU seconds a descendant must use during a run to count as a worker.
WORKER_CPU_S = 0.5


def _cpu_s(proc: psutil.Process) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def reset_peaks() -> dict[int, float]:
    """Reset the peak RSS of this process and all its descendants (Linux; else no-op).

    Returns
    -------
    dict
        CPU seconds used so far by each process, by pid: the baseline :func:`peaks` needs
        to tell workers from idle helpers.
    """
    used = {}
    for proc in _processes():
        used[proc.pid] = _cpu_s(proc)
        try:
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        except OSError:  # not Linux, process gone, or not ours to reset
            continue
    return used


def _peak_mb(proc: psutil.Process) -> float | None:
    try:
        match = _HWM.search(Path(f"/proc/{proc.pid}/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def peaks(cpu_before: dict[int, float], roots: set[int] | None = None
          ) -> dict[str, float | int | None]:
    """Peak RSS since :func:`reset_peaks` (whose result is ``cpu_before``), MiB.

    ``roots`` limits workers to those processes and their descendants: the processes one
    engine started, when several engines are alive at once (``None``: every descendant).

    Returns
    -------
    dict
        ``driver_mb`` (this process), ``worker_mb`` (the largest peak among descendant
        Python processes: Dask workers, Spark Python workers; ``None`` when the engine runs
        in-process), ``jvm_mb`` (the largest Java descendant, Spark only) and ``workers``
        (descendant Python processes that used at least :data:`WORKER_CPU_S` of CPU).
    """
    driver, *children = _processes()
    python, java = [], []
    for proc in children:
        try:
            name = proc.name().lower()
        except psutil.Error:
            continue
        if roots is not None and not _owned(proc, roots):
            continue
        peak = _peak_mb(proc)
        if peak is None or _cpu_s(proc) - cpu_before.get(proc.pid, 0.0) < WORKER_CPU_S:
            continue
        if "java" in name:
            java.append(peak)
        elif "python" in name or "resflow" in name:
            python.append(peak)
    return {
        "driver_mb": _peak_mb(driver),
        "worker_mb": max(python) if python else None,
        "jvm_mb": max(java) if java else None,
        "workers": len(python),
    }
