"""Host cost of the mask step, in core-ms per 256-pixel chip, before and after its rewrite.

Every prediction window goes through :func:`resflow.masks.building_mask` on the host, so its
cost bounds how fast one host can feed a GPU. The Dhaka and Banepa places of ``places.json``
are mapped with the bundled gallery on the in-process engine and defaults (4 x 4-chip windows,
128-pixel halo); each window is cut from the stored probability with its halo (reflected past
the scene's edge, as a run reads it) and masked as a worker masks it (``min_building_m2`` at
the scene's resolution, roofs split by ``split_dip`` or not at all) by the current module and
by ``resflow/masks.py`` at :data:`BEFORE` (from git), which must give the same masks. Passes
alternate the two under a worker's malloc thresholds (:func:`resflow.allocator.steady_malloc`),
timed by ``time.process_time`` (one thread); median and fastest per chip mapped (halo paid for)
and per 256 x 256 pixels, with the load average. Needs ``../shared/data/fair`` and git history::

    python -m benchmarks.mask_cost --out benchmarks/results/mask_cost.json   # about 2 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

import resflow
from benchmarks.places import load_places
from resflow import masks
from resflow.allocator import steady_malloc
from resflow.archive import Archive
from resflow.chips import grid_shape, halo_indices
from resflow.config import IngestConfig, RunConfig
from resflow.ingestion import ingest

BEFORE = "b790ba4334b0ce34bf55ae19a62f0573e105f0e5"
"""The last commit of ``resflow/masks.py`` whose split walked union-find on Python lists."""

PLACES = ("dhaka", "banepa")
SETTINGS = ("threshold", "split_dip", "min_building_m2", "window", "halo")
"""The run's settings that shape the mask step (defaults)."""
NOT_MAPPED = 255
"""Stored probability of pixels outside the scene's data; masked as 0, as the run does."""


def module_at(commit: str) -> types.ModuleType:
    """``resflow/masks.py`` as it was at ``commit``, imported from git."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{commit}:resflow/masks.py"], cwd=root,
                            check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"masks_{commit[:7]}")
    exec(compile(source, f"{commit[:7]}:resflow/masks.py", "exec"), module.__dict__)
    return module


def windows(probability: np.ndarray, chip: int, size: int, halo: int
            ) -> list[tuple[np.ndarray, int]]:
    """The scene's prediction windows with their halo (as the run reads them) and the
    number of chips each maps."""
    height, width = probability.shape
    rows, cols = grid_shape(height, width, chip)
    found = []
    for y in range(0, rows, size):
        for x in range(0, cols, size):
            chip_rows, chip_cols = min(size, rows - y), min(size, cols - x)
            ys = halo_indices(y * chip, chip_rows * chip, halo, height)
            xs = halo_indices(x * chip, chip_cols * chip, halo, width)
            window = probability[np.ix_(ys, xs)]
            found.append((np.where(window == NOT_MAPPED, 0, window), chip_rows * chip_cols))
    return found


def mapped_windows(work: Path, config: RunConfig) -> dict[str, list[dict[str, Any]]]:
    """Map the places' scenes; each place's windows with the arguments the run masks with."""
    sources = {p.name: p.scenes for p in load_places() if p.name in PLACES}
    found: dict[str, list[dict[str, Any]]] = {}
    for place, scenes in sources.items():
        archive, out = work / f"{place}.zarr", work / f"{place}-maps.zarr"
        ingest(scenes, archive, IngestConfig())
        resflow.run(archive, out, backend="local", device="cpu", stac=False, overwrite=True)
        gsd = {name: info.gsd_m for name, info in Archive.open(archive).scenes.items()}
        chip = IngestConfig().chip
        tree = resflow.open_maps(out, mask_and_scale=False)
        for node in tree.children.values():
            smallest = masks.min_pixels(config.min_building_m2, gsd[node.attrs["scene"]])
            for window, chips in windows(node["probability"].values, chip, config.window,
                                         config.halo):
                found.setdefault(place, []).append(
                    {"probability": window, "chips": chips, "smallest": smallest})
    return found


def timed(module: types.ModuleType, found: list[dict[str, Any]], threshold: float,
          split: float) -> float:
    """CPU seconds of masking every window once."""
    start = time.process_time()
    for window in found:
        module.building_mask(window["probability"], threshold, window["smallest"],
                             split=split)
    return time.process_time() - start


def measure(found: dict[str, list[dict[str, Any]]], config: RunConfig, repeat: int
            ) -> dict[str, Any]:
    """Median and fastest pass per chip and per 256^2 pixels, for each place, version and
    split setting; refuses versions that disagree on any mask."""
    steady_malloc()
    versions = {"before": module_at(BEFORE), "after": masks}
    threshold = config.threshold * 254
    splits = {"split": config.split_dip * 254, "no split": 0.0}
    results: dict[str, Any] = {}
    for place, windows_ in found.items():
        for split in splits.values():
            for window in windows_:
                args = (window["probability"], threshold, window["smallest"])
                if not np.array_equal(versions["before"].building_mask(*args, split=split),
                                      masks.building_mask(*args, split=split)):
                    raise SystemExit(f"{place}: the two versions' masks differ")
        chips = sum(w["chips"] for w in windows_)
        pixels = sum(w["probability"].size for w in windows_) / 256**2
        seconds: dict[tuple[str, str], list[float]] = {}
        for _ in range(repeat):
            for version, module in versions.items():
                for setting, split in splits.items():
                    seconds.setdefault((version, setting), []).append(
                        timed(module, windows_, threshold, split))
        results[place] = {
            "windows": len(windows_), "chips": chips, "pixels_per_chip": round(
                pixels * 256**2 / chips),
            "mask_fraction": round(float(np.mean([(w["probability"] > threshold).mean()
                                                  for w in windows_])), 3),
            "core_ms": {f"{version}, {setting}": {
                "per_chip_median": round(statistics.median(s) * 1e3 / chips, 3),
                "per_chip_fastest": round(min(s) * 1e3 / chips, 3),
                "per_256px_median": round(statistics.median(s) * 1e3 / pixels, 3)}
                for (version, setting), s in seconds.items()}}
    return results


def table(results: dict[str, Any]) -> str:
    """A Markdown table: one row per place and split setting, before and after."""
    rows = ["| place (windows, chips) | split | before: core-ms per chip | after: core-ms "
            "per chip | after: per 256^2 px processed | speed-up |", "|---|---|---|---|---|---|"]
    for place, entry in results["places"].items():
        for setting in ("split", "no split"):
            before = entry["core_ms"][f"before, {setting}"]
            after = entry["core_ms"][f"after, {setting}"]
            rows.append(
                f"| {place} ({entry['windows']}, {entry['chips']}) | {setting} | "
                f"{before['per_chip_median']} ({before['per_chip_fastest']}) | "
                f"{after['per_chip_median']} ({after['per_chip_fastest']}) | "
                f"{after['per_256px_median']} | "
                f"{before['per_chip_median'] / after['per_chip_median']:.1f}x |")
    load = " to ".join(str(n) for n in results["load_average"])
    return "\n".join(rows) + (f"\n\nMedian of {results['repeat']} passes (fastest in brackets); "
                              f"load average {load} on {results['cpus']} cores.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--repeat", type=int, default=15, help="timed passes per setting")
    args = parser.parse_args()
    config = RunConfig()
    with tempfile.TemporaryDirectory(prefix="resflow-mask-cost-") as work:
        found = mapped_windows(Path(work), config)
    load = os.getloadavg()[0]
    places = measure(found, config, args.repeat)
    results = {"before": BEFORE, "repeat": args.repeat, "cpus": os.cpu_count(),
               "load_average": [round(load, 1), round(os.getloadavg()[0], 1)],
               "settings": {name: getattr(config, name) for name in SETTINGS},
               "places": places}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
