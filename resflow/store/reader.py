"""Reading an output store back: its settings, each scene's maps window by window, and
its progress for ``resflow info``.

Exports and eval read through :class:`SceneMaps`, which takes each array's encoding from
the attributes it declares (:class:`~resflow.store.format.Encoding`), so values are read
as written. A window's mask is the stored one, or the probability cut again by a
:class:`~resflow.store.mask_rule.MaskRule` with just enough margin that the result equals
cutting the whole scene at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from affine import Affine

from resflow import storage
from resflow.errors import ResflowError
from resflow.report import REPORT_NAME
from resflow.store.format import KIND, PROBABILITY_SCALE, UNWRITTEN, Encoding
from resflow.store.mask_rule import MaskRule
from resflow.store.root import read_root_attrs
from resflow.store.writer import OutputStore


@dataclass(frozen=True)
class SceneMaps:
    """One scene of an output store, read window by window."""

    scene: str
    probability: zarr.Array
    mask: zarr.Array
    probability_encoding: Encoding
    mask_encoding: Encoding
    crs_wkt: str
    transform: Affine
    gsd_m: float

    @classmethod
    def open(cls, store: OutputStore, scene: str, gsd_m: float) -> SceneMaps:
        """Open the scene's arrays; ``gsd_m`` is its ground metres per pixel."""
        probability = store.read_array(scene, "probability")
        mask = store.read_array(scene, "mask")
        crs_wkt, transform = store.georeference(scene)
        return cls(scene, probability, mask,
                   Encoding.of(probability, default_scale=1 / PROBABILITY_SCALE),
                   Encoding.of(mask, default_scale=1.0), crs_wkt, Affine(*transform), gsd_m)

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``, pixels."""
        height, width = self.probability.shape
        return int(height), int(width)

    @property
    def chip(self) -> int:
        """Chip edge, pixels: the arrays' chunk edge."""
        return int(self.probability.chunks[0])

    def tile(self, tile_px: int) -> int:
        """``tile_px`` rounded to whole chips (at least one), so no chunk is read twice."""
        return self.chip * max(1, round(tile_px / self.chip))

    def window(self, y0: int, y1: int, x0: int, x1: int,
               rule: MaskRule) -> tuple[np.ndarray, np.ndarray]:
        """The stored probability and the mask (stored values, 0/1/not mapped) of a window.

        With a threshold the mask is recomputed from a margin of ``max(halo, min_pixels - 1)``
        pixels around the window, which makes it equal, pixel for pixel, to masking the
        whole scene at once (mirrored by ``halo``): a group reaching the margin's edge has
        at least ``min_pixels`` pixels either way, and a group that does not is whole. The
        margin, and so the memory, grows with the minimum area: 1,111 pixels a side for
        100 m^2 at 0.3 m. Touching roofs are split within the margin: a blob reaching past
        it may be cut differently than scene-wide (:mod:`resflow.masks`).
        """
        if rule.threshold is None:
            return (np.asarray(self.probability[y0:y1, x0:x1]),
                    np.asarray(self.mask[y0:y1, x0:x1]))
        height, width = self.shape
        margin = max(rule.halo, rule.min_pixels - 1)
        ry0, ry1 = max(0, y0 - margin), min(height, y1 + margin)
        rx0, rx1 = max(0, x0 - margin), min(width, x1 + margin)
        stored = np.asarray(self.probability[ry0:ry1, rx0:rx1])
        # mirrored only beyond the scene's edges: elsewhere the margin holds real pixels
        edges = ((rule.halo * (ry0 == 0), rule.halo * (ry1 == height)),
                 (rule.halo * (rx0 == 0), rule.halo * (rx1 == width)))
        building = rule.apply(stored, encoding=self.probability_encoding, reflect=edges)
        inner = np.s_[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
        mask = building[inner].astype(np.uint8)
        nodata = self.probability_encoding.nodata
        if nodata is not None and self.mask_encoding.nodata is not None:
            mask[stored[inner] == nodata] = self.mask_encoding.nodata
        return stored[inner], mask


def open_complete(out_store: OutputStore | storage.Location) -> OutputStore:
    """The store, refused unless its run finished: an unfinished store's unmapped chips
    would read as empty.

    Raises
    ------
    ResflowError
        The output is not complete, or not a resflow output store.
    """
    store = out_store if isinstance(out_store, OutputStore) else OutputStore.open(out_store)
    if not store.complete:
        raise ResflowError(store.display, "the output is not complete, so exports would show "
                           "unmapped chips as empty", "finish the run with `resflow run "
                           f"ARCHIVE --out {store.display} --resume` first")
    return store


def _root(store: OutputStore) -> zarr.Group:
    """The store's root group, for its run settings and each scene's attributes."""
    return zarr.open_group(storage.zarr_store(store.path, read_only=True), mode="r",
                           zarr_format=3)


def root_attributes(store: OutputStore) -> dict[str, Any]:
    """The store's root attributes (``run_config``, ``run_report``, ``created_utc``...)."""
    return dict(_root(store).attrs)


def run_settings(store: OutputStore) -> dict[str, Any]:
    """The run configuration the store was made with (empty if it recorded none)."""
    return dict(root_attributes(store).get("run_config") or {})


def scene_attributes(store: OutputStore) -> dict[str, dict[str, Any]]:
    """Every scene's group attributes (``gsd_m``, ``sha256`` of the archive scene mapped,
    ``source``...), by scene name."""
    root = _root(store)
    return {scene: dict(root[group].attrs) for scene, group in store.groups.items()}


def scene_gsd_m(store: OutputStore) -> dict[str, float]:
    """Ground metres per pixel of every scene (the ``gsd_m`` of its group)."""
    return {scene: float(attrs["gsd_m"]) for scene, attrs in scene_attributes(store).items()}


def scene_maps(store: OutputStore) -> Iterator[SceneMaps]:
    """Every scene of the store, opened (:meth:`SceneMaps.open`) one at a time as asked."""
    for scene, gsd_m in scene_gsd_m(store).items():
        yield SceneMaps.open(store, scene, gsd_m)


def describe(path: storage.Location) -> dict[str, Any]:
    """Progress and provenance of an output, for ``resflow info OUT``.

    Returns
    -------
    dict
        ``path``, ``kind`` (``"output"``), ``complete``, ``chips_done``, ``chips_total``,
        ``percent``, ``scenes`` (one dict per scene: ``scene``, ``group``, ``height``,
        ``width`` (pixels), ``chip``, ``chips_done``, ``chips_total``, ``percent``),
        ``summary`` (the run report's one-line summary, or None while incomplete) and
        ``failed_chips`` (chips the last run could not map, listed in its report).
    """
    store = OutputStore.open(path)
    attrs = read_root_attrs(store.path) or {}
    scenes = []
    for name, (ledger, (height, width), chip) in store.ledgers().items():
        done = int(np.count_nonzero(ledger != UNWRITTEN))
        total = ledger.size
        scenes.append({"scene": name, "group": store.groups[name], "height": height,
                       "width": width, "chip": chip, "chips_done": done,
                       "chips_total": total, "percent": _percent(done, total)})
    done = sum(s["chips_done"] for s in scenes)
    total = sum(s["chips_total"] for s in scenes)
    complete = bool(attrs.get("complete"))
    report = attrs.get("run_report") or {}
    failed = sum(1 for error in report.get("errors", []) if "chip" in error)
    return {"path": store.display, "kind": KIND, "complete": complete, "chips_done": done,
            "chips_total": total, "percent": _percent(done, total), "scenes": scenes,
            "summary": report.get("summary") if complete else None, "failed_chips": failed}


def format_description(desc: dict[str, Any]) -> str:
    """Render :func:`describe`'s dict as the text ``resflow info OUT`` prints."""
    state = "complete" if desc["complete"] else "INCOMPLETE (finish with --resume)"
    lines = [f"{desc['path']}: {state}, {desc['chips_done']}/{desc['chips_total']} chips "
             f"({desc['percent']:.1f}%)"]
    width = max((len(s["scene"]) for s in desc["scenes"]), default=5)
    for s in desc["scenes"]:
        lines.append(f"  {s['scene']:<{width}}  {s['height']}x{s['width']} px, chip {s['chip']}:"
                     f" {s['chips_done']}/{s['chips_total']} chips ({s['percent']:.1f}%)")
    if desc.get("failed_chips"):
        lines.append(f"{desc['failed_chips']} chips failed in the last run: see "
                     f"{desc['path']}/{REPORT_NAME}; --resume retries them")
    if desc["summary"]:
        lines.append(desc["summary"])
    return "\n".join(lines)


def _percent(done: int, total: int) -> float:
    return 100.0 * done / total if total else 100.0
