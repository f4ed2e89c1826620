"""Timed end-to-end runs of the graph on one engine, repeated on one warm cluster.

Each engine is started once (its start-up time is recorded apart), runs the graph once
cold (models loaded into the workers, oneDNN kernels built: recorded as ``cold_s``) and then
``repeats`` timed runs over the same archive. A run's time is the wall clock around
:func:`resflow.graph.run_graph`, from planning to the finalised store, so it includes
everything a user waits for except the cluster start. Peak memory is measured per run in
the driver and in every worker process (:mod:`resflow.benchmarking.memory`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resflow.benchmarking.memory import peaks, reset_peaks
from resflow.benchmarking.series import summarise
from resflow.config import RunConfig
from resflow.executor import Executor
from resflow.report import STAGES


def start_executor(config: RunConfig, executor_class: type[Executor] | None = None
                   ) -> tuple[Executor, float]:
    """The engine ``config.backend`` names (or ``executor_class``), without progress bars,
    and the seconds it took to start."""
    from resflow.plugins import load_backend

    cls = executor_class or load_backend(config.backend)
    start = time.perf_counter()
    executor = cls.from_config(config)
    seconds = time.perf_counter() - start
    if hasattr(executor, "progress"):
        executor.progress = False  # bars would interleave with the benchmark's own output
    return executor, seconds


def timed_run(config: RunConfig, executor: Executor) -> dict[str, Any]:
    """One run of the graph: wall seconds, its run report and peak memory."""
    from resflow.graph import run_graph

    cpu_before = reset_peaks()
    start = time.perf_counter()
    result = run_graph(config, executor)
    wall = time.perf_counter() - start
    report = result.report.to_dict()
    return {"wall_s": wall, "chips": report["chips"], "km2": report["km2"],
            "report": report, "memory": peaks(cpu_before)}


def stage_fractions(stage_seconds: dict[str, float], wall_s: float, cores: int
                    ) -> dict[str, float]:
    """Each stage's share of the machine's core-seconds during a run, plus ``idle``.

    Run reports sum task seconds over task slots; dividing by ``wall_s * cores`` instead puts
    every engine on the machine's scale, so slots an engine leaves unused show as ``idle``
    (the report's own ``scheduling`` counts only the engine's slots).
    """
    available = wall_s * cores
    fractions = {k: stage_seconds.get(k, 0.0) / available for k in STAGES if k != "scheduling"}
    fractions["idle"] = max(0.0, 1.0 - sum(fractions.values()))
    return fractions


def measure(config: RunConfig, executor: Executor, *, repeats: int, out_dir: Path,
            cores: int, label: str, warm_up: bool = True) -> dict[str, Any]:
    """Run the graph on a started ``executor``: once cold (with ``warm_up``), ``repeats`` timed.

    Parameters
    ----------
    config
        The run settings; ``out`` is replaced by ``out_dir/<label>.zarr``, overwritten per run.
    executor
        A started engine (:func:`start_executor`); left open.
    repeats
        Timed runs.
    out_dir
        Scratch folder for the output store (removed at the end).
    cores
        The machine's cores, for :func:`stage_fractions`.
    label
        Name of this series in the results.
    warm_up
        Run once untimed first (models loaded into the workers, oneDNN kernels built);
        its time is kept as ``cold_s``.

    Returns
    -------
    dict
        ``label``, ``backend``, ``cold_s``, ``km2``, ``chips``, the summaries ``wall_s``,
        ``km2_per_s``, ``chips_per_s``, ``s_per_km2``; ``stage_seconds``,
        ``stage_fractions`` and ``report_wall_s`` of the median run; ``memory`` (peak MiB,
        largest over the timed runs), ``cluster`` and ``runs`` (each timed run's wall,
        memory and stage seconds).
    """
    out = out_dir / f"{label}.zarr"
    run_config = config.model_copy(update={"out": out, "overwrite": True, "resume": False})
    cold = timed_run(run_config, executor)["wall_s"] if warm_up else None
    runs = [timed_run(run_config, executor) for _ in range(repeats)]
    shutil.rmtree(out, ignore_errors=True)
    walls = [r["wall_s"] for r in runs]
    median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    km2, chips = median["km2"], median["chips"]
    memory = {key: max((r["memory"][key] or 0) for r in runs) or None
              for key in ("driver_mb", "worker_mb", "jvm_mb")}
    return {
        "label": label,
        "backend": config.backend,
        "cold_s": cold,
        "km2": km2,
        "chips": chips,
        "wall_s": summarise(walls),
        "km2_per_s": summarise([km2 / w for w in walls]),
        "chips_per_s": summarise([chips / w for w in walls]),
        "s_per_km2": summarise([w / km2 for w in walls]),
        "stage_seconds": median["report"]["stage_seconds"],
        "stage_fractions": stage_fractions(median["report"]["stage_seconds"],
                                           median["wall_s"], cores),
        "report_wall_s": median["report"]["wall_s"],
        "memory": memory,
        "cluster": median["report"]["cluster"],
        "runs": [{"wall_s": r["wall_s"], "memory": r["memory"],
                  "stage_seconds": r["report"]["stage_seconds"]} for r in runs],
    }


@contextmanager
def restored_environ() -> Iterator[None]:
    """Give back this process's environment as it was, whatever an engine exported.

    Dask's nanny copies its worker environment (``OMP_NUM_THREADS``, ``MALLOC_TRIM_THRESHOLD_``)
    into the process that starts it, and every process started later inherits it: Spark's
    Python workers would run with Dask's malloc settings. Each engine of a benchmark
    therefore starts from the environment the benchmark started with.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def bench_engine(config: RunConfig, *, repeats: int, out_dir: Path, cores: int,
                 executor_class: type[Executor] | None = None,
                 label: str | None = None) -> dict[str, Any]:
    """Start one engine, :func:`measure` it, close it; adds ``startup_s`` to the result.

    ``executor_class`` replaces the engine ``config.backend`` names (to measure a proposed
    engine change side by side with the installed one); ``label`` names the series
    (default: the backend).
    """
    with restored_environ():
        executor, startup = start_executor(config, executor_class)
        try:
            result = measure(config, executor, repeats=repeats, out_dir=out_dir, cores=cores,
                             label=label or config.backend)
        finally:
            executor.close()
    return {**result, "startup_s": startup}
