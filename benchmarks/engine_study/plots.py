"""PNG plots of a benchmark's results (matplotlib, Agg: no display needed).

``rates.png``      area rate of the limit, the hand-written loop and each engine (median,
                   min-max bars), each engine's fraction of the limit written beside it;
``stages.png``     where each engine's core-seconds go, stage by stage, against the limit;
``scaling.png``    time per km^2 and worker peak RSS from x1 to x8, with the +-15% band;
``sweeps.png``     (full mode) the area rate at every point of every sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: plots are files
import matplotlib.pyplot as plt

from benchmarks.engine_study.scaling import FLAT_TOLERANCE
from resflow.report import STAGES

STAGE_COLOURS = dict(zip([*[s for s in STAGES if s != "scheduling"], "idle"],
                         ["#4c72b0", "#55a868", "#64b5cd", "#ccb974", "#c44e52",
                          "#937860", "#bbbbbb"], strict=True))


def _title(results: dict[str, Any]) -> str:
    m = results["machine"]
    gpu = ", ".join(m["gpus"]) or "no GPU"
    return (f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, {gpu} "
            f"- {results['archive']['chips']} chips, {results['archive']['km2']:.2f} km^2")


def plot_rates(results: dict[str, Any], path: Path) -> Path:
    """Horizontal bars of km^2/s, median with min-max, fraction of the limit annotated."""
    rows = [("compute limit", results["limit"]["km2_per_s"], None),
            ("hand-written loop (mono)", results["baseline"]["km2_per_s"], None)]
    rows += [(e["label"], e["km2_per_s"], results["ratios"][e["label"]]) for e in
             results["engines"]]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.6))
    for i, (_, rate, ratio) in enumerate(rows):
        colour = "#555555" if ratio is None else "#4c72b0"
        ax.barh(i, rate["median"], color=colour,
                xerr=[[rate["median"] - rate["min"]], [rate["max"] - rate["median"]]],
                capsize=3)
        note = "" if ratio is None else f"  {ratio['of_limit']:.2f} of limit"
        if ratio is not None and ratio["target"] is not None:
            note += f" (target {ratio['target']:.2f})"
        ax.text(rate["max"], i, note, va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("area rate, km^2/s (median, bars: min-max)")
    ax.set_xlim(0, max(r[1]["max"] for r in rows) * 1.45)
    ax.set_title(_title(results), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _limit_fractions(results: dict[str, Any]) -> dict[str, float]:
    limit = results["limit"]
    available = limit["wall_s"]["median"] * limit["threads"]
    fractions = {k: limit["stage_seconds"].get(k, 0.0) / available for k in STAGE_COLOURS
                 if k != "idle"}
    fractions["idle"] = max(0.0, 1.0 - sum(fractions.values()))
    return fractions


def plot_stages(results: dict[str, Any], path: Path) -> Path:
    """Stacked bars: share of the machine's core-seconds per stage, per engine and limit."""
    rows = [("compute limit", _limit_fractions(results))]
    rows += [(e["label"], e["stage_fractions"]) for e in results["engines"]]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.8))
    for i, (_, fractions) in enumerate(rows):
        left = 0.0
        for stage, colour in STAGE_COLOURS.items():
            width = fractions.get(stage, 0.0)
            ax.barh(i, width, left=left, color=colour,
                    label=stage if i == 0 else None)
            left += width
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of core-seconds during the run (wall x cores); idle = unused or "
                  "scheduling")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_title(_title(results), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scaling(results: dict[str, Any], path: Path) -> Path:
    """Time per km^2 and worker peak RSS against archive size, with the flatness band."""
    sizes = results["scaling"]["sizes"]
    factors = [s["factor"] for s in sizes]
    time_med = [s["s_per_km2"]["median"] for s in sizes]
    time_err = [[m - s["s_per_km2"]["min"] for m, s in zip(time_med, sizes, strict=True)],
                [s["s_per_km2"]["max"] - m for m, s in zip(time_med, sizes, strict=True)]]
    memory = [s["worker_peak_mb"] for s in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, values, label in ((axes[0], time_med, "time per km^2, s"),
                              (axes[1], memory, "peak RSS per worker, MiB")):
        low = min(values)
        ax.axhspan(low, low * (1 + FLAT_TOLERANCE), color="#55a868", alpha=0.15,
                   label=f"min to +{FLAT_TOLERANCE:.0%}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(factors, [f"x{f}" for f in factors])
        ax.set_ylabel(label)
        ax.set_xlabel("archive size (Atlanta tiles)")
        ax.set_ylim(0, max(values) * 1.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].errorbar(factors, time_med, yerr=time_err, marker="o", capsize=3)
    axes[1].plot(factors, memory, marker="o")
    fig.suptitle(f"scaling on {results['scaling']['backend']}: time spread "
                 f"{results['scaling']['time_spread']:.0%}, memory spread "
                 f"{results['scaling']['memory_spread']:.0%}\n{_title(results)}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweeps(results: dict[str, Any], path: Path) -> Path:
    """One panel per sweep: median km^2/s (min-max) per point, each point's own pass of the
    limit as a marker."""
    sweeps = results["sweeps"]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(3.6 * len(sweeps), 3.6), squeeze=False)
    for ax, (name, points) in zip(axes[0], sweeps.items(), strict=True):
        medians = [p["km2_per_s"]["median"] for p in points]
        err = [[m - p["km2_per_s"]["min"] for m, p in zip(medians, points, strict=True)],
               [p["km2_per_s"]["max"] - m for m, p in zip(medians, points, strict=True)]]
        ax.bar(range(len(points)), medians, yerr=err, capsize=3, color="#4c72b0")
        ax.plot(range(len(points)), [p["limit_km2_per_s"] for p in points], "_",
                color="#c44e52", markersize=18, mew=2, label="compute limit (its pass)")
        ax.set_xticks(range(len(points)), [p["label"] for p in points], rotation=30,
                      fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("km^2/s")
        ax.legend(fontsize=7)
    fig.suptitle(_title(results), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """All plots of ``results`` into ``out``, named ``<plot>-<mode>.png``."""
    mode = results["mode"]
    written = [plot_rates(results, out / f"rates-{mode}.png"),
               plot_stages(results, out / f"stages-{mode}.png"),
               plot_scaling(results, out / f"scaling-{mode}.png")]
    if results["sweeps"]:
        written.append(plot_sweeps(results, out / f"sweeps-{mode}.png"))
    return written
