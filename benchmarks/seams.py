"""Seam ratios of real maps, chip by chip against prediction windows, scene by scene.

Every scene of the demo (the bundled samples) and of the accuracy study (the places of
``places.json`` plus the Atlanta tile) is mapped twice with the bundled gallery on the
in-process engine: chip by chip with a 32-pixel halo (resflow before prediction windows)
and with the defaults (4 x 4-chip windows, 128-pixel halo). For each scene it reports the
seam ratio (:mod:`resflow.seams`) of the probability and of the mask under both, where the
chip grid shows (above 1.2 and above the same ratio on every off-grid line set, the
ratio's own noise at the scene's size), and the imagery's own ratio (its first band): small
or upsampled scenes vary by 0.8-1.9 before any model runs. Both runs' wall times are
reported too (``python -m benchmarks.engine_study.limit`` measures the compute cost).

``python -m benchmarks.seams --out benchmarks/results/seams.json`` (about 10 minutes on 2
cores); needs ``../shared/data/fair``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.places import ATLANTA, load_places
from resflow.archive import Archive
from resflow.config import IngestConfig, RunConfig
from resflow.graph import run_graph
from resflow.ingestion import ingest
from resflow.local import LocalExecutor
from resflow.samples import list_samples
from resflow.seams import scene_seams, seam_check, seams_summary
from resflow.store.writer import OutputStore

SETTINGS = {"chip by chip": {"window": 1, "halo": 32}, "windows": {}}
"""The two ways of mapping compared: keyword overrides of :class:`RunConfig`."""


def scene_sources() -> dict[str, list[Path]]:
    """The demo's rasters and the study's scenes, by where they come from."""
    places = [ATLANTA, *load_places()]
    return {"demo": [s.path for s in list_samples("raster")],
            "study": sorted({p for place in places for p in place.scenes})}


def map_ratios(archive: Path, out: Path, overrides: dict[str, Any]) -> tuple[dict, float]:
    """Map ``archive`` with the defaults plus ``overrides``; seam ratios per scene."""
    config = RunConfig(archive=archive, out=out, backend="local", device="cpu", stac=False,
                       overwrite=True, **overrides)
    start = time.perf_counter()
    run_graph(config, LocalExecutor(gpus=[], progress=False))
    wall = time.perf_counter() - start
    store = OutputStore.open(out)
    ratios = {}
    for scene in sorted(store.groups):
        array = store.read_array(scene, "probability")
        found = scene_seams(np.asarray(array[...]),
                            np.asarray(store.read_array(scene, "mask")[...]), array.chunks[0])
        ratios[scene] = seams_summary(found)
    return ratios, wall


def imagery_ratios(archive: Path) -> dict[str, float | None]:
    """Each mapped scene's own seam ratio (first stored band), before any model."""
    opened = Archive.open(archive)
    return {name: seam_check(np.asarray(opened.image(name)[0]), info.chip).on_grid.summary()
            for name, info in opened.scenes.items()}


def study(work: Path) -> dict[str, Any]:
    """Ingest every scene, map it both ways and collect the ratios."""
    found: dict[str, Any] = {"scenes": {}, "wall_s": {}}
    for origin, sources in scene_sources().items():
        archive = work / f"{origin}.zarr"
        ingest(sources, archive, IngestConfig(chip=256))
        imagery = imagery_ratios(archive)
        for name, overrides in SETTINGS.items():
            ratios, wall = map_ratios(archive, work / f"{origin}-{name}.zarr", overrides)
            found["wall_s"][f"{origin}, {name}"] = round(wall, 1)
            for scene, ratio in ratios.items():
                entry = found["scenes"].setdefault(scene, {"origin": origin,
                                                           "imagery": imagery[scene]})
                entry[name] = ratio
    return found


def table(found: dict[str, Any]) -> str:
    """A Markdown table of the ratios, one row per scene: each map's probability and mask
    ratio, the off-grid spread of the windowed map's (the ratio's own noise at the scene's
    size) and where the chip grid shows (above 1.2 and above every off-grid ratio)."""
    rows = ["| scene | from | imagery | chip by chip: probability / mask | windows: "
            "probability / mask | windows off grid: probability / mask | grid shows |",
            "|---|---|---|---|---|---|---|"]
    for scene, entry in found["scenes"].items():
        cells = [f"{entry[k]['probability']} / {entry[k]['mask']}" for k in SETTINGS]
        spread = [entry["windows"][f"{kind}_off_grid"] for kind in ("probability", "mask")]
        cells.append(" / ".join("-" if s is None else f"{s[0]:.2f}-{s[1]:.2f}"
                                for s in spread))
        cells.append(", ".join(f"{name}: {kind}" for name in SETTINGS
                               for kind in ("probability", "mask")
                               if entry[name][f"{kind}_grid_shows"]) or "no")
        rows.append(f"| {scene} | {entry['origin']} | {entry['imagery']} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="resflow-seams-") as work:
        found = study(Path(work))
    found["settings"] = {name: RunConfig(**overrides).model_dump(include={"window", "halo"})
                         for name, overrides in SETTINGS.items()}
    if args.out:
        args.out.write_text(json.dumps(found, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table(found) + "\n")
    print(table(found))
    print(found["wall_s"])


if __name__ == "__main__":
    main()
