"""Ingest: any GDAL-readable raster into one Zarr v3 imagery archive, one group per scene.

Each scene is streamed window by window (memory bounded by ``window_rows`` squared, not by
scene size), scenes run in parallel threads, and the scene's ``complete`` attribute is
written last, so an interrupted ingest never leaves a scene that looks finished. A re-run
skips complete scenes whose source checksum, chip and band selection are unchanged, and
redoes the rest. Inputs that cannot be used are refused one by one with an
:class:`~resflow.errors.InputError` and recorded in the root attribute ``refused``; the
other inputs still ingest. The layout is described in :mod:`resflow.archive_layout`.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from affine import Affine
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from zarr.errors import ZarrUserWarning

from resflow import __version__, storage
from resflow.archive_layout import ARCHIVE_KIND, FORMAT_VERSION, SCENES, SceneInfo
from resflow.chips import grid_shape
from resflow.config import IngestConfig
from resflow.errors import InputError
from resflow.harmonise import (
    StatsSampler,
    apply_mask,
    band_names,
    masked_nodata,
    select_rgb,
    valid_mask,
)
from resflow.resolution import working_grid
from resflow.retries import retrying

RASTER_SUFFIXES = frozenset({
    ".tif", ".tiff", ".gtiff", ".jp2", ".img", ".vrt", ".nc", ".hdf", ".h5", ".png",
    ".jpg", ".jpeg", ".asc", ".bil", ".dem", ".ntf", ".sid", ".ecw",
})
"""File suffixes (lower-case) picked up when a folder is given; explicit files are always tried."""

ZARR_RESERVED = frozenset({"zarr.json", "zattrs", "zgroup", "zarray", "zmetadata"})
"""Names Zarr (v3, and v2 without the leading dot that cleaning strips) keeps for metadata."""

STREAM_CACHE_MB = 64
"""GDAL block cache while streaming, MiB. GDAL's default (5% of RAM) fills with every block
read, which for a large raster of tiny (16 x 16) blocks grows far past the window itself."""


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


@dataclass(frozen=True)
class _Plan:
    """A raster that passed inspection, ready to be written as one scene."""

    source: Path | str
    info: SceneInfo
    acquired: str | None = None
    """The source's acquisition time (:func:`acquisition_time`), kept in the scene's
    ``acquired_utc`` attribute for the STAC Items of its maps."""


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
    _refuse_file(out)
    result = IngestResult(path=out)
    files, result.refused = _discover(sources, config.stac_asset)
    new = not storage.exists(out)
    try:
        _ingest_into(out, files, config, rgb, result, progress=progress)
    except BaseException:
        if new and not result.ingested and storage.exists(out):
            storage.remove_tree(out)
        raise
    if new and not result.ingested and not result.skipped:
        storage.remove_tree(out)
        result.removed = True
    return result


def _refuse_file(out: Path | str) -> None:
    """Refuse an archive location that is a file (or one object): an archive is a folder."""
    if isinstance(out, Path):
        is_file = out.exists() and not out.is_dir()
    else:
        fs, path = storage.filesystem(out)
        is_file = bool(fs.isfile(path))
    if is_file:
        raise InputError(storage.display(out), "the archive location is a file, and an "
                         "archive is a folder of scenes", "give --out a new .zarr path or "
                         "an existing archive's folder")


def _ingest_into(out: Path | str, files: Sequence[Path | str], config: IngestConfig,
                 rgb: Sequence[int] | None, result: IngestResult, *, progress: bool) -> None:
    """Inspect ``files`` and write the scenes that are not current into the archive at
    ``out``, filling ``result`` as scenes finish (so a caller stopped by an exception knows
    what was written)."""
    refusals = result.refused
    root = _open_for_writing(out)
    plans: list[_Plan] = []
    for path, name in zip(files, _scene_names(files), strict=True):
        try:
            plans.append(_inspect(path, name, config, rgb))
        except InputError as err:
            refusals.append(_refusal(path, err))
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
        futures = {pool.submit(_write_scene, root, plan, config): plan for plan in todo}
        for future in as_completed(futures):
            plan = futures[future]
            try:
                future.result()
                result.ingested.append(plan.info.name)
            except InputError as err:
                refusals.append(_refusal(plan.source, err))
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


def _refusal(source: Path | str, err: InputError) -> dict:
    return {"source": storage.display(source), **err.as_record()}


def _discover(sources: Iterable[str | Path],
              stac_asset: str | None = None) -> tuple[list[Path | str], list[dict]]:
    """Expand folders, prefixes and STAC files (``*.json``: :func:`resflow.catalogues.stac_sources`,
    ``stac_asset`` naming the asset key) into their rasters; refuse missing paths and
    objects, and folders without rasters."""
    files: list[Path | str] = []
    refusals: list[dict] = []
    for source in sources:
        path = storage.normalise(source)
        if storage.basename(path).lower().endswith(".json"):
            from resflow.catalogues import stac_sources

            refused: list[InputError] = []
            try:
                files.extend(storage.normalise(href) for href in
                             stac_sources(path, asset_key=stac_asset, refused=refused))
            except InputError as err:
                refused.append(err)
            refusals.extend(_refusal(path, err) for err in refused)
        elif isinstance(path, str):
            found = retrying(lambda: storage.find(path, RASTER_SUFFIXES))  # noqa: B023
            if not found:
                what = "no object or prefix" if found is None else "no raster objects"
                refusals.append(_refusal(path, InputError(
                    storage.display(path), f"there is {what} at this URL",
                    "check the bucket, the key and your credentials (AWS_PROFILE or "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")))
            files.extend(found or [])
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                refusals.append(_refusal(path, InputError(
                    str(path), "the folder holds no raster files "
                    f"({', '.join(sorted(RASTER_SUFFIXES)[:6])}, ...)",
                    "point at a folder of GeoTIFFs or name the raster files directly")))
            files.extend(found)
        elif not path.exists():
            refusals.append(_refusal(path, InputError(
                str(path), "the file does not exist", "check the path and spelling")))
        else:
            files.append(path)
    unique = list(dict.fromkeys(p.resolve() if isinstance(p, Path) else p for p in files))
    return unique, refusals


def _scene_names(files: Sequence[Path | str]) -> list[str]:
    """Sanitised group names; a stem shared by several files gets its folder prepended.

    A name Zarr uses for its own metadata (``zarr.json``, ``.zattrs``...) gets a ``_scene``
    suffix: a group of that name would overwrite the ``scenes`` group's metadata file.
    """
    def clean(text: str) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "scene"
        return f"{name}_scene" if name.lower() in ZARR_RESERVED else name

    stems = [clean(Path(storage.basename(p)).stem) for p in files]
    return [clean(f"{storage.parent_name(p)}_{Path(storage.basename(p)).stem}")
            if stems.count(s) > 1 else s for p, s in zip(files, stems, strict=True)]


def sha256(path: Path | str, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file or object, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with storage.open_binary(path) as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _inspect(path: Path | str, name: str, config: IngestConfig,
             rgb: Sequence[int] | None) -> _Plan:
    """Check that a raster can become a scene; raise one :class:`InputError` if not.

    A remote raster's reads are retried while they fail transiently
    (:func:`resflow.retries.retrying`); a refusal is final, and so is a source that cannot
    be reached (refused with its HTTP status where it has one)."""
    try:
        return retrying(lambda: _inspect_once(path, name, config, rgb))
    except OSError as exc:
        if not storage.is_url(path):
            raise
        raise InputError(storage.display(path), f"the source cannot be fetched "
                         f"({_fetch_error(path, exc)})", "check the URL, that it is public or "
                         "that your credentials may read it, or leave it out") from exc


def _fetch_error(url: Path | str, exc: OSError) -> str:
    """Why a URL could not be fetched: its HTTP status (fsspec reports 403 and 404 alike as
    a missing file, so one HEAD request asks the server), or the error itself."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    if str(url).lower().startswith(("http://", "https://")):
        try:
            with urlopen(Request(str(url), method="HEAD"), timeout=30) as answer:
                return f"HTTP {answer.status} now, after {exc.__class__.__name__}"
        except HTTPError as error:
            return f"HTTP {error.code} {error.reason}"
        except (URLError, OSError) as error:
            return f"{error.__class__.__name__}: {error}"
    return f"{exc.__class__.__name__}: {exc}"


NO_RAW_BANDS = {"GDAL_VRT_ENABLE_RAWRASTERBAND": "NO"}
"""GDAL's switch against VRT raw bands, set wherever ingest opens a raster, for GDAL builds
that read it at run time; GDAL 3.10 reads it only when built, so :func:`_refuse_raw_bands`
checks the XML as well."""

#: Bytes of a VRT read to look for raw bands; a VRT larger than this is refused.
VRT_MAX_BYTES = 16 << 20


def _refuse_raw_bands(path: Path | str, where: str, files: Sequence[str]) -> None:
    """Refuse a VRT (whatever its name: ``.tif`` too) that holds, or reaches through the VRTs
    it names, a raw band (``VRTRawRasterBand``): such a band reads any file it names, a
    private key as well as imagery, as pixels. GDAL 3.10 has no run-time switch for them
    (``GDAL_VRT_ENABLE_RAWRASTERBAND`` is a build option), so the XML is read here."""
    documents = [storage.read_prefix(path, VRT_MAX_BYTES + 1)]
    for file in files[1:]:
        local = Path(file)
        if local.suffix.lower() == ".vrt" and local.is_file():
            with local.open("rb") as fh:
                documents.append(fh.read(VRT_MAX_BYTES + 1))
    if any(len(doc) > VRT_MAX_BYTES for doc in documents):
        raise InputError(where, f"a VRT over {VRT_MAX_BYTES >> 20} MiB cannot be checked for "
                         "raw bands", "convert it to a GeoTIFF with gdal_translate")
    if any(b"vrtrawrasterband" in doc.lower() for doc in documents):
        raise InputError(where, "the raster is a VRT with a raw band (VRTRawRasterBand), "
                         "which reads whatever file it names as pixels",
                         "convert it to a GeoTIFF you trust with gdal_translate, or ingest "
                         "the files it points at")


def _inspect_once(path: Path | str, name: str, config: IngestConfig,
                  rgb: Sequence[int] | None) -> _Plan:
    where = storage.display(path)
    if storage.size(path) == 0:
        raise InputError(where, "the file is empty (0 bytes)", "re-download or re-export it")
    try:
        with warnings.catch_warnings():
            # A missing geotransform is reported below as a refusal, not as a warning.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with storage.raster_env(path, **NO_RAW_BANDS):
                ds = storage.open_raster(path)
        with ds:
            count, dtypes, crs, transform = ds.count, ds.dtypes, ds.crs, ds.transform
            height, width, nodata = ds.height, ds.width, ds.nodata
            descriptions, colorinterp = ds.descriptions, [c.name for c in ds.colorinterp]
            mask_flags = ds.mask_flag_enums
            has_gcps = bool(ds.gcps[0]) or bool(ds.rpcs)
            subdatasets = ds.subdatasets
            acquired = acquisition_time(ds.tags())
            if ds.driver == "VRT":
                _refuse_raw_bands(path, where, ds.files)
    except RasterioError as exc:
        raise InputError(where, f"not a readable raster, or truncated or corrupt (GDAL: {exc})",
                         "check it is a GeoTIFF or other GDAL raster and re-download it if a "
                         "transfer was cut short") from exc
    if count == 0:
        inside = f" (it is a container of {len(subdatasets)} subdatasets)" if subdatasets else ""
        raise InputError(where, f"the raster has zero bands{inside}",
                         "export the bands (or one subdataset) to a GeoTIFF first, e.g. "
                         "`gdal_translate NETCDF:file.nc:var out.tif`")
    if any(d.startswith("complex") for d in dtypes):
        raise InputError(where, f"complex pixels ({dtypes[0]}, e.g. SAR) are not supported",
                         "convert to amplitude or intensity first, e.g. "
                         "`gdal_translate -ot Float32` of abs(value)")
    if transform.is_identity and has_gcps:
        raise InputError(where, "the raster is georeferenced by GCPs or RPCs only, without a "
                         "geotransform", "warp it to a grid first with `gdalwarp`")
    missing = [what for what, ok in (("CRS", crs is not None),
                                     ("geotransform", not transform.is_identity)) if not ok]
    if missing:
        raise InputError(where, f"the raster has no {' and no '.join(missing)}",
                         "georeference it first, e.g. `gdal_edit.py -a_srs EPSG:xxxx "
                         "-a_ullr ulx uly lrx lry`")
    alpha_band, mask = _source_mask(where, colorinterp, mask_flags, rgb)
    names = band_names(Path(storage.basename(path)), count, descriptions, colorinterp)
    imagery = tuple(b for b in range(1, count + 1) if b != alpha_band)
    names = tuple(names[b - 1] for b in imagery)
    grid = working_grid(crs.to_wkt(), tuple(transform)[:6], height, width, config.gsd,
                        config.max_gsd)
    for what, (rows, cols) in (("the raster", (height, width)),
                               ("its working grid", (grid.height, grid.width))):
        if rows * cols > config.max_pixels:
            raise InputError(where, f"{what} is {rows} x {cols} pixels, more than the "
                             f"{config.max_pixels:,} ingest takes (max_pixels)",
                             "cut the scene into tiles (gdal_translate -srcwin), or raise "
                             "max_pixels in the ingest config if it is really that large")
    info = SceneInfo(
        name=name, height=grid.height, width=grid.width, band_names=names, dtype=dtypes[0],
        crs_wkt=crs.to_wkt(), transform=grid.transform, chip=config.chip,
        nodata=masked_nodata(dtypes[0], nodata) if mask else nodata,
        source=storage.display(path), sha256=sha256(path), stats={},
        rgb=select_rgb(where, names, rgb, numbers=imagery),
        gsd_m=grid.gsd_m, source_gsd_m=grid.source_gsd_m, resampling=grid.resampling,
        skip=grid.skip, mask=mask, alpha_band=alpha_band,
    )
    return _Plan(source=path, info=info, acquired=acquired)


def acquisition_time(tags: dict[str, str]) -> str | None:
    """The GeoTIFF ``TIFFTAG_DATETIME`` (``YYYY:MM:DD HH:MM:SS``) as ISO 8601 UTC, or None
    where it is missing or malformed. The tag has no time zone; it is taken as UTC, as
    imagery providers write it."""
    stamp = tags.get("TIFFTAG_DATETIME", "").strip()
    try:
        when = datetime.strptime(stamp, "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return when.replace(tzinfo=UTC).isoformat()


def _source_mask(where: str, colorinterp: Sequence[str], mask_flags: Sequence[Sequence[Any]],
                 rgb: Sequence[int] | None) -> tuple[int | None, str | None]:
    """The source's alpha band (1-based) and the kind of mask it has (``SceneInfo.mask``).

    An alpha band is found by its colour interpretation, which GDAL sets for any pixel type
    (its mask flags name alpha only for 8- and 16-bit rasters); a GDAL mask band by the
    ``per_dataset`` flag. A band override naming the alpha band is refused.
    """
    alpha = next((i + 1 for i, c in enumerate(colorinterp) if c == "alpha"), None)
    if alpha is None:
        per_dataset = any(MaskFlags.per_dataset in flags for flags in mask_flags)
        return None, "per_dataset" if per_dataset else None
    if len(colorinterp) == 1:
        raise InputError(where, "its only band is an alpha band: a mask without imagery",
                         "ingest the raster whose bands it masks")
    if rgb is not None and alpha - 1 in rgb:
        others = ",".join(str(b) for b in range(1, len(colorinterp) + 1) if b != alpha)
        raise InputError(where, f"band {alpha}, chosen for R, G or B, is the raster's alpha "
                         "band: its mask, not imagery",
                         f"pass --rgb with three of the imagery bands {others}")
    return alpha, "alpha"


def _open_for_writing(out: Path | str) -> zarr.Group:
    """Open or create the archive root; refuse a folder that is some other Zarr store."""
    root = zarr.open_group(storage.zarr_store(out), mode="a", zarr_format=3,
                           use_consolidated=False)
    kind = root.attrs.get("resflow_kind")
    if kind not in (None, ARCHIVE_KIND):
        raise InputError(storage.display(out), f"the store is a resflow '{kind}' store, not "
                         "an archive", "choose another --out path")
    if kind == ARCHIVE_KIND and root.attrs.get("format") != FORMAT_VERSION:
        raise InputError(storage.display(out), f"the archive has format "
                         f"{root.attrs.get('format')}, older than this resflow's "
                         f"{FORMAT_VERSION} (working ground resolutions)",
                         "ingest into a new --out path, or delete the old archive first")
    # Rewriting the root attributes also drops consolidated metadata from an earlier run,
    # which would otherwise describe scenes this run is about to redo.
    root.attrs.update({"resflow_kind": ARCHIVE_KIND, "format": FORMAT_VERSION,
                       "resflow_version": __version__})
    root.require_group(SCENES)
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


def _write_scene(root: zarr.Group, plan: _Plan, config: IngestConfig) -> None:
    """Stream one raster into ``scenes/<name>``, marking it complete only at the very end."""
    info = plan.info
    scenes = root[SCENES]
    if info.name in scenes:
        del scenes[info.name]
    acquired = {} if plan.acquired is None else {"acquired_utc": plan.acquired}
    group = scenes.create_group(info.name, attributes={**info.to_attrs(), **acquired,
                                                       "complete": False})
    if info.skip:  # too coarse to map: the record says so, no pixels are copied
        group.attrs["complete"] = True
        return
    try:  # a remote source's transient failures are retried; each try rewrites every array
        stats, fractions = retrying(lambda: _stream(group, plan, config)) \
            if storage.is_url(plan.source) else _stream(group, plan, config)
    except (RasterioError, OSError) as exc:
        del scenes[info.name]
        detail = exc.__cause__ or exc  # GDAL's own message sits on the cause
        raise InputError(storage.display(plan.source), f"the raster is truncated or corrupt: "
                         f"reading its pixels failed (GDAL: {detail})",
                         "re-download or re-export it") from exc
    group.create_array("valid_fraction", data=fractions, chunks=fractions.shape,
                       dimension_names=("chip_row", "chip_col"),
                       attributes={"long_name": "share of valid pixels per chip"})
    group.attrs.update({"stats": stats})
    group.attrs["complete"] = True


def _stream(group: zarr.Group, plan: _Plan, config: IngestConfig) -> tuple[dict, np.ndarray]:
    """Copy pixels window by window; collect scaling stats and per-chip valid fractions."""
    info = plan.info
    nbands, chip = len(info.band_names), info.chip
    _write_coords(group, info)
    fill = info.nodata if info.nodata is not None and not np.isnan(info.nodata) else 0
    image_attrs = {"grid_mapping": "spatial_ref", "coordinates": "spatial_ref",
                   "long_name": list(info.band_names)}
    if info.nodata is not None:
        image_attrs["_FillValue"] = info.nodata
    image = group.create_array(
        "image", shape=(nbands, info.height, info.width), chunks=(nbands, chip, chip),
        dtype=info.dtype, fill_value=fill, dimension_names=("band", "y", "x"),
        attributes=image_attrs, overwrite=True,
        # every chunk is stored, fill-valued ones too: a reader then tells a deleted chunk
        # from pixels (Archive._slab)
        config={"write_empty_chunks": True},
    )
    # Windows are whole multiples of the chip so every chunk is written exactly once.
    step = max(chip, config.window_rows // chip * chip)
    sampler = StatsSampler(info.height, info.width, info.nodata)
    valid_count = np.zeros(grid_shape(info.height, info.width, chip), dtype=np.int64)
    with storage.raster_env(plan.source, GDAL_CACHEMAX=STREAM_CACHE_MB, **NO_RAW_BANDS), \
            storage.open_raster(plan.source) as src, \
            _on_working_grid(src, info) as ds:
        for y0 in range(0, info.height, step):
            for x0 in range(0, info.width, step):
                h, w = min(step, info.height - y0), min(step, info.width - x0)
                pixels = _read_window(ds, info, Window(x0, y0, w, h), src.nodata)
                image[:, y0:y0 + h, x0:x0 + w] = pixels
                sampler.add(y0, x0, pixels)
                _count_valid(valid_count, valid_mask(pixels, info.nodata), y0, x0, chip)
    rows, cols = valid_count.shape
    heights = np.minimum(chip, info.height - chip * np.arange(rows))
    widths = np.minimum(chip, info.width - chip * np.arange(cols))
    fractions = (valid_count / np.outer(heights, widths)).astype(np.float32)
    return sampler.stats(), fractions


def _on_working_grid(src: rasterio.DatasetReader,
                     info: SceneInfo) -> AbstractContextManager[Any]:
    """The source itself, or a GDAL warped view of it on the scene's working grid.

    GDAL warps window by window, so streaming stays bounded in memory; ``average`` weighs
    every source pixel by its overlap with the working pixel and skips nodata, which is
    the antialiasing :mod:`resflow.resolution` describes.

    With a source mask the warper skips masked pixels too, and the view carries the warped
    mask as an alpha band (the source's own, at its place, or one added last for a GDAL mask
    band), which :func:`_read_window` reads; the view then has no nodata value, so a working
    pixel is never taken for masked because its warped value equals nodata.
    """
    if info.resampling == "none":
        return nullcontext(src)
    grid = {"crs": src.crs, "transform": Affine(*info.transform), "width": info.width,
            "height": info.height, "resampling": Resampling[info.resampling]}
    if info.mask is None:
        return WarpedVRT(src, **grid, src_nodata=info.nodata, nodata=info.nodata)
    return WarpedVRT(src, **grid, src_nodata=src.nodata, nodata=None,
                     src_alpha=info.alpha_band or 0, add_alpha=info.mask == "per_dataset")


def _read_window(ds: Any, info: SceneInfo, window: Window,
                 source_nodata: float | None) -> np.ndarray:
    """The scene's stored bands in ``window`` of ``ds`` (from :func:`_on_working_grid`).

    With a source mask, pixels it masks, or that are the source's nodata in every band, are
    written as ``info.nodata`` (:func:`resflow.harmonise.apply_mask`), so the archive's one
    validity rule finds them. The mask is the alpha band, read with the bands in one call,
    or GDAL's mask band: from the source itself, or the alpha band the warped view adds.
    """
    if info.mask is None:
        return ds.read(window=window)
    bands = list(info.source_bands)
    if info.mask == "per_dataset" and info.resampling == "none":
        pixels = ds.read(bands, window=window)
        valid = ds.read_masks(bands[0], window=window) > 0
    else:
        alpha = info.alpha_band if info.mask == "alpha" else ds.count
        block = ds.read([*bands, alpha], window=window)
        pixels, valid = block[:-1], block[-1] > 0
    return apply_mask(pixels, valid & valid_mask(pixels, source_nodata), info.nodata)


def _count_valid(counts: np.ndarray, valid: np.ndarray, y0: int, x0: int, chip: int) -> None:
    """Add a window's valid-pixel counts to the per-chip totals (window is chip-aligned)."""
    h, w = valid.shape
    ph, pw = -(-h // chip) * chip, -(-w // chip) * chip
    padded = np.zeros((ph, pw), dtype=np.int64)
    padded[:h, :w] = valid
    per_chip = padded.reshape(ph // chip, chip, pw // chip, chip).sum(axis=(1, 3))
    r, c = y0 // chip, x0 // chip
    counts[r:r + per_chip.shape[0], c:c + per_chip.shape[1]] += per_chip


def _write_coords(group: zarr.Group, info: SceneInfo) -> None:
    """CF coordinates and grid mapping so xarray and rioxarray read CRS and transform."""
    from pyproj import CRS

    a, b, c, d, e, f = info.transform
    geographic = CRS.from_wkt(info.crs_wkt).is_geographic
    x = c + a * (np.arange(info.width) + 0.5)
    y = f + e * (np.arange(info.height) + 0.5)
    names = ("longitude", "latitude") if geographic else ("projection_x_coordinate",
                                                         "projection_y_coordinate")
    for dim, values, standard in (("x", x, names[0]), ("y", y, names[1])):
        group.create_array(dim, data=values, dimension_names=(dim,), overwrite=True,
                           attributes={"standard_name": standard, "axis": dim.upper()})
    group.create_array("band", data=np.asarray(info.source_bands, dtype=np.int64),
                       dimension_names=("band",), overwrite=True)
    ref = group.create_array("spatial_ref", shape=(), dtype="int64", fill_value=0,
                             dimension_names=(), overwrite=True, attributes={
                                 "crs_wkt": info.crs_wkt, "spatial_ref": info.crs_wkt,
                                 "GeoTransform": " ".join(repr(v) for v in (c, a, b, f, d, e)),
                             })
    ref[...] = 0


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
