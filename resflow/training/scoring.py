"""Scoring a gallery on test chips the way a run maps them.

Test chips are predicted a window at a time with a halo, routed by the gallery's stages 1
and 2 and segmented by their bucket's model and by mono, masked by the rule runs use
(:func:`resflow.masks.building_mask`) and scored per scene and overall by
:func:`resflow.training.metrics.score_scene`, the code ``resflow eval`` runs on finished
maps. Training scores its test chips here, and :func:`evaluate_gallery` scores a gallery
already written, from its files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from resflow.archive import Archive
from resflow.gallery import MONO, Gallery
from resflow.masks import building_mask, min_pixels
from resflow.model_input import SourceImages
from resflow.models.efficientnet import FeatureExtractor
from resflow.models.segmentation import BuildingSegmenter, SegmentationDecoder
from resflow.seams import seam_check, seams_summary
from resflow.stages import decode, encode, map_codes
from resflow.store.format import quantise
from resflow.training.config import TrainConfig
from resflow.training.determinism import CPU, deterministic
from resflow.training.labels import Labels, load_labels, rasterise
from resflow.training.metrics import Scores, score_scene
from resflow.training.regions import Chips, region_rows, split_regions
from resflow.windows import group_by_window


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

    with deterministic():
        decoders = {gallery.model_name(k): gallery.segmenter(k).decoder
                    for k in range(len(gallery.bucket_codes))} | {MONO: gallery.mono().decoder}
        empty = np.zeros(0, np.float32)
        test = Chips(list(refs), empty, empty, empty)
        return evaluate(archive, test, loaded, gallery.mono().encoder, decoders, route, config,
                         sweep, split_sweep)


def evaluate(archive: Archive, test: Chips, labels: list[Labels],
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
                per_scene.setdefault(scene, {})[kind] = {**scores.summary(), "seams": (
                    seams_summary({"probability": seam_check(quantise(prob), chip,
                                                             valid[scene], origin),
                                   "mask": seam_check(predicted, chip, valid[scene],
                                                      origin)}))}
            result[kind] = overall.summary()
        return {"test": result, "test_scenes": per_scene}

    metrics = {**scored(config.min_building_m2, config.split_dip), "test_chips_served_by": served}
    if sweep:
        metrics["min_building_sweep"] = {f"{m:g}": scored(m, config.split_dip) for m in sweep}
    if split_sweep:
        metrics["split_sweep"] = {f"{d:g}": scored(config.min_building_m2, d)
                                  for d in split_sweep}
    return metrics
