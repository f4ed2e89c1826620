"""Building labels, as GeoJSON polygons or mask rasters, rasterised onto chip windows.

Labels may come in any CRS: polygons are reprojected to the scene CRS
(:func:`rasterio.warp.transform_geom`) and burnt with the window's own affine transform,
so a footprint lands on the same pixels whatever CRS it was drawn in. A mask raster must be
georeferenced; it is resampled (nearest) onto the window.

Every building gets its own id in the rasterised window (0 = background), so object scores
count touching buildings separately; a mask raster has no ids, so its connected components
are taken as the buildings.

Which pixels are labelled: a scene is labelled by a label file when the file's extent
intersects the scene footprint, and then the whole scene is taken as labelled (the
SpaceNet convention: every building of a tile is drawn), so unlabelled pixels of that
scene are true negatives.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.warp import Resampling, reproject, transform_bounds, transform_geom
from scipy import ndimage

from resflow.errors import InputError

#: GeoJSON without a ``crs`` member is WGS 84 longitude/latitude (RFC 7946).
GEOJSON_DEFAULT_CRS = "EPSG:4326"

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
    """

    path: Path
    sha256: str
    kind: str
    crs: CRS
    bounds: tuple[float, float, float, float]
    geometries: list[dict] = field(default_factory=list, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    mask_transform: Affine | None = None
    _by_crs: dict[str, list[dict]] = field(default_factory=dict, repr=False)

    def record(self) -> dict[str, object]:
        """What the gallery manifest records about this file."""
        return {"path": str(self.path), "sha256": self.sha256, "kind": self.kind,
                "crs": self.crs.to_string(), "buildings": len(self.geometries)
                if self.kind == "vector" else "mask"}

    def covers(self, crs_wkt: str, transform: Sequence[float], height: int, width: int) -> bool:
        """Whether the label extent intersects a scene footprint (scene CRS, affine, size)."""
        scene = CRS.from_wkt(crs_wkt)
        left, bottom, right, top = transform_bounds(self.crs, scene, *self.bounds)
        s_left, s_bottom, s_right, s_top = _footprint(Affine(*transform[:6]), height, width)
        return left < s_right and right > s_left and bottom < s_top and top > s_bottom

    def burn(self, crs_wkt: str, transform: Sequence[float], window: Window) -> np.ndarray:
        """Building ids (int32, 0 = background) of ``window`` on a scene grid."""
        y0, x0, height, width = window
        win_transform = Affine(*transform[:6]) @ Affine.translation(x0, y0)
        if self.kind == "raster":
            out = np.zeros((height, width), np.uint8)
            reproject(self.mask, out, src_transform=self.mask_transform, src_crs=self.crs,
                      dst_transform=win_transform, dst_crs=CRS.from_wkt(crs_wkt),
                      resampling=Resampling.nearest)
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
    """Read a GeoJSON of building polygons or a georeferenced mask raster.

    Raises
    ------
    InputError
        for a missing file, an unreadable format, no polygons, or a mask without a CRS.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "the label file does not exist", "check the --labels path")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if path.suffix.lower() in {".geojson", ".json"}:
        return _load_geojson(path, sha)
    return _load_mask(path, sha)


def rasterise(labels: Sequence[Labels], crs_wkt: str, transform: Sequence[float],
              window: Window) -> np.ndarray:
    """Building ids (int32, 0 = background) of all ``labels`` on one scene window.

    Ids of later files are offset so no two buildings share an id; where files overlap the
    later file wins.

    Examples
    --------
    >>> ids = rasterise(labels, scene.crs_wkt, scene.transform, (0, 0, 256, 256))  # doctest: +SKIP
    """
    out = np.zeros(window[2:], np.int32)
    for item in labels:
        ids = item.burn(crs_wkt, transform, window)
        out = np.where(ids > 0, ids + out.max(), out)
    return out


def _load_geojson(path: Path, sha: str) -> Labels:
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(str(path), f"not valid GeoJSON ({exc})",
                         "export the labels as a GeoJSON FeatureCollection") from exc
    features = doc.get("features", [doc] if doc.get("type") == "Feature" else [])
    geometries = [f["geometry"] for f in features
                  if f.get("geometry") and f["geometry"]["type"] in {"Polygon", "MultiPolygon"}]
    if not geometries:
        raise InputError(str(path), "no Polygon or MultiPolygon building footprints found",
                         "give a GeoJSON whose features are building polygons")
    name = (doc.get("crs") or {}).get("properties", {}).get("name", GEOJSON_DEFAULT_CRS)
    try:
        crs = CRS.from_user_input(name)
    except Exception as exc:  # pyproj raises CRSError subclasses of its own
        raise InputError(str(path), f"unknown CRS {name!r}", "write the CRS as e.g. "
                         "urn:ogc:def:crs:EPSG::32616, or use WGS 84") from exc
    coords = np.concatenate([np.asarray(ring, float).reshape(-1, 2)[:, :2]
                             for g in geometries for ring in _rings(g)])
    bounds = (*coords.min(axis=0), *coords.max(axis=0))
    return Labels(path, sha, "vector", crs, tuple(float(b) for b in bounds), geometries)


def _load_mask(path: Path, sha: str) -> Labels:
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputError(str(path), "the mask raster has no CRS, so its pixels cannot be "
                                 "placed on any scene",
                                 "georeference it (gdal_translate -a_srs -a_ullr) or give the "
                                 "building polygons as GeoJSON")
            return Labels(path, sha, "raster", CRS.from_user_input(src.crs),
                          tuple(src.bounds), mask=(src.read(1) > 0).astype(np.uint8),
                          mask_transform=src.transform)
    except (rasterio.RasterioIOError, CRSError) as exc:
        raise InputError(str(path), f"not a readable label raster or GeoJSON ({exc})",
                         "give a .geojson of polygons or a georeferenced GeoTIFF mask") from exc


def _rings(geometry: dict) -> list:
    if geometry["type"] == "Polygon":
        return geometry["coordinates"]
    return [ring for polygon in geometry["coordinates"] for ring in polygon]


def _footprint(transform: Affine, height: int, width: int) -> tuple[float, float, float, float]:
    xs, ys = zip(*(transform @ (c, r) for r in (0, height) for c in (0, width)), strict=True)
    return min(xs), min(ys), max(xs), max(ys)
