"""Writing one inspected raster into the archive as a scene, window by window.

Memory is bounded by the window (``window_rows`` squared, in whole chips), not by the scene:
each window is read (through GDAL's warper where the working grid differs from the
source's), masked where the source has a mask, written, and counted towards the scene's
scaling stats and per-chip valid fractions. The scene's ``complete`` attribute is written
last, so an interrupted write never leaves a scene that looks finished.
"""

from __future__ import annotations

import errno
import os
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any

import numpy as np
import rasterio
import zarr
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from resflow import storage
from resflow.archive_layout import SCENES, SceneInfo
from resflow.chips import grid_shape
from resflow.config import IngestConfig
from resflow.errors import InputError, ResflowError
from resflow.harmonise import StatsSampler, apply_mask, valid_mask
from resflow.retries import retrying
from resflow.sources import NO_RAW_BANDS, Plan, raster_drivers

STREAM_CACHE_MB = 64
"""GDAL block cache while streaming, MiB. GDAL's default (5% of RAM) fills with every block
read, which for a large raster of tiny (16 x 16) blocks grows far past the window itself."""


#: errno values of a write the archive's disk refused: the archive's fault, which stops the
#: ingest, not the source's, which would refuse that source alone.
WRITE_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,
                           errno.EACCES})


def _location(root: zarr.Group) -> str:
    """The archive a root group belongs to, as messages name it."""
    store = root.store
    return str(getattr(store, "root", None) or getattr(store, "path", store))


def write_scene(root: zarr.Group, plan: Plan, config: IngestConfig) -> None:
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
        with suppress(OSError):  # a full or read-only disk may refuse the removal too
            del scenes[info.name]
        if not isinstance(exc, RasterioError) and exc.errno in WRITE_REFUSED:
            raise ResflowError(f"{_location(root)}: scenes/{info.name}", "writing the archive "
                               f"failed ({os.strerror(exc.errno)}), so no scene can be added",
                               "free space on the archive's disk (or give it a writable "
                               "--out), then ingest again: the scenes already written are "
                               "kept and skipped") from exc
        detail = exc.__cause__ or exc  # GDAL's own message sits on the cause
        raise InputError(storage.display(plan.source), f"the raster is truncated or corrupt: "
                         f"reading its pixels failed (GDAL: {detail})",
                         "re-download or re-export it") from exc
    group.create_array("valid_fraction", data=fractions, chunks=fractions.shape,
                       dimension_names=("chip_row", "chip_col"),
                       attributes={"long_name": "share of valid pixels per chip"})
    group.attrs.update({"stats": stats})
    group.attrs["complete"] = True


def _stream(group: zarr.Group, plan: Plan, config: IngestConfig) -> tuple[dict, np.ndarray]:
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
            storage.open_raster(plan.source, raster_drivers(plan.source)) as src, \
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
