"""Timed end-to-end runs of the graph on one engine, repeated on one warm cluster.

An :class:`EngineSeries` starts its engine once (start-up time recorded apart), runs the
graph once cold (models loaded into the workers, oneDNN kernels built: ``cold_s``) and then
takes timed runs over the same archive whenever asked, so a benchmark can interleave the
repetitions of every engine and of the compute limit and a burst of someone else's work on
a shared machine hits them all alike. A run's time is the wall clock around
:func:`resflow.graph.run_graph`, from planning to the finalised store: everything a user
waits for except the cluster start. Each run also records peak memory in the driver and in
every worker process (:mod:`benchmarks.engine_study.memory`) and the cores other work took
(:mod:`benchmarks.engine_study.contention`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_study.contention import contention
from benchmarks.engine_study.memory import descendant_pids, peaks, reset_peaks
from benchmarks.engine_study.series import summarise
from resflow.config import RunConfig
from resflow.executor import Executor
from resflow.report import STAGES


def with_settings(config: RunConfig, **changes: Any) -> RunConfig:
    """``config`` with ``changes``, validated again: ``model_copy(update=...)`` skips
    validation, so a path would keep its ``Path`` type in a field that holds locations as
    strings."""
    return RunConfig.model_validate({**config.model_dump(), **changes})


def start_executor(config: RunConfig) -> tuple[Executor, float]:
    """The engine ``config.backend`` names, without progress bars, and the seconds it took
    to start."""
    from resflow.plugins import load_backend

    cls = load_backend(config.backend)
    start = time.perf_counter()
    # no bars: they would interleave with the benchmark's own output
    executor = cls.from_settings(config.engine_settings(config.backend), device=config.device,
                                 progress=False)
    return executor, time.perf_counter() - start


def timed_run(config: RunConfig, executor: Executor,
              workers: set[int] | None = None) -> dict[str, Any]:
    """One run of the graph: wall seconds, contention, its run report and peak memory
    (``workers``: the pids the engine started, see :func:`benchmarks.engine_study.memory.peaks`).
    """
    from resflow.graph import run_graph

    cpu_before = reset_peaks()
    with contention() as record:
        result = run_graph(config, executor)
    report = result.report.to_dict()
    return {**record, "chips": report["chips"], "km2": report["km2"], "report": report,
            "memory": peaks(cpu_before, workers)}


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


class EngineSeries:
    """One started engine and its timed runs of the graph over one archive.

    Parameters
    ----------
    config
        Run settings; ``out`` is replaced by ``out_dir/<label>.zarr``, overwritten per run.
    out_dir
        Scratch folder for the output store.
    label
        Name of the series in the results (default: the backend).
    warm_up
        Run once untimed after starting (its time is kept as ``cold_s``).
    """

    def __init__(self, config: RunConfig, out_dir: Path, *, label: str | None = None,
                 warm_up: bool = True) -> None:
        self.label = label or config.backend
        self.out = out_dir / f"{self.label}.zarr"
        self.config = with_settings(config, out=self.out, overwrite=True, resume=False)
        self.runs: list[dict[str, Any]] = []
        before = descendant_pids()
        self.executor, self.startup_s = start_executor(self.config)
        self.cold_s = timed_run(self.config, self.executor)["wall_s"] if warm_up else None
        #: processes this engine started (workers, JVMs): its memory, not other engines'
        self.workers = descendant_pids() - before

    def run(self) -> dict[str, Any]:
        """One timed run over the current archive, kept in :attr:`runs`."""
        run = timed_run(self.config, self.executor, self.workers)
        self.runs.append({**run, "archive": str(self.config.archive)})
        return self.runs[-1]

    def warm(self) -> None:
        """One untimed run over the current archive (its chunks and stores opened once)."""
        timed_run(self.config, self.executor, self.workers)

    def retarget(self, archive: Path) -> None:
        """Run over ``archive`` from now on, on the same engine; runs over other archives are
        kept apart (see :meth:`summary`), so sizes can be interleaved round by round.

        The output store gets a path of its own per archive: engines keep an open output
        store per path in each worker process, and one made for another archive's scenes
        must not be reused.
        """
        shutil.rmtree(self.out, ignore_errors=True)
        self.out = self.out.with_name(f"{self.label}-{Path(archive).stem}.zarr")
        self.config = with_settings(self.config, archive=archive, out=self.out)

    def close(self) -> None:
        """Stop the engine and remove the output store."""
        self.executor.close()
        shutil.rmtree(self.out, ignore_errors=True)

    def summary(self, cores: int, archive: Path | None = None) -> dict[str, Any]:
        """The results of the runs over ``archive`` (default: the current one).

        Returns
        -------
        dict
            ``label``, ``backend``, ``engine`` (class name), ``device`` and ``batch_size``
            (the run settings), ``startup_s``, ``cold_s``,
            ``km2``, ``chips``, the summaries ``wall_s``, ``km2_per_s``, ``chips_per_s``,
            ``s_per_km2``, ``others_cores``; ``stage_seconds``, ``stage_fractions`` and
            ``report_wall_s`` of the median run; ``memory`` (peak MiB, largest over the
            runs), ``cluster`` and ``runs`` (each run's wall, contention, memory, stages).
        """
        archive = str(archive or self.config.archive)
        runs = [r for r in self.runs if r["archive"] == archive]
        walls = [r["wall_s"] for r in runs]
        median = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
        km2, chips = median["km2"], median["chips"]
        memory = {key: max((r["memory"][key] or 0) for r in runs) or None
                  for key in ("driver_mb", "worker_mb", "jvm_mb")}
        return {
            "label": self.label,
            "backend": self.config.backend,
            "engine": self.executor.__class__.__name__,
            "device": self.config.device,
            "batch_size": self.config.batch_size,
            "startup_s": self.startup_s,
            "cold_s": self.cold_s,
            "km2": km2,
            "chips": chips,
            "wall_s": summarise(walls),
            "km2_per_s": summarise([km2 / w for w in walls]),
            "chips_per_s": summarise([chips / w for w in walls]),
            "s_per_km2": summarise([w / km2 for w in walls]),
            "others_cores": summarise([r["others_cores"] for r in runs]),
            "stage_seconds": median["report"]["stage_seconds"],
            "stage_fractions": stage_fractions(median["report"]["stage_seconds"],
                                               median["wall_s"], cores),
            "report_wall_s": median["report"]["wall_s"],
            "memory": memory,
            "cluster": median["report"]["cluster"],
            "runs": [{"wall_s": r["wall_s"], "others_cores": r["others_cores"],
                      "memory": r["memory"], "stage_seconds": r["report"]["stage_seconds"]}
                     for r in runs],
        }


def bench_engine(config: RunConfig, *, repeats: int, out_dir: Path, cores: int,
                 label: str | None = None) -> dict[str, Any]:
    """Start one engine, run it cold once and ``repeats`` times timed, close it.

    See :class:`EngineSeries` for the parameters and :meth:`EngineSeries.summary` for the
    result.
    """
    series = EngineSeries(config, out_dir, label=label)
    try:
        for _ in range(repeats):
            series.run()
    finally:
        series.close()
    return series.summary(cores)
