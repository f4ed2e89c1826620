"""Train a model gallery from an archive and building labels, and score it honestly.

``train`` runs the whole offline pipeline: Lite0 features of every chip -> k-means buckets
and the hashing head -> the mono decoder on the train region of every labelled scene ->
a decoder fine-tuned from mono for each bucket with labelled train chips -> scores on the
held-out test region for the bucket ensemble and mono side by side -> the gallery and its
``metrics.json``.

Routing and scoring use the same stage functions and halo as inference
(:mod:`resflow.stages`): chip features come from the chip read without halo, segmentation
from the chip read with ``halo`` context pixels and trimmed back. The test region is scored
as one mosaic per scene (:func:`resflow.training.regions.region_rows`), so a building cut
by a chip edge counts once.

Determinism: training runs single-threaded with ``torch.use_deterministic_algorithms``, and
every random choice is seeded from ``seed``; the same archive, labels and seed give the same
gallery files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from resflow.archive import Archive
from resflow.chips import ChipRef
from resflow.errors import InputError
from resflow.gallery import MONO, Gallery, write_gallery
from resflow.models.efficientnet import FeatureExtractor, load_imagenet_lite0
from resflow.models.segmentation import BuildingSegmenter, SegmentationDecoder
from resflow.stages import extract_features, map_codes, segment
from resflow.training.buckets import init_buckets
from resflow.training.labels import Labels, load_labels, rasterise
from resflow.training.metrics import Scores
from resflow.training.regions import DEFAULT_FRACTIONS, region_rows, split_regions
from resflow.training.segmentation import Encoded, encode, train_decoder

CPU = torch.device("cpu")
NORMALISATION = (
    "Each scene is harmonised at ingest: its three model bands (SceneInfo.rgb; one band "
    "repeated for panchromatic) are scaled per band by robust low/high percentiles "
    "(SceneInfo.stats) to [0, 1], nodata set to 0 and marked invalid. Inside the models the "
    "Lite0 input normalisation (p - 127/255) / (128/255) is applied. Reflected padding "
    "beyond scene edges is never scored."
)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; recorded in the manifest.

    ``buckets`` None means chosen by silhouette (:mod:`resflow.training.buckets`).
    """

    seed: int = 0
    buckets: int | None = None
    bits: int = 16
    hidden: int = 128
    hash_steps: int = 300
    mono_steps: int = 300
    bucket_steps: int = 150
    batch: int = 4
    lr: float = 1e-3
    bucket_lr: float = 5e-4
    eval_every: int = 25
    halo: int = 32
    threshold: float = 0.5
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS


@dataclass
class _Chips:
    """Pixels, labels and scoring weights of one region's chips."""

    refs: list[ChipRef]
    images: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(0, int))


def train(archive_path: Path | str, labels: Sequence[Path | str], out: Path | str, *,
          seed: int = 0, **settings: Any) -> Gallery:
    """Train a gallery and write it, with ``metrics.json``, to ``out``.

    Parameters
    ----------
    archive_path
        Imagery archive from ``resflow ingest``; every chip is bucketed, labelled ones train.
    labels
        GeoJSON polygons or georeferenced mask rasters, any CRS.
    out
        Gallery directory to write.
    seed
        Seeds k-means, the hashing head and decoder training.
    **settings
        Any other :class:`TrainConfig` field (``buckets``, ``mono_steps`` ...).

    Raises
    ------
    InputError
        if no scene is covered by the labels, or the test region holds no chip.

    Examples
    --------
    >>> gallery = train("all.zarr", ["labels.geojson"], "gallery", seed=0)  # doctest: +SKIP
    """
    config = TrainConfig(seed=seed, **settings)
    with _deterministic():
        return _train(Archive.open(archive_path), [load_labels(p) for p in labels], Path(out),
                      config)


def _train(archive: Archive, labels: list[Labels], out: Path, config: TrainConfig) -> Gallery:
    refs = archive.chips()
    labelled = [name for name, s in archive.scenes.items()
                if any(lab.covers(s.crs_wkt, s.transform, s.height, s.width) for lab in labels)]
    if not labelled:
        raise InputError(", ".join(str(lab.path) for lab in labels),
                         "the labels cover no scene of the archive",
                         "give labels over the archive's scenes (any CRS is fine)")
    regions = split_regions([r for r in refs if r.scene in labelled], config.fractions)
    if not regions["test"] or not regions["train"]:
        raise InputError(str(archive.path), "the labelled scenes are too small to hold "
                         "separate train and test chip rows",
                         "ingest with a smaller --chip so each labelled scene has 3+ chip rows")
    encoder = load_imagenet_lite0()
    extractor = FeatureExtractor(encoder).eval()
    features = np.concatenate([
        extract_features(archive.read_chip(ref).image[None], extractor, batch_size=1, device=CPU)
        for ref in tqdm(refs, desc="features")])
    found = init_buckets(features, k=config.buckets, bits=config.bits, hidden=config.hidden,
                         steps=config.hash_steps, seed=config.seed)
    _, routed = map_codes(features, found.head, found.codes)
    bucket_of = {ref: int(b) for ref, b in zip(refs, routed, strict=True)}

    data = {name: _read(archive, chips, labels, bucket_of) for name, chips in regions.items()}
    train_set = encode(encoder, data["train"].images, data["train"].target, data["train"].weight)
    val_set = (encode(encoder, data["validation"].images, data["validation"].target,
                      data["validation"].weight, augment=False)
               if data["validation"].refs else None)

    decoders: dict[str, SegmentationDecoder] = {}
    history: dict[str, dict] = {}
    decoders[MONO], history[MONO] = train_decoder(
        train_set, val_set, steps=config.mono_steps, batch=config.batch, lr=config.lr,
        eval_every=config.eval_every, seed=config.seed, desc="mono")
    for k in range(len(found.codes)):
        idx = np.flatnonzero(data["train"].buckets == k)
        if len(idx) == 0:
            continue
        val_idx = (np.flatnonzero(data["validation"].buckets == k) if val_set else [])
        name = f"bucket-{k}"
        decoders[name], history[name] = train_decoder(
            _subset(train_set, idx), _subset(val_set, val_idx) if len(val_idx) else val_set,
            init=decoders[MONO], steps=config.bucket_steps, batch=config.batch,
            lr=config.bucket_lr, eval_every=config.eval_every, seed=config.seed + 1 + k,
            desc=name)

    metrics = _evaluate(archive, data["test"], labels, encoder, decoders, config)
    metrics["regions"] = {name: {"chips": len(d.refs),
                                 "labelled_pixels": int((d.target * d.weight).sum()),
                                 "rows": {s: list(r) for s, r in region_rows(d.refs).items()}}
                          for name, d in data.items()}
    metrics["training"] = history
    counts = np.bincount(routed, minlength=len(found.codes))
    train_counts = np.bincount(data["train"].buckets, minlength=len(found.codes))
    gallery = write_gallery(
        out, bucket_codes=found.codes, head=found.head, decoders=decoders,
        buckets=[{"chips": int(counts[k]), "labelled_chips": int(train_counts[k])}
                 for k in range(len(found.codes))],
        info={"training": {**asdict(config), "bucket_criterion": found.criterion},
              "seed": config.seed,
              "data": _provenance(archive, labels, labelled),
              "metrics": {"test": metrics["test"]},
              "normalisation": NORMALISATION})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return gallery


def _read(archive: Archive, refs: list[ChipRef], labels: list[Labels],
          bucket_of: dict[ChipRef, int]) -> _Chips:
    """Chip pixels (no halo), their label masks and scoring weights, for training."""
    images, targets, weights = [], [], []
    for ref in refs:
        pixels = archive.read_chip(ref)
        scene = archive.scenes[ref.scene]
        ids = rasterise(labels, scene.crs_wkt, scene.transform,
                        (ref.y0, ref.x0, ref.chip, ref.chip))
        inside = np.zeros((ref.chip, ref.chip), bool)
        inside[: ref.height, : ref.width] = True
        images.append(pixels.image)
        targets.append((ids > 0).astype(np.float32))
        weights.append((pixels.valid & inside).astype(np.float32))
    size = (0, 3, 1, 1)
    return _Chips(refs, np.stack(images) if images else np.zeros(size, np.float32),
                  np.stack(targets) if targets else np.zeros((0, 1, 1), np.float32),
                  np.stack(weights) if weights else np.zeros((0, 1, 1), np.float32),
                  np.array([bucket_of[r] for r in refs], int))


def _subset(data: Encoded | None, idx: np.ndarray) -> Encoded | None:
    if data is None:
        return None
    index = torch.as_tensor(idx, dtype=torch.long)
    return Encoded([[m[index] for m in maps] for maps in data.maps],
                   data.target[:, index], data.weight[:, index], data.size)


def _evaluate(archive: Archive, test: _Chips, labels: list[Labels],
              encoder: torch.nn.Module, decoders: dict[str, SegmentationDecoder],
              config: TrainConfig) -> dict[str, Any]:
    """Score the ensemble (each chip by its bucket's model) and mono on the test region."""
    models = {name: BuildingSegmenter(encoder, d).eval() for name, d in decoders.items()}
    bands = region_rows(test.refs)
    canvases = {m: {s: np.zeros((y1 - y0, archive.scenes[s].width), np.float32)
                    for s, (y0, y1) in bands.items()} for m in ("ensemble", MONO)}
    valid = {s: np.zeros((y1 - y0, archive.scenes[s].width), bool)
             for s, (y0, y1) in bands.items()}
    served: dict[str, int] = {}
    h = config.halo
    for ref, bucket in tqdm(list(zip(test.refs, test.buckets, strict=True)), desc="evaluate"):
        pixels = archive.read_chip(ref, halo=h)
        name = f"bucket-{bucket}" if f"bucket-{bucket}" in models else MONO
        served[name] = served.get(name, 0) + 1
        y = ref.y0 - bands[ref.scene][0]
        window = np.s_[y: y + ref.height, ref.x0: ref.x0 + ref.width]
        core = np.s_[h: h + ref.height, h: h + ref.width]
        valid[ref.scene][window] = pixels.valid[core]
        for canvas, model in (("ensemble", models[name]), (MONO, models[MONO])):
            prob = segment(pixels.image[None], model, batch_size=1, device=CPU)[0]
            canvases[canvas][ref.scene][window] = prob[core]
    result: dict[str, Any] = {}
    for kind, by_scene in canvases.items():
        scores = Scores()
        for scene, prob in by_scene.items():
            info = archive.scenes[scene]
            y0, y1 = bands[scene]
            truth = rasterise(labels, info.crs_wkt, info.transform, (y0, 0, y1 - y0, info.width))
            scores.update(prob >= config.threshold, truth, valid[scene])
        result[kind] = scores.summary()
    return {"test": result, "test_chips_served_by": served}


def _provenance(archive: Archive, labels: list[Labels], labelled: list[str]) -> dict[str, Any]:
    return {
        "archive": str(archive.path),
        "scenes": [{"name": s.name, "source": Path(s.source).name, "sha256": s.sha256,
                    "labelled": s.name in labelled, "rgb": list(s.rgb), "chip": s.chip}
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
