"""Exports of a complete output store: Cloud-Optimized GeoTIFFs, building footprints, a STAC
Collection (:mod:`resflow.stac`) and quicklooks.

COGs keep each scene's own CRS and grid, so a COG pixel is exactly an output pixel. Footprints
of every scene go to one file, and one file holds one CRS, so they are reprojected to WGS 84
(EPSG:4326); their areas are measured on each scene's own grid first.

Scenes are read in windows of :data:`TILE_PX` pixels, so memory does not grow with scene
size, and every file is written under a temporary name and renamed when whole, so an
interrupted export never leaves a file that looks finished.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
import shapely
import zarr
from affine import Affine
from pyproj import CRS
from rasterio.features import shapes
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import Polygon, shape

from resflow import storage
from resflow.config import MIN_BUILDING_M2
from resflow.errors import ConfigError, ResflowError
from resflow.masks import building_mask, min_pixels
from resflow.outputs import PROBABILITY_SCALE, OutputStore, scene_file

if TYPE_CHECKING:
    from resflow.archive import Archive

COG_BLOCK = 256
"""COG tile edge, pixels: small enough that every sample scene gets at least one overview."""

TILE_PX = 2048
"""Edge of the windows scenes are masked and vectorised in, pixels (rounded to whole chips):
a few tens of MB per window, whatever the scene size."""

WGS84 = "EPSG:4326"
"""The one CRS of a footprints file, as RFC 7946 GeoJSON requires (longitude, latitude)."""

MASK_COLOURS = {0: (0, 0, 0, 255), 1: (230, 40, 30, 255)}
"""Colour table of mask COGs, RGBA: background black, buildings red (as quicklooks). A TIFF
colour table has no alpha, so transparency comes from nodata: not-mapped pixels."""

FootprintFormat = Literal["parquet", "geojson"]
FOOTPRINT_SUFFIXES: dict[str, FootprintFormat] = {
    "": "parquet", ".parquet": "parquet", ".geoparquet": "parquet",
    ".geojson": "geojson", ".json": "geojson"}
"""File suffix -> footprints format; a name without a suffix gets GeoParquet, the default."""

FOOTPRINT_COLUMNS = ("scene", "chip", "bucket", "model", "area_m2", "prob_mean", "prob_max")


@dataclass(frozen=True)
class Encoding:
    """How one stored uint8 array encodes its values.

    Attributes
    ----------
    scale
        Stored value x ``scale`` is the value: probability in ``[0, 1]``; 1 for the mask.
    levels
        The stored value of probability 1, ``round(1 / scale)``: thresholds are compared on
        the stored scale as ``threshold x levels``, exactly as the run compares them.
    nodata
        The stored value of pixels that were not mapped, or None if every value is data.

    Examples
    --------
    >>> cf = zarr.create_array({}, shape=(4,), dtype="uint8", fill_value=255,
    ...                        attributes={"_FillValue": 255, "scale_factor": 1 / 254})
    >>> Encoding.of(cf, default_scale=1 / 255)
    Encoding(scale=0.003937007874015748, levels=254, nodata=255)
    >>> Encoding.of(zarr.create_array({}, shape=(4,), dtype="uint8", fill_value=0),
    ...             default_scale=1 / 255)   # fill 0 is probability 0 there: no nodata
    Encoding(scale=0.00392156862745098, levels=255, nodata=None)
    """

    scale: float
    levels: int
    nodata: int | None

    @classmethod
    def of(cls, array: zarr.Array, *, default_scale: float) -> Encoding:
        """The encoding an array declares: ``scale_factor`` (else ``default_scale``) and, as
        not mapped, a declared ``_FillValue``, or the array's fill value when that is no
        data value (a fill of 0 in a store where 0 is probability 0 marks nothing)."""
        attrs = dict(array.attrs)
        scale = float(attrs.get("scale_factor", default_scale))
        levels = round(1 / scale)
        valid = {int(v) for v in attrs.get("flag_values", range(levels + 1))}
        fill = attrs.get("_FillValue", array.fill_value)
        declared = "_FillValue" in attrs
        nodata = None if fill is None or (not declared and int(fill) in valid) else int(fill)
        return cls(scale=scale, levels=levels, nodata=nodata)


@dataclass(frozen=True)
class MaskRule:
    """Which pixels are buildings: the run's own mask, or the probability cut again.

    Attributes
    ----------
    threshold
        None: the store's mask as the run wrote it. Else a probability in (0, 1): building
        where the probability is above it, as the run decides (:mod:`resflow.masks`).
    min_pixels
        With a threshold: groups of fewer building pixels are dropped, as the run drops them.
    halo
        With a threshold: the run's halo, mirrored beyond the scene edges as the run did.
    split
        With a threshold: the run's ``split_dip``, touching roofs split as the run split
        them (0: blobs kept whole, as runs made before the setting existed did).
    """

    threshold: float | None = None
    min_pixels: int = 0
    halo: int = 0
    split: float = 0.0


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
        unmapped = self._unmapped(stored)
        cut = np.where(unmapped, 0, stored) if unmapped is not None else stored
        top, left = rule.halo * (ry0 == 0), rule.halo * (rx0 == 0)
        padded = np.pad(cut, ((top, rule.halo * (ry1 == height)),
                              (left, rule.halo * (rx1 == width))), mode="symmetric")
        levels = self.probability_encoding.levels
        building = building_mask(padded, rule.threshold * levels, rule.min_pixels,
                                 split=rule.split * levels)
        inner = np.s_[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0]
        mask = building[top:, left:][inner].astype(np.uint8)
        if unmapped is not None and self.mask_encoding.nodata is not None:
            mask[unmapped[inner]] = self.mask_encoding.nodata
        return stored[inner], mask

    def _unmapped(self, stored: np.ndarray) -> np.ndarray | None:
        nodata = self.probability_encoding.nodata
        return None if nodata is None else stored == nodata


@dataclass
class _Piece:
    """The part of a building inside one window, in scene pixel coordinates."""

    polygon: Polygon
    pixels: int
    stored_sum: float
    stored_max: int
    first: tuple[int, int]


@dataclass(frozen=True)
class Building:
    """One 4-connected group of building pixels, whole.

    Attributes
    ----------
    polygon
        Its outline in scene pixel coordinates (x right, y down), in a canonical vertex
        order, so the same pixels always give the same polygon.
    pixels
        Its pixel count (= the polygon's area, pixels).
    probability_mean, probability_max
        Over its pixels, in ``[0, 1]``.
    first
        ``(row, col)`` of its first pixel in row-major order.
    """

    polygon: Polygon
    pixels: int
    probability_mean: float
    probability_max: float
    first: tuple[int, int]


def _open_complete(out_store: OutputStore | storage.Location) -> OutputStore:
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


def scene_gsd_m(store: OutputStore) -> dict[str, float]:
    """Ground metres per pixel of every scene (the ``gsd_m`` of its group)."""
    root = _root(store)
    return {scene: float(root[group].attrs["gsd_m"]) for scene, group in store.groups.items()}


def _scene_maps(store: OutputStore) -> Iterator[SceneMaps]:
    for scene, gsd_m in scene_gsd_m(store).items():
        yield SceneMaps.open(store, scene, gsd_m)


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temporary path to write ``target`` to; it takes ``target``'s name only once the
    block completes, so a reader never finds a half-written file under the final name.

    Raises
    ------
    ResflowError
        ``target`` is an existing folder.
    """
    if target.is_dir():
        raise ResflowError(str(target), "a folder is in the way of the file to write",
                           "give a file name, or remove the folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".partial"))
    try:
        yield staging / target.name
        (staging / target.name).replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_settings(threshold: float | None, min_area_m2: float | None,
                    simplify_m: float | None) -> None:
    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError("--threshold", f"{threshold} is not between 0 and 1",
                          "give a probability such as 0.5")
    if min_area_m2 is not None and min_area_m2 < 0:
        raise ConfigError("--min-area-m2", f"{min_area_m2} is negative",
                          "give an area in m^2 (0 keeps every building)")
    if simplify_m is not None and simplify_m < 0:
        raise ConfigError("--simplify-m", f"{simplify_m} is negative",
                          "give a tolerance in metres, or leave it out to keep pixel edges")


def default_min_area_m2(store: OutputStore) -> float:
    """The run's ``min_building_m2``, else :data:`resflow.config.MIN_BUILDING_M2` (8 m^2)."""
    return float(run_settings(store).get("min_building_m2", MIN_BUILDING_M2))


def _rule(store: OutputStore, maps: SceneMaps, threshold: float | None,
          min_area_m2: float) -> MaskRule:
    if threshold is None:
        return MaskRule()
    settings = run_settings(store)
    return MaskRule(threshold, min_pixels(min_area_m2, maps.gsd_m),
                    int(settings.get("halo", 0)), float(settings.get("split_dip", 0.0)))


# --- Cloud-Optimized GeoTIFFs ---------------------------------------------------------------

def cog_names(group: str) -> dict[str, str]:
    """File names of a scene's COGs: ``<group>_probability.tif`` and ``<group>_mask.tif``."""
    return {name: f"{group}_{name}.tif" for name in ("probability", "mask")}



def export_cogs(out_store: OutputStore | storage.Location, cog_dir: Path | str, *,
                threshold: float | None = None,
                min_area_m2: float | None = None) -> list[Path]:
    """Write each scene's probability and mask as Cloud-Optimized GeoTIFFs.

    Files are ``<cog_dir>/<group>_probability.tif`` (overviews averaged) and
    ``<group>_mask.tif`` (overviews nearest, so they stay classes): uint8, deflate, 256-pixel
    tiles, in the scene's CRS and transform, holding the stored values. GDAL metadata says
    how to read them: the probability band's scale (``src.scales``: probability = value x
    scale) and, on both, the not-mapped value as nodata (``src.nodata``) where the store has
    one. The mask carries a colour table (buildings red, background black, not mapped
    transparent as nodata).

    Parameters
    ----------
    threshold
        None: the store's mask. A probability in (0, 1): the mask cut again from the stored
        probability (the store is never modified), groups under ``min_area_m2`` dropped.
    min_area_m2
        With ``threshold``: smallest building kept, m^2; default the run's
        ``min_building_m2`` (:func:`default_min_area_m2`).

    Returns
    -------
    list of Path
        The files written, two per scene.

    Raises
    ------
    ResflowError
        The output is not complete, or a setting is out of range.
    """
    _check_settings(threshold, min_area_m2, None)
    store = _open_complete(out_store)
    min_area = default_min_area_m2(store) if min_area_m2 is None else min_area_m2
    cog_dir = Path(cog_dir)
    written: list[Path] = []
    for maps in _scene_maps(store):
        names = cog_names(store.groups[maps.scene])
        tags = {"scene": maps.scene, "source": store.display}
        target = scene_file(cog_dir, names["probability"], store)
        _write_cog(maps, _stored_blocks(maps.probability), target, "average",
                   "building probability (value x scale)", maps.probability_encoding,
                   {**tags, "array": "probability"})
        written.append(target)
        rule = _rule(store, maps, threshold, min_area)
        blocks = (_stored_blocks(maps.mask) if threshold is None
                  else _mask_blocks(maps, rule, TILE_PX))
        recut = {} if threshold is None else {"threshold": str(threshold),
                                              "min_area_m2": str(min_area)}
        target = scene_file(cog_dir, names["mask"], store)
        _write_cog(maps, blocks, target, "nearest", "building mask (1 building, 0 background)",
                   maps.mask_encoding, {**tags, "array": "mask", **recut}, MASK_COLOURS)
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
               colours: dict[int, tuple[int, int, int, int]] | None = None) -> None:
    """Stream blocks into a tiled GeoTIFF, then lay it out as a COG with GDAL's ``COG``
    driver (which keeps nodata, scale and colour table)."""
    height, width = maps.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 1,
               "dtype": "uint8", "crs": maps.crs_wkt, "transform": maps.transform,
               "tiled": True, "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK,
               "nodata": encoding.nodata}
    with replacing(target) as partial:
        staging = partial.with_suffix(".staging.tif")
        with rasterio.open(staging, "w", **profile) as dst:
            for window, block in blocks:
                dst.write(block, 1, window=window)
            dst.set_band_description(1, description)
            dst.update_tags(**tags)
            if encoding.scale != 1:
                dst.scales, dst.offsets = (encoding.scale,), (0.0,)
            if colours is not None:
                dst.write_colormap(1, colours)
        rasterio.shutil.copy(staging, partial, driver="COG", COMPRESS="DEFLATE",
                             PREDICTOR="2", BLOCKSIZE=str(COG_BLOCK), OVERVIEWS="AUTO",
                             OVERVIEW_RESAMPLING=resampling.upper())


# --- Building footprints --------------------------------------------------------------------

def canonical(polygon: Polygon) -> Polygon:
    """The polygon with no vertex on a straight edge, starting at its lowest corner: pixel
    outlines made in one window or merged from several come out identical, so their
    simplification does too."""
    return shapely.normalize(shapely.simplify(shapely.normalize(polygon), 0.0))


def scene_buildings(maps: SceneMaps, rule: MaskRule = MaskRule(), *,
                    tile_px: int = TILE_PX) -> Iterator[Building]:
    """Every building of a scene once and whole, vectorised window by window.

    Each window's building pixels are labelled (4-connected) and outlined. A group cut by a
    window edge is carried, as pieces, until no piece touches a window not yet read; the
    pieces that touch across an edge (pixel beside pixel) are then merged into one polygon.
    Memory is one window of pixels plus the pieces along one row of windows, and the result
    equals vectorising the whole scene at once (a test checks it).
    """
    height, width = maps.shape
    step = maps.tile(tile_px)
    pieces: dict[int, _Piece] = {}
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(a: np.ndarray, b: np.ndarray) -> None:
        for i, j in set(zip(a[(a > 0) & (b > 0)].tolist(), b[(a > 0) & (b > 0)].tolist(),
                            strict=True)):
            parent[find(i)] = find(j)

    next_id = 1
    above = np.zeros(width, np.int64)  # piece ids along the last row of the window row above
    for y0 in range(0, height, step):
        y1 = min(height, y0 + step)
        below = np.zeros(width, np.int64)
        left = np.zeros(y1 - y0, np.int64)  # piece ids along the right edge of the last window
        for x0 in range(0, width, step):
            x1 = min(width, x0 + step)
            stored, mask = maps.window(y0, y1, x0, x1, rule)
            labels, count = ndimage.label(mask == 1)
            offset = next_id - 1
            for local, piece in _pieces(labels, count, stored, y0, x0).items():
                pieces[local + offset] = piece
                parent[local + offset] = local + offset
            join(left, _ids(labels[:, 0], offset))
            join(above[x0:x1], _ids(labels[0], offset))
            left, below[x0:x1] = _ids(labels[:, -1], offset), _ids(labels[-1], offset)
            next_id += count
        still_open = {find(int(i)) for i in np.unique(below[below > 0])} if y1 < height else set()
        groups: dict[int, list[int]] = {}
        for i in pieces:
            groups.setdefault(find(i), []).append(i)
        done = [members for root, members in groups.items() if root not in still_open]
        for members in sorted(done, key=lambda m: min(pieces[i].first for i in m)):
            yield _merge([pieces[i] for i in members], maps.probability_encoding)
            for i in members:
                del pieces[i], parent[i]
        above = below


def _ids(edge: np.ndarray, offset: int) -> np.ndarray:
    """Scene-wide piece ids of a window's edge pixels (0 = no building)."""
    return np.where(edge > 0, edge.astype(np.int64) + offset, 0)


def _pieces(labels: np.ndarray, count: int, stored: np.ndarray, y0: int,
            x0: int) -> dict[int, _Piece]:
    """Outline and pixel statistics of each labelled group of one window."""
    if count == 0:
        return {}
    index = np.arange(1, count + 1)
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=count + 1)
    sums = np.bincount(flat, weights=stored.ravel(), minlength=count + 1)
    maxima = ndimage.maximum(stored, labels, index)
    firsts = {}
    for label, box in zip(index, ndimage.find_objects(labels), strict=True):
        row = box[0].start
        col = box[1].start + int(np.argmax(labels[row, box[1]] == label))
        firsts[int(label)] = (y0 + row, x0 + col)
    outlines = shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4,
                      transform=Affine.translation(x0, y0))
    return {int(value): _Piece(shape(geometry), int(pixels[int(value)]),
                               float(sums[int(value)]), int(maxima[int(value) - 1]),
                               firsts[int(value)])
            for geometry, value in outlines}


def _merge(parts: list[_Piece], encoding: Encoding) -> Building:
    polygon = parts[0].polygon if len(parts) == 1 else shapely.union_all(
        [p.polygon for p in parts])
    pixels = sum(p.pixels for p in parts)
    return Building(canonical(polygon), pixels,
                    sum(p.stored_sum for p in parts) * encoding.scale / pixels,
                    max(p.stored_max for p in parts) * encoding.scale,
                    min(p.first for p in parts))


def scene_footprints(store: OutputStore, maps: SceneMaps, *, rule: MaskRule = MaskRule(),
                     min_area_m2: float, simplify_m: float | None = None,
                     tile_px: int = TILE_PX) -> gpd.GeoDataFrame:
    """One scene's buildings as a GeoDataFrame in WGS 84, with :data:`FOOTPRINT_COLUMNS`.

    ``area_m2`` is pixels x ``gsd_m``^2: the ground area of the building's pixels, on the
    scene's own grid, before any simplification or reprojection. Buildings smaller than
    ``min_area_m2`` (fewer than :func:`resflow.masks.min_pixels` pixels) are dropped;
    ``simplify_m`` is a Douglas-Peucker tolerance in metres that keeps polygons valid.
    """
    bucket_of = store.read_array(maps.scene, "chip_bucket")[...]
    models = store.bucket_models()
    smallest = min_pixels(min_area_m2, maps.gsd_m)
    rows: list[dict[str, Any]] = []
    polygons: list[Polygon] = []
    for building in scene_buildings(maps, rule, tile_px=tile_px):
        if building.pixels < smallest:
            continue
        polygon = building.polygon
        if simplify_m:
            polygon = polygon.simplify(simplify_m / maps.gsd_m, preserve_topology=True)
        row, col = (v // maps.chip for v in building.first)
        bucket = int(bucket_of[row, col])
        polygons.append(polygon)
        rows.append({"scene": maps.scene, "chip": f"{row}_{col}", "bucket": bucket,
                     "model": models.get(bucket), "area_m2": building.pixels * maps.gsd_m ** 2,
                     "prob_mean": building.probability_mean,
                     "prob_max": building.probability_max})
    t = maps.transform
    in_crs = gpd.GeoSeries(polygons, dtype="geometry").affine_transform(
        [t.a, t.b, t.d, t.e, t.c, t.f])  # pixel (col, row) -> scene CRS
    return _frame(rows, in_crs.set_crs(CRS.from_wkt(maps.crs_wkt))).to_crs(WGS84)


def _frame(rows: list[dict[str, Any]], geometry: gpd.GeoSeries) -> gpd.GeoDataFrame:
    table = pd.DataFrame(rows, columns=list(FOOTPRINT_COLUMNS)).astype({"bucket": "int16"})
    return gpd.GeoDataFrame(table, geometry=geometry.values, crs=geometry.crs)


def footprint_format(path: Path, format: FootprintFormat | None = None) -> FootprintFormat:
    """The format to write ``path`` in: ``format`` if given, else by suffix (``.geojson``,
    ``.json``: GeoJSON; ``.parquet``, ``.geoparquet`` or none: GeoParquet).

    Raises
    ------
    ResflowError
        An unknown format, or a suffix that names neither.
    """
    if format is not None:
        if format not in ("parquet", "geojson"):
            raise ConfigError("--footprints-format", f"{format!r} is not a footprints format",
                              "use parquet or geojson")
        return format
    suffix = path.suffix.lower()
    if suffix not in FOOTPRINT_SUFFIXES:
        raise ResflowError(str(path), f"footprints cannot be written as {suffix!r}",
                           "name the file .parquet (GeoParquet) or .geojson, or pass "
                           "--footprints-format parquet|geojson")
    return FOOTPRINT_SUFFIXES[suffix]


def export_footprints(out_store: OutputStore | storage.Location, path: Path | str, *,
                      format: FootprintFormat | None = None, threshold: float | None = None,
                      min_area_m2: float | None = None, simplify_m: float | None = None,
                      tile_px: int = TILE_PX) -> list[Path]:
    """Vectorise the buildings of every scene into one footprints file, in WGS 84.

    GeoParquet (geopandas, with a bbox covering column for spatial filters) unless the name
    ends in ``.geojson``/``.json`` or ``format="geojson"``: RFC 7946 GeoJSON (longitude,
    latitude; no ``crs`` member). One row per building: ``scene``, ``chip`` (``row_col``
    of the chip holding its first pixel), ``bucket`` and ``model`` (what mapped that chip),
    ``area_m2``, ``prob_mean``, ``prob_max`` (probability over its pixels, in [0, 1]).

    Parameters
    ----------
    threshold
        None: vectorise the store's mask. Else cut the stored probability again at it (the
        store is never modified), as :func:`export_cogs` does.
    min_area_m2
        Smallest building kept, m^2 on the ground; default the run's ``min_building_m2``
        (:func:`default_min_area_m2`).
    simplify_m
        Simplification tolerance, metres (``simplify(preserve_topology=True)``); default
        None keeps the exact pixel outlines, so areas stay pixel areas.
    tile_px
        Window edge, pixels: memory per window, not the result.

    Returns
    -------
    list of Path
        ``[path]``.
    """
    _check_settings(threshold, min_area_m2, simplify_m)
    target = Path(path)
    kind = footprint_format(target, format)
    store = _open_complete(out_store)
    min_area = default_min_area_m2(store) if min_area_m2 is None else min_area_m2
    frames = [scene_footprints(store, maps, rule=_rule(store, maps, threshold, min_area),
                               min_area_m2=min_area, simplify_m=simplify_m, tile_px=tile_px)
              for maps in _scene_maps(store)]
    frames = [f for f in frames if len(f)]  # a scene without buildings adds no rows
    frame = (gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=WGS84) if frames
             else _frame([], gpd.GeoSeries([], crs=WGS84)))
    with replacing(target) as partial:
        if kind == "geojson":
            frame.to_file(partial, driver="GeoJSON", engine="pyogrio",
                          layer_options={"RFC7946": "YES"})
        else:
            frame.to_parquet(partial, write_covering_bbox=True)
    return [target]


# --- One export of a whole run --------------------------------------------------------------

def export_run(out_store: OutputStore | storage.Location, *, cog_dir: Path | str | None = None,
               footprints: Path | str | None = None, stac_dir: Path | str | None = None,
               threshold: float | None = None, min_area_m2: float | None = None,
               simplify_m: float | None = None,
               footprints_format: FootprintFormat | None = None) -> list[Path]:
    """Every export of a finished run, as ``resflow export`` and ``resflow run`` make them.

    COGs (:func:`export_cogs`), then footprints (:func:`export_footprints`), then a STAC
    Collection describing the store and whatever was written
    (:func:`resflow.stac.write_collection`), last, so it only names files that exist.
    Settings are checked before anything is written.

    Returns
    -------
    list of Path
        Every file written, in that order.

    Raises
    ------
    ResflowError
        Nothing to write, a setting out of range, an unknown footprints format, or an
        output that is not complete.
    """
    from resflow.stac import write_collection  # resflow.stac builds on this module

    if cog_dir is None and footprints is None and stac_dir is None:
        raise ConfigError("resflow export", "no output was asked for",
                          "pass --cog DIR, --footprints FILE and/or --stac DIR")
    _check_settings(threshold, min_area_m2, simplify_m)
    if footprints is not None:
        footprint_format(Path(footprints), footprints_format)
    store = _open_complete(out_store)
    written: list[Path] = []
    cogs: list[Path] = []
    if cog_dir is not None:
        cogs = export_cogs(store, cog_dir, threshold=threshold, min_area_m2=min_area_m2)
        written.extend(cogs)
    footprints_file = None
    if footprints is not None:
        (footprints_file,) = export_footprints(
            store, footprints, format=footprints_format, threshold=threshold,
            min_area_m2=min_area_m2, simplify_m=simplify_m)
        written.append(footprints_file)
    if stac_dir is not None:
        written.extend(write_collection(store, stac_dir, cog_dir=cog_dir if cogs else None,
                                        footprints=footprints_file, threshold=threshold,
                                        min_area_m2=min_area_m2))
    return written


# --- Quicklook ------------------------------------------------------------------------------

def _scene_rgb(archive: Archive, scene: str, step: int) -> np.ndarray:
    """The scene's harmonised RGB in [0, 1], every ``step``-th pixel, assembled chip by chip."""
    info = archive.scenes[scene]
    rgb = np.zeros((-(-info.height // step), -(-info.width // step), 3), np.float32)
    for ref in archive.chips([scene]):
        image = archive.read_chip(ref).image[:, :ref.height, :ref.width]
        # the first in-chip offsets that fall on the global ``step`` lattice
        oy, ox = -ref.y0 % step, -ref.x0 % step
        sub = image[:, oy::step, ox::step].transpose(1, 2, 0)
        r0, c0 = (ref.y0 + oy) // step, (ref.x0 + ox) // step
        rgb[r0:r0 + sub.shape[0], c0:c0 + sub.shape[1]] = sub
    return rgb


def _pixel_metres(crs_wkt: str, transform: tuple[float, ...], centre_y: float) -> float:
    """Ground size of one pixel along x, metres (degrees scaled at the scene's latitude)."""
    crs = CRS.from_wkt(crs_wkt)
    size = math.hypot(transform[0], transform[3])
    if crs.is_geographic:
        return size * 111_320.0 * math.cos(math.radians(centre_y))
    return size * (crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0)


def _nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 x 10^n metres not above ``metres``."""
    power = 10 ** math.floor(math.log10(metres))
    return max(m * power for m in (1, 2, 5) if m * power <= metres)


def quicklook(out_store: OutputStore | storage.Location, archive: Archive, scene: str,
              png_path: Path | str, *, width_px: int = 1024, dpi: int = 100) -> Path:
    """A PNG of the scene's imagery with the building mask in red, a title and a scale bar.

    The imagery is the models' harmonised RGB (what the models saw), read every
    ``ceil(scene width / width_px)``-th pixel so memory stays bounded for large scenes.

    Parameters
    ----------
    width_px
        PNG width in pixels; the height follows the scene's aspect ratio.

    Returns
    -------
    Path
        ``png_path``, ``width_px`` x ``round(width_px * height / width)`` pixels.
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, no GUI backend
    from matplotlib.patches import Rectangle

    store = out_store if isinstance(out_store, OutputStore) else OutputStore.open(out_store)
    info = archive.scenes[scene]
    step = max(1, info.width // width_px)
    rgb = _scene_rgb(archive, scene, step)
    mask = np.asarray(store.read_array(scene, "mask")[::step, ::step]) == 1
    overlay = np.zeros((*mask.shape, 4), np.float32)
    overlay[mask] = (1.0, 0.1, 0.05, 0.5)

    height_px = round(width_px * info.height / info.width)
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(rgb, interpolation="antialiased")
    ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    ax.set_xlim(-0.5, rgb.shape[1] - 0.5)
    ax.set_ylim(rgb.shape[0] - 0.5, -0.5)

    crs_wkt, transform = store.georeference(scene)
    centre_y = transform[5] + transform[4] * info.height / 2
    metres_per_cell = _pixel_metres(crs_wkt, transform, centre_y) * step
    bar_m = _nice_length(0.25 * rgb.shape[1] * metres_per_cell)
    bar_cells = bar_m / metres_per_cell
    x0, y0 = 0.04 * rgb.shape[1], 0.94 * rgb.shape[0]
    ax.add_patch(Rectangle((x0, y0), bar_cells, 0.012 * rgb.shape[0], color="white", ec="black"))
    label = f"{bar_m / 1000:g} km" if bar_m >= 1000 else f"{bar_m:g} m"
    text_style = {"color": "white", "fontsize": 10,
                  "bbox": {"facecolor": "black", "alpha": 0.6, "pad": 3, "edgecolor": "none"}}
    ax.text(x0, y0 - 0.015 * rgb.shape[0], label, va="bottom", **text_style)
    ax.text(0.02, 0.98, f"{scene}: buildings (red) {100 * mask.mean():.1f}% of pixels, "
            f"{CRS.from_wkt(crs_wkt).name}", transform=ax.transAxes, va="top", **text_style)
    png = Path(png_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=dpi)
    return png
