"""Building footprints of a complete output store: one file, every scene, WGS 84.

A footprints file holds one CRS, so footprints are reprojected to WGS 84 (EPSG:4326); their
areas are measured on each scene's own grid first. The format follows the file's suffix:
GeoPackage (the default, which every GDAL-based GIS opens), FlatGeobuf, GeoParquet or
RFC 7946 GeoJSON. Scenes are vectorised window by window
and a building cut by a window edge is carried until it is whole, so the result equals
vectorising each scene at once while memory stays one window.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import Polygon

from resflow import storage
from resflow.errors import ResflowError
from resflow.exports.files import replacing
from resflow.exports.settings import (
    TILE_PX,
    FootprintFormat,
    default_min_building_m2,
    export_settings,
    mask_rule,
)
from resflow.masks import min_pixels
from resflow.store.format import Encoding
from resflow.store.mask_rule import STORE_MASK, MaskRule
from resflow.store.reader import SceneMaps, open_complete, scene_maps
from resflow.store.writer import OutputStore

# GeoPandas is imported where frames are built: a run's checks and its STAC need none of
# it, and importing it costs every command about 0.6 s.
if TYPE_CHECKING:
    import geopandas as gpd

WGS84 = "EPSG:4326"
"""The one CRS of a footprints file, as RFC 7946 GeoJSON requires (longitude, latitude)."""


FOOTPRINT_FORMATS: tuple[FootprintFormat, ...] = typing.get_args(FootprintFormat)
FOOTPRINT_SUFFIXES: dict[str, FootprintFormat] = {
    ".gpkg": "gpkg", ".fgb": "fgb", ".parquet": "parquet",
    ".geoparquet": "parquet", ".geojson": "geojson", ".json": "geojson"}
"""File suffix -> footprints format. GeoPackage is the default name's (``resflow predict``):
GDAL reads it everywhere, while GeoParquet needs GDAL 3.5 or later built with Arrow (the
GDAL 3.6 of Debian 12, under its QGIS, has no Parquet driver)."""

OGR_DRIVERS: dict[FootprintFormat, str] = {"gpkg": "GPKG", "fgb": "FlatGeobuf",
                                           "geojson": "GeoJSON"}
"""The GDAL/OGR driver writing each format but GeoParquet (written by geopandas)."""

FOOTPRINT_LAYER = "buildings"
"""Layer name in GeoPackage and FlatGeobuf files: what QGIS lists and ``layer=`` selects."""

MEDIA_TYPES: dict[FootprintFormat, str] = {
    "gpkg": "application/geopackage+sqlite3", "fgb": "application/vnd.flatgeobuf",
    "parquet": "application/vnd.apache.parquet", "geojson": "application/geo+json"}
"""IANA (or customary) media type of each format, as STAC assets name them."""

FOOTPRINT_COLUMNS = ("scene", "chip", "bucket", "model", "area_m2", "prob_mean", "prob_max")


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


def canonical(polygon: Polygon) -> Polygon:
    """The polygon with no vertex on a straight edge, starting at its lowest corner: pixel
    outlines made in one window or merged from several come out identical, so their
    simplification does too."""
    return shapely.normalize(shapely.simplify(shapely.normalize(polygon), 0.0))


def scene_buildings(maps: SceneMaps, rule: MaskRule = STORE_MASK, *,
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
    maxima = np.zeros(count + 1, stored.dtype)  # stored values are >= 0; no sort, unlike
    np.maximum.at(maxima, flat, stored.ravel())  # ndimage.maximum
    firsts = {}
    for label, box in zip(index, ndimage.find_objects(labels), strict=True):
        row = box[0].start
        col = box[1].start + int(np.argmax(labels[row, box[1]] == label))
        firsts[int(label)] = (y0 + row, x0 + col)
    outlines = shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4,
                      transform=Affine.translation(x0, y0))
    return {int(value): _Piece(_polygon(geometry["coordinates"]), int(pixels[int(value)]),
                               float(sums[int(value)]), int(maxima[int(value)]),
                               firsts[int(value)])
            for geometry, value in outlines}


def _polygon(rings: list[list[tuple[float, float]]]) -> Polygon:
    """A polygon from an outline's GeoJSON rings, given to shapely as arrays (a list of
    tuples is converted point by point in Python, most of vectorising's time)."""
    return Polygon(np.asarray(rings[0]), [np.asarray(ring) for ring in rings[1:]])


def _merge(parts: list[_Piece], encoding: Encoding) -> Building:
    polygon = parts[0].polygon if len(parts) == 1 else shapely.union_all(
        [p.polygon for p in parts])
    pixels = sum(p.pixels for p in parts)
    return Building(canonical(polygon), pixels,
                    sum(p.stored_sum for p in parts) * encoding.scale / pixels,
                    max(p.stored_max for p in parts) * encoding.scale,
                    min(p.first for p in parts))


def scene_footprints(store: OutputStore, maps: SceneMaps, *, rule: MaskRule = STORE_MASK,
                     min_building_m2: float, simplify_m: float | None = None,
                     tile_px: int = TILE_PX) -> gpd.GeoDataFrame:
    """One scene's buildings as a GeoDataFrame in WGS 84, with :data:`FOOTPRINT_COLUMNS`.

    ``area_m2`` is pixels x ``gsd_m``^2: the ground area of the building's pixels, on the
    scene's own grid, before any simplification or reprojection. Buildings smaller than
    ``min_building_m2`` (fewer than :func:`resflow.masks.min_pixels` pixels) are dropped;
    ``simplify_m`` is a Douglas-Peucker tolerance in metres that keeps polygons valid.
    """
    bucket_of = store.read_array(maps.scene, "chip_bucket")[...]
    models = store.bucket_models()
    smallest = min_pixels(min_building_m2, maps.gsd_m)
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
    import geopandas as gpd

    t = maps.transform
    in_crs = gpd.GeoSeries(polygons, dtype="geometry").affine_transform(
        [t.a, t.b, t.d, t.e, t.c, t.f])  # pixel (col, row) -> scene CRS
    return _frame(rows, in_crs.set_crs(CRS.from_wkt(maps.crs_wkt))).to_crs(WGS84)


def _frame(rows: list[dict[str, Any]], geometry: gpd.GeoSeries) -> gpd.GeoDataFrame:
    import geopandas as gpd
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(FOOTPRINT_COLUMNS)).astype({"bucket": "int16"})
    return gpd.GeoDataFrame(table, geometry=geometry.values, crs=geometry.crs)


def footprint_format(path: Path, format: FootprintFormat | None = None) -> FootprintFormat:
    """The format to write ``path`` in: ``format`` if given (checked by
    :class:`~resflow.exports.settings.ExportConfig`), else by suffix (``.gpkg``: GeoPackage;
    ``.fgb``: FlatGeobuf; ``.parquet``, ``.geoparquet``: GeoParquet; ``.geojson``, ``.json``:
    GeoJSON).

    Raises
    ------
    ResflowError
        A suffix that names no format.
    """
    if format is not None:
        return format
    suffix = path.suffix.lower()
    if suffix not in FOOTPRINT_SUFFIXES:
        what = repr(suffix) if suffix else "a file without a suffix"
        raise ResflowError(str(path), f"footprints cannot be written as {what}",
                           "name the file .gpkg (GeoPackage), .fgb (FlatGeobuf), .parquet "
                           "(GeoParquet) or .geojson, or pass --footprints-format "
                           f"{'|'.join(FOOTPRINT_FORMATS)}")
    return FOOTPRINT_SUFFIXES[suffix]


def export_footprints(out_store: OutputStore | storage.Location, path: Path | str, *,
                      format: FootprintFormat | None = None, threshold: float | None = None,
                      min_building_m2: float | None = None, simplify_m: float | None = None,
                      tile_px: int = TILE_PX) -> list[Path]:
    """Vectorise the buildings of every scene into one footprints file, in WGS 84.

    The format is ``format``, else the suffix's (:func:`footprint_format`): GeoPackage and
    FlatGeobuf (written by GDAL, layer :data:`FOOTPRINT_LAYER`), GeoParquet (geopandas, with
    a bbox covering column for spatial filters) or RFC 7946 GeoJSON (longitude, latitude; no
    ``crs`` member). One row per building: ``scene``, ``chip`` (``row_col``
    of the chip holding its first pixel), ``bucket`` and ``model`` (what mapped that chip),
    ``area_m2``, ``prob_mean``, ``prob_max`` (probability over its pixels, in [0, 1]).

    Parameters
    ----------
    threshold
        None: vectorise the store's mask. Else cut the stored probability again at it (the
        store is never modified), as :func:`export_cogs` does.
    min_building_m2
        Smallest building kept, m^2 on the ground; default the run's ``min_building_m2``
        (:func:`default_min_building_m2`).
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
    export_settings(threshold=threshold, min_building_m2=min_building_m2, simplify_m=simplify_m,
                    footprints_format=format)
    target = Path(path)
    kind = footprint_format(target, format)
    store = open_complete(out_store)
    min_building = default_min_building_m2(store) if min_building_m2 is None else min_building_m2
    frames = [scene_footprints(store, maps, rule=mask_rule(store, maps, threshold, min_building),
                               min_building_m2=min_building, simplify_m=simplify_m, tile_px=tile_px)
              for maps in scene_maps(store)]
    frames = [f for f in frames if len(f)]  # a scene without buildings adds no rows
    import geopandas as gpd
    import pandas as pd

    frame = (gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=WGS84) if frames
             else _frame([], gpd.GeoSeries([], crs=WGS84)))
    with replacing(target) as partial:
        if kind == "parquet":
            frame.to_parquet(partial, write_covering_bbox=True)
        else:
            options = {"RFC7946": "YES"} if kind == "geojson" else {}
            frame.to_file(partial, driver=OGR_DRIVERS[kind], engine="pyogrio",
                          layer=FOOTPRINT_LAYER, layer_options=options)
    return [target]

