"""Ground resolution: metres per pixel of any scene, and the working grid models see.

Models learn buildings at one scale. A building 10 m wide is 20 pixels at 0.5 m but 135
pixels in 7 cm drone imagery and a third of a pixel at 30 m, so a gallery trained at one
ground resolution fails at another. resflow therefore brings every scene to the gallery's
*working ground resolution* once, at ingest (:mod:`resflow.ingestion`): the archive holds each
scene on its **working grid**, the same footprint and CRS as the source raster with the
pixel size scaled so a pixel covers ``gsd_m`` metres on the ground. Training, all three
inference stages and the maps then share that grid, the same code path everywhere.

:func:`working_grid` says how each source is resampled or skipped, and
:func:`ground_resolution` how metres are measured whatever the CRS units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from affine import Affine
from pyproj import CRS, Geod, Transformer

#: Working ground resolution of the bundled default gallery, metres; ingest's default.
#: ``tests/test_resolution.py`` checks it equals the gallery manifest's.
DEFAULT_GSD_M = 0.3
#: Coarsest ground resolution at which buildings are still mapped, metres. At 2 m a small
#: house is 3 x 3 pixels; beyond it buildings are sub-pixel and a model finds only noise.
MAX_GSD_M = 2.0
#: Relative difference below which a source keeps its own grid (no resampling).
TOLERANCE = 0.05

_WGS84 = Geod(ellps="WGS84")


@dataclass(frozen=True)
class WorkingGrid:
    """The grid a scene is stored and mapped on.

    Attributes
    ----------
    height, width
        Size in working pixels.
    transform
        Affine ``(a, b, c, d, e, f)`` in the scene CRS; same upper-left corner and footprint
        as the source.
    gsd_m
        Ground resolution of a working pixel, metres.
    source_gsd_m
        Ground resolution of a source pixel, metres.
    resampling
        ``"none"``, ``"average"`` (downsampling) or ``"bilinear"`` (upsampling).
    skip
        Why the scene is not mapped (too coarse), or None.
    """

    height: int
    width: int
    transform: tuple[float, ...]
    gsd_m: float
    source_gsd_m: float
    resampling: str
    skip: str | None = None


@lru_cache(maxsize=64)
def _to_lonlat(crs_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(crs_wkt), CRS.from_epsg(4326), always_xy=True)


def ground_resolution(crs_wkt: str, transform: tuple[float, ...], height: int,
                      width: int) -> float:
    """Ground sample distance at the scene centre, metres: the geometric mean of one pixel's
    two edge lengths measured on the WGS 84 ellipsoid.

    Measured, not read from the CRS units, so it is right for UTM (metres), EPSG:3857
    (web-mercator metres, ``1/cos(latitude)`` too large on the ground) and EPSG:4326
    (degrees).

    Examples
    --------
    >>> utm = CRS.from_epsg(32616).to_wkt()
    >>> round(ground_resolution(utm, (0.5, 0, 733601, 0, -0.5, 3725139), 900, 900), 3)
    0.5
    """
    t = Affine(*transform[:6])
    cx, cy = width / 2, height / 2
    points = [t @ (cx, cy), t @ (cx + 1, cy), t @ (cx, cy + 1)]
    lons, lats = _to_lonlat(crs_wkt).transform(*zip(*points, strict=True))
    _, _, across = _WGS84.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, down = _WGS84.inv(lons[0], lats[0], lons[2], lats[2])
    return math.sqrt(across * down)


def working_grid(crs_wkt: str, transform: tuple[float, ...], height: int, width: int,
                 gsd_m: float | None, max_gsd_m: float = MAX_GSD_M) -> WorkingGrid:
    """The working grid of a source raster at ``gsd_m`` metres (``None`` keeps its own).

    The footprint is kept exactly: the working size is the source size scaled and rounded,
    and the pixel size is then stretched a little so the working pixels tile the source
    footprint edge to edge.

    * Finer sources are downsampled with GDAL's ``average`` (area-weighted mean of every
      source pixel under a working pixel): an antialiasing box filter, so roof edges do
      not alias.
    * Coarser sources, up to :data:`MAX_GSD_M`, are upsampled bilinearly.
    * Sources within :data:`TOLERANCE` of the working resolution keep their own grid.
    * Sources coarser than ``max_gsd_m`` cannot show buildings and are skipped: the grid
      carries the reason, the archive records it, ``resflow info`` and the run report name
      them, and no map is made of them.

    Examples
    --------
    >>> merc = CRS.from_epsg(3857).to_wkt()
    >>> g = working_grid(merc, (0.0746, 0, 3628312.9, 0, -0.0746, 39135.8), 2048, 3072, 0.5)
    >>> (g.width, g.height, g.resampling)
    (457, 305, 'average')
    """
    source = ground_resolution(crs_wkt, transform, height, width)
    if source > max_gsd_m:
        reason = (f"ground pixel {source:.3g} m is coarser than {max_gsd_m:g} m, too coarse "
                  "to show buildings")
        return WorkingGrid(height, width, tuple(transform[:6]), source, source, "none", reason)
    if gsd_m is None or abs(source / gsd_m - 1) <= TOLERANCE:
        return WorkingGrid(height, width, tuple(transform[:6]), source, source, "none")
    factor = gsd_m / source
    new_h, new_w = max(1, round(height / factor)), max(1, round(width / factor))
    scaled = Affine(*transform[:6]) @ Affine.scale(width / new_w, height / new_h)
    return WorkingGrid(new_h, new_w, tuple(scaled)[:6],
                       ground_resolution(crs_wkt, tuple(scaled)[:6], new_h, new_w), source,
                       "average" if factor > 1 else "bilinear")


def matches(scene_gsd_m: float, working_gsd_m: float) -> bool:
    """Whether a scene stored at ``scene_gsd_m`` suits models working at ``working_gsd_m``."""
    return abs(scene_gsd_m / working_gsd_m - 1) <= TOLERANCE
