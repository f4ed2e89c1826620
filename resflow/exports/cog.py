"""Cloud-Optimized GeoTIFFs of a complete output store: each scene's probability and mask.

COGs keep each scene's own CRS and grid, so a COG pixel is exactly an output pixel, and
hold the stored values; GDAL metadata (scale, nodata, colour tables) says how to read and
draw them, so QGIS shows them styled as soon as they are dropped in. The mask also carries
an alpha band, so only buildings cover the imagery under it, and its class names (band
metadata, and GDAL category names and a raster attribute table in the ``.aux.xml`` beside
it, as GDAL keeps them for GeoTIFFs). Blocks are streamed into a tiled GeoTIFF, then laid
out as a COG by GDAL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
import zarr
from rasterio.windows import Window

from resflow import storage
from resflow.exports.files import replacing
from resflow.exports.settings import (
    TILE_PX,
    default_min_building_m2,
    export_settings,
    mask_rule,
)
from resflow.store.format import Encoding, scene_file
from resflow.store.mask_rule import MaskRule
from resflow.store.reader import SceneMaps, open_complete, scene_gsd_m, scene_maps
from resflow.store.writer import OutputStore

COG_BLOCK = 256
"""COG tile edge, pixels: small enough that every sample scene gets at least one overview."""


MASK_COLOURS = {0: (0, 0, 0, 255), 1: (230, 40, 30, 255)}
"""Colour table of mask COGs, RGBA: background black, buildings red (as quicklooks). A TIFF
colour table has no alpha, so transparency comes from the alpha band (background and not
mapped) and nodata (not mapped)."""

MASK_CLASSES = {0: "background", 1: "building"}
"""Class names of the mask values, as GDAL category names and the band's ``CLASS_<n>`` tags."""

RAMP_ENDS = ((0, 0, 254), (254, 254, 0))
"""Probability colour ramp, RGB at 0 (blue) and at 1 (yellow): every channel moves one unit
per stored step, so GDAL's averaging of a paletted band for overviews (it averages colours,
then takes the nearest entry) gives the same overviews as averaging the values."""


def probability_colours(nodata: int | None) -> dict[int, tuple[int, int, int, int]]:
    """Colour table of probability COGs on the stored scale 0..254, RGBA; nodata black."""
    (r0, g0, b0), (r1, g1, b1) = RAMP_ENDS
    ramp = {v: (round(r0 + (r1 - r0) * v / 254), round(g0 + (g1 - g0) * v / 254),
                round(b0 + (b1 - b0) * v / 254), 255) for v in range(255)}
    if nodata is not None:
        ramp[int(nodata)] = (0, 0, 0, 0)
    return ramp


def cog_names(group: str) -> dict[str, str]:
    """File names of a scene's COGs: ``<group>_probability.tif`` and ``<group>_mask.tif``."""
    return {name: f"{group}_{name}.tif" for name in ("probability", "mask")}


def aux_file(cog: Path) -> Path:
    """GDAL's side file of a GeoTIFF (``<name>.tif.aux.xml``), where GDAL and QGIS read the
    mask's category names and raster attribute table from."""
    return cog.with_name(f"{cog.name}.aux.xml")


def group_cog_names(group: str) -> list[str]:
    """The names of the files :func:`export_cogs` writes for one scene group: the
    probability COG, the mask COG and the mask's ``.aux.xml``."""
    names = cog_names(group)
    return [names["probability"], names["mask"], aux_file(Path(names["mask"])).name]


def cog_files(store: OutputStore, cog_dir: Path | str) -> list[Path]:
    """Every file :func:`export_cogs` writes into ``cog_dir``, refused if a group name
    would leave the folder."""
    return [scene_file(cog_dir, name, store) for scene in scene_gsd_m(store)
            for name in group_cog_names(store.groups[scene])]



def export_cogs(out_store: OutputStore | storage.Location, cog_dir: Path | str, *,
                threshold: float | None = None,
                min_building_m2: float | None = None) -> list[Path]:
    """Write each scene's probability and mask as Cloud-Optimized GeoTIFFs.

    Files are ``<cog_dir>/<group>_probability.tif`` (overviews averaged) and
    ``<group>_mask.tif`` (overviews nearest, so they stay classes): uint8, deflate, 256-pixel
    tiles, in the scene's CRS and transform, holding the stored values. GDAL metadata says
    how to read them: the probability band's scale (``src.scales``: probability = value x
    scale) and, on both, the not-mapped value as nodata (``src.nodata``) where the store has
    one. The probability carries a colour ramp on its stored scale; the mask a colour table
    (buildings red, background black), an alpha band (opaque on buildings only, so the
    imagery shows through elsewhere), ``CLASS_0``/``CLASS_1`` band tags and, in
    ``<name>.tif.aux.xml``, GDAL category names and a raster attribute table naming class 1
    ``building``.

    Parameters
    ----------
    threshold
        None: the store's mask. A probability in (0, 1): the mask cut again from the stored
        probability (the store is never modified), groups under ``min_building_m2`` dropped.
    min_building_m2
        With ``threshold``: smallest building kept, m^2; default the run's
        ``min_building_m2`` (:func:`default_min_building_m2`).

    Returns
    -------
    list of Path
        The COGs written, two per scene (the mask's ``.aux.xml`` beside it).

    Raises
    ------
    ResflowError
        The output is not complete, or a setting is out of range.
    """
    export_settings(threshold=threshold, min_building_m2=min_building_m2)
    store = open_complete(out_store)
    min_building = default_min_building_m2(store) if min_building_m2 is None else min_building_m2
    cog_dir = Path(cog_dir)
    written: list[Path] = []
    for maps in scene_maps(store):
        names = cog_names(store.groups[maps.scene])
        tags = {"scene": maps.scene, "source": store.display}
        target = scene_file(cog_dir, names["probability"], store)
        _write_cog(maps, _stored_blocks(maps.probability), target, "average",
                   "building probability (value x scale)", maps.probability_encoding,
                   {**tags, "array": "probability"},
                   probability_colours(maps.probability_encoding.nodata))
        written.append(target)
        rule = mask_rule(store, maps, threshold, min_building)
        blocks = (_stored_blocks(maps.mask) if threshold is None
                  else _mask_blocks(maps, rule, TILE_PX))
        recut = {} if threshold is None else {"threshold": str(threshold),
                                              "min_building_m2": str(min_building)}
        target = scene_file(cog_dir, names["mask"], store)
        _write_cog(maps, blocks, target, "nearest", "building mask (1 building, 0 background)",
                   maps.mask_encoding, {**tags, "array": "mask", **recut}, MASK_COLOURS,
                   classes=MASK_CLASSES)
        with replacing(aux_file(target)) as partial:
            partial.write_text(_categories_xml(MASK_CLASSES, MASK_COLOURS))
        written.append(target)
    return written


def _stored_blocks(array: zarr.Array) -> Iterator[tuple[Window, np.ndarray]]:
    """Each chunk of a 2-D array with its window: memory stays one chunk."""
    height, width = array.shape
    step_y, step_x = array.chunks
    for y0 in range(0, height, step_y):
        for x0 in range(0, width, step_x):
            h, w = min(step_y, height - y0), min(step_x, width - x0)
            yield Window(x0, y0, w, h), np.asarray(array[y0:y0 + h, x0:x0 + w])


def _tiles(maps: SceneMaps, tile_px: int) -> Iterator[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` of every window, row by row, left to right."""
    height, width = maps.shape
    step = maps.tile(tile_px)
    for y0 in range(0, height, step):
        for x0 in range(0, width, step):
            yield y0, min(height, y0 + step), x0, min(width, x0 + step)


def _mask_blocks(maps: SceneMaps, rule: MaskRule,
                 tile_px: int) -> Iterator[tuple[Window, np.ndarray]]:
    for y0, y1, x0, x1 in _tiles(maps, tile_px):
        yield Window(x0, y0, x1 - x0, y1 - y0), maps.window(y0, y1, x0, x1, rule)[1]


def _write_cog(maps: SceneMaps, blocks: Iterator[tuple[Window, np.ndarray]], target: Path,
               resampling: str, description: str, encoding: Encoding, tags: dict[str, str],
               colours: dict[int, tuple[int, int, int, int]],
               classes: dict[int, str] | None = None) -> None:
    """Stream blocks into a tiled GeoTIFF, then lay it out as a COG with GDAL's ``COG``
    driver (which keeps nodata, scale, colour table, alpha band and tags).

    With ``classes`` a second band is written: alpha, 255 where the value is 1 (a
    building), 0 elsewhere."""
    height, width = maps.shape
    profile = {"driver": "GTiff", "height": height, "width": width,
               "count": 1 if classes is None else 2, "dtype": "uint8", "crs": maps.crs_wkt,
               "transform": maps.transform, "tiled": True, "blockxsize": COG_BLOCK,
               "blockysize": COG_BLOCK, "nodata": encoding.nodata}
    if classes is not None:
        profile["alpha"] = "YES"
    with replacing(target) as partial:
        staging = partial.with_suffix(".staging.tif")
        with rasterio.open(staging, "w", **profile) as dst:
            for window, block in blocks:
                dst.write(block, 1, window=window)
                if classes is not None:
                    dst.write(np.where(block == 1, 255, 0).astype(np.uint8), 2, window=window)
            dst.set_band_description(1, description)
            dst.update_tags(**tags)
            if classes is not None:
                dst.set_band_description(2, "alpha: opaque on buildings")
                dst.update_tags(1, **{f"CLASS_{v}": name for v, name in classes.items()})
            if encoding.scale != 1:
                dst.scales, dst.offsets = (encoding.scale,), (0.0,)
            dst.write_colormap(1, colours)
        rasterio.shutil.copy(staging, partial, driver="COG", COMPRESS="DEFLATE",
                             PREDICTOR="2", BLOCKSIZE=str(COG_BLOCK), OVERVIEWS="AUTO",
                             OVERVIEW_RESAMPLING=resampling.upper())



def _categories_xml(classes: dict[int, str], colours: dict[int, tuple[int, int, int, int]]) -> str:
    """A GDAL PAM document for band 1: category names (value n is the n-th) and a thematic
    raster attribute table (value, class name, colour), which GeoTIFF itself cannot hold."""
    names = [classes.get(v, "") for v in range(max(classes) + 1)]
    rows = "".join(
        f'      <Row index="{i}"><F>{v}</F><F>{escape(name)}</F>'
        + "".join(f"<F>{c}</F>" for c in colours[v]) + "</Row>\n"
        for i, (v, name) in enumerate(sorted(classes.items())))
    fields = [("value", 0, 5), ("class", 2, 2), ("red", 0, 6), ("green", 0, 7),
              ("blue", 0, 8), ("alpha", 0, 9)]
    defs = "".join(f"      <FieldDefn index=\"{i}\"><Name>{n}</Name><Type>{t}</Type>"
                   f"<Usage>{u}</Usage></FieldDefn>\n" for i, (n, t, u) in enumerate(fields))
    categories = "".join(f"      <Category>{escape(n)}</Category>\n" for n in names)
    return ('<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n'
            f"{categories}    </CategoryNames>\n"
            '    <GDALRasterAttributeTable tableType="thematic">\n'
            f"{defs}{rows}    </GDALRasterAttributeTable>\n  </PAMRasterBand>\n</PAMDataset>\n")
