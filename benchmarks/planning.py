"""Driver cost as the archive grows: planning, output-store creation, per-scene overhead.

1. **Planning** on synthetic metadata (no pixels are needed to plan): 1,000, 10,000 and
   100,000 UTM scenes of 40 x 40 chips of 256 px, each size in a fresh process so its peak
   RSS is the planner's own. Target: 10,000 scenes in at most 60 s and 2 GiB, linear growth.
2. **Output-store creation** for the same metadata: seconds, objects written and bytes.
3. **Per-scene overhead** on real pixels: a mosaic of the Atlanta sample mapped on the local
   engine as one scene and as one-chip scenes (one GeoTIFF per chip): the difference in wall
   time over the number of scenes. Target: under 5 ms per scene for the run.

Usage (writes ``planning.json``, ``planning.md`` and ``planning.png`` to ``--out``)::

    python -m benchmarks.planning --out benchmarks/results            # about 10 minutes
    python -m benchmarks.planning --quick --out /tmp/planning          # a minute
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SCENE_CHIPS = 40  #: chips per side of a synthetic scene: 1,600 chips
CHIP = 256
GSD_M = 0.3
PARTITION_CHIPS = 16
SLOTS = 64  #: a mid-size cluster: 16 workers x 4 threads
TARGET_SCENES, TARGET_S, TARGET_GIB, TARGET_OVERHEAD_MS = 10_000, 60.0, 2.0, 5.0


def synthetic_scenes(n: int) -> dict[str, Any]:
    """``n`` scenes of metadata only, tiling UTM zone 31N on a grid, at 0.3 m."""
    from pyproj import CRS

    from resflow.archive_layout import SceneInfo

    wkt = CRS.from_epsg(32631).to_wkt()
    side = SCENE_CHIPS * CHIP
    per_row = int(np.ceil(np.sqrt(n)))
    scenes = {}
    for i in range(n):
        x0, y0 = 400_000 + (i % per_row) * side * GSD_M, 5_800_000 - (i // per_row) * side * GSD_M
        name = f"scene{i:06d}"
        scenes[name] = SceneInfo(
            name=name, height=side, width=side, band_names=("red", "green", "blue"),
            dtype="uint8", crs_wkt=wkt, transform=(GSD_M, 0.0, x0, 0.0, -GSD_M, y0),
            nodata=None, chip=CHIP, source=f"s3://imagery/{name}.tif", sha256="0" * 64,
            stats={}, rgb=(0, 1, 2), gsd_m=GSD_M, source_gsd_m=GSD_M)
    return scenes


def _plan_in_child(n: int, queue: Any) -> None:
    from resflow.planning import plan, shard_edge

    scenes = synthetic_scenes(n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    partitions = plan(scenes, shard_chips=shard_edge(PARTITION_CHIPS),
                      partition_chips=PARTITION_CHIPS, slots=SLOTS)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"scenes": n, "chips": n * SCENE_CHIPS ** 2, "partitions": len(partitions),
               "plan_s": seconds, "peak_rss_mib": peak / 1024,
               "plan_rss_mib": (peak - base) / 1024})


def measure_planning(n: int) -> dict[str, Any]:
    """Plan ``n`` synthetic scenes in a fresh process: seconds and peak RSS."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_plan_in_child, args=(n, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def measure_store(n: int, workdir: Path) -> dict[str, Any]:
    """Create the output store for ``n`` synthetic scenes: seconds, objects and bytes."""
    from resflow.archive import Archive
    from resflow.planning import shard_edge
    from resflow.store import lock
    from resflow.store.writer import OutputStore

    archive = Archive(workdir / "archive.zarr", synthetic_scenes(n), [])
    out = workdir / f"store-{n}.zarr"
    start = time.perf_counter()
    OutputStore.create(out, archive, run_config={"threshold": 0.5},
                       shard_chips=shard_edge(PARTITION_CHIPS), bucket_models={0: "mono"})
    seconds = time.perf_counter() - start
    files = [p for p in out.rglob("*") if p.is_file()]
    result = {"scenes": n, "create_s": seconds, "objects": len(files),
              "mib": sum(p.stat().st_size for p in files) / 2**20}
    shutil.rmtree(out)
    lock.release(out)  # the store's writer lock, which a run gives back when it ends
    return result


def _tiles(workdir: Path, side_chips: int) -> tuple[Path, Path]:
    """One GeoTIFF mosaic of ``side_chips``^2 chips of the Atlanta sample on the 0.3 m
    working grid, and the same pixels as one GeoTIFF per chip."""
    import rasterio

    from resflow.archive import Archive
    from resflow.config import IngestConfig
    from resflow.ingestion import ingest
    from resflow.samples import sample_path

    base = workdir / "atlanta.zarr"
    ingest([sample_path("atlanta-pan")], base, IngestConfig(chip=CHIP))
    archive = Archive.open(base)
    info = archive.scenes["sample_geotiff"]
    block = np.asarray(archive.image("sample_geotiff")[0, :5 * CHIP, :5 * CHIP])
    side = side_chips * CHIP
    reps = -(-side // block.shape[0])
    mosaic = np.tile(block, (reps, reps))[:side, :side]
    a, _, c, _, e, f = info.transform
    profile = {"driver": "GTiff", "count": 1, "dtype": mosaic.dtype.name, "crs": info.crs_wkt,
               "nodata": info.nodata, "tiled": True, "blockxsize": CHIP, "blockysize": CHIP}
    one = workdir / "one" / "mosaic.tif"
    one.parent.mkdir()
    with rasterio.open(one, "w", width=side, height=side,
                       transform=rasterio.Affine(a, 0, c, 0, e, f), **profile) as dst:
        dst.write(mosaic, 1)
    many = workdir / "many"
    many.mkdir()
    for row in range(side_chips):
        for col in range(side_chips):
            tile = mosaic[row * CHIP:(row + 1) * CHIP, col * CHIP:(col + 1) * CHIP]
            with rasterio.open(many / f"tile_{row:03d}_{col:03d}.tif", "w", width=CHIP,
                               height=CHIP, transform=rasterio.Affine(
                                   a, 0, c + col * CHIP * a, 0, e, f + row * CHIP * e),
                               **profile) as dst:
                dst.write(tile, 1)
    return one.parent, many


def measure_overhead(workdir: Path, side_chips: int) -> dict[str, Any]:
    """Ingest and map the same pixels as one scene and as one-chip scenes (local engine)."""
    from resflow.config import IngestConfig, RunConfig
    from resflow.graph import run_graph
    from resflow.ingestion import ingest
    from resflow.local import LocalExecutor

    one, many = _tiles(workdir, side_chips)
    n = side_chips ** 2
    result: dict[str, Any] = {"scenes": n, "chips": n}
    for label, source in (("one", one), ("many", many)):
        archive = workdir / f"{label}.zarr"
        start = time.perf_counter()
        ingested = ingest([source], archive, IngestConfig(chip=CHIP, gsd=GSD_M))
        result[f"ingest_{label}_s"] = time.perf_counter() - start
        assert ingested.ok, ingested.refused
        start = time.perf_counter()
        report = run_graph(RunConfig(archive=str(archive), out=str(workdir / f"{label}-maps.zarr"),
                                     backend="local", partition_chips=PARTITION_CHIPS,
                                     stac=False),
                           LocalExecutor(progress=False)).report
        result[f"run_{label}_s"] = time.perf_counter() - start
        assert report.chips == n, report.summary_line()
    for step in ("ingest", "run"):
        result[f"{step}_overhead_ms"] = 1e3 * (result[f"{step}_many_s"]
                                              - result[f"{step}_one_s"]) / (n - 1)
    return result


def growth(rows: list[dict[str, Any]], key: str) -> float:
    """Exponent ``k`` of ``value ~ scenes^k`` between the smallest and largest size."""
    first, last = rows[0], rows[-1]
    return float(np.log(last[key] / first[key]) / np.log(last["scenes"] / first["scenes"]))


def markdown(results: dict[str, Any]) -> str:
    """The tables of ``planning.md``."""
    lines = ["| scenes | chips | partitions | plan s | plan RSS MiB | peak RSS MiB |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in results["planning"]:
        lines.append(f"| {r['scenes']:,} | {r['chips']:,} | {r['partitions']:,} | "
                     f"{r['plan_s']:.2f} | {r['plan_rss_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
    lines += ["", f"Growth exponent (1 = linear): time {results['growth']['plan_s']:.2f}, "
              f"RSS {results['growth']['plan_rss_mib']:.2f}.", "",
              "| scenes | store created in s | objects | MiB |", "|---:|---:|---:|---:|"]
    for r in results["store"]:
        lines.append(f"| {r['scenes']:,} | {r['create_s']:.1f} | {r['objects']:,} | "
                     f"{r['mib']:.1f} |")
    o = results["overhead"]
    lines += ["", f"Per-scene overhead, {o['scenes']} one-chip scenes against the same pixels "
              "as one scene (local engine):", "",
              "| step | one scene s | one-chip scenes s | overhead ms per scene |",
              "|---|---:|---:|---:|"]
    for step in ("ingest", "run"):
        lines.append(f"| {step} | {o[f'{step}_one_s']:.1f} | {o[f'{step}_many_s']:.1f} | "
                     f"{o[f'{step}_overhead_ms']:.1f} |")
    t = results["targets"]
    lines += ["", f"Targets: plan {TARGET_SCENES:,} scenes in <= {TARGET_S:.0f} s "
              f"({'met' if t['plan_time'] else 'MISSED'}) and <= {TARGET_GIB:g} GiB "
              f"({'met' if t['plan_rss'] else 'MISSED'}), growing no faster than linearly "
              f"({'met' if t['linear'] else 'MISSED'}); run overhead < {TARGET_OVERHEAD_MS:g} "
              f"ms per scene ({'met' if t['overhead'] else 'MISSED'}).",
              "", f"Machine: {results['machine']}."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Planning time, planning RSS and store creation time against scenes, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    plans, stores = results["planning"], results["store"]
    series = ((axes[0], plans, "plan_s", "planning time (s)", TARGET_S),
              (axes[1], plans, "peak_rss_mib", "driver peak RSS (MiB)", TARGET_GIB * 1024),
              (axes[2], stores, "create_s", "output store creation (s)", None))
    for ax, rows, key, title, target in series:
        x = [r["scenes"] for r in rows]
        ax.loglog(x, [r[key] for r in rows], "o-", label="measured")
        ax.loglog(x, [rows[0][key] * s / x[0] for s in x], ":", color="grey", label="linear")
        if target:
            ax.axhline(target, color="red", lw=0.8, label=f"target at {TARGET_SCENES:,}")
        ax.set_xlabel("scenes (1,600 chips each)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true",
                        help="100 and 1,000 scenes; 4 x 4 one-chip scenes")
    parser.add_argument("--plan-sizes", type=int, nargs="+")
    parser.add_argument("--store-sizes", type=int, nargs="+")
    parser.add_argument("--tiles", type=int, help="one-chip scenes per side (default 16)")
    args = parser.parse_args()
    plan_sizes = args.plan_sizes or ([100, 1_000] if args.quick else [1_000, 10_000, 100_000])
    store_sizes = args.store_sizes or ([100, 1_000] if args.quick else [1_000, 10_000])
    tiles = args.tiles or (4 if args.quick else 16)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, CPU only, local disk",
                               "partition_chips": PARTITION_CHIPS, "slots": SLOTS}
    results["planning"] = [measure_planning(n) for n in plan_sizes]
    with tempfile.TemporaryDirectory(prefix="resflow-planning-") as tmp:
        results["store"] = [measure_store(n, Path(tmp)) for n in store_sizes]
        results["overhead"] = measure_overhead(Path(tmp), tiles)
    results["growth"] = {key: growth(results["planning"], key)
                         for key in ("plan_s", "plan_rss_mib")}
    at = next((r for r in results["planning"] if r["scenes"] == TARGET_SCENES), None)
    results["targets"] = {
        "plan_time": bool(at and at["plan_s"] <= TARGET_S),
        "plan_rss": bool(at and at["peak_rss_mib"] <= TARGET_GIB * 1024),
        "linear": all(v <= 1.1 for v in results["growth"].values()),
        "overhead": results["overhead"]["run_overhead_ms"] < TARGET_OVERHEAD_MS,
    }
    name = "planning-quick" if args.quick else "planning"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results))
    plot(results, args.out / f"{name}.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
