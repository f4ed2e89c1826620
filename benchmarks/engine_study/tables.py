"""Markdown tables of a benchmark's results, for the terminal and ``benchmarks/README.md``."""

from __future__ import annotations

from typing import Any

from resflow.report import STAGES


def _rate(summary: dict[str, Any], digits: int = 3) -> str:
    return (f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}-"
            f"{summary['max']:.{digits}f})")


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def machine_line(results: dict[str, Any]) -> str:
    """One line naming the hardware, the load and the versions that matter for speed."""
    m, v = results["machine"], results["versions"]
    gpu = ", ".join(m["gpus"]) or "no GPU"
    load = results["load_average"]
    return (f"{m['cpu_model']} ({m['torch_cpu_capability']}), {m['cores']} cores, "
            f"{m['memory_gib']} GiB, {gpu}; torch {v.get('torch')}, dask "
            f"{v.get('dask', '-')}, pyspark {v.get('pyspark', '-')}, Python {v['python']}; "
            f"load average {load['before'][0]} before, {load['after'][0]} after; "
            f"{results['archive']['chips']} chips, {results['archive']['km2']:.3f} km^2 "
            f"(x{results['archive']['scale']} {results['archive']['source']}), "
            f"{results['options']['repeats']} "
            f"repeats, {results['mode']} mode; models on {results['device']}, "
            f"batch size {results['options']['batch_size']}")


def rates_table(results: dict[str, Any]) -> str:
    """Series | km^2/s | chips/s | of limit (target) | vs hand-written | start-up | peak RSS |
    cores other work took (median over the repetitions)."""
    lines = ["| series | km^2/s median (min-max) | chips/s median | of limit (target) | "
             "vs hand-written | start-up s | worker peak MiB | others' cores |",
             "|---|---|---|---|---|---|---|---|"]
    limit, base = results["limit"], results["baseline"]
    lines.append(f"| compute limit ({limit['threads']} threads, preloaded) | "
                 f"{_rate(limit['km2_per_s'])} | {limit['chips_per_s']['median']:.2f} | 1.00 | "
                 f"{limit['km2_per_s']['median'] / base['km2_per_s']['median']:.2f} | - | - | "
                 f"{limit['others_cores']['median']:.2f} |")
    lines.append(f"| hand-written rasterio loop, mono ({base['threads']} torch threads) | "
                 f"{_rate(base['km2_per_s'])} | {base['chips_per_s']['median']:.2f} | "
                 f"{base['km2_per_s']['median'] / limit['km2_per_s']['median']:.2f} | 1.00 | "
                 f"- | - | {base['others_cores']['median']:.2f} |")
    for engine in results["engines"]:
        ratio = results["ratios"][engine["label"]]
        target = "" if ratio["target"] is None else \
            f" ({ratio['target']:.2f} {'met' if ratio['met'] else 'missed'})"
        memory = engine["memory"]
        lines.append(
            f"| {engine['label']} | {_rate(engine['km2_per_s'])} | "
            f"{engine['chips_per_s']['median']:.2f} | {ratio['of_limit']:.2f}{target} | "
            f"{ratio['vs_hand_written']:.2f} | {engine['startup_s']:.1f} | "
            f"{_mb(memory['worker_mb'] or memory['driver_mb'])} | "
            f"{engine['others_cores']['median']:.2f} |")
    return "\n".join(lines)


def stages_table(results: dict[str, Any]) -> str:
    """Seconds per stage (summed over tasks) of each engine's median run, and the limit's."""
    keys = list(STAGES)
    lines = ["| series | wall s | " + " | ".join(keys) + " | idle share |",
             "|---|---|" + "---|" * len(keys) + "---|"]
    limit = results["limit"]
    busy = sum(limit["stage_seconds"].values())
    idle = 1 - busy / (limit["wall_s"]["median"] * limit["threads"])
    lines.append(f"| compute limit | {limit['wall_s']['median']:.2f} | " + " | ".join(
        f"{limit['stage_seconds'].get(k, 0.0):.2f}" if k in limit["stage_seconds"] else "-"
        for k in keys) + f" | {max(0.0, idle):.2f} |")
    for engine in results["engines"]:
        seconds = engine["stage_seconds"]
        lines.append(f"| {engine['label']} | {engine['wall_s']['median']:.2f} | "
                     + " | ".join(f"{seconds.get(k, 0.0):.2f}" for k in keys)
                     + f" | {engine['stage_fractions']['idle']:.2f} |")
    return "\n".join(lines)


def scaling_table(results: dict[str, Any]) -> str:
    """Size | chips | km^2 | s per km^2 | worker peak MiB, and the spreads."""
    scaling = results["scaling"]
    lines = ["| size | chips | km^2 | s per km^2 median (min-max) | worker peak MiB | "
             "others' cores |", "|---|---|---|---|---|---|"]
    for size in scaling["sizes"]:
        lines.append(f"| x{size['factor']} | {size['chips']} | {size['km2']:.3f} | "
                     f"{_rate(size['s_per_km2'], 2)} | {_mb(size['worker_peak_mb'])} | "
                     f"{size['others_cores']['median']:.2f} |")
    lines.append(f"\nOn {scaling['backend']} ({scaling['engine']}): time per km^2 spread "
                 f"{scaling['time_spread']:.0%}, worker peak spread "
                 f"{scaling['memory_spread']:.0%} (target: both within 15%: "
                 f"{'met' if scaling['flat'] else 'missed'}).")
    return "\n".join(lines)


def sweeps_table(results: dict[str, Any]) -> str:
    """Every sweep point's median km^2/s and fraction of the limit (full mode)."""
    if not results["sweeps"]:
        return f"Sweeps: not run in {results['mode']} mode. GPU: {results['gpu_sweep']}."
    lines = ["| sweep | point | km^2/s median (min-max) | of limit (its own pass) | "
             "start-up s |", "|---|---|---|---|---|"]
    for name, points in results["sweeps"].items():
        for p in points:
            lines.append(f"| {name} | {p['label']} | {_rate(p['km2_per_s'])} | "
                         f"{p['of_limit']:.2f} | {p['startup_s']:.1f} |")
    return "\n".join(lines) + f"\n\nGPU: {results['gpu_sweep']}."


def markdown_tables(results: dict[str, Any]) -> str:
    """Every table of ``results``, headed by the machine line."""
    return "\n\n".join([machine_line(results), rates_table(results), stages_table(results),
                        scaling_table(results), sweeps_table(results)]) + "\n"
