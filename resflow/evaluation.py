"""Scores of finished building maps against footprint labels: ``resflow eval``.

A complete output store is scored scene by scene against building labels in any vector
format or CRS (:mod:`resflow.training.labels`), with the same scoring function training
uses on its held-out band (:func:`resflow.training.metrics.score_scene`), so a number in
``eval.json`` means what the same number means in a gallery's ``metrics.json``. What is
scored, and why, is set out on :func:`evaluate`: labelled or covered scenes, mapped and
data pixels only, whole scenes at once, overall ratios from summed counts, and a seam
ratio (:mod:`resflow.seams`) for every scene.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from resflow.archive import Archive, recorded_archive
from resflow.errors import InputError, ResflowError
from resflow.evaluation_settings import eval_settings
from resflow.harmonise import harmonise
from resflow.masks import min_pixels
from resflow.seams import NO_CHECK, SeamCheck, scene_seams, seams_summary
from resflow.store.format import NOT_MAPPED, scene_file
from resflow.store.mask_rule import MaskRule
from resflow.store.reader import describe as describe_output
from resflow.store.writer import OutputStore
from resflow.training.labels import load_labels, rasterise
from resflow.training.metrics import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    NOT_SCORED,
    TRUE_POSITIVE,
    Scores,
    pixel_categories,
    score_scene,
)

EVAL_JSON = "eval.json"
OVERLAY_MAX_PX = 2000
"""Long side of an overlay's image, pixels: larger scenes are shown every n-th pixel."""

OVERLAY_COLOURS = {TRUE_POSITIVE: "#009E73", FALSE_POSITIVE: "#D55E00",
                   FALSE_NEGATIVE: "#F0E442", NOT_SCORED: "#000000"}
"""Okabe-Ito colours, told apart with the common colour-vision deficiencies."""

OVERLAY_NAMES = {TRUE_POSITIVE: "found (true positive)", FALSE_POSITIVE: "false alarm "
                 "(false positive)", FALSE_NEGATIVE: "missed (false negative)",
                 NOT_SCORED: "not scored (unmapped or nodata)"}


def default_report_dir(out_store_path: Path | str) -> Path:
    """``OUT.zarr``'s folder / ``<OUT stem>-eval``: next to the maps, never inside the store.

    Examples
    --------
    >>> default_report_dir("runs/maps.zarr").as_posix()
    'runs/maps-eval'
    """
    out = Path(out_store_path)
    return out.parent / f"{out.stem}-eval"


def evaluate(out_store_path: Path | str, label_paths: list[Path | str], *,
             threshold: float | None = None, report_dir: Path | str | None = None,
             covered: Sequence[str] = ()) -> dict[str, Any]:
    """Score every labelled scene of a complete output store; write ``eval.json`` and overlays.

    What is scored, and why:

    * **Labelled or covered scenes only.** A scene is labelled when some label file's extent
      intersects its footprint (:meth:`~resflow.training.labels.Labels.covers`); then every
      unlabelled pixel of it is background (the SpaceNet convention). A scene no label file
      reaches is scored only when the user says the labels cover it (``covered``,
      ``--covered SCENE``): it then has no building, and every building predicted there is a
      false alarm. Other scenes are listed as ``not_labelled`` and not scored, since nobody
      said whether their buildings were drawn.
    * **Mapped pixels only.** Only pixels of chips in the store's ledger are scored. A
      complete store has every planned chip there; the ledger is still used so a score can
      never count an unmapped chip as missed buildings.
    * **Data pixels only, when the archive is still there.** If the archive named in the run
      config still holds the scene (same checksum and size), its nodata pixels (nodata
      value, NaN, Inf: :func:`resflow.harmonise.valid_mask`) are not scored either, as in
      training. Otherwise nodata pixels are scored like any other, and ``nodata_excluded``
      says so.
    * **Whole scenes at once.** Each scene is scored in one piece, so a building cut by a
      chip border is one footprint. This holds the scene's maps in memory, about 30 bytes
      per pixel at peak (a 20,000 x 20,000 scene needs about 12 GB); the overlay is drawn
      from every n-th pixel, so it stays bounded.
    * **Overall = summed counts.** The overall line adds the scenes' pixel and footprint
      counts and computes ratios from the sums, so a small scene cannot weigh like a big one.
    * **Seams of every scene.** Whether labelled or not, each scene's probability and mask
      get a seam ratio (:mod:`resflow.seams`) on the store's chip grid: about 1 when chip
      borders do not show, well above 1 when they do. The overall ratio sums the scenes'
      pixel pairs.

    The mask scored is the run's own (as written: ``probability > threshold`` without
    specks smaller than the run's ``min_building_m2``), or the probability re-thresholded
    at ``threshold`` by the same rule (:class:`~resflow.store.mask_rule.MaskRule`).

    Parameters
    ----------
    out_store_path
        A complete store written by ``resflow run``.
    label_paths
        Building footprints (any OGR vector format, any CRS) or georeferenced masks.
    threshold
        Re-threshold the probability at this value in (0, 1); None = the run's own mask.
    report_dir
        Where ``eval.json`` and ``<scene>_overlay.png`` go (default
        :func:`default_report_dir`).
    covered
        Scenes the labels cover although no label polygon reaches them (empty land): they
        are scored with no building, so what is predicted there counts as false positives.

    Returns
    -------
    dict
        What ``eval.json`` holds: ``store``, ``labels`` (one record per file), ``threshold``
        and ``threshold_source`` (``"run"`` or ``"--threshold"``), ``archive`` (used for
        nodata and imagery, or None), ``report_dir``, ``scenes`` (scene -> scores, see
        below), ``covered`` and ``not_labelled`` (scene names), ``overall`` and ``seams``.
        Scores are those of :meth:`~resflow.training.metrics.Scores.summary` plus
        ``true_buildings``, ``predicted_buildings`` and ``scored_pixels``; a scene also has
        ``nodata_excluded``, ``labelled`` (a label file reaches it; False for a scene scored
        only as ``covered``) and ``overlay`` (its PNG's file name in ``report_dir``);
        ``overall`` has ``scenes``. ``seams`` has ``scenes`` (every scene of the store ->
        ``{"probability": ratio, "mask": ratio}``, None where undefined) and ``overall``
        (the same, pixel pairs of all scenes summed), from :func:`resflow.seams.scene_seams`.

    Raises
    ------
    InputError
        a store that is missing, not a resflow output or not complete; a missing or unusable
        label file; a ``covered`` name that is not a scene of the store; labels that cover
        no scene of the store and no scene ``covered``.
    ConfigError
        ``threshold`` outside (0, 1) (:class:`~resflow.evaluation_settings.EvalConfig`).
    """
    out = Path(out_store_path)
    store = open_complete(out)
    eval_settings(threshold=threshold, covered=list(covered))
    if not label_paths:
        raise InputError("--labels", "no label file given", "pass --labels FILE")
    unknown = [name for name in covered if name not in store.groups]
    if unknown:
        raise InputError("--covered", f"{', '.join(map(repr, unknown))} "
                         f"{'is not a scene' if len(unknown) == 1 else 'are not scenes'} "
                         f"of {out}", "name scenes of the store: "
                         + ", ".join(sorted(store.groups)))
    labels = [load_labels(p) for p in label_paths]
    root = zarr.open_group(str(out), mode="r", zarr_format=3)
    grids = {scene: (*store.georeference(scene), *root[group]["probability"].shape)
             for scene, group in store.groups.items()}
    covering = {scene: [lab for lab in labels if lab.covers(*grid)]
                for scene, grid in grids.items()}
    if not any(covering.values()) and not covered:
        raise InputError(", ".join(str(lab.path) for lab in labels),
                         f"the labels cover none of the {len(grids)} scenes of {out} "
                         f"({', '.join(sorted(grids))})", "give labels drawn over these scenes, "
                         "and check the label file's CRS (the labels say "
                         + ", ".join(sorted({lab.crs.to_string() for lab in labels})) + ")")
    run_config = root.attrs.get("run_config", {})
    cut = threshold if threshold is not None else run_config.get("threshold")
    archive = recorded_archive(run_config.get("archive"), out)
    report = Path(report_dir) if report_dir is not None else default_report_dir(out)
    report.mkdir(parents=True, exist_ok=True)
    scenes: dict[str, dict[str, Any]] = {}
    seams: dict[str, dict[str, SeamCheck]] = {}
    overall = Scores()
    for scene, group in store.groups.items():
        probability = np.asarray(store.read_array(scene, "probability")[...])
        mask = np.asarray(store.read_array(scene, "mask")[...])
        seams[scene] = scene_seams(probability, mask,
                                   int(root[group]["probability"].chunks[0]))
        if not covering[scene] and scene not in covered:
            continue
        attrs = dict(root[group].attrs)
        crs_wkt, transform, height, width = grids[scene]
        predicted = _predicted(probability, mask, MaskRule(threshold, min_pixels(
            float(run_config.get("min_building_m2", 0.0)), float(attrs["gsd_m"])),
            int(run_config.get("halo", 0)), float(run_config.get("split_dip", 0.0))))
        # A covered scene that no label reaches is all background: rasterise([]) is zeros.
        truth = rasterise(covering[scene], crs_wkt, transform, (0, 0, height, width))
        step = max(1, math.ceil(max(height, width) / OVERLAY_MAX_PX))
        valid = probability != NOT_MAPPED
        pixels = (_archive_pixels(archive, scene, attrs["sha256"], (height, width), step)
                  if archive else None)
        if pixels is not None:
            valid &= pixels[0]
            background = pixels[1]
        else:
            background = probability[::step, ::step]
        scores = score_scene(predicted, truth, valid)
        overall += scores
        overlay = f"{group}_overlay.png"
        summary = _summary(scores, int(valid.sum()))
        every = np.s_[::step, ::step]
        write_overlay(scene_file(report, overlay, store), background,
                      pixel_categories(predicted[every], truth[every], valid[every]),
                      f"{scene}: pixel F1 {summary['pixel_f1']:.3f}, object F1 "
                      f"{summary['object_f1']:.3f} (threshold {cut:g})")
        scenes[scene] = {**summary, "nodata_excluded": pixels is not None,
                         "labelled": bool(covering[scene]), "overlay": overlay}
    result = {
        "store": str(out),
        "labels": [{**lab.record(), "repaired": lab.repaired, "skipped": lab.skipped}
                   for lab in labels],
        "threshold": cut,
        "threshold_source": "run" if threshold is None else "--threshold",
        "archive": str(archive.path) if archive else None,
        "report_dir": str(report),
        "scenes": scenes,
        "covered": sorted(set(covered)),
        "not_labelled": sorted(s for s, found in covering.items()
                               if not found and s not in covered),
        "overall": {**_summary(overall, sum(s["scored_pixels"] for s in scenes.values())),
                    "scenes": len(scenes)},
        "seams": {"scenes": {scene: seams_summary(pair) for scene, pair in seams.items()},
                  "overall": seams_summary({kind: sum((pair[kind] for pair in seams.values()),
                                                      NO_CHECK)
                                            for kind in ("probability", "mask")})},
    }
    (report / EVAL_JSON).write_text(json.dumps(result, indent=2) + "\n")
    return result


def open_complete(out: Path) -> OutputStore:
    """Open ``out`` as a complete resflow output store, or say why it cannot be scored.

    Raises
    ------
    InputError
        missing, not a resflow output store, or not complete (a partial map would count
        its unmapped buildings as missed).
    """
    if not out.exists():
        raise InputError(str(out), "the output store does not exist",
                         "check the path, or make it with `resflow run ARCHIVE --out OUT.zarr`")
    try:
        store = OutputStore.open(out)
    except ResflowError as err:
        raise InputError(err.where, err.problem, err.fix) from None
    if not store.complete:
        progress = describe_output(out)
        raise InputError(str(out), f"the output is not complete ({progress['chips_done']}/"
                         f"{progress['chips_total']} chips mapped), so it cannot be scored",
                         f"finish it with `resflow run ARCHIVE --out {out} --resume`")
    return store


def write_overlay(png_path: Path, background: np.ndarray, categories: np.ndarray,
                  title: str, *, dpi: int = 100) -> Path:
    """A PNG of the scene with found, false-alarm and missed pixels in three colours.

    Parameters
    ----------
    background
        ``(h, w, 3)`` float RGB in [0, 1] (the harmonised imagery) or ``(h, w)`` uint8
        probability x 254 (255 not mapped), drawn in grey.
    categories
        ``(h, w)`` codes of :func:`~resflow.training.metrics.pixel_categories`, on the same
        grid as ``background``.
    title
        One line above the image (scene and scores).

    Returns
    -------
    Path
        ``png_path``: the image is drawn one PNG pixel per grid cell, at least 800 pixels
        wide so the title and legend stay legible on small scenes.
    """
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, no GUI backend
    from matplotlib.patches import Patch

    rows, cols = categories.shape
    scale = max(1.0, 800 / cols)
    title_px = 40
    fig_w, fig_h = cols * scale, rows * scale + title_px
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, rows * scale / fig_h))
    if background.ndim == 2:
        ax.imshow(background, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(background, interpolation="nearest")
    overlay = np.zeros((rows, cols, 4), np.float32)
    handles = []
    for code, colour in OVERLAY_COLOURS.items():
        where = categories == code
        if not where.any():
            continue
        alpha = 0.5 if code == NOT_SCORED else 0.7
        overlay[where] = to_rgba(colour, alpha)
        handles.append(Patch(facecolor=colour, alpha=alpha, edgecolor="white",
                             label=OVERLAY_NAMES[code]))
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.8)
    fig.text(0.01, 1 - 0.5 * title_px / fig_h, title, va="center", fontsize=12)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=dpi)
    return png_path


def format_table(result: dict[str, Any]) -> str:
    """The fixed-width table ``resflow eval`` prints: one row per scene, then overall; then
    the seam ratios of every scene, scored or not."""
    columns = ("true", "pred", "pix P", "pix R", "pix F1", "IoU", "obj P", "obj R", "obj F1")
    keys = ("pixel_precision", "pixel_recall", "pixel_f1", "pixel_iou", "object_precision",
            "object_recall", "object_f1")
    rows = {**result["scenes"], "overall": result["overall"]}
    width = max(len(name) for name in [*rows, "scene"])
    lines = [f"{'scene':<{width}}" + "".join(f"{c:>8}" for c in columns)]
    for name, s in rows.items():
        lines.append(f"{name:<{width}}{s['true_buildings']:>8}{s['predicted_buildings']:>8}"
                     + "".join(f"{s[k]:>8.3f}" for k in keys))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    if result["covered"]:
        lines.append(f"covered (scored, unlabelled pixels are background): "
                     f"{', '.join(result['covered'])}")
    if result["not_labelled"]:
        lines.append(f"not labelled (not scored): {', '.join(result['not_labelled'])}")
    source = "the run's" if result["threshold_source"] == "run" else "given"
    nodata = ("excluded" if all(s["nodata_excluded"] for s in result["scenes"].values())
              else "scored where the archive no longer holds the scene")
    lines.append(f"threshold {result['threshold']:g} ({source}); buildings matched at IoU >= "
                 f"0.5; nodata {nodata}")
    lines += ["", *_seam_lines(result["seams"]), ""]
    n = len(result["scenes"])
    lines.append(f"report: {Path(result['report_dir']) / EVAL_JSON} and {n} overlay PNG"
                 + "s" * (n != 1))
    return "\n".join(lines)


def _seam_lines(seams: dict[str, Any]) -> list[str]:
    """The seam block of the table: one row per scene, then overall; "-" where undefined."""
    rows = {**seams["scenes"], "overall": seams["overall"]}
    width = max(len(name) for name in [*rows, "seam ratio"])
    lines = [f"{'seam ratio':<{width}}{'prob':>8}{'off grid':>14}{'mask':>8}{'off grid':>14}"
             "   (chip borders / elsewhere; about 1 = seamless)"]
    for name, pair in rows.items():
        cells = []
        for kind in ("probability", "mask"):
            ratio, spread = pair[kind], pair[f"{kind}_off_grid"]
            cells.append(f"{'-' if ratio is None else format(ratio, '.3f'):>8}"
                         f"{'-' if spread is None else '{:.2f}-{:.2f}'.format(*spread):>14}")
        shows = [k for k in ("probability", "mask") if pair[f"{k}_grid_shows"]]
        lines.append(f"{name:<{width}}" + "".join(cells)
                     + (f"   grid shows in the {' and '.join(shows)}" if shows else ""))
    lines.insert(len(lines) - 1, "-" * (width + 44))
    lines.append("off grid: the same ratio with the grid moved off the chip borders, the "
                 "spread a map this size has with no seam")
    return lines


def _summary(scores: Scores, scored_pixels: int) -> dict[str, Any]:
    """Scores' summary plus the building counts a reader wants first."""
    return {"true_buildings": scores.object_tp + scores.object_fn,
            "predicted_buildings": scores.object_tp + scores.object_fp,
            "scored_pixels": scored_pixels, **scores.summary()}


def _predicted(probability: np.ndarray, mask: np.ndarray, rule: MaskRule) -> np.ndarray:
    """The building mask: the run's own (``rule`` without a threshold), or the stored
    probability cut by ``rule`` as the run cuts it, the whole scene at once with its edges
    mirrored by the run's halo. Pixels not mapped are never buildings."""
    if rule.threshold is None:
        return mask == 1
    return rule.apply(probability, reflect=rule.halo)


def _archive_pixels(archive: Archive, scene: str, sha256: str, shape: tuple[int, int],
                    step: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The scene's data pixels (bool, full grid) and harmonised RGB every ``step``-th pixel.

    None when the archive no longer holds the very scene that was mapped (same checksum and
    size), since another scene's nodata would mask the wrong pixels. Read one chip row at a
    time, so only the full-resolution mask grows with the scene.
    """
    if not archive.holds(scene, sha256, shape):
        return None
    info = archive.scenes[scene]
    image = archive.image(scene)
    valid = np.zeros((info.height, info.width), bool)
    rgb = np.zeros((-(-info.height // step), -(-info.width // step), 3), np.float32)
    for y0 in range(0, info.height, info.chip):
        pixels, ok = harmonise(np.asarray(image[:, y0:y0 + info.chip, :]), info.nodata,
                               info.rgb, info.stats)
        valid[y0:y0 + ok.shape[0]] = ok
        oy = -y0 % step  # the first row of this band on the global ``step`` lattice
        sub = pixels[:, oy::step, ::step].transpose(1, 2, 0)
        rgb[(y0 + oy) // step:(y0 + oy) // step + sub.shape[0]] = sub
    return valid, rgb

