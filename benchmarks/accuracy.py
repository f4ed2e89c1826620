"""The accuracy study: how good are resflow's maps on places the models never saw?

The places of ``../shared/data/fair/places.json`` (drone imagery at 7-27 cm, OpenStreetMap
footprints; :mod:`benchmarks.places` skips one whose files are missing) and the bundled SpaceNet
Atlanta tile (0.5 m), ingested at ``--gsd``. ``lopo`` (leave one place out): a gallery trained on
the other places' train and validation bands, scored on all of the held-out place, mono against
the bucket ensemble. ``split``: one gallery trained on every place's train band, scored on each
place's test band (bottom 20 % of rows). Scores: ``resflow eval`` (objects matched one-to-one at
IoU >= 0.5) at the run's ``split_dip`` and ``min_building_m2``, over ``SPLIT_DIPS`` and 0, 4 and
8 m^2; ``lopo`` also scores each place at the dip best on the others (``split_chosen_elsewhere``)
so a place never picks its own. A fold whose gallery is in ``--work`` is only rescored. From the
repository root (``make accuracy`` runs the study behind docs/accuracy.md)::

    python -m benchmarks.accuracy --gsd 0.5 --study lopo --study split --jobs 2
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.places import ATLANTA, PLACES_JSON, Place, load_places
from resflow.config import IngestConfig
from resflow.errors import InputError
from resflow.ingestion import ingest
from resflow.training.metrics import Scores

COUNTS = ("tp", "fp", "fn", "object_tp", "object_fp", "object_fn")
#: Smallest building kept in the masks scored, m^2: the run default and two others.
MIN_AREAS = (0.0, 4.0, 8.0)
#: Probability dips that split touching roofs: none, the run default (0.1) and five others.
SPLIT_DIPS = (0.0, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


def study_places(path: Path = PLACES_JSON) -> list[Place]:
    """The places studied: those of ``places.json`` found on disk, then Atlanta."""
    try:
        return [*load_places(path), ATLANTA]
    except InputError as err:
        raise SystemExit(f"error: {err}") from None


def place_scenes(places: list[Place]) -> dict[str, list[str]]:
    """Archive scene names of each place."""
    return {place.name: place.scene_names for place in places}


def label_files(places: list[Place]) -> list[Path]:
    """The footprint files of every place; each labels the scenes its extent covers."""
    return [path for place in places for path in place.labels]


def build_archive(work: Path, gsd: float, chip: int, places: list[Place]) -> Path:
    """Ingest the places' scenes at ``gsd`` metres into ``work`` (skipped when current)."""
    out = work / f"places-{gsd:g}m-{chip}px.zarr"
    result = ingest([path for place in places for path in place.scenes], out,
                    IngestConfig(gsd=gsd, chip=chip))
    if result.refused:
        raise SystemExit(f"ingest refused inputs: {result.refused}")
    return out


def _fold(archive: Path, labels: list[Path], out: Path, scenes: list[str],
          holdout: list[str], settings: dict[str, Any],
          places: dict[str, list[str]]) -> dict[str, Any]:
    """Train one fold's gallery (unless ``out`` already holds it) and score it. ``places``
    (the training places' scenes) are what ``bucket_rule="nested"`` holds out in turn.

    The scores come from :func:`resflow.training.scoring.evaluate_gallery`, so a fold trained
    earlier is scored again with the current masking, at every ``MIN_AREAS`` value.
    """
    from resflow.training.scoring import evaluate_gallery
    from resflow.training.train import train

    start = time.perf_counter()
    if not (out / "metrics.json").is_file():
        train(archive, labels, out, seed=0, scenes=scenes or None, holdout=holdout,
              places=places, **settings)
    trained = json.loads((out / "metrics.json").read_text())
    metrics = evaluate_gallery(archive, labels, out, scenes=scenes or None,
                               holdout=holdout, sweep=MIN_AREAS, split_sweep=SPLIT_DIPS,
                               **settings)
    metrics.update(bucket_decisions=trained["bucket_decisions"], seconds=trained["seconds"],
                   wall_s=round(time.perf_counter() - start, 1))
    return metrics


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores of several scenes as one: counts summed, ratios recomputed."""
    return Scores(**{k: sum(int(s[k]) for s in summaries) for k in COUNTS}).summary()


def _row(place: str, kind: str, s: dict[str, Any]) -> dict[str, Any]:
    return {"place": place, "model": kind, "buildings": s["object_tp"] + s["object_fn"],
            "found": s["object_tp"], "predicted": s["object_tp"] + s["object_fp"],
            **{k: round(s[k], 3) for k in ("pixel_precision", "pixel_recall", "pixel_f1",
                                             "pixel_iou", "object_precision", "object_recall",
                                             "object_f1")}}


def lopo(archive: Path, work: Path, jobs: int, settings: dict[str, Any],
         places: list[Place]) -> dict[str, Any]:
    """Leave one place out: train on the other places, score the held-out one whole."""
    scenes = place_scenes(places)
    names = list(scenes)
    folds = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {place: pool.submit(
            _fold, archive, label_files(places), work / f"lopo-{place}",
            [s for p, held in scenes.items() if p != place for s in held], scenes[place],
            settings, {p: held for p, held in scenes.items() if p != place})
            for place in names}
        for place, future in futures.items():
            folds[place] = future.result()
    rows = [_row(place, kind, folds[place]["test"][kind])
            for place in names for kind in ("mono", "ensemble")]
    sweep = {m: [_row(place, kind, folds[place]["min_building_sweep"][m]["test"][kind])
                 for place in names for kind in ("mono", "ensemble")]
             for m in folds[names[0]]["min_building_sweep"]}
    dips = {d: [_row(place, kind, folds[place]["split_sweep"][d]["test"][kind])
                for place in names for kind in ("mono", "ensemble")]
            for d in folds[names[0]]["split_sweep"]}
    return {"rows": rows, "min_building_sweep": {m: means(r) for m, r in sweep.items()},
            "split_sweep": {d: means(r) for d, r in dips.items()},
            "split_chosen_elsewhere": chosen_elsewhere(dips),
            "folds": {p: {"decisions": f["bucket_decisions"],
                          "served": f["test_chips_served_by"],
                          "seconds": f["seconds"], "wall_s": f["wall_s"]}
                      for p, f in folds.items()}}


def chosen_elsewhere(dips: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each place scored at the split dip with the best mean object F1 over the *other*
    places, per model: the setting chosen without looking at the place it is scored on."""
    out: dict[str, dict[str, Any]] = {}
    for kind in ("mono", "ensemble"):
        f1 = {d: {r["place"]: r["object_f1"] for r in rows if r["model"] == kind}
              for d, rows in dips.items()}
        places = {}
        for place in dict.fromkeys(r["place"] for rows in dips.values() for r in rows):
            best = max(f1, key=lambda d: sum(v for p, v in f1[d].items() if p != place))
            places[place] = {"split_dip": float(best), "object_f1": f1[best][place]}
        mean = sum(p["object_f1"] for p in places.values()) / len(places)
        out[kind] = {"places": places, "mean_object_f1": round(mean, 3)}
    return out


def split(archive: Path, work: Path, settings: dict[str, Any],
          places: list[Place]) -> dict[str, Any]:
    """One gallery on the train bands of all places, scored on each place's test band."""
    metrics = _fold(archive, label_files(places), work / "split", [], [], settings,
                    place_scenes(places))

    def rows_of(scored: dict[str, Any]) -> list[dict[str, Any]]:
        return [_row(place, kind, combine([scored["test_scenes"][n][kind] for n in names
                                           if n in scored["test_scenes"]]))
                for place, names in place_scenes(places).items()
                for kind in ("mono", "ensemble")]

    return {"rows": rows_of(metrics),
            "min_building_sweep": {m: means(rows_of(scored))
                                   for m, scored in metrics["min_building_sweep"].items()},
            "split_sweep": {d: means(rows_of(scored))
                            for d, scored in metrics["split_sweep"].items()},
            "decisions": metrics["bucket_decisions"],
            "served": metrics["test_chips_served_by"], "seconds": metrics["seconds"]}


def means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean over places of pixel and object F1, per model."""
    out: dict[str, dict[str, float]] = {}
    for kind in ("mono", "ensemble"):
        mine = [r for r in rows if r["model"] == kind]
        out[kind] = {k: round(sum(r[k] for r in mine) / len(mine), 3)
                     for k in ("pixel_f1", "object_f1")}
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    """A table of rows, one per place and model."""
    head = ("| place | model | buildings | found | predicted | pixel P | pixel R | pixel F1 "
            "| pixel IoU | object P | object R | object F1 |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['place']} | {r['model']} | {r['buildings']} | {r['found']} | "
                     f"{r['predicted']} | {r['pixel_precision']:.3f} | {r['pixel_recall']:.3f} "
                     f"| {r['pixel_f1']:.3f} | {r['pixel_iou']:.3f} | "
                     f"{r['object_precision']:.3f} | {r['object_recall']:.3f} | "
                     f"{r['object_f1']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gsd", type=float, default=0.5, help="working ground resolution, m")
    parser.add_argument("--chip", type=int, default=128, help="chip edge, working pixels")
    parser.add_argument("--study", action="append", choices=("lopo", "split"))
    parser.add_argument("--jobs", type=int, default=2, help="folds trained in parallel")
    parser.add_argument("--work", type=Path, default=Path("work-tmp/accuracy"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--places", type=Path, default=PLACES_JSON,
                        help="the places studied (Atlanta, bundled, is always added)")
    parser.add_argument("--settings", type=json.loads, default={},
                        help="TrainConfig overrides as JSON, e.g. '{\"mono_steps\": 300}'")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    places = study_places(args.places)
    archive = build_archive(args.work, args.gsd, args.chip, places)
    result: dict[str, Any] = {"gsd_m": args.gsd, "chip": args.chip, "settings": args.settings,
                              "places": place_scenes(places)}
    text = [f"# Accuracy at {args.gsd:g} m, chip {args.chip}\n"]
    for study in args.study or ["lopo", "split"]:
        work = args.work / f"{args.gsd:g}m"
        found = (lopo(archive, work, args.jobs, args.settings, places) if study == "lopo"
                 else split(archive, work, args.settings, places))
        found["mean_over_places"] = means(found["rows"])
        result[study] = found
        text += [f"## {study}\n", markdown(found["rows"]), "",
                 f"mean over places: {found['mean_over_places']}\n",
                 f"by min_building_m2: {found['min_building_sweep']}\n",
                 f"by split_dip: {found['split_sweep']}\n"]
        if "split_chosen_elsewhere" in found:
            text.append(f"split_dip chosen on the other places: "
                        f"{found['split_chosen_elsewhere']}\n")
    result["wall_s"] = round(time.perf_counter() - start, 1)
    stem = f"accuracy-{args.gsd:g}m"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
