"""Train a model gallery from an archive and building labels, and score it honestly.

``train`` runs the whole offline pipeline: Lite0 features of the training chips ->
k-means buckets and the hashing head, fitted on training chips only -> the mono decoder on
the train region of every labelled scene -> a decoder fine-tuned from mono for each bucket,
kept only where it beats mono on that bucket's own validation chips (or, with
``bucket_rule="nested"``, on training places held out: :mod:`resflow.training.nested`) ->
scores on the test chips for the bucket ensemble and mono side by side -> the gallery and
its ``metrics.json``.

Test chips are either a spatial band of every labelled scene (:mod:`resflow.training.regions`)
or, with ``holdout``, whole scenes the models never see (a held-out place). Routing and
scoring (:mod:`resflow.training.scoring`) use the same stage functions and halo as inference
(:mod:`resflow.stages`), so a test score measures the maps a run makes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from resflow.archive import Archive
from resflow.chips import ChipRef
from resflow.datasets import ChipDataset
from resflow.errors import InputError
from resflow.gallery import MONO, Gallery, write_gallery
from resflow.models.efficientnet import FeatureExtractor, load_imagenet_lite0
from resflow.models.segmentation import SegmentationDecoder
from resflow.resolution import matches
from resflow.stages import extract_features, map_codes
from resflow.training.buckets import init_buckets
from resflow.training.config import TrainConfig
from resflow.training.determinism import CPU, deterministic
from resflow.training.gaps import gap_weight, separated
from resflow.training.labels import Labels, load_labels
from resflow.training.nested import nested_decisions
from resflow.training.regions import Chips, region_rows, split_regions
from resflow.training.scoring import evaluate
from resflow.training.segmentation import (
    Encoded,
    encode_training,
    evaluate_loss,
    train_decoder,
)

NORMALISATION = (
    "Each scene is harmonised at ingest: its three model bands (SceneInfo.rgb; one band "
    "repeated for panchromatic) are scaled per band by robust low/high percentiles "
    "(SceneInfo.stats) to [0, 1], nodata set to 0 and marked invalid. Inside the models the "
    "Lite0 input normalisation (p - 127/255) / (128/255) is applied. Reflected padding "
    "beyond scene edges is never scored."
)


def train(archive_path: Path | str, labels: Sequence[Path | str], out: Path | str, *,
          seed: int = 0, scenes: Sequence[str] | None = None, holdout: Sequence[str] = (),
          places: Mapping[str, Sequence[str]] | None = None, **settings: Any) -> Gallery:
    """Train a gallery and write it, with ``metrics.json``, to ``out``.

    With ``holdout``, the other scenes split into train and validation bands only. Chip
    features come from the chip read with ``halo`` context pixels and pooled over the chip
    alone (the embedding the graph's one encoder pass gives), and segmentation from the same
    read, trimmed back. The test region is scored as one mosaic per scene
    (:func:`resflow.training.regions.region_rows`), so a building cut by a chip edge counts
    once. Training runs single-threaded with ``torch.use_deterministic_algorithms``, and
    every random choice is seeded from ``seed``: the same archive, labels and seed give the
    same gallery files.

    Parameters
    ----------
    archive_path
        Imagery archive from ``resflow ingest``; its working ground resolution becomes the
        gallery's.
    labels
        Building footprints in any vector format and CRS, or georeferenced mask rasters;
        each file labels the scenes its extent covers (one file per scene, or one file for
        many scenes).
    out
        Gallery directory to write.
    seed
        Seeds k-means, the hashing head, augmentation and decoder training.
    scenes
        Labelled scenes to train on (default: every scene the labels cover).
    holdout
        Labelled scenes scored whole as the test set and never trained on; the training
        scenes then split into train and validation bands by ``fractions[:2]``. Without
        holdout scenes, ``fractions=(0.8, 0.2, 0.0)`` trains on every labelled scene with
        no test band (a gallery for production, scored by a study beforehand).
    places
        Place name -> its scenes, for ``bucket_rule="nested"``, which holds out one
        training place at a time; a scene not listed is a place of its own.
    **settings
        Any other :class:`TrainConfig` field (``buckets``, ``mono_steps`` ...).

    Raises
    ------
    InputError
        if the labels cover no scene, the scenes mix ground resolutions, or the train
        region holds no chip or no building pixel.

    Examples
    --------
    >>> gallery = train("all.zarr", ["labels.geojson"], "gallery", seed=0)  # doctest: +SKIP
    """
    config = TrainConfig(seed=seed, **settings)
    with deterministic():
        return _train(Archive.open(archive_path), [load_labels(p) for p in labels], Path(out),
                      config, scenes, list(holdout), places or {})


def _train(archive: Archive, labels: list[Labels], out: Path, config: TrainConfig,
           scenes: Sequence[str] | None, holdout: list[str],
           places: Mapping[str, Sequence[str]]) -> Gallery:
    clock = {"started": time.perf_counter()}
    archive.check()  # a damaged scene: one refusal naming its file, before any work
    covers = {lab.path: [name for name, s in archive.scenes.items()
                         if lab.covers(s.crs_wkt, s.transform, s.height, s.width)]
              for lab in labels}
    for path, names in covers.items():
        if not names:
            raise InputError(str(path), f"the labels cover no mapped scene of the archive "
                             f"{archive.path}", "ingest the scene they label (at the working "
                             "resolution), or leave the file out; `resflow info` lists the "
                             "scenes and their CRS")
    covered = sorted({name for names in covers.values() for name in names})
    where = ", ".join(str(lab.path) for lab in labels)
    for name in [*(scenes or []), *holdout]:
        if name not in covered:
            raise InputError(f"{archive.path}: scene '{name}'", "no label file covers it",
                             f"choose among the labelled scenes {covered}")
    training = [s for s in (scenes or covered) if s not in holdout]
    gsd = _working_gsd(archive, [*training, *holdout])
    all_refs = archive.chips()
    share = config.fractions[0] / (config.fractions[0] + config.fractions[1])
    fractions = (share, 1 - share, 0.0) if holdout else config.fractions
    regions = split_regions([r for r in all_refs if r.scene in training], fractions)
    if holdout:
        regions["test"] = [r for r in all_refs if r.scene in holdout]
    if not regions["train"] or (not regions["test"] and fractions[2] > 0):
        raise InputError(str(archive.path), "the labelled scenes are too small to hold "
                         "separate train and test chip rows",
                         "ingest with a smaller --chip so each labelled scene has 3+ chip rows")

    encoder = load_imagenet_lite0()
    extractor = FeatureExtractor(encoder).eval()
    context = ChipDataset(archive, chips=all_refs, halo=config.halo)
    features = np.concatenate([
        extract_features(context[i]["image"].numpy()[None], extractor, halo=config.halo,
                         batch_size=1, device=CPU)
        for i in tqdm(range(len(context)), desc="features")])
    row_of = {ref: i for i, ref in enumerate(all_refs)}
    fit_rows = [row_of[r] for r in regions["train"]]
    found = init_buckets(features[fit_rows], k=config.buckets, bits=config.bits,
                         hidden=config.hidden, steps=config.hash_steps, seed=config.seed)
    _, routed = map_codes(features, found.head, found.codes)
    bucket_of = {ref: int(b) for ref, b in zip(all_refs, routed, strict=True)}
    clock["buckets"] = time.perf_counter()

    data = {name: _read(archive, chips, labels, bucket_of, config)
            for name, chips in regions.items()}
    if not (data["train"].target * data["train"].weight).any():
        raise InputError(where, "the train region of the labelled scenes holds no building "
                         "pixel, so there is nothing to learn",
                         "check the labels lie on the scenes' buildings (draw them over the "
                         "imagery) or give labelled scenes with buildings")
    train_set = encode_training(encoder, data["train"].images, data["train"].target,
                                data["train"].weight, context=config.context,
                                augment=config.augment, seed=config.seed)
    val_set = (encode_training(encoder, data["validation"].images, data["validation"].target,
                               data["validation"].weight, context=config.context,
                               augment=False)
               if data["validation"].refs else None)
    clock["encode"] = time.perf_counter()

    decoders: dict[str, SegmentationDecoder] = {}
    history: dict[str, dict] = {}
    decoders[MONO], history[MONO] = train_decoder(
        train_set, val_set, steps=config.mono_steps, batch=config.batch, lr=config.lr,
        eval_every=config.eval_every, patience=config.patience, seed=config.seed, desc="mono")
    nested = None
    if config.bucket_rule == "nested":
        place_of = {scene: place for place, names in places.items() for scene in names}

        def place_array(chips: Chips) -> np.ndarray:
            return np.array([place_of.get(r.scene, r.scene) for r in chips.refs], object)

        nested = nested_decisions(train_set, val_set, place_array(data["train"]),
                                  place_array(data["validation"]), data["train"].buckets,
                                  data["validation"].buckets, len(found.codes), config)
    decisions = [_bucket_decoder(k, data, train_set, val_set, decoders, history, config,
                                 nested[k] if nested else None)
                 for k in range(len(found.codes))]
    clock["decoders"] = time.perf_counter()

    def route(embedding: np.ndarray) -> int:
        return int(map_codes(embedding, found.head, found.codes)[1][0])

    metrics = (evaluate(archive, data["test"], labels, encoder, decoders, route, config)
               if data["test"].refs else {"test": {}, "test_scenes": {}})
    clock["evaluate"] = time.perf_counter()
    metrics["regions"] = {name: {"chips": len(d.refs),
                                 "labelled_pixels": int((d.target * d.weight).sum()),
                                 "rows": {s: list(r) for s, r in region_rows(d.refs).items()}}
                          for name, d in data.items()}
    metrics["training"] = history
    metrics["bucket_decisions"] = decisions
    train_routed = routed[fit_rows]
    bucketing = {
        "fitted_on": "train-region chips of the training scenes",
        "routing_agrees_with_kmeans": float(np.mean(train_routed == found.pseudo_class)),
        "chips_per_bucket_per_scene": {
            scene: np.bincount([bucket_of[r] for r in all_refs if r.scene == scene],
                               minlength=len(found.codes)).tolist()
            for scene in archive.scenes},
    }
    metrics["seconds"] = _phase_seconds(clock)
    counts = np.bincount(routed, minlength=len(found.codes))
    train_counts = np.bincount(data["train"].buckets, minlength=len(found.codes))
    kept = {name: d for name, d in decoders.items()
            if name == MONO or decisions[int(name.split("-")[1])]["model"] == name}
    gallery = write_gallery(
        out, bucket_codes=found.codes, head=found.head, decoders=kept, gsd_m=gsd,
        buckets=[{"chips": int(counts[k]), "labelled_chips": int(train_counts[k]),
                  "decision": decisions[k]["reason"]} for k in range(len(found.codes))],
        info={"training": {**asdict(config), "bucket_criterion": found.criterion,
                           "bucketing": bucketing, "seconds": metrics["seconds"]},
              "seed": config.seed,
              "data": _provenance(archive, labels, training, holdout),
              "metrics": {"test": metrics["test"]},
              "normalisation": NORMALISATION})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return gallery


def _working_gsd(archive: Archive, scenes: Sequence[str]) -> float:
    """The one ground resolution of the scenes a gallery is trained and tested on."""
    gsds = {name: archive.scenes[name].gsd_m for name in scenes}
    first = next(iter(gsds.values()))
    odd = [f"{n} ({g:.3g} m)" for n, g in gsds.items() if not matches(g, first)]
    if odd:
        raise InputError(str(archive.path), f"the labelled scenes mix ground resolutions: "
                         f"{odd} against {first:.3g} m",
                         "ingest every training scene with the same --gsd")
    return round(float(np.median(list(gsds.values()))), 3)


def _bucket_decoder(k: int, data: dict[str, Chips], train_set: Encoded,
                    val_set: Encoded | None, decoders: dict[str, SegmentationDecoder],
                    history: dict[str, dict], config: TrainConfig,
                    nested: dict[str, Any] | None) -> dict[str, Any]:
    """Fine-tune bucket ``k``'s decoder from mono; keep it only if it beats mono on the
    bucket's own validation chips, or with ``nested`` (the bucket's
    :func:`~resflow.training.nested.nested_decisions` result) on training places held out.
    Returns the decision, recorded in the manifest."""
    name = f"bucket-{k}"
    idx = np.flatnonzero(data["train"].buckets == k)
    val_idx = np.flatnonzero(data["validation"].buckets == k) if val_set else np.zeros(0, int)
    decision: dict[str, Any] = {"bucket": k, "train_chips": len(idx),
                                "validation_chips": len(val_idx), "model": MONO}
    if len(idx) < config.min_bucket_chips or not len(val_idx):
        decision["reason"] = (f"mono: {len(idx)} train and {len(val_idx)} validation chips, "
                              f"fewer than {config.min_bucket_chips} and 1 needed for a "
                              "decoder of its own")
        return decision
    bucket_val = _subset(val_set, val_idx)
    decoder, history[name] = train_decoder(
        _subset(train_set, idx), bucket_val, init=decoders[MONO], steps=config.bucket_steps,
        batch=config.batch, lr=config.bucket_lr, eval_every=config.eval_every,
        patience=config.patience, seed=config.seed + 1 + k, desc=name)
    pos_weight = history[MONO]["pos_weight"]
    mono_loss = evaluate_loss(decoders[MONO], bucket_val, pos_weight)
    own_loss = evaluate_loss(decoder, bucket_val, pos_weight)
    decision.update(mono_validation_loss=mono_loss, own_validation_loss=own_loss)
    if nested is not None:
        decision["nested"] = nested
        if not nested["keep"]:
            decision["reason"] = f"mono: on training places held out, {nested['reason']}"
            return decision
        if history[name]["best_step"] == 0:  # its weights are still mono's
            decision["reason"] = ("mono: its fine-tune on every training place never beat "
                                  "mono on its validation chips")
            return decision
        decoders[name] = decoder
        decision.update(model=name, reason=f"own decoder: on training places held out, "
                        f"{nested['reason']}")
        return decision
    if history[name]["best_step"] == 0 or own_loss >= mono_loss:
        decision["reason"] = (f"mono: its fine-tune did not beat mono on its {len(val_idx)} "
                              f"validation chips (loss {own_loss:.4f} vs {mono_loss:.4f})")
        return decision
    decoders[name] = decoder
    decision.update(model=name, reason=f"own decoder: validation loss {own_loss:.4f} beats "
                    f"mono's {mono_loss:.4f} on its {len(val_idx)} validation chips")
    return decision


def _phase_seconds(clock: dict[str, float]) -> dict[str, float]:
    marks = list(clock.items())
    seconds = {name: round(t - marks[i][1], 1) for i, (name, t) in enumerate(marks[1:])}
    seconds["total"] = round(marks[-1][1] - marks[0][1], 1)
    return seconds


def _read(archive: Archive, refs: list[ChipRef], labels: list[Labels],
          bucket_of: dict[ChipRef, int], config: TrainConfig) -> Chips:
    """Chip pixels with ``config.context`` pixels of context, the chips' label masks and
    loss weights (0 where not scored, more than 1 in the gaps between buildings:
    :func:`~resflow.training.gaps.gap_weight`, computed with the context so a building just
    outside a chip still weighs its gap), from the chips as
    :class:`~resflow.datasets.ChipDataset` yields them."""
    images, targets, weights = [], [], []
    h = config.context
    chips = ChipDataset(archive, labels, chips=refs, halo=h)
    for ref, chip in zip(refs, chips.__getitems__(range(len(refs))), strict=True):
        ids = chip["mask"].numpy()
        target = separated(ids)
        sigma_px = config.gap_sigma_m / archive.scenes[ref.scene].gsd_m
        weight = ((chip["valid"] & chip["inside"]).numpy()
                  * gap_weight(ids, target, config.gap_weight, sigma_px))
        core = np.s_[h: h + ref.chip, h: h + ref.chip]
        images.append(chip["image"].numpy())
        targets.append(target[core].astype(np.float32))
        weights.append(weight[core])
    size = (0, 3, 1, 1)
    return Chips(refs, np.stack(images) if images else np.zeros(size, np.float32),
                  np.stack(targets) if targets else np.zeros((0, 1, 1), np.float32),
                  np.stack(weights) if weights else np.zeros((0, 1, 1), np.float32),
                  np.array([bucket_of[r] for r in refs], int))


def _subset(data: Encoded | None, idx: np.ndarray) -> Encoded | None:
    if data is None:
        return None
    index = torch.as_tensor(idx, dtype=torch.long)
    return Encoded([[m[index] for m in maps] for maps in data.maps],
                   data.target[:, index], data.weight[:, index], data.size)


def _provenance(archive: Archive, labels: list[Labels], training: list[str],
                holdout: list[str]) -> dict[str, Any]:
    return {
        "archive": str(archive.path),
        "scenes": [{"name": s.name, "source": Path(s.source).name, "sha256": s.sha256,
                    "labelled": s.name in training or s.name in holdout,
                    "role": "train" if s.name in training else "holdout" if s.name in holdout
                    else "bucketed only", "rgb": list(s.rgb), "chip": s.chip,
                    "gsd_m": s.gsd_m, "source_gsd_m": s.source_gsd_m}
                   for s in archive.scenes.values()],
        "labels": [{**lab.record(), "path": Path(lab.path).name} for lab in labels],
    }
