"""``resflow run`` end to end on each engine, each run in its own process session.

A run is killed with its workers when it outlasts its timeout, and its log's last error
line is kept, so one hung or failing engine costs the check only its own figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.gpu_check.card import gpu_samples
from benchmarks.gpu_check.options import CheckOptions
from benchmarks.gpu_check.rates import rates, reference_scale

if TYPE_CHECKING:  # the check imports torch and resflow only once it runs
    import torch

    from resflow.archive import Archive


def resflow_command() -> list[str]:
    """The ``resflow`` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("resflow")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from resflow.cli import main; main()"]


def spark_missing() -> str | None:
    """Why Spark cannot run here, or ``None`` when it can."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java (java not on PATH, JAVA_HOME unset)"
    return None


def one_run(args: list[str], out: Path, log: Path, timeout_s: float) -> dict[str, Any]:
    """One ``resflow run`` writing ``out`` (removed first, so a report there is this run's),
    in its own session, killed with its workers on timeout: exit code, wall seconds of the
    process, the run report's figures and ``nvidia-smi`` samples (beside ``log``)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    with log.open("w") as output, gpu_samples(log.with_suffix(".smi.csv")) as samples:
        process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code: int | str = process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = "timeout"
    run: dict[str, Any] = {"rc": code, "process_wall_s": time.perf_counter() - start,
                           "nvidia_smi": samples}
    report = out / "run_report.json"
    if report.is_file():
        found = json.loads(report.read_text())
        run["report"] = {key: found.get(key) for key in
                         ("wall_s", "chips", "km2", "stage_seconds", "cluster", "backend")}
    if code != 0:
        text = log.read_text()
        # resflow's own refusals start "error:"; the CLI's usage errors come boxed
        lines = (line.strip("│╭╰─ ") for line in text.splitlines())
        errors = [line for line in lines if line.startswith(("error", "Invalid value"))]
        run["error"] = errors[-1] if errors else f"exit code {code}"
        run["log_tail"] = text[-2000:]
    return run


def engine_runs(backend: str, archive: Archive, device: torch.device, options: CheckOptions,
                work: Path, label: str | None = None) -> dict[str, Any]:
    """``resflow run`` on ``backend`` (an untimed cold run, then ``repeats`` timed ones),
    output stores under ``work``, logs under ``options.logs`` named by ``label`` (default:
    the backend); rates of the median run by its
    report's wall (planning to finalised store, as ``resflow bench`` times engines), and the
    median process wall (start-up included).

    A run that wrote every chip has a report even when it then failed (an export, say):
    its figures are kept, and ``status`` says ``failed`` with the run's last error line.
    """
    if backend == "spark" and (why := spark_missing()):
        return {"status": "skipped", "why": why}
    label = label or backend
    out = work / f"{label}.zarr"
    logs = options.logs
    # --no-stac: the STAC export needs pystac and geopandas, which the GPU host lacks
    args = [*resflow_command(), "run", str(archive.path), "--out", str(out), "--backend",
            backend, "--device", device.type, "--batch-size", str(options.engine_batch_size),
            "--no-stac", "--set", f"halo={options.halo}", "--set", f"window={options.window}"]
    if backend in ("dask", "spark"):
        args += ["--workers", str(options.workers)]
    if backend == "dask":  # a free port: a dashboard someone else left must not clash
        config = work / "dask.yaml"
        config.write_text("dask:\n  dashboard_address: 127.0.0.1:0\n")
        args += ["--config", str(config)]
    if options.gallery is not None:
        args += ["--gallery", str(options.gallery)]
    result: dict[str, Any] = {"command": " ".join(args)}
    if options.cold_run:
        result["cold"] = one_run(args, out, logs / f"{label}-cold.log", options.run_timeout_s)
    runs = [one_run(args, out, logs / f"{label}-{i}.log", options.run_timeout_s)
            for i in range(1, options.repeats + 1)]
    result["runs"] = runs
    chips = len(archive.chips())
    complete = [run for run in runs if run.get("report", {}).get("chips") == chips]
    failed = [run for run in runs if run["rc"] != 0]
    result["status"] = "failed" if failed else "ok"
    if failed:
        result["error"] = failed[-1]["error"]
    if complete:
        median = sorted(complete, key=lambda r: r["report"]["wall_s"])[len(complete) // 2]
        report = median["report"]
        result |= {"chips": report["chips"], "km2": report["km2"],
                   "report_wall_s": report["wall_s"],
                   "process_wall_s": statistics.median(r["process_wall_s"]
                                                       for r in complete),
                   **rates(report["chips"], report["km2"], report["wall_s"],
                           reference_scale(archive.chips(), archive)),
                   "stage_seconds": report["stage_seconds"], "cluster": report["cluster"],
                   "nvidia_smi": median["nvidia_smi"]}
    return result
