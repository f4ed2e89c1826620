"""The rasters an ingest is given: found, checked and described before any pixel is copied.

Folders, object prefixes and STAC files expand into rasters (:func:`discover`); each raster
is opened and checked (:func:`inspect`): readable, georeferenced, real-valued, not too large
and, for a VRT, free of raw bands, which read any file they name as pixels. A raster that
passes becomes a :class:`Plan` holding its scene's metadata on the working grid; one that
fails is refused with an :class:`~resflow.errors.InputError` naming the source, the cause
and the fix, so one bad input never stops the others.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from resflow import storage
from resflow.archive_layout import SceneInfo
from resflow.catalogues import SAFE, HrefPolicy, stac_sources
from resflow.config import IngestConfig
from resflow.errors import InputError
from resflow.harmonise import band_names, masked_nodata, select_rgb
from resflow.resolution import working_grid
from resflow.retries import retrying

RASTER_SUFFIXES = frozenset({
    ".tif", ".tiff", ".gtiff", ".jp2", ".img", ".vrt", ".nc", ".hdf", ".h5", ".png",
    ".jpg", ".jpeg", ".asc", ".bil", ".dem", ".ntf", ".sid", ".ecw",
})
"""File suffixes (lower-case) picked up when a folder is given; explicit files are always tried."""

#: The GDAL drivers ingest opens rasters with, tried in this order after the one the file's
#: suffix names (:func:`resflow.storage.open_raster`): no other driver ever parses an input.
#: Drivers this GDAL build lacks never match.
RASTER_DRIVERS = ("GTiff", "JP2OpenJPEG", "VRT", "HFA", "netCDF", "HDF5", "HDF4", "PNG",
                  "JPEG", "AAIGrid", "EHdr", "USGSDEM", "NITF", "MrSID", "ECW", "ENVI")
_SUFFIX_DRIVERS = {".tif": "GTiff", ".tiff": "GTiff", ".gtiff": "GTiff", ".jp2": "JP2OpenJPEG",
                   ".img": "HFA", ".vrt": "VRT", ".nc": "netCDF", ".hdf": "HDF4", ".h5": "HDF5",
                   ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".asc": "AAIGrid",
                   ".bil": "EHdr", ".dem": "USGSDEM", ".ntf": "NITF", ".sid": "MrSID",
                   ".ecw": "ECW"}


def raster_drivers(path: Path | str) -> tuple[str, ...]:
    """:data:`RASTER_DRIVERS`, the one the file's suffix names first.

    >>> raster_drivers("scene.jp2")[:2]
    ('JP2OpenJPEG', 'GTiff')
    """
    first = _SUFFIX_DRIVERS.get(Path(storage.basename(path)).suffix.lower())
    return tuple(dict.fromkeys([first, *RASTER_DRIVERS] if first else RASTER_DRIVERS))

ZARR_RESERVED = frozenset({"zarr.json", "zattrs", "zgroup", "zarray", "zmetadata"})
"""Names Zarr (v3, and v2 without the leading dot that cleaning strips) keeps for metadata."""

NO_RAW_BANDS = {"GDAL_VRT_ENABLE_RAWRASTERBAND": "NO"}
"""GDAL's switch against VRT raw bands, set wherever ingest opens a raster, for GDAL builds
that read it at run time; GDAL 3.10 reads it only when built, so :func:`_refuse_raw_bands`
checks the XML as well."""

#: Bytes of a VRT read to look for raw bands; a VRT larger than this is refused.
VRT_MAX_BYTES = 16 << 20


@dataclass(frozen=True)
class Plan:
    """A raster that passed inspection, ready to be written as one scene."""

    source: Path | str
    info: SceneInfo
    acquired: str | None = None
    """The source's acquisition time (:func:`acquisition_time`), kept in the scene's
    ``acquired_utc`` attribute for the STAC Items of its maps."""


def refusal(source: Path | str, err: InputError) -> dict:
    """One refused input as the archive's ``refused`` attribute and
    :class:`~resflow.ingestion.IngestResult` keep it: the source as messages show it, and the
    refusal's where, problem and fix."""
    return {"source": storage.display(source), **err.as_record()}


def discover(sources: Iterable[str | Path], stac_asset: str | None = None,
             policy: HrefPolicy = SAFE, times: dict[Path | str, str] | None = None
             ) -> tuple[list[Path | str], list[dict]]:
    """Expand folders, prefixes and STAC files (``*.json``: :func:`resflow.catalogues.stac_sources`,
    ``stac_asset`` naming the asset key, ``policy`` what their hrefs may reach) into their
    rasters; refuse missing paths and objects, and folders without rasters. ``times`` gets
    the acquisition time of each raster a STAC Item dates, keyed as the rasters returned."""
    files: list[Path | str] = []
    refusals: list[dict] = []
    for source in sources:
        path = storage.normalise(source)
        if storage.basename(path).lower().endswith(".json"):
            refused: list[InputError] = []
            dated: dict[str, str] = {}
            try:
                files.extend(storage.normalise(href) for href in
                             stac_sources(path, asset_key=stac_asset, policy=policy,
                                          refused=refused, times=dated))
            except InputError as err:
                refused.append(err)
            refusals.extend(refusal(path, err) for err in refused)
            if times is not None:
                times.update((_key(storage.normalise(href)), when)
                             for href, when in dated.items())
        elif isinstance(path, str):
            found = retrying(lambda: storage.find(path, RASTER_SUFFIXES))  # noqa: B023
            if not found:
                what = "no object or prefix" if found is None else "no raster objects"
                refusals.append(refusal(path, InputError(
                    storage.display(path), f"there is {what} at this URL",
                    "check the bucket, the key and your credentials (AWS_PROFILE or "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")))
            files.extend(found or [])
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)
            if not found:
                refusals.append(refusal(path, InputError(
                    str(path), "the folder holds no raster files "
                    f"({', '.join(sorted(RASTER_SUFFIXES)[:6])}, ...)",
                    "point at a folder of GeoTIFFs or name the raster files directly")))
            files.extend(found)
        elif not path.exists():
            refusals.append(refusal(path, InputError(
                str(path), "the file does not exist", "check the path and spelling")))
        else:
            files.append(path)
    unique = list(dict.fromkeys(_key(p) for p in files))
    return unique, refusals


def _key(path: Path | str) -> Path | str:
    """A raster as :func:`discover` returns it: local paths resolved, URLs as given."""
    return path.resolve() if isinstance(path, Path) else path


def scene_names(files: Sequence[Path | str]) -> list[str]:
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


def inspect(path: Path | str, name: str, config: IngestConfig,
             rgb: Sequence[int] | None) -> Plan:
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
                  rgb: Sequence[int] | None) -> Plan:
    where = storage.display(path)
    if storage.size(path) == 0:
        raise InputError(where, "the file is empty (0 bytes)", "re-download or re-export it")
    try:
        with warnings.catch_warnings():
            # A missing geotransform is reported below as a refusal, not as a warning.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with storage.raster_env(path, **NO_RAW_BANDS):
                ds = storage.open_raster(path, raster_drivers(path))
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
        # GDAL opening a URL whose server stopped answering reads no bytes and reports an
        # unknown format, so the fix names that cause too
        stalled = (" If a copy on local disk opens, the server stopped answering: ingest "
                   "again, or raise GDAL_HTTP_TIMEOUT" if storage.is_url(path) else "")
        raise InputError(where, "not a readable raster in a format ingest opens (GeoTIFF, "
                         "JPEG 2000, VRT, Erdas IMG, netCDF, HDF, PNG, JPEG, ...), or "
                         f"truncated or corrupt (GDAL: {exc})",
                         "convert it to a GeoTIFF (gdal_translate), or re-download it if a "
                         f"transfer was cut short.{stalled}") from exc
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
    if "palette" in colorinterp:
        band = colorinterp.index("palette") + 1
        raise InputError(where, f"band {band} is paletted: its values index a colour table, "
                         "so they are not colours or intensities a model can read",
                         "expand it to RGB first: `gdal_translate -expand rgb IN OUT.tif`")
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
    return Plan(source=path, info=info, acquired=acquired)


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
