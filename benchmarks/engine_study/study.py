"""The whole benchmark behind ``resflow bench``: one archive, every engine, side by side.

In one process and one sitting, so the ratios compare like with like on a shared machine:

1. the compute limit on preloaded prediction windows (:mod:`benchmarks.engine_study.limit`), the
   hand-written rasterio loop with the mono model (:mod:`benchmarks.engine_study.baseline`)
   and each engine end to end (:mod:`benchmarks.engine_study.engines`), their repetitions
   interleaved round by round (:func:`compare`);
2. scaling x1 to x8 on Dask (:mod:`benchmarks.engine_study.scaling`);
3. in full mode, the sweeps (:mod:`benchmarks.engine_study.sweeps`).

Results are one JSON document with the machine, its load before and after, and the library
versions, plus PNG plots and a Markdown table (:mod:`benchmarks.engine_study.plots`,
:mod:`benchmarks.engine_study.tables`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.engine_study.baseline import hand_written, summarise_runs
from benchmarks.engine_study.engines import EngineSeries, with_settings
from benchmarks.engine_study.limit import (
    HALO,
    WINDOW,
    Preloaded,
    one_pass,
    summarise_passes,
    warm_up,
)
from benchmarks.engine_study.machine import describe_machine, load_average
from benchmarks.engine_study.scaling import FACTORS, scaled_archive, scaling_study
from benchmarks.engine_study.sweeps import plan_sweeps, run_sweeps
from resflow.archive import Archive
from resflow.config import RunConfig
from resflow.devices import DevicePreference, resolve_device
from resflow.gallery import Gallery
from resflow.report import collect_versions

#: Fraction of the compute limit each engine should reach on a 2-core CPU (issue 5).
TARGETS = {"local": 0.95, "dask": 0.85, "spark": 0.75}


@dataclass(frozen=True)
class BenchOptions:
    """What one ``resflow bench`` measures.

    Attributes
    ----------
    quick
        Skip the sweeps and use the smaller benchmark archive (x4 instead of x8).
    backends
        Engines to compare (installed ``resflow.backends`` names).
    plans
        Graph plans each engine runs (``RunConfig.plan``): the first one is the series
        named after the engine and held to the targets; each other one is its own series,
        ``<engine> <plan>``.
    repeats
        Timed repetitions of every measurement (at least 3 for a median and spread).
    out
        Folder for ``bench-<mode>.json``, the PNG plots and ``table.md``.
    gallery
        Model gallery; ``None`` = the bundled default.
    partition_chips, halo, window, batch_size
        Run settings shared by every engine (see :class:`resflow.config.RunConfig`); the
        limit predicts the same windows with the same halo, one window a model call as the
        graph does; the hand-written loop uses the same halo around each chip, and
        ``batch_size``.
    device
        Where every model runs, the limit's, the hand-written loop's and every engine's:
        ``"auto"`` (a GPU when torch sees one), ``"cpu"`` or ``"cuda"``.
    factors
        Scaling sizes, multiples of the Atlanta tile.
    scaling_backend
        The engine the scaling study runs on.
    source, chip
        The tile the benchmark archives are mosaics of (``None`` = the SpaceNet Atlanta
        sample) and their chip edge, pixels.
    work_dir
        Scratch space for archives and outputs; ``None`` = a temporary folder.
    """

    quick: bool = False
    backends: tuple[str, ...] = ("local", "dask", "spark")
    plans: tuple[str, ...] = ("fused", "regrouped")
    repeats: int = 3
    out: Path = Path("benchmarks/results")
    gallery: Path | None = None
    partition_chips: int = 16
    halo: int = HALO
    window: int = WINDOW
    batch_size: int = 8
    device: DevicePreference = "auto"
    factors: tuple[int, ...] = FACTORS
    scaling_backend: str = "dask"
    source: Path | None = None
    chip: int = 256
    work_dir: Path | None = None

    @property
    def mode(self) -> str:
        """``"quick"`` or ``"full"``: the results file's suffix."""
        return "quick" if self.quick else "full"

    @property
    def scale(self) -> int:
        """Size of the comparison archive in Atlanta tiles."""
        return 4 if self.quick else 8


def base_config(options: BenchOptions, archive: Path, cores: int,
                device: torch.device) -> RunConfig:
    """The run settings every engine gets: one worker (or task slot) per core, one thread,
    models on ``device`` (resolved once, so the engines run where the limit does)."""
    return RunConfig(
        archive=archive, gallery=options.gallery, backend="dask", device=device.type,
        batch_size=options.batch_size, partition_chips=options.partition_chips,
        halo=options.halo, window=options.window, torch_threads=1,
        dask={"workers": cores, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:0"},
        spark={"master": f"local[{cores}]"},
    )


class _Steps:
    """Logs each step as it starts and keeps the seconds each one took, for the results."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def __call__(self, what: str) -> None:
        self.done()
        self.log(f"[bench] {what}")
        self._current = (what, time.perf_counter())

    def done(self) -> None:
        """Close the running step."""
        if self._current is not None:
            what, start = self._current
            self.seconds[what] = time.perf_counter() - start
            self._current = None


def compare(options: BenchOptions, config: RunConfig, archive: Archive, gallery: Gallery,
            data: Preloaded, work: Path, cores: int, device: torch.device,
            step: Callable[[str], None]) -> dict[str, Any]:
    """The limit, the hand-written loop and every engine, repetitions interleaved.

    All engines are started and run cold first; then each round times one limit pass, one
    hand-written pass and one run of every engine, so a burst of other work on a shared
    machine lands on all of them rather than on whichever ran at that moment.

    Returns
    -------
    dict
        ``limit`` (:func:`~benchmarks.engine_study.limit.summarise_passes`), ``baseline``
        (:func:`~benchmarks.engine_study.baseline.summarise_runs`) and ``engines``
        (:meth:`~benchmarks.engine_study.engines.EngineSeries.summary` each).
    """
    sources = [Path(info.source) for info in archive.scenes.values()]

    def hand_written_pass() -> dict[str, Any]:
        return hand_written(sources, gallery, work / "baseline", chip=options.chip,
                            halo=options.halo, threads=cores, device=device)

    engines: list[EngineSeries] = []
    try:
        for backend in options.backends:
            for plan in options.plans:
                label = backend if plan == options.plans[0] else f"{backend} {plan}"
                step(f"engine {label}: start and cold run")
                engines.append(EngineSeries(
                    with_settings(config, backend=backend, plan=plan), work,
                    label=label))
        passes, baseline_runs = [], []
        for round_ in range(1, options.repeats + 1):
            step(f"round {round_}/{options.repeats}: limit, hand-written loop, "
                 f"{', '.join(e.label for e in engines)}")
            passes.append(one_pass(data, gallery, cores, device))
            baseline_runs.append(hand_written_pass())
            for engine in engines:
                engine.run()
        step("compute limit on one thread (how the cores add up)")
        single = one_pass(data, gallery, 1, device) if cores > 1 else None
        return {"limit": summarise_passes(data, passes, cores, single),
                "baseline": summarise_runs(baseline_runs),
                "engines": [e.summary(cores) for e in engines]}
    finally:
        for engine in engines:
            engine.close()


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure everything, write the results, and return the results document.

    Raises
    ------
    resflow.errors.ConfigError
        before any work, when ``options.device`` is ``"cuda"`` and torch sees no GPU.
    """
    started = time.perf_counter()
    device = resolve_device(options.device)
    machine = describe_machine()
    cores = int(machine["cores"])
    load_before = load_average()
    step = _Steps(log)
    with tempfile.TemporaryDirectory(prefix="resflow-bench-") as tmp:
        work = Path(options.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        step(f"archive: mosaic x{options.scale} of {options.source or 'Atlanta'}")
        archive_path = scaled_archive(options.scale, work, chip=options.chip,
                                      source=options.source)
        archive = Archive.open(archive_path)
        gallery = Gallery.load(options.gallery)
        config = base_config(options, archive_path, cores, device)

        step(f"compute limit: preload windows, warm up on {cores} threads ({device})")
        data = Preloaded.read(archive, options.halo, options.window)
        warm_up(data, gallery, device)
        comparison = compare(options, config, archive, gallery, data, work, cores, device,
                             step)

        step(f"scaling x{'/x'.join(map(str, options.factors))} on {options.scaling_backend}")
        scaling = scaling_study(with_settings(config, backend=options.scaling_backend),
                                work, factors=options.factors, repeats=options.repeats,
                                cores=cores, chip=options.chip, source=options.source)

        sweeps = {}
        if not options.quick:
            step("sweeps")
            gpus = len(machine["gpus"]) if device.type == "cuda" else 0
            sweeps = run_sweeps(config, plan_sweeps(cores, gpus),
                                repeats=options.repeats, out_dir=work, cores=cores,
                                limit_pass=partial(one_pass, data, gallery, cores, device))

        step.done()
    results = {
        "mode": options.mode,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - started,
        "step_seconds": step.seconds,
        "machine": machine,
        "device": str(device),
        "load_average": {"before": load_before, "after": load_average()},
        "versions": collect_versions(),
        "options": json.loads(json.dumps(asdict(options), default=str)),
        "archive": {"scale": options.scale, "chips": comparison["limit"]["chips"],
                    "km2": comparison["limit"]["km2"],
                    "chip": options.chip, "source": "dihedral mosaic of the real "
                    f"{options.source or 'SpaceNet Atlanta'} tile"},
        **comparison,
        "ratios": ratios(comparison["engines"], comparison["limit"], comparison["baseline"]),
        "scaling": scaling,
        "sweeps": sweeps,
        "gpu_sweep": gpu_sweep(options, machine, device),
    }
    write_results(results, options.out)
    return results


def gpu_sweep(options: BenchOptions, machine: dict[str, Any], device: torch.device) -> str:
    """Whether the tasks-per-GPU sweep ran, and if not, why."""
    if not machine["gpus"]:
        return "skipped: no GPU on this machine, so tasks per GPU were not swept"
    if device.type != "cuda":
        return f"skipped: models ran on {device}, so tasks per GPU were not swept"
    if options.quick:
        return "skipped: quick mode runs no sweeps"
    return "run"


def ratios(engines: list[dict[str, Any]], limit: dict[str, Any],
           baseline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each engine's median area rate against the limit's and the hand-written loop's,
    with the issue-5 target where one is set."""
    limit_rate = limit["km2_per_s"]["median"]
    base_rate = baseline["km2_per_s"]["median"]
    out = {}
    for engine in engines:
        rate = engine["km2_per_s"]["median"]
        target = TARGETS.get(engine["label"])
        of_limit = rate / limit_rate
        out[engine["label"]] = {
            "of_limit": of_limit,
            "of_limit_range": [engine["km2_per_s"]["min"] / limit_rate,
                               engine["km2_per_s"]["max"] / limit_rate],
            "vs_hand_written": rate / base_rate,
            "target": target,
            "met": None if target is None else of_limit >= target,
        }
    return out


def write_results(results: dict[str, Any], out: Path) -> Path:
    """``bench-<mode>.json``, the plots and ``table.md`` under ``out``; returns the JSON."""
    from benchmarks.engine_study.plots import write_plots
    from benchmarks.engine_study.tables import markdown_tables

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{results['mode']}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    write_plots(results, out)
    (out / f"table-{results['mode']}.md").write_text(markdown_tables(results))
    return path
