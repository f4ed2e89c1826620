"""The output store: one georeferenced Zarr v3 group of building maps per input scene.

Layout of ``OUT`` (a Zarr v3 directory store)::

    OUT/zarr.json               root attrs: resflow_kind="output", complete, scenes, run_config,
                                run_report (once complete)
    OUT/run_report.json         the run report, written by :meth:`OutputStore.finalize`
    OUT/<group>/probability     uint8 (y, x), 0..255 = building probability x 255, fill 0
    OUT/<group>/mask            uint8 (y, x), 1 = building, fill 0
    OUT/<group>/chip_done       uint8 (chip_row, chip_col), the chip ledger, one chunk per chip
    OUT/<group>/x, y            pixel-centre coordinates in the scene CRS
    OUT/<group>/spatial_ref     CF grid mapping: crs_wkt, spatial_ref and GDAL GeoTransform

Each group has the grid, CRS and transform of its archive scene, and ``probability`` and
``mask`` are chunked on the scene's chip grid: a chip write is exactly one chunk, so no two
tasks ever write the same chunk and a re-executed task rewrites identical bytes.

The ledger is a Zarr array rather than loose marker files so the store stays a valid Zarr
hierarchy (zarr warns on, and cannot consolidate, foreign directories). Its chunks are
(1, 1): a chip's ledger entry is its own small object, written after the chip's pixels, so
a chip is in the ledger only once its pixels are on disk, and writers never contend.

``xarray.open_zarr(OUT, group=...)`` reads a group with ``spatial_ref`` as a coordinate,
and rioxarray's ``.rio.crs`` / ``.rio.transform()`` recover the scene georeferencing.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.errors

from resflow.chips import chip_runs
from resflow.errors import ResflowError
from resflow.report import REPORT_NAME

if TYPE_CHECKING:
    from resflow.archive import Archive, SceneInfo
    from resflow.chips import ChipRef

KIND = "output"
FORMAT_VERSION = 1
LEDGER = "chip_done"
# Run settings that change the pixels: a resumed run must use the same ones.
PIXEL_SETTINGS = ("gallery", "halo", "threshold", "min_building_m2")
_RESERVED = frozenset({"zarr.json", REPORT_NAME})


class OutputComplete(ResflowError):
    """``--resume`` over an output that is already complete: there is nothing to do."""


def safe_group_name(name: str) -> str:
    """A group name that can never leave the output directory.

    Every character outside ``[A-Za-z0-9._-]`` (path separators included) becomes ``_``
    and leading dots are replaced, so ``"../../evil"`` becomes ``"__.._evil"``.

    Examples
    --------
    >>> safe_group_name("../../evil")
    '__.._evil'
    >>> safe_group_name("LC08 scene/1")
    'LC08_scene_1'
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    stripped = cleaned.lstrip(".")
    cleaned = "_" * (len(cleaned) != len(stripped)) + stripped
    return cleaned or "_"


def _group_names(scene_names: Iterable[str]) -> dict[str, str]:
    """Map archive scene names to unique, safe group names (``_2``, ``_3`` on collision)."""
    taken: set[str] = set(_RESERVED)
    groups: dict[str, str] = {}
    for name in scene_names:
        base = safe_group_name(name)
        group, n = base, 1
        while group.lower() in taken:  # case-insensitive file systems must not merge groups
            n += 1
            group = f"{base}_{n}"
        taken.add(group.lower())
        groups[name] = group
    return groups


def _geotransform(transform: tuple[float, ...]) -> str:
    """GDAL GeoTransform string ``c a b f d e`` from rasterio's affine ``(a, b, c, d, e, f)``."""
    a, b, c, d, e, f = transform[:6]
    return " ".join(repr(float(v)) for v in (c, a, b, f, d, e))


def _read_root_attrs(path: Path) -> dict[str, Any] | None:
    """Root attributes of a Zarr v3 store at ``path``, or None if it is not one."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None


def _consolidate(path: Path) -> None:
    """Consolidate metadata so ``xarray.open_zarr`` opens groups without a fallback warning."""
    with warnings.catch_warnings():
        # zarr notes that consolidated metadata is not yet in the v3 spec; xarray reads it.
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(str(path))


def _create_scene_group(root: zarr.Group, group: str, info: SceneInfo, n_chips: int,
                        threshold: float | None) -> None:
    """Create one scene's group on the scene grid, chunked on its chip grid."""
    g = root.create_group(group, attributes={
        "scene": info.name, "source": info.source, "sha256": info.sha256,
        "chip": info.chip, "chips_total": n_chips, "threshold": threshold,
        "gsd_m": info.gsd_m,
    })
    shape, chunks = (info.height, info.width), (info.chip, info.chip)
    data_attrs = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref"}
    g.create_array("probability", shape=shape, chunks=chunks, dtype="uint8", fill_value=0,
                   dimension_names=("y", "x"), attributes={
                       **data_attrs, "long_name": "building probability x 255",
                       "valid_range": [0, 255], "scale_factor_note": "divide by 255 for [0, 1]"})
    g.create_array("mask", shape=shape, chunks=chunks, dtype="uint8", fill_value=0,
                   dimension_names=("y", "x"), attributes={
                       **data_attrs, "long_name": "building mask",
                       "flag_values": [0, 1], "flag_meanings": "background building"})
    grid = (-(-info.height // info.chip), -(-info.width // info.chip))
    g.create_array(LEDGER, shape=grid, chunks=(1, 1), dtype="uint8", fill_value=0,
                   dimension_names=("chip_row", "chip_col"),
                   attributes={"long_name": "1 = chip pixels written"})
    a, _, c, _, e, f = info.transform[:6]
    x = g.create_array("x", shape=(info.width,), chunks=(info.width,), dtype="float64",
                       dimension_names=("x",), attributes={"long_name": "x of pixel centre"})
    x[:] = c + (np.arange(info.width) + 0.5) * a
    y = g.create_array("y", shape=(info.height,), chunks=(info.height,), dtype="float64",
                       dimension_names=("y",), attributes={"long_name": "y of pixel centre"})
    y[:] = f + (np.arange(info.height) + 0.5) * e
    ref = g.create_array("spatial_ref", shape=(), dtype="int64", fill_value=0,
                         dimension_names=(), attributes={
                             "crs_wkt": info.crs_wkt, "spatial_ref": info.crs_wkt,
                             "GeoTransform": _geotransform(info.transform)})
    ref[...] = 0


@dataclass
class OutputStore:
    """A resflow output store: create it once on the driver, open it cheaply on workers.

    Attributes
    ----------
    path
        The store directory.
    groups
        Archive scene name -> safe group name inside the store.
    """

    path: Path
    groups: dict[str, str]
    _arrays: dict[tuple[str, str], zarr.Array] = field(default_factory=dict, repr=False,
                                                      compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Ship only the path and the group map; workers reopen arrays lazily."""
        return {"path": self.path, "groups": self.groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.groups, self._arrays = state["path"], state["groups"], {}

    @classmethod
    def create(cls, out_path: Path | str, archive: Archive, *, overwrite: bool = False,
               resume: bool = False, run_config: dict[str, Any]) -> OutputStore:
        """Create the output store for every scene of ``archive`` (or reopen it to resume).

        Parameters
        ----------
        out_path
            Directory of the new Zarr v3 store.
        archive
            The imagery archive; each scene gets a group on its exact grid, CRS and transform.
        overwrite
            Delete an existing resflow output at ``out_path`` first.
        resume
            Reopen an existing, incomplete output made from the same scenes and pixel
            settings (``gallery``, ``halo``, ``threshold``); chips in its ledger are skipped
            by the caller through :meth:`done_chips`.
        run_config
            The exact run configuration (JSON-ready), kept in the root attributes.

        Raises
        ------
        OutputComplete
            ``resume`` over a complete output: there is nothing to do.
        ResflowError
            ``out_path`` exists and neither flag is given, it is not a resflow output (never
            deleted), it is the archive itself, or a resumed output does not match.
        """
        out = Path(out_path)
        action = cls.check_target(out, archive, overwrite=overwrite, resume=resume,
                                  run_config=run_config)
        if action == "resume":
            return cls.open(out)
        if action == "overwrite":
            shutil.rmtree(out)
        return cls._new(out, archive, run_config)

    @classmethod
    def check_target(cls, out_path: Path | str, archive: Archive, *, overwrite: bool = False,
                     resume: bool = False, run_config: dict[str, Any]) -> str:
        """Every refusal of :meth:`create`, without writing anything.

        ``resflow run`` calls it before starting an engine, so a run that would be refused
        is refused before any work and leaves no output directory behind.

        Returns
        -------
        str
            ``"new"`` (nothing there yet), ``"resume"`` (an unfinished output to finish) or
            ``"overwrite"`` (an existing resflow output to replace).

        Raises
        ------
        OutputComplete, ResflowError
            As :meth:`create`.
        """
        out = Path(out_path)
        cls._refuse_archive_path(out, Path(archive.path))
        if not _occupied(out):
            return "new"
        attrs = _read_root_attrs(out)
        if attrs is None or attrs.get("resflow_kind") != KIND:
            raise ResflowError(str(out), "the path exists and is not a resflow output, so "
                               "resflow will not write into or delete it",
                               "choose another output path or remove it yourself")
        if resume and not overwrite:
            cls.open(out)._check_resumable(attrs, archive, run_config)
            return "resume"
        if not overwrite:
            state = "a complete" if attrs.get("complete") else "an unfinished"
            raise ResflowError(str(out), f"{state} resflow output already exists here",
                               "pass --resume to finish it or --overwrite to replace it")
        return "overwrite"

    @staticmethod
    def _refuse_archive_path(out: Path, archive_path: Path) -> None:
        """Refuse an output path that is, or contains, the input archive."""
        out_r, arch_r = out.resolve(), archive_path.resolve()
        if arch_r == out_r or arch_r.is_relative_to(out_r):
            raise ResflowError(str(out), "the output path is the input archive or contains it",
                               "choose an output path outside the archive")

    @classmethod
    def _new(cls, out: Path, archive: Archive, run_config: dict[str, Any]) -> OutputStore:
        groups = _group_names(archive.scenes)
        for group in groups.values():
            if not (out / group).resolve().is_relative_to(out.resolve()):
                raise ResflowError(group, "a scene group would leave the output directory",
                                   "rename the scene in the archive")
        counts: dict[str, int] = dict.fromkeys(archive.scenes, 0)
        for ref in archive.chips():
            counts[ref.scene] += 1
        root = zarr.open_group(str(out), mode="w", zarr_format=3, attributes={
            "resflow_kind": KIND, "format_version": FORMAT_VERSION, "complete": False,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "archive": str(archive.path), "scenes": groups, "run_config": run_config,
        })
        threshold = run_config.get("threshold")
        for name, info in archive.scenes.items():
            _create_scene_group(root, groups[name], info, counts[name], threshold)
        _consolidate(out)
        return cls(out, groups)

    def _check_resumable(self, attrs: dict[str, Any], archive: Archive,
                         run_config: dict[str, Any]) -> None:
        if attrs.get("complete"):
            raise OutputComplete(str(self.path), "the output is already complete, so there is "
                                 "nothing to resume", "use --overwrite to recompute it, or "
                                 f"`resflow info {self.path}` to see it")
        if set(self.groups) != set(archive.scenes):
            raise ResflowError(str(self.path), "the output was made from other scenes than "
                               "this archive holds", "resume with the original archive or "
                               "pass --overwrite")
        root = zarr.open_group(str(self.path), mode="r")
        for name, info in archive.scenes.items():
            probability = root[f"{self.groups[name]}/probability"]
            if probability.shape != (info.height, info.width) or \
                    probability.chunks != (info.chip, info.chip):
                raise ResflowError(f"{self.path}/{self.groups[name]}", "the scene grid differs "
                                   "from the archive's", "pass --overwrite to recompute it")
        previous = attrs.get("run_config", {})
        for key in PIXEL_SETTINGS:
            if key in previous and key in run_config and previous[key] != run_config[key]:
                raise ResflowError(f"{self.path}: run_config.{key}", f"the output was started "
                                   f"with {key}={previous[key]!r}, not {run_config[key]!r}",
                                   f"resume with {key}={previous[key]!r} or pass --overwrite")

    @classmethod
    def open(cls, out_path: Path | str) -> OutputStore:
        """Open an existing output for writing chips: reads only the root attributes.

        Raises
        ------
        ResflowError
            ``out_path`` is not a resflow output store.
        """
        out = Path(out_path)
        attrs = _read_root_attrs(out)
        if attrs is None or attrs.get("resflow_kind") != KIND:
            raise ResflowError(str(out), "not a resflow output store (no resflow_kind='output' "
                               "in zarr.json)", "check the path, or run `resflow run` to make one")
        return cls(out, dict(attrs["scenes"]))

    def _group(self, scene: str) -> str:
        if scene not in self.groups:
            raise ResflowError(f"{self.path}: scene {scene!r}", "the scene has no group in this "
                               "output", f"use one of {sorted(self.groups)}")
        return self.groups[scene]

    def _array(self, scene: str, name: str) -> zarr.Array:
        """A cached read-write handle, so a worker opens each array's metadata once."""
        key = (scene, name)
        if key not in self._arrays:
            self._arrays[key] = zarr.open_array(str(self.path), path=f"{self._group(scene)}/{name}",
                                                mode="r+", zarr_format=3)
        return self._arrays[key]

    def read_array(self, scene: str, name: str) -> zarr.Array:
        """A read-only handle on one array (``probability``, ``mask``, ``chip_done``) of a scene."""
        return zarr.open_array(str(self.path), path=f"{self._group(scene)}/{name}", mode="r",
                               zarr_format=3)

    def georeference(self, scene: str) -> tuple[str, tuple[float, ...]]:
        """The scene's CRS as WKT and its affine ``(a, b, c, d, e, f)`` (rasterio order)."""
        attrs = self.read_array(scene, "spatial_ref").attrs
        c, a, b, f, d, e = (float(v) for v in attrs["GeoTransform"].split())
        return str(attrs["crs_wkt"]), (a, b, c, d, e, f)

    @property
    def complete(self) -> bool:
        """True once :meth:`finalize` has run."""
        return bool((_read_root_attrs(self.path) or {}).get("complete"))

    def write_chip(self, ref: ChipRef, probability: np.ndarray, mask: np.ndarray) -> None:
        """Write one chip's probability and mask (one chunk each), then its ledger entry.

        Parameters
        ----------
        ref
            The chip; its window must be its chunk on the scene's chip grid.
        probability
            uint8 ``(ref.height, ref.width)``: building probability x 255.
        mask
            uint8 or bool ``(ref.height, ref.width)``, 1 = building
            (:func:`resflow.masks.building_mask`).

        Writing the same chip twice writes identical bytes, so re-executed tasks are harmless.
        """
        self.write_chips([ref], [probability], [mask])

    def write_chips(self, refs: Sequence[ChipRef], probabilities: Sequence[np.ndarray],
                    masks: Sequence[np.ndarray]) -> None:
        """:meth:`write_chip` for many chips: each run of side-by-side chips is written as one
        window per array (whole chunks, so never a read-modify-write), pixels first, then
        the run's ledger entries."""
        for ref, probability, mask in zip(refs, probabilities, masks, strict=True):
            self._check_window(ref, probability, mask)
        for run in chip_runs(refs):
            first, last = refs[run[0]], refs[run[-1]]
            rows = slice(first.y0, first.y0 + first.height)
            cols = slice(first.x0, last.x0 + last.width)
            self._array(first.scene, "probability")[rows, cols] = np.concatenate(
                [probabilities[i] for i in run], axis=1)
            self._array(first.scene, "mask")[rows, cols] = np.concatenate(
                [masks[i] for i in run], axis=1).astype(np.uint8)
            self._array(first.scene, LEDGER)[first.row, first.col:last.col + 1] = 1

    def _check_window(self, ref: ChipRef, probability: np.ndarray, mask: np.ndarray) -> None:
        """Refuse a chip that is not one whole chunk of its scene's grid, before any write."""
        where = f"{self.path}: chip {ref.scene}/{ref.row}_{ref.col}"
        if probability.dtype != np.uint8 or probability.shape != (ref.height, ref.width):
            raise ResflowError(where, f"probability is {probability.dtype} {probability.shape}, "
                               f"expected uint8 {(ref.height, ref.width)}",
                               "quantise the chip's probability to uint8 and trim the halo")
        if mask.shape != probability.shape:
            raise ResflowError(where, f"mask is {mask.shape}, its probability {probability.shape}",
                               "trim the mask's halo as the probability's")
        grid = self._array(ref.scene, "probability")
        (height, width), chip = grid.shape, grid.chunks[0]
        aligned = (ref.y0 == ref.row * chip and ref.x0 == ref.col * chip
                   and ref.height == min(chip, height - ref.y0)
                   and ref.width == min(chip, width - ref.x0))
        if not aligned:
            raise ResflowError(where, f"the window (y0={ref.y0}, x0={ref.x0}, {ref.height}x"
                               f"{ref.width}) is not chunk ({ref.row}, {ref.col}) of the "
                               f"{chip}-pixel chip grid", "plan chips with Archive.chips()")

    def done_chips(self) -> set[tuple[str, int, int]]:
        """Chips whose pixels are on disk, as ``(scene, row, col)``, for ``--resume``."""
        done: set[tuple[str, int, int]] = set()
        for scene in self.groups:
            rows, cols = np.nonzero(self._array(scene, LEDGER)[...])
            done.update((scene, int(r), int(c)) for r, c in zip(rows, cols, strict=True))
        return done

    def finalize(self, report: dict[str, Any]) -> None:
        """Mark the store complete, after every planned chip is in the ledger.

        Writes ``report`` to ``OUT/run_report.json`` and as the root attribute ``run_report``,
        then sets ``complete: true``: the last write of a run, so an interrupted output never
        looks complete.

        Raises
        ------
        ResflowError
            Some planned chips are not in the ledger.
        """
        progress = describe(self.path)
        if progress["chips_done"] < progress["chips_total"]:
            missing = progress["chips_total"] - progress["chips_done"]
            raise ResflowError(str(self.path), f"{missing} of {progress['chips_total']} chips "
                               "are not written, so the output cannot be marked complete",
                               "run again with --resume to finish them")
        self._keep_report(report, complete=True)

    def record_unfinished(self, report: dict[str, Any]) -> None:
        """Keep the report of a run whose failed chips left the ledger short.

        The report (with one error per failed chip) goes where :meth:`finalize` puts it, but
        the store stays incomplete: a map with holes must never look finished, and
        ``--resume`` retries exactly the chips the ledger lacks.
        """
        self._keep_report(report, complete=False)

    def _keep_report(self, report: dict[str, Any], *, complete: bool) -> None:
        (self.path / REPORT_NAME).write_text(json.dumps(report, indent=2, default=str) + "\n")
        root = zarr.open_group(str(self.path), mode="r+", zarr_format=3)
        root.attrs.update({"run_report": json.loads(json.dumps(report, default=str)),
                           "complete": complete})
        _consolidate(self.path)


def describe(path: Path | str) -> dict[str, Any]:
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
    attrs = _read_root_attrs(store.path) or {}
    root = zarr.open_group(str(store.path), mode="r", zarr_format=3)
    scenes = []
    for name, group in store.groups.items():
        g = root[group]
        done = int(np.count_nonzero(g[LEDGER][...]))
        total = int(g.attrs["chips_total"])
        height, width = g["probability"].shape
        scenes.append({"scene": name, "group": group, "height": height, "width": width,
                       "chip": int(g.attrs["chip"]), "chips_done": done, "chips_total": total,
                       "percent": _percent(done, total)})
    done = sum(s["chips_done"] for s in scenes)
    total = sum(s["chips_total"] for s in scenes)
    complete = bool(attrs.get("complete"))
    report = attrs.get("run_report") or {}
    failed = sum(1 for error in report.get("errors", []) if "chip" in error)
    return {"path": str(store.path), "kind": KIND, "complete": complete, "chips_done": done,
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
                     f"{Path(desc['path']) / REPORT_NAME}; --resume retries them")
    if desc["summary"]:
        lines.append(desc["summary"])
    return "\n".join(lines)


def _occupied(path: Path) -> bool:
    """True if ``path`` is a file or a non-empty directory (an empty directory is reusable)."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _percent(done: int, total: int) -> float:
    return 100.0 * done / total if total else 100.0
