"""Building labels, as vector polygons or mask rasters, rasterised onto chip windows.

Vector labels may be in any format OGR reads (through pyogrio) and in any CRS; mask
rasters must be georeferenced. Whatever the format, the footprints become the same
GeoJSON-like geometry dicts, so every later step (reprojection, burning) has one path:
:func:`load_labels` reads and cleans a file once, :func:`rasterise` burns building ids onto
one scene window, and :meth:`Labels.covers` says which scenes a file labels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import rasterio
import shapely
from affine import Affine
from pyogrio.errors import DataLayerError, DataSourceError
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError as ProjCRSError
from pyproj.exceptions import ProjError
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.warp import Resampling, reproject, transform_bounds, transform_geom
from scipy import ndimage
from shapely.geometry import mapping

from resflow.errors import InputError

Window = tuple[int, int, int, int]
"""``(y0, x0, height, width)`` in scene pixels."""


@dataclass
class Labels:
    """One label file, read once and reprojected lazily per scene CRS.

    Attributes
    ----------
    path, sha256
        The file and its checksum (recorded in the gallery manifest).
    kind
        ``"vector"`` (polygons) or ``"raster"`` (a 0/non-zero mask).
    crs
        The labels' own CRS.
    bounds
        ``(left, bottom, right, top)`` extent in ``crs`` units.
    repaired, skipped
        Vector footprints repaired with :func:`shapely.make_valid`, and features skipped
        (null, empty, not polygonal, or nothing polygonal left after repair), so a report
        can say how much of the file was usable.
    """

    path: Path
    sha256: str
    kind: str
    crs: CRS
    bounds: tuple[float, float, float, float]
    geometries: list[dict] = field(default_factory=list, repr=False)
    repaired: int = 0
    skipped: int = 0
    _by_crs: dict[str, list[dict]] = field(default_factory=dict, repr=False)

    def record(self) -> dict[str, object]:
        """What the gallery manifest records about this file."""
        return {"path": str(self.path), "sha256": self.sha256, "kind": self.kind,
                "crs": self.crs.to_string(), "buildings": len(self.geometries)
                if self.kind == "vector" else "mask"}

    def covers(self, crs_wkt: str, transform: Sequence[float], height: int, width: int) -> bool:
        """Whether the label extent intersects a scene footprint (scene CRS, affine, size).

        A scene a file covers is taken as labelled whole (the SpaceNet convention: every
        building of a tile is drawn), so its unlabelled pixels are true negatives.
        """
        left, bottom, right, top = self.extent_in(crs_wkt)
        s_left, s_bottom, s_right, s_top = _footprint(Affine(*transform[:6]), height, width)
        return left < s_right and right > s_left and bottom < s_top and top > s_bottom

    def extent_in(self, crs_wkt: str) -> tuple[float, float, float, float]:
        """The label extent ``(left, bottom, right, top)`` in a scene CRS.

        Labels in a CRS no transformation joins to the scene's (a local engineering grid,
        another celestial body, a vertical CRS) are refused here, naming both CRSs, rather
        than failing inside GDAL when the first footprint is burnt.

        Raises
        ------
        InputError
            if the labels cannot be reprojected to ``crs_wkt``.
        """
        scene = CRS.from_wkt(crs_wkt)
        try:
            Transformer.from_crs(self.crs, scene)
        except ProjError as exc:
            reason = f"PROJ finds no transformation between them ({exc})"
        else:
            bounds = transform_bounds(self.crs, scene, *self.bounds)
            if all(np.isfinite(bounds)):
                return bounds
            reason = "the extent falls outside the scene CRS's domain"
        epsg = scene.to_epsg()
        raise InputError(str(self.path), f"the labels' CRS ({self.crs.name}) cannot be "
                         f"reprojected to a scene's CRS ({scene.name}): {reason}",
                         "assign the CRS the coordinates are really in, or reproject the "
                         f"labels to the scene's, e.g. `ogr2ogr -t_srs "
                         f"{f'EPSG:{epsg}' if epsg else 'SCENE.wkt'} fixed.gpkg "
                         f"{self.path.name}`")

    def burn(self, crs_wkt: str, transform: Sequence[float], window: Window) -> np.ndarray:
        """Building ids (int32, 0 = background) of ``window`` on a scene grid."""
        y0, x0, height, width = window
        win_transform = Affine(*transform[:6]) @ Affine.translation(x0, y0)
        if self.kind == "raster":
            # only the blocks under the window are read: a mask may be larger than memory
            with rasterio.open(self.path) as src:
                out = np.zeros((height, width), src.dtypes[0])
                reproject(rasterio.band(src, 1), out, dst_transform=win_transform,
                          dst_crs=CRS.from_wkt(crs_wkt), resampling=Resampling.nearest)
            return ndimage.label(out > 0)[0].astype(np.int32)
        shapes = [(g, i + 1) for i, g in enumerate(self._in_crs(crs_wkt))]
        if not shapes:
            return np.zeros((height, width), np.int32)
        return rasterize(shapes, out_shape=(height, width), transform=win_transform,
                         fill=0, dtype="int32")

    def _in_crs(self, crs_wkt: str) -> list[dict]:
        if crs_wkt not in self._by_crs:
            target = CRS.from_wkt(crs_wkt)
            self._by_crs[crs_wkt] = (
                list(self.geometries) if target == self.crs
                else [transform_geom(self.crs, target, g) for g in self.geometries])
        return self._by_crs[crs_wkt]


def load_labels(path: Path | str) -> Labels:
    """Read building polygons in any OGR vector format, or a georeferenced mask raster.

    A file OGR opens as vector data is read as polygons (GeoJSON, GeoPackage, Shapefile,
    FlatGeobuf, GeoParquet where the GDAL bundled with pyogrio has the Parquet driver, and
    more); anything else is tried as a mask raster, so a GeoTIFF mask keeps working.

    Footprints are cleaned once here: null, empty and non-polygon features are skipped,
    invalid polygons (self-intersections, bow-ties) are repaired with
    :func:`shapely.make_valid` (keeping their polygonal part), so a single bad feature never
    makes a whole label file unusable, and a file left with no footprint is refused.

    Raises
    ------
    InputError
        for a missing or unreadable file, a vector file with no usable polygon, several
        polygon layers to choose from, an unknown or missing CRS, or coordinates that cannot
        be in the CRS the file declares.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "the label file does not exist", "check the --labels path")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    layer = _vector_layer(path)
    if layer is None:
        return _load_mask(path, sha)
    return _load_vector(path, sha, layer, data)


def rasterise(labels: Sequence[Labels], crs_wkt: str, transform: Sequence[float],
              window: Window) -> np.ndarray:
    """Building ids (int32, 0 = background) of all ``labels`` on one scene window.

    Ids of later files are offset so no two buildings share an id; where files overlap the
    later file wins. Every building gets its own id, so object scores count touching
    buildings separately; a mask raster has no ids, so its connected components are taken
    as the buildings.

    Polygons are reprojected to the scene CRS (:func:`rasterio.warp.transform_geom`) and
    burnt with the window's own affine transform, so a footprint lands on the same pixels
    whatever CRS it was drawn in. A mask raster is resampled (nearest) onto the window,
    read window by window, never whole, so a mask larger than memory still trains.

    Examples
    --------
    >>> ids = rasterise(labels, scene.crs_wkt, scene.transform, (0, 0, 256, 256))  # doctest: +SKIP
    """
    out = np.zeros(window[2:], np.int32)
    for item in labels:
        ids = item.burn(crs_wkt, transform, window)
        out = np.where(ids > 0, ids + out.max(), out)
    return out


def _vector_layer(path: Path) -> str | None:
    """The layer of building polygons, or None when OGR does not read ``path`` as vectors.

    A file with one layer uses it; with several (a GeoPackage), the one polygon layer. Several
    polygon layers are refused rather than guessed, since mixing in, say, parcels would
    score against the wrong truth.
    """
    try:
        layers = pyogrio.list_layers(path)
    except DataSourceError:
        if path.suffix.lower() in {".geojson", ".json"}:
            raise InputError(str(path), "not valid GeoJSON (OGR cannot read it)",
                             "export the labels as a GeoJSON FeatureCollection") from None
        return None
    if len(layers) == 0:
        return None
    if len(layers) == 1:
        return str(layers[0][0])
    polygonal = [str(name) for name, kind in layers if "polygon" in str(kind).lower()]
    if len(polygonal) == 1:
        return polygonal[0]
    names = ", ".join(str(name) for name, _ in layers)
    raise InputError(str(path), f"{len(layers)} layers ({names}) and not exactly one of them "
                     "is a polygon layer, so the building layer is ambiguous",
                     "save the building footprints alone, e.g. `ogr2ogr buildings.gpkg "
                     f"{path.name} LAYER`")


def _load_vector(path: Path, sha: str, layer: str, data: bytes) -> Labels:
    """Polygons of one OGR layer, cleaned, with their CRS checked against their coordinates."""
    try:
        info = pyogrio.read_info(path, layer=layer)
        _, _, wkb, _ = pyogrio.raw.read(path, layer=layer, columns=[], force_2d=True)
    except (DataSourceError, DataLayerError) as exc:  # DataLayerError: CRS, feature, geometry
        raise InputError(str(path), f"OGR cannot read layer {layer!r} ({exc})",
                         "re-export the labels, e.g. with ogr2ogr, to GeoJSON or GeoPackage"
                         ) from exc
    if info["driver"] == "GeoJSON":
        _check_geojson_crs(path, data)
    if info["crs"] is None:
        raise InputError(str(path), f"layer {layer!r} has no CRS, so its footprints cannot be "
                         "placed on any scene", "assign the CRS the coordinates are in, e.g. "
                         f"`ogr2ogr -a_srs EPSG:32616 fixed.gpkg {path.name}` (a Shapefile "
                         "needs its .prj)")
    try:
        crs = CRS.from_user_input(info["crs"])
    except ProjCRSError as exc:
        raise InputError(str(path), f"unknown CRS {info['crs']!r}",
                         "assign a known CRS, e.g. `ogr2ogr -a_srs EPSG:32616`") from exc
    geometries, repaired, skipped = _clean(_decoded(path, layer, wkb))
    if not len(geometries):
        raise InputError(str(path), "no Polygon or MultiPolygon building footprints found "
                         f"({len(wkb)} features, none a usable polygon)",
                         "give a vector file whose features are building polygons")
    bounds = tuple(float(b) for b in shapely.total_bounds(geometries))
    if crs.is_geographic and not (max(abs(bounds[0]), abs(bounds[2])) <= 360
                                  and max(abs(bounds[1]), abs(bounds[3])) <= 90):
        raise InputError(str(path), f"coordinates up to {bounds} cannot be longitude/latitude, "
                         f"yet the file says its CRS is {crs.to_string()} (GeoJSON without a "
                         "crs member is WGS 84), so the CRS is missing or wrong",
                         "declare the CRS the coordinates are in, e.g. a GeoJSON crs member "
                         "urn:ogc:def:crs:EPSG::32616, or reproject to WGS 84")
    return Labels(path, sha, "vector", crs, bounds, [mapping(g) for g in geometries],
                  repaired=repaired, skipped=skipped)


def _decoded(path: Path, layer: str, wkb: np.ndarray) -> np.ndarray:
    """shapely geometries of a layer's features; a feature GEOS cannot build at all (a
    ring that is not closed, too few points) is refused by its index, not repaired: no
    footprint can be guessed from it."""
    try:
        return shapely.from_wkb(wkb)
    except shapely.errors.GEOSException:
        for index, feature in enumerate(wkb):
            try:
                shapely.from_wkb(feature)
            except shapely.errors.GEOSException as exc:
                raise InputError(f"{path}: layer {layer!r}, feature {index}",
                                 f"the geometry cannot be built ({exc})",
                                 "close the feature's rings (last point equal to the first, "
                                 "at least 4 points) or remove the feature") from exc
        raise


def _check_geojson_crs(path: Path, data: bytes) -> None:
    """Refuse a GeoJSON ``crs`` member that names no known CRS.

    OGR silently falls back to WGS 84 for a ``crs`` name it cannot parse, which would put
    projected footprints nowhere; resflow refuses instead, naming the CRS it was given.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(path), f"not valid GeoJSON ({exc})",
                         "export the labels as a GeoJSON FeatureCollection") from exc
    member = doc.get("crs") if isinstance(doc, dict) else None
    name = (member or {}).get("properties", {}).get("name") if isinstance(member, dict) else None
    if name is None:
        return
    try:
        CRS.from_user_input(name)
    except ProjCRSError as exc:
        raise InputError(str(path), f"unknown CRS {name!r}", "write the CRS as e.g. "
                         "urn:ogc:def:crs:EPSG::32616, or use WGS 84") from exc


def _clean(geometries: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Polygonal, non-empty, valid footprints; returns them, how many were repaired and skipped.

    Parameters
    ----------
    geometries
        shapely geometries (None for a feature without geometry).
    """
    polygonal = np.isin(shapely.get_type_id(geometries), (3, 6))  # Polygon, MultiPolygon
    kept = geometries[polygonal & ~shapely.is_empty(geometries)]
    invalid = ~shapely.is_valid(kept)
    kept[invalid] = [_polygonal_part(g) for g in shapely.make_valid(kept[invalid])]
    usable = kept[~shapely.is_empty(kept)]
    return usable, int(invalid.sum()), len(geometries) - len(usable)


def _polygonal_part(geometry: shapely.Geometry) -> shapely.Geometry:
    """The polygons of a repaired geometry: :func:`shapely.make_valid` may also return the
    collapsed lines or points of a degenerate ring, which cover no pixel."""
    if shapely.get_type_id(geometry) in (3, 6):
        return geometry
    parts = [g for g in shapely.get_parts(geometry) if shapely.get_type_id(g) in (3, 6)]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _load_mask(path: Path, sha: str) -> Labels:
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputError(str(path), "the mask raster has no CRS, so its pixels cannot be "
                                 "placed on any scene",
                                 "georeference it (gdal_translate -a_srs -a_ullr) or give the "
                                 "building polygons as a vector file")
            return Labels(path, sha, "raster", CRS.from_user_input(src.crs),
                          tuple(src.bounds))
    except (rasterio.RasterioIOError, CRSError) as exc:
        raise InputError(str(path), f"neither a vector file OGR reads nor a raster GDAL "
                         f"reads ({exc})", "give building polygons (GeoJSON, GeoPackage, "
                         "Shapefile, FlatGeobuf) or a georeferenced GeoTIFF mask") from exc


def _footprint(transform: Affine, height: int, width: int) -> tuple[float, float, float, float]:
    xs, ys = zip(*(transform @ (c, r) for r in (0, height) for c in (0, width)), strict=True)
    return min(xs), min(ys), max(xs), max(ys)
