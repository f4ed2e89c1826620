"""The check's summary as JSON and Markdown: headline figures first, then each step's.

The summary is rewritten after every step, so a check stopped part way on a borrowed GPU
host still leaves what it measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.rates import REFERENCE_GSD_M, RESFLOW_KM2_PER_S


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The figures to read first: the best batch size of the stage functions and each
    engine end to end, each against RESFlow's 5.245 km^2/s at 0.5 m."""
    found: dict[str, Any] = {"card": summary.get("environment", {}).get("card"),
                             "resflow_reported_km2_per_s": RESFLOW_KM2_PER_S,
                             "reference_gsd_m": REFERENCE_GSD_M}
    if summary.get("batch_sweep"):
        best = max(summary["batch_sweep"], key=lambda p: p["chips_per_s"])
        found["stages_best"] = {key: best[key] for key in (
            "batch_size", "precision", "chips_per_s", "km2_per_s", "km2_per_s_at_0_5m",
            "of_resflow")}
    found["engines"] = {name: {key: run.get(key) for key in (
        "status", "chips_per_s", "km2_per_s", "km2_per_s_at_0_5m", "of_resflow")}
        for name, run in summary.get("engines", {}).items()}
    return found


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value else f"{value:.{digits}f}"
    return str(value)


def _smi(samples: dict[str, Any] | None) -> str:
    if not samples or "skipped" in samples or not samples.get("utilization_pct"):
        return "-"
    util, memory = samples["utilization_pct"], samples["memory_used_mib"]
    return f"{util['mean']:.0f} / {util['max']:.0f} %, {memory['max']:.0f} MiB"


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables: headline, CPU against the device, batch invariance,
    batch sweep, engines, steps."""
    env = summary.get("environment", {})
    versions = env.get("versions", {})
    archive = summary.get("archive", {})
    lines = ["# resflow GPU check", ""]
    if env.get("rehearsal", True):
        lines += ["**Rehearsal on the CPU: no GPU figures here.**", ""]
    cuda = f", CUDA {versions['torch_cuda']}" if versions.get("torch_cuda") else ""
    lines += [f"{env.get('card', '?')} ({env.get('device', '?')}, {env.get('precision', '?')});"
              f" torch {versions.get('torch', '?')}{cuda}, Python {versions.get('python', '?')};"
              f" archive {archive.get('chips', '?')} chips, {_num(archive.get('km2'), 3)} km^2"
              f" at {_num(archive.get('gsd_m'))} m"
              f" ({_num(archive.get('km2_at_0_5m'), 3)} km^2 at 0.5 m); "
              f"finished {summary.get('finished_utc', '-')}", ""]
    top = summary.get("headline", {})
    lines += ["## Headline", "",
              "| series | chips/s | km^2/s | km^2/s at 0.5 m | of RESFlow's 5.245 |",
              "|---|---|---|---|---|"]
    if "stages_best" in top:
        best = top["stages_best"]
        lines.append(f"| stage functions, preloaded, batch size {best['batch_size']}, "
                     f"{best['precision']} | "
                     f"{_num(best['chips_per_s'])} | {_num(best['km2_per_s'], 3)} | "
                     f"{_num(best['km2_per_s_at_0_5m'], 3)} | {_num(best['of_resflow'])} |")
    for name, engine in top.get("engines", {}).items():
        lines.append(f"| {name} end to end ({engine['status']}) | "
                     f"{_num(engine['chips_per_s'])} | {_num(engine['km2_per_s'], 3)} | "
                     f"{_num(engine['km2_per_s_at_0_5m'], 3)} | {_num(engine['of_resflow'])} |")
    if "comparison" in summary:
        comparison = summary["comparison"]
        lines += ["", f"## CPU (float32) against {comparison['device']}", "",
                  f"{comparison['windows']} prediction windows ({comparison['chips']} chips), "
                  f"batch size {comparison['batch_size']}; "
                  f"bit for bit equal: {_num(comparison['bitwise_equal'])}.", "",
                  "| measure | value | tolerance | within |", "|---|---|---|---|"]
        for measure, (op, bound) in comparison["tolerances"].items():
            lines.append(f"| {measure} | {_num(comparison[measure], 4)} | {op} {bound} | "
                         f"{_num(comparison['within'][measure])} |")
        for measure in ("feature_max_abs", "feature_relative_l2_max", "probability_max_abs",
                        "mask_iou"):
            lines.append(f"| {measure} | {_num(comparison[measure], 4)} | - | - |")
    if "input_route" in summary:
        route = summary["input_route"]
        size, rate = route["bytes_per_window"], route["chips_per_s"]
        lines += ["", f"## Into the models on {route['device']}: stored pixels against "
                  "host float32", "",
                  f"{route['windows']} prediction windows ({route['chips']} chips), one a "
                  f"block; blocks bit for bit equal: {_num(route['blocks_bitwise_equal'])}; "
                  "quantise and threshold bit for bit equal: "
                  f"{_num(route['quantise_bitwise_equal'])}.", "",
                  "| route | bytes a window sent | blocks chips/s |", "|---|---|---|",
                  f"| stored dtype, harmonised on the device | {_num(size['sent'], 0)} | "
                  f"{_num(rate['device'])} |",
                  f"| float32, harmonised on the host | {_num(size['float32'], 0)} | "
                  f"{_num(rate['host'])} |"]
    if "batch_invariance" in summary:
        invariance = summary["batch_invariance"]
        lines += ["", f"## Batch invariance on {invariance['device']}", "",
                  "| batch size | against | bit for bit | features max abs | "
                  "probability max abs |", "|---|---|---|---|---|"]
        lines += [f"| {p['batch_size']} | {p['against']} | {_num(p['bitwise_equal'])} | "
                  f"{_num(p['feature_max_abs'], 3)} | {_num(p['probability_max_abs'], 3)} |"
                  for p in invariance["points"]]
    if summary.get("batch_sweep"):
        lines += ["", "## Batch sweep: stage functions on preloaded prediction windows, one "
                  "thread", "",
                  "| batch size | precision | chips | chips/s (min-max) | km^2/s | "
                  "km^2/s at 0.5 m | stage 1 / 2 / 3 s | peak device MiB | "
                  "GPU util mean / max, memory |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in summary["batch_sweep"]:
            span, stages = p["chips_per_s_range"], p["stage_seconds"]
            lines.append(
                f"| {p['batch_size']} | {p['precision']} | {p['chips']} | "
                f"{_num(p['chips_per_s'])} "
                f"({_num(span['min'])}-{_num(span['max'])}) | {_num(p['km2_per_s'], 3)} | "
                f"{_num(p['km2_per_s_at_0_5m'], 3)} | {stages['stage1']:.2f} / "
                f"{stages['stage2']:.2f} / {stages['stage3']:.2f} | "
                f"{_num(p['peak_device_mib'], 0)} | {_smi(p['nvidia_smi'])} |")
    if summary.get("engines"):
        lines += ["", "## Engines: `resflow run` end to end", "",
                  "| engine | status | runs ok | chips | run wall s | process wall s | "
                  "chips/s | km^2/s | km^2/s at 0.5 m | GPU util mean / max, memory |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, engine in summary["engines"].items():
            if engine["status"] == "skipped":
                lines.append(f"| {name} | skipped: {engine['why']} |" + " - |" * 8)
                continue
            good = sum(1 for r in engine["runs"] if r["rc"] == 0)
            status = engine["status"]
            if "error" in engine:
                status += f" ({engine['error'].replace('|', '/')})"
            lines.append(
                f"| {name} | {status} | {good}/{len(engine['runs'])} | "
                f"{_num(engine.get('chips'))} | {_num(engine.get('report_wall_s'))} | "
                f"{_num(engine.get('process_wall_s'))} | {_num(engine.get('chips_per_s'))} | "
                f"{_num(engine.get('km2_per_s'), 3)} | "
                f"{_num(engine.get('km2_per_s_at_0_5m'), 3)} | "
                f"{_smi(engine.get('nvidia_smi'))} |")
        lines += ["", "Run wall: the run report's (planning to finalised store); process "
                  "wall adds start-up (imports, cluster, CUDA context). Rates use run wall, "
                  "and are kept for a run that wrote every chip and failed after."]
    lines += ["", "## Steps", "", "| step | status | seconds | error |", "|---|---|---|---|"]
    for name, step in summary.get("steps", {}).items():
        lines.append(f"| {name} | {step['status']} | {step['seconds']:.1f} | "
                     f"{step.get('error', '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], out: Path) -> None:
    """``gpu-check.json`` and ``gpu-check.md`` under ``out`` (rewritten after every step, so
    a check stopped part way still leaves what it measured)."""
    summary["headline"] = headline(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "gpu-check.md").write_text(markdown(summary))


def check_failed(summary: dict[str, Any]) -> bool:
    """Whether a step failed or an engine run did not finish cleanly."""
    return (any(s["status"] != "ok" for s in summary["steps"].values())
            or any(e["status"] == "failed" for e in summary.get("engines", {}).values()))
