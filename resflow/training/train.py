"""Train a model gallery from an archive and building labels, and score it honestly.

``train`` runs the whole offline pipeline: Lite0 features of the training chips ->
k-means buckets and the hashing head, fitted on training chips only -> the mono decoder on
the train region of every labelled scene -> a decoder fine-tuned from mono for each bucket,
kept only where it beats mono on that bucket's own validation chips -> scores on the test
chips for the bucket ensemble and mono side by side -> the gallery and its
``metrics.json``.

Test chips are either a spatial band of every labelled scene (:mod:`resflow.training.regions`)
or, with ``holdout``, whole scenes the models never see (a held-out place). Routing and
scoring use the same stage functions and halo as inference (:mod:`resflow.stages`), so a
test score measures the maps a run makes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from resflow.archive import Archive
from resflow.chips import ChipRef
from resflow.datasets import ChipDataset
from resflow.errors import InputError
from resflow.gallery import MONO, Gallery, write_gallery
from resflow.masks import building_mask, min_pixels
from resflow.model_input import SourceImages
from resflow.models.efficientnet import FeatureExtractor, load_imagenet_lite0
from resflow.models.segmentation import BuildingSegmenter, SegmentationDecoder
from resflow.resolution import matches
from resflow.seams import seam_ratio
from resflow.stages import decode, encode, extract_features, map_codes
from resflow.store.format import quantise
from resflow.training.buckets import init_buckets
from resflow.training.config import TrainConfig
from resflow.training.labels import Labels, load_labels, rasterise
from resflow.training.metrics import Scores, score_scene
from resflow.training.regions import region_rows, split_regions
from resflow.training.segmentation import (
    Encoded,
    encode_training,
    evaluate_loss,
    train_decoder,
)
from resflow.windows import group_by_window

CPU = torch.device("cpu")
NORMALISATION = (
    "Each scene is harmonised at ingest: its three model bands (SceneInfo.rgb; one band "
    "repeated for panchromatic) are scaled per band by robust low/high percentiles "
    "(SceneInfo.stats) to [0, 1], nodata set to 0 and marked invalid. Inside the models the "
    "Lite0 input normalisation (p - 127/255) / (128/255) is applied. Reflected padding "
    "beyond scene edges is never scored."
)


@dataclass
class _Chips:
    """Pixels, labels and scoring weights of one region's chips."""

    refs: list[ChipRef]
    images: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


def train(archive_path: Path | str, labels: Sequence[Path | str], out: Path | str, *,
          seed: int = 0, scenes: Sequence[str] | None = None, holdout: Sequence[str] = (),
          **settings: Any) -> Gallery:
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
    with _deterministic():
        return _train(Archive.open(archive_path), [load_labels(p) for p in labels], Path(out),
                      config, scenes, list(holdout))


def _train(archive: Archive, labels: list[Labels], out: Path, config: TrainConfig,
           scenes: Sequence[str] | None, holdout: list[str]) -> Gallery:
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
                                data["train"].weight, seed=config.seed)
    val_set = (encode_training(encoder, data["validation"].images, data["validation"].target,
                               data["validation"].weight, augment=False)
               if data["validation"].refs else None)
    clock["encode"] = time.perf_counter()

    decoders: dict[str, SegmentationDecoder] = {}
    history: dict[str, dict] = {}
    decoders[MONO], history[MONO] = train_decoder(
        train_set, val_set, steps=config.mono_steps, batch=config.batch, lr=config.lr,
        eval_every=config.eval_every, patience=config.patience, seed=config.seed, desc="mono")
    decisions = [_bucket_decoder(k, data, train_set, val_set, decoders, history, config)
                 for k in range(len(found.codes))]
    clock["decoders"] = time.perf_counter()

    def route(embedding: np.ndarray) -> int:
        return int(map_codes(embedding, found.head, found.codes)[1][0])

    metrics = (_evaluate(archive, data["test"], labels, encoder, decoders, route, config)
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


def _bucket_decoder(k: int, data: dict[str, _Chips], train_set: Encoded,
                    val_set: Encoded | None, decoders: dict[str, SegmentationDecoder],
                    history: dict[str, dict], config: TrainConfig) -> dict[str, Any]:
    """Fine-tune bucket ``k``'s decoder from mono; keep it only if it beats mono on the
    bucket's own validation chips. Returns the decision, recorded in the manifest."""
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
          bucket_of: dict[ChipRef, int], config: TrainConfig) -> _Chips:
    """Chip pixels (no halo), their label masks and loss weights (0 where not scored, more
    than 1 in the gaps between buildings: :func:`gap_weight`), for training, from the chips
    as :class:`~resflow.datasets.ChipDataset` yields them."""
    images, targets, weights = [], [], []
    chips = ChipDataset(archive, labels, chips=refs)
    for i, ref in enumerate(refs):
        chip = chips[i]
        ids = chip["mask"].numpy()
        target = separated(ids)
        sigma_px = config.gap_sigma_m / archive.scenes[ref.scene].gsd_m
        images.append(chip["image"].numpy())
        targets.append(target.astype(np.float32))
        weights.append((chip["valid"] & chip["inside"]).numpy()
                       * gap_weight(ids, target, config.gap_weight, sigma_px))
    size = (0, 3, 1, 1)
    return _Chips(refs, np.stack(images) if images else np.zeros(size, np.float32),
                  np.stack(targets) if targets else np.zeros((0, 1, 1), np.float32),
                  np.stack(weights) if weights else np.zeros((0, 1, 1), np.float32),
                  np.array([bucket_of[r] for r in refs], int))


def separated(ids: np.ndarray) -> np.ndarray:
    """Building mask with the pixels where two buildings touch set to background.

    Footprints are counted as connected components of the map, so two touching roofs
    mapped as one blob lose both buildings. Training on a one-pixel gap between touching
    footprints (as the U-Net authors did for touching cells) teaches the decoder to keep
    neighbours apart.

    Examples
    --------
    >>> separated(np.array([[1, 1, 2, 2]])).astype(int).tolist()
    [[1, 0, 0, 1]]
    """
    inside = ids > 0
    highest = ndimage.grey_dilation(ids, size=3)
    lowest = ndimage.grey_erosion(np.where(inside, ids, np.iinfo(ids.dtype).max), size=3)
    return inside & (highest <= ids) & (lowest >= ids)


def gap_weight(ids: np.ndarray, target: np.ndarray, peak: float, sigma_px: float
               ) -> np.ndarray:
    """Loss weight of each pixel: ``1 + peak * exp(-(d1 + d2)^2 / (2 sigma_px^2))`` on
    background, where ``d1`` and ``d2`` are the distances to the nearest and the second
    nearest building; 1 on buildings.

    The U-Net authors' weight map for touching cells. The narrow gap between two roofs is
    a handful of pixels among thousands, so an unweighted loss barely notices when the
    decoder fills it, and two roofs become one footprint. Weighting the gap makes the
    decoder's probability dip there, which is where :func:`resflow.masks.split_touching`
    cuts. The gap pixels :func:`separated` makes between touching footprints weigh most.

    Examples
    --------
    >>> ids = np.array([[1, 1, 0, 2, 2, 0, 0, 0, 0]])
    >>> [round(float(w), 1) for w in gap_weight(ids, ids > 0, 10.0, 1.0)[0]]
    [1.0, 1.0, 2.4, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    weight = np.ones(ids.shape, np.float32)
    buildings = np.unique(ids[ids > 0])
    if buildings.size < 2 or peak <= 0:
        return weight
    nearest = np.full(ids.shape, np.inf, np.float32)
    second = nearest.copy()
    for building in buildings:
        distance = ndimage.distance_transform_edt(ids != building).astype(np.float32)
        second = np.minimum(second, np.maximum(nearest, distance))
        nearest = np.minimum(nearest, distance)
    gap = 1 + peak * np.exp(-((nearest + second) ** 2) / (2 * sigma_px**2))
    return np.where(target, weight, gap).astype(np.float32)


def _subset(data: Encoded | None, idx: np.ndarray) -> Encoded | None:
    if data is None:
        return None
    index = torch.as_tensor(idx, dtype=torch.long)
    return Encoded([[m[index] for m in maps] for maps in data.maps],
                   data.target[:, index], data.weight[:, index], data.size)


def evaluate_gallery(archive_path: Path | str, labels: Sequence[Path | str],
                     gallery_path: Path | str, *, scenes: Sequence[str] | None = None,
                     holdout: Sequence[str] = (), sweep: Sequence[float] = (),
                     split_sweep: Sequence[float] = (), **settings: Any) -> dict[str, Any]:
    """Score a trained gallery's bucket ensemble and mono on test chips, as training does.

    The test chips are the whole ``holdout`` scenes, or else the test band of ``scenes``
    (default: every labelled scene) cut by ``fractions``; chips are routed by the gallery's
    own stages 1 and 2. ``sweep`` adds scores at other ``min_building_m2`` values,
    ``split_sweep`` at other ``split_dip`` values.

    Examples
    --------
    >>> found = evaluate_gallery("p.zarr", labels, "g", holdout=["kampala-1"])  # doctest: +SKIP
    """
    config = TrainConfig(**settings)
    archive = Archive.open(archive_path)
    archive.check()
    gallery = Gallery.load(gallery_path)
    loaded = [load_labels(p) for p in labels]
    if holdout:
        refs = archive.chips(holdout)
    else:
        names = scenes or [n for n, s in archive.scenes.items() if any(
            lab.covers(s.crs_wkt, s.transform, s.height, s.width) for lab in loaded)]
        refs = split_regions(archive.chips(names), config.fractions)["test"]
    def route(embedding: np.ndarray) -> int:
        return int(map_codes(embedding, gallery.hashing_head(), gallery.bucket_codes)[1][0])

    with _deterministic():
        decoders = {gallery.model_name(k): gallery.segmenter(k).decoder
                    for k in range(len(gallery.bucket_codes))} | {MONO: gallery.mono().decoder}
        empty = np.zeros(0, np.float32)
        test = _Chips(list(refs), empty, empty, empty)
        return _evaluate(archive, test, loaded, gallery.mono().encoder, decoders, route, config,
                         sweep, split_sweep)


def _evaluate(archive: Archive, test: _Chips, labels: list[Labels],
              encoder: torch.nn.Module, decoders: dict[str, SegmentationDecoder],
              route: Callable[[np.ndarray], int], config: TrainConfig,
              sweep: Sequence[float] = (), split_sweep: Sequence[float] = ()
              ) -> dict[str, Any]:
    """Score the ensemble (each window by its bucket's model) and mono on the test chips.

    The test chips are predicted as a run predicts them: a window of ``config.window``
    chips at a time with ``config.window_halo`` pixels of context (:mod:`resflow.windows`), routed
    as a whole by ``route`` (embedding -> bucket), the window's chips outside the test set
    used as context only. Each scene's test band is then masked as runs mask
    (:func:`resflow.masks.building_mask`) and scored per scene and overall by
    :func:`resflow.training.metrics.score_scene`, the code ``resflow eval`` runs on finished
    maps, with its seam ratio (:mod:`resflow.seams`). ``sweep`` scores the same maps again
    at other ``min_building_m2`` values and ``split_sweep`` at other ``split_dip`` values.
    """
    extractor = FeatureExtractor(encoder).eval()
    models = {name: BuildingSegmenter(encoder, d).eval() for name, d in decoders.items()}
    bands = region_rows(test.refs)
    canvases = {m: {s: np.zeros((y1 - y0, archive.scenes[s].width), np.float32)
                    for s, (y0, y1) in bands.items()} for m in ("ensemble", MONO)}
    valid = {s: np.zeros((y1 - y0, archive.scenes[s].width), bool)
             for s, (y0, y1) in bands.items()}
    served: dict[str, int] = {}
    h = config.window_halo
    shapes = {s: (archive.scenes[s].height, archive.scenes[s].width) for s in bands}
    windows = group_by_window(test.refs, config.window, shapes)
    for window, refs in tqdm(list(windows.items()), desc="evaluate"):
        source = archive.read_window(window, h)
        embedding, maps = encode(SourceImages([source]), extractor, halo=h, batch_size=1,
                                 device=CPU)
        bucket = route(embedding)
        name = f"bucket-{bucket}" if f"bucket-{bucket}" in models else MONO
        served[name] = served.get(name, 0) + len(refs)
        probs = {MONO: decode(maps, models[MONO], size=source.valid.shape, batch_size=1,
                              device=CPU)[0]}
        probs["ensemble"] = (probs[MONO] if name == MONO else
                             decode(maps, models[name], size=source.valid.shape,
                                    batch_size=1, device=CPU)[0])
        for ref in refs:
            y = ref.y0 - bands[ref.scene][0]
            at = np.s_[y: y + ref.height, ref.x0: ref.x0 + ref.width]
            valid[ref.scene][at] = window.crop(source.valid, ref, h)
            for canvas, prob in probs.items():
                canvases[canvas][ref.scene][at] = window.crop(prob, ref, h)
    truths = {scene: rasterise(labels, archive.scenes[scene].crs_wkt,
                               archive.scenes[scene].transform,
                               (y0, 0, y1 - y0, archive.scenes[scene].width))
              for scene, (y0, y1) in bands.items()}

    def scored(min_m2: float, split: float) -> dict[str, Any]:
        result: dict[str, Any] = {}
        per_scene: dict[str, dict[str, Any]] = {}
        for kind, by_scene in canvases.items():
            overall = Scores()
            for scene, prob in by_scene.items():
                smallest = min_pixels(min_m2, archive.scenes[scene].gsd_m)
                predicted = building_mask(prob, config.threshold, smallest, reflect=h,
                                          split=split)
                scores = score_scene(predicted, truths[scene], valid[scene])
                overall += scores
                chip, origin = archive.scenes[scene].chip, (bands[scene][0], 0)
                per_scene.setdefault(scene, {})[kind] = {**scores.summary(), "seams": {
                    "probability": seam_ratio(quantise(prob), chip, valid[scene],
                                              origin).summary(),
                    "mask": seam_ratio(predicted, chip, valid[scene], origin).summary()}}
            result[kind] = overall.summary()
        return {"test": result, "test_scenes": per_scene}

    metrics = {**scored(config.min_building_m2, config.split_dip), "test_chips_served_by": served}
    if sweep:
        metrics["min_building_sweep"] = {f"{m:g}": scored(m, config.split_dip) for m in sweep}
    if split_sweep:
        metrics["split_sweep"] = {f"{d:g}": scored(config.min_building_m2, d)
                                  for d in split_sweep}
    return metrics


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


@contextmanager
def _deterministic() -> Iterator[None]:
    """One intra-op thread and deterministic kernels for the run, restored afterwards."""
    threads = torch.get_num_threads()
    was = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was)
