"""Ingest: any GDAL-readable raster into one Zarr v3 imagery archive, one group per scene.

Each scene is streamed window by window (memory bounded by ``window_rows`` squared, not by
scene size), scenes run in parallel threads, and the scene's ``complete`` attribute is
written last, so an interrupted ingest never leaves a scene that looks finished. A re-run
skips complete scenes whose source checksum, chip and band selection are unchanged, and
redoes the rest. Inputs that cannot be used are refused one by one with an
:class:`~resflow.errors.InputError` and recorded in the root attribute ``refused``; the
other inputs still ingest. Sources are found and checked in :mod:`resflow.sources` and
written in :mod:`resflow.scene_writing`; the layout is described in
:mod:`resflow.archive_layout`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path

import zarr
from zarr.errors import ZarrUserWarning

from resflow import __version__, storage
from resflow.archive_layout import ARCHIVE_KIND, FORMAT_VERSION, SCENES, SceneInfo
from resflow.catalogues import HrefPolicy
from resflow.config import IngestConfig
from resflow.errors import InputError
from resflow.scene_writing import write_scene
from resflow.sources import Plan, discover, inspect, refusal, scene_names


@dataclass
class IngestResult:
    """What one ingest run did.

    Attributes
    ----------
    path
        The archive written.
    ingested
        Scene names written by this run.
    skipped
        Scene names already complete and unchanged (checksum), left as they were.
    refused
        One record per refused input: ``{"source", "where", "problem", "fix"}``.
    too_coarse
        One ``{"name", "reason"}`` per scene recorded but never mapped
        (:mod:`resflow.resolution`); these are also in ``ingested`` or ``skipped``.
    removed
        True when this run created the archive, could write no scene into it and removed
        it again.
    """

    path: Path | str
    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)
    too_coarse: list[dict] = field(default_factory=list)
    removed: bool = False

    @property
    def ok(self) -> bool:
        """True when no input was refused."""
        return not self.refused


def ingest(sources: Iterable[str | Path], out: str | Path, config: IngestConfig | None = None,
           *, rgb: Sequence[int] | None = None, progress: bool = False) -> IngestResult:
    """Ingest rasters (files or folders of rasters) into the archive at ``out``.

    Parameters
    ----------
    sources
        Raster files, or folders whose rasters (searched recursively) are ingested.
    out
        The ``.zarr`` archive; created if missing, updated in place otherwise.
    config
        Chip edge (pixels), parallel scenes and streaming window size.
    rgb
        0-based band indices feeding the models' R, G, B, overriding the rules of
        :mod:`resflow.harmonise` for every source of this run.
    progress
        Show a tqdm bar over scenes.

    Returns
    -------
    IngestResult
        Scenes written, skipped and refused. Refusals never raise. An archive this call
        created is removed again when no scene could be written into it (``removed``), also
        when the call is stopped by an exception: a failed ingest leaves nothing behind. An
        archive that existed before is never removed.

    Examples
    --------
    >>> from resflow.samples import sample_path
    >>> r = ingest([sample_path("atlanta-pan")], tmp / "a.zarr")   # doctest: +SKIP
    >>> r.ingested                                                   # doctest: +SKIP
    ['sample_geotiff']
    """
    config = config or IngestConfig()
    out = storage.normalise(out)
    _refuse_non_archive(out)
    result = IngestResult(path=out)
    dated: dict[Path | str, str] = {}
    files, result.refused = discover(sources, config.stac_asset,
                                     HrefPolicy(web=config.stac_web,
                                                outside=config.stac_outside), times=dated)
    new = not storage.exists(out)
    try:
        _ingest_into(out, files, config, rgb, result, dated, progress=progress)
    except BaseException:
        if new and not result.ingested and storage.exists(out):
            storage.remove_tree(out)
        raise
    if new and not result.ingested and not result.skipped:
        storage.remove_tree(out)
        result.removed = True
    return result


def _refuse_non_archive(out: Path | str) -> None:
    """Refuse an archive location that is a file (or one object), or a folder holding
    something other than a Zarr store: an archive is a folder of scenes, and ingest never
    adopts someone else's folder."""
    if isinstance(out, Path):
        is_file = out.exists() and not out.is_dir()
    else:
        fs, path = storage.filesystem(out)
        is_file = bool(fs.isfile(path))
    if is_file:
        raise InputError(storage.display(out), "the archive location is a file, and an "
                         "archive is a folder of scenes", "give --out a new .zarr path or "
                         "an existing archive's folder")
    if storage.occupied(out) and not storage.exists(storage.join(out, "zarr.json")):
        raise InputError(storage.display(out), "the folder holds files but is not an archive "
                         "(it has no zarr.json), and ingest writes only into archives",
                         "give --out a new .zarr path, an empty folder or an existing "
                         "archive's folder")


def _ingest_into(out: Path | str, files: Sequence[Path | str], config: IngestConfig,
                 rgb: Sequence[int] | None, result: IngestResult,
                 dated: dict[Path | str, str], *, progress: bool) -> None:
    """Inspect ``files`` and write the scenes that are not current into the archive at
    ``out``, filling ``result`` as scenes finish (so a caller stopped by an exception knows
    what was written). A file its STAC Item dates (``dated``) keeps that acquisition time
    rather than its own tag's."""
    refusals = result.refused
    root = _open_for_writing(out)
    plans: list[Plan] = []
    for path, name in zip(files, scene_names(files), strict=True):
        try:
            plan = inspect(path, name, config, rgb)
        except InputError as err:
            refusals.append(refusal(path, err))
            continue
        plans.append(replace(plan, acquired=dated[path]) if path in dated else plan)
    todo = []
    result.too_coarse = [{"name": p.info.name, "reason": p.info.skip} for p in plans
                         if p.info.skip]
    for plan in plans:
        if _is_current(root, plan.info):
            result.skipped.append(plan.info.name)
        else:
            todo.append(plan)
    bar = _progress(len(todo), progress)
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        futures = {pool.submit(write_scene, root, plan, config): plan for plan in todo}
        for future in as_completed(futures):
            plan = futures[future]
            try:
                future.result()
                result.ingested.append(plan.info.name)
            except InputError as err:
                refusals.append(refusal(plan.source, err))
            bar.update(1)
    bar.close()
    result.ingested.sort()
    _record(root, out, files, refusals)


def _progress(total: int, enabled: bool):
    """A bar over scenes where one reaches a person (:func:`resflow.bars.draws_bars`); never
    carriage returns in a log."""
    from tqdm import tqdm

    from resflow.bars import draws_bars

    return tqdm(total=total, unit="scene", desc="ingest", disable=not (enabled and draws_bars()))


def _open_for_writing(out: Path | str) -> zarr.Group:
    """Open or create the archive root; refuse a folder that is some other Zarr store, or
    one this process cannot write (a read-only or full disk, another user's folder)."""
    try:
        root = zarr.open_group(storage.zarr_store(out), mode="a", zarr_format=3,
                               use_consolidated=False)
        kind = root.attrs.get("resflow_kind")
        if kind not in (None, ARCHIVE_KIND):
            raise InputError(storage.display(out), f"the store is a resflow '{kind}' store, "
                             "not an archive", "choose another --out path")
        if kind == ARCHIVE_KIND and root.attrs.get("format") != FORMAT_VERSION:
            raise InputError(storage.display(out), f"the archive has format "
                             f"{root.attrs.get('format')}, older than this resflow's "
                             f"{FORMAT_VERSION} (working ground resolutions)",
                             "ingest into a new --out path, or delete the old archive first")
        # Rewriting the root attributes also drops consolidated metadata from an earlier
        # run, which would otherwise describe scenes this run is about to redo.
        root.attrs.update({"resflow_kind": ARCHIVE_KIND, "format": FORMAT_VERSION,
                           "resflow_version": __version__})
        root.require_group(SCENES)
    except OSError as exc:
        raise InputError(storage.display(out), f"the archive cannot be created or written "
                         f"({exc.strerror or exc})", "give --out a folder you can write, on "
                         "a disk with free space") from exc
    return root


def _is_current(root: zarr.Group, info: SceneInfo) -> bool:
    """A scene is current when complete and ingested from the same bytes the same way."""
    key = f"{SCENES}/{info.name}"
    if key not in root:
        return False
    attrs = root[key].attrs
    return (attrs.get("complete") is True and attrs.get("sha256") == info.sha256
            and attrs.get("chip") == info.chip and tuple(attrs.get("rgb", ())) == info.rgb
            and attrs.get("gsd_m") == info.gsd_m and attrs.get("mask") == info.mask)


def _record(root: zarr.Group, out: Path | str, files: Sequence[Path | str],
            refusals: list[dict]) -> None:
    """Keep refusals of earlier runs for other inputs; replace those for this run's inputs."""
    touched = {storage.display(p) for p in files} | {r["source"] for r in refusals}
    kept = [r for r in root.attrs.get("refused", []) if r["source"] not in touched]
    root.attrs["refused"] = kept + refusals
    with warnings.catch_warnings():
        # Consolidated metadata lets plain xarray.open_zarr open groups without a warning.
        warnings.simplefilter("ignore", ZarrUserWarning)
        zarr.consolidate_metadata(storage.zarr_store(out))
