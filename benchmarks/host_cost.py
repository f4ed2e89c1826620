"""What the host costs per chip, end to end on every engine, with the models replayed.

resflow should feed a GPU thousands of 256-px chips a second, so all but the network must cost
little. The Dhaka and Banepa places (:mod:`benchmarks.host_archives`) are mapped once with the
bundled gallery's models, their outputs taped (:mod:`benchmarks.host_replay`), then on each engine
with the models replayed (:mod:`benchmarks.host_engines`), which must give the real store bit for
bit. CPU ms per 256-px chip (stage clocks on ``time.process_time``, one task slot per process):
read; harmonise, routing: ``stage1``, ``stage2`` less the replayed lookups; mask
(:class:`resflow.store.mask_rule.MaskRule`, timed in ``stage3``); quantise: ``stage3`` less mask
and lookup (sigmoid, uint8, threshold); write; scheduling: the rest of the CPU of this process and
all it started (psutil). Per scene: a Banepa square as one scene against ``tiles x tiles``
one-chip scenes (:data:`PER_SCENE_RUN`); STAC export off. Needs ``../shared/data/fair``:
``python -m benchmarks.host_cost --out benchmarks/results/host_cost.json`` (about 5 minutes on
2 cores; ``--quick``: 2 repeats, local and Dask).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.engine_study.contention import contention, ours_during, ours_s
from benchmarks.engine_study.machine import describe_machine
from benchmarks.host_archives import place_archive, scene_and_tiles
from benchmarks.host_engines import (
    MASK,
    ReplayingExecutor,
    put_gallery,
    start_engine,
)
from benchmarks.host_replay import REPLAY_DECODE, REPLAY_KEYS, RecordingGallery, Tape
from resflow.config import RunConfig
from resflow.executor import Executor

ENGINES = ("local", "dask", "spark")
CATEGORIES = ("read", "harmonise", "routing", "mask", "quantise", "write", "scheduling")
CLOCKS = ("read", "stage1", "stage2", "regroup", "stage3", "write")
#: All host work per 256-px chip, core-ms, on this CPU.
TARGET_CHIP_MS = 2.0
#: CPU cost of one more scene of the same pixels, ms.
TARGET_SCENE_MS = 5.0
#: The per-scene pair: a square of this scene, this many pixels a side, cut in tiles x tiles.
SCENE, EDGE, TILES = "banepa-1", 1024, 8
#: The per-scene pair's runs: one chip per window and no halo, so both archives read the
#: same chunks (a tile's halo would be reflected from its own chip, the scene's read from
#: its neighbours) and the difference is the scenes alone.
PER_SCENE_RUN = {"window": 1, "halo": 0}


def run_config(archive: Path, out: Path, backend: str, **settings: Any) -> RunConfig:
    """A run of the defaults on the CPU, over ``archive`` into ``out`` (overwritten)."""
    return RunConfig(archive=archive, out=out, backend=backend, device="cpu", stac=False,
                     overwrite=True, **settings)


def gallery_version(config: RunConfig) -> str:
    from resflow.inference.caches import gallery_key

    return gallery_key(config.gallery)[1]


def record(config: RunConfig, tape: Path) -> None:
    """Map ``config.archive`` into ``config.out`` with the real models on the local engine,
    their outputs kept in the tape file ``tape`` (``.npz``)."""
    from resflow.gallery import Gallery
    from resflow.graph import run_graph
    from resflow.inference.caches import gallery_folder
    from resflow.local import LocalExecutor

    version = gallery_version(config)
    recorded = Tape()
    real = Gallery.load(gallery_folder(config.gallery))
    put_gallery(RecordingGallery(real, recorded), config.gallery, version)
    try:
        result = run_graph(config, LocalExecutor(gpus=[], progress=False))
    finally:
        put_gallery(None, config.gallery, version)
    if not result.totals.complete:
        raise SystemExit(f"the recording run over {config.archive} failed: "
                         f"{result.report.errors[:3]}")
    recorded.save(tape)


def different_arrays(real: Path, replayed: Path) -> list[str]:
    """The arrays of the output store ``replayed`` whose values differ from ``real``'s (or
    that only one of them has): empty when the maps are the same bit for bit."""
    import zarr

    stores = [zarr.open_group(str(path), mode="r") for path in (real, replayed)]
    names = [{name for name, node in store.members(max_depth=None)
              if isinstance(node, zarr.Array)} for store in stores]
    return sorted((names[0] ^ names[1]) | {
        name for name in names[0] & names[1]
        if not np.array_equal(stores[0][name][...], stores[1][name][...])})


def replayed_run(config: RunConfig, executor: Executor) -> dict[str, Any]:
    """One run with the models replayed: CPU seconds of every process, the stage clocks in
    CPU seconds, wall time, others' cores and the load average."""
    from resflow.graph import run_graph

    load = os.getloadavg()[0]
    before = ours_s()
    with contention() as record_:
        result = run_graph(config, executor)
    cpu = ours_during(before, ours_s())
    if not result.totals.complete:
        raise SystemExit(f"a replayed run over {config.archive} failed: "
                         f"{result.report.errors[:3]}")
    return {"cpu_s": cpu, "chips": result.report.chips, "scenes": len(result.totals.scenes),
            "stage_seconds": dict(result.report.stage_seconds), "load_average": load,
            **record_}


def breakdown(run: dict[str, Any]) -> dict[str, float]:
    """A run's host CPU seconds per category (module doc), ``replay`` and ``host``."""
    s = {key: run["stage_seconds"].get(key, 0.0) for key in
         (*CLOCKS, MASK, *REPLAY_KEYS.values(), REPLAY_DECODE)}
    replay = {stage: s[f"replay-{stage}"] for stage in ("stage1", "stage2", "stage3")}
    parts = {"read": s["read"], "harmonise": s["stage1"] - replay["stage1"],
             "routing": s["stage2"] - replay["stage2"], "mask": s[MASK],
             "quantise": s["stage3"] - s[MASK] - replay["stage3"], "write": s["write"],
             "scheduling": run["cpu_s"] - sum(s[key] for key in CLOCKS)}
    return {**parts, "replay": sum(replay.values()), "host": sum(parts.values())}


def per_chip(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Core-ms per chip per category of the run with the median host total, and the host
    total's median, min and max over the runs."""
    parts = [breakdown(run) for run in runs]
    chips = runs[0]["chips"]
    totals = [p["host"] * 1e3 / chips for p in parts]
    median = parts[totals.index(sorted(totals)[len(totals) // 2])]
    return {"chips": chips, "core_ms": {k: round(v * 1e3 / chips, 3) for k, v in median.items()},
            "host_ms": {"median": round(statistics.median(totals), 3),
                        "min": round(min(totals), 3), "max": round(max(totals), 3)}}


def per_scene(one: list[dict[str, Any]], tiles: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU ms per extra scene: the median host total of the tiles' runs less the single
    scene's, over the scenes added; per category too."""
    extra = tiles[0]["scenes"] - one[0]["scenes"]
    medians = [{k: statistics.median(breakdown(r)[k] for r in runs)
                for k in (*CATEGORIES, "host")} for runs in (one, tiles)]
    return {"scenes": [one[0]["scenes"], tiles[0]["scenes"]], "chips": one[0]["chips"],
            "host_ms": [round(m["host"] * 1e3, 1) for m in medians],
            "ms_per_scene": round((medians[1]["host"] - medians[0]["host"]) * 1e3 / extra, 3),
            "by_category": {k: round((medians[1][k] - medians[0][k]) * 1e3 / extra, 3)
                            for k in CATEGORIES}}


def bench_engine(engine: str, configs: dict[str, RunConfig], real: dict[str, Path],
                 tape: Path, repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Start ``engine``, run each archive once untimed (checking its maps equal the real
    run's), then ``repeats`` rounds of one timed run per archive."""
    executor = start_engine(engine)
    first = next(iter(configs.values()))
    replaying = ReplayingExecutor(executor, tape, first.gallery, gallery_version(first))
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in configs}
    try:
        for label, config in configs.items():
            replayed_run(config, replaying)
            if differ := different_arrays(real[label], Path(str(config.out))):
                raise SystemExit(f"{engine}: the replayed {label} maps differ from the real "
                                 f"run's in {differ[:5]}")
        for _ in range(repeats):
            for label, config in configs.items():
                runs[label].append(replayed_run(config, replaying))
    finally:
        executor.close()
    return runs


def measure(work: Path, engines: list[str], repeats: int) -> dict[str, Any]:
    """Record the three archives with the real models, then time every engine on them."""
    places = place_archive(work)
    one, tiles = scene_and_tiles(work, places, scene=SCENE, edge=EDGE, tiles=TILES)
    archives = {"places": (places, {}), "one scene": (one, PER_SCENE_RUN),
                "tiles": (tiles, PER_SCENE_RUN)}
    tape, real = work / "tape", {}
    tape.mkdir()
    for index, (label, (archive, settings)) in enumerate(archives.items()):
        real[label] = work / f"real-{index}.zarr"
        record(run_config(archive, real[label], "local", **settings), tape / f"{index}.npz")
    results: dict[str, Any] = {}
    for engine in engines:
        configs = {label: run_config(archive, work / f"{engine}-{index}.zarr", engine,
                                     **settings)
                   for index, (label, (archive, settings)) in enumerate(archives.items())}
        runs = bench_engine(engine, configs, real, tape, repeats)
        results[engine] = {"per_chip": per_chip(runs["places"]),
                           "per_scene": per_scene(runs["one scene"], runs["tiles"]),
                           "runs": runs}
    return results


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "missed"


def table(results: dict[str, Any]) -> str:
    """Markdown: core-ms per 256-px chip per category and engine, per-scene overhead, and
    the targets met or missed."""
    head = ["engine", *CATEGORIES, "host total (min-max)", f"<= {TARGET_CHIP_MS:g}",
            "ms per extra scene", f"<= {TARGET_SCENE_MS:g}"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for engine, entry in results["engines"].items():
        chip, scene = entry["per_chip"], entry["per_scene"]
        host = chip["host_ms"]
        rows.append("| " + " | ".join([
            engine, *(f"{chip['core_ms'][k]:.2f}" for k in CATEGORIES),
            f"{host['median']:.2f} ({host['min']:.2f}-{host['max']:.2f})",
            verdict(host["median"], TARGET_CHIP_MS), f"{scene['ms_per_scene']:.1f}",
            verdict(scene["ms_per_scene"], TARGET_SCENE_MS)]) + " |")
    first = next(iter(results["engines"].values()))
    loads = [run["load_average"] for entry in results["engines"].values()
             for runs in entry["runs"].values() for run in runs]
    return "\n".join(rows) + (
        f"\n\nCPU ms per 256-px chip mapped ({first['per_chip']['chips']} chips of "
        f"{results['places']}), median of {results['repeats']} runs, models replayed; "
        f"per-scene overhead: {SCENE} {EDGE} px square as 1 scene against "
        f"{TILES * TILES} one-chip scenes ({first['per_scene']['chips']} chips, one per "
        f"window, no halo). Load average {min(loads):.1f}-{max(loads):.1f} on {results['cpus']} "
        "cores while timing.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (and .md)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per archive")
    parser.add_argument("--engine", action="append", choices=ENGINES, default=None,
                        help="engine to measure (repeatable; default: all)")
    parser.add_argument("--quick", action="store_true", help="2 repeats, local and dask")
    args = parser.parse_args()
    engines = args.engine or (["local", "dask"] if args.quick else list(ENGINES))
    repeats = 2 if args.quick else args.repeats
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="resflow-host-cost-") as work:
        engines_results = measure(Path(work), engines, repeats)
    results = {"repeats": repeats, "cpus": os.cpu_count(), "machine": describe_machine(),
               "places": "dhaka and banepa at 0.3 m",
               "clock": "CPU seconds (time.process_time per worker process; psutil for the "
                        "whole run)", "targets": {"chip_ms": TARGET_CHIP_MS,
                                                  "scene_ms": TARGET_SCENE_MS},
               "minutes": round((time.perf_counter() - start) / 60, 1),
               "engines": engines_results}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
