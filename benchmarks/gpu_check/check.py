"""The check's steps in order, each recorded whether it worked or failed.

On a GPU host borrowed for minutes one broken step must not cost the others' figures: a
failure is kept with its error and traceback and the next step runs.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.archive import find_archive, replicate
from benchmarks.gpu_check.card import environment
from benchmarks.gpu_check.compare import batch_invariance, compare_devices
from benchmarks.gpu_check.engines import engine_runs
from benchmarks.gpu_check.input_route import input_route
from benchmarks.gpu_check.options import CheckOptions
from benchmarks.gpu_check.rates import reference_scale
from benchmarks.gpu_check.report import write_summary
from benchmarks.gpu_check.sweep import batch_sweep
from benchmarks.gpu_check.windows import first_chips, repeated_chips


def run_check(options: CheckOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every step of the check in turn, the summary rewritten after each.

    A step that fails is recorded with its error and the next one still runs: on a GPU
    host borrowed for minutes, one broken step must not cost the others' figures.
    """
    import torch

    from resflow.devices import resolve_device

    started = time.perf_counter()
    summary: dict[str, Any] = {"options": json.loads(json.dumps(asdict(options), default=str)),
                               "steps": {}, "engines": {}}

    def step(name: str, work: Callable[[], Any], into: dict[str, Any] | None = None,
             key: str | None = None) -> Any:
        """Run ``work``, keep its result at ``into[key]`` (default: the summary's ``name``)."""
        log(f"[gpu-check] {name}")
        begun = time.perf_counter()
        record: dict[str, Any] = {"status": "ok"}
        result = None
        try:
            result = work()
            (summary if into is None else into)[key or name] = result
        except Exception as exc:  # recorded in the summary; the other steps still run
            record = {"status": "failed", "error": f"{exc.__class__.__name__}: {exc}",
                      "traceback": traceback.format_exc()}
            log(f"[gpu-check] {name} failed: {record['error']}")
        summary["steps"][name] = record | {"seconds": time.perf_counter() - begun}
        summary["finished_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
        summary["duration_s"] = time.perf_counter() - started
        write_summary(summary, options.out)
        return result

    options.logs.mkdir(parents=True, exist_ok=True)
    chosen = step("device", lambda: str(resolve_device(options.device)))
    if chosen is None:
        return summary
    device = torch.device(chosen)
    step("environment", lambda: environment(device))
    loaded: dict[str, Any] = {}
    if step("archive", lambda: load_archive(options, loaded)) is None:
        return summary
    archive, gallery, data = loaded["archive"], loaded["gallery"], loaded["data"]
    compared = first_chips(data, options.compare_chips)
    step("comparison", lambda: compare_devices(compared, gallery, device, options))
    step("input_route", lambda: input_route(compared, device, options))
    step("batch_invariance", lambda: batch_invariance(compared, gallery, device, options))
    swept = repeated_chips(data, options.sweep_chips)
    step("batch_sweep", lambda: batch_sweep(swept, archive, gallery, device, options))
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the engines' own processes need the memory
    with tempfile.TemporaryDirectory(prefix="resflow-gpu-check-") as work:
        for backend in options.engines:
            step(f"engine {backend}",
                 lambda backend=backend: engine_runs(backend, archive, device, options,
                                                     Path(work)),
                 into=summary["engines"], key=backend)
        if options.large_run_chips:
            step("engine dask, large archive",
                 lambda: large_run(archive, device, options, Path(work)),
                 into=summary["engines"], key="dask large")
    return summary


def large_run(archive: Any, device: Any, options: CheckOptions, work: Path) -> dict[str, Any]:
    """One timed Dask run over the archive replicated to ``options.large_run_chips`` chips
    (the kernels are warm from the engine runs before it)."""
    from resflow.archive import Archive

    large = Archive.open(replicate(archive.path, options.large_run_chips,
                                   work / "large" / archive.path.name))
    return engine_runs("dask", large, device, replace(options, repeats=1, cold_run=False),
                       work, label="dask-large")


def load_archive(options: CheckOptions, loaded: dict[str, Any]) -> dict[str, Any]:
    """Open the archive and the gallery and preload every prediction window (into
    ``loaded``: archive, gallery, data); returns the archive's description for the
    summary."""
    from benchmarks.engine_study.limit import Preloaded
    from resflow.archive import Archive
    from resflow.gallery import Gallery

    archive = Archive.open(find_archive(options.archive))
    refs = archive.chips()
    loaded |= {"archive": archive, "gallery": Gallery.load(options.gallery),
               "data": Preloaded.read(archive, options.halo, options.window)}
    km2 = float(sum(r.km2 for r in refs))
    return {"path": str(archive.path), "chips": len(refs), "km2": km2,
            "gsd_m": statistics.fmean(archive.scenes[r.scene].gsd_m for r in refs),
            "km2_at_0_5m": km2 * reference_scale(refs, archive)}
