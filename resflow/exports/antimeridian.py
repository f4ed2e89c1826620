"""Footprints that cross the antimeridian, written as GeoJSON wants them (RFC 7946 3.1.9).

A scene crossing longitude 180 comes back from a projection with longitudes on both sides
of the cut (179.9 and -179.9) or just past it (180.0003); drawn as one polygon, either
spans the globe or leaves the valid range. The footprint is made continuous, cut at 180,
and its eastern part shifted back by 360 degrees; its bbox runs west to east across the
cut, so its west is greater than its east (RFC 7946 5.2).
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.polygon import orient


def split_at_antimeridian(footprint: Polygon) -> tuple[Polygon | MultiPolygon, list[float]]:
    """``footprint`` (lon/lat) and its bbox, cut at longitude 180 where it crosses it.

    >>> crossing = Polygon([(179, 0), (-179, 0), (-179, 1), (179, 1)])
    >>> geometry, bbox = split_at_antimeridian(crossing)
    >>> geometry.geom_type, [round(v, 6) for v in bbox]
    ('MultiPolygon', [179.0, 0.0, -179.0, 1.0])
    >>> split_at_antimeridian(box(10, 0, 11, 1))[1]
    [10.0, 0.0, 11.0, 1.0]
    """
    lon = shapely.get_coordinates(footprint)[:, 0]
    if lon.max() - lon.min() > 180:  # both sides of the cut: make it continuous
        footprint = shapely.transform(footprint, _east_of_cut)
    west, south, east, north = footprint.bounds
    if east <= 180 and west >= -180:
        return footprint, [west, south, east, north]
    if west < -180:  # continuous across -180: the same cut, seen from the other side
        footprint = affinity.translate(footprint, xoff=360)
        west, south, east, north = footprint.bounds
    inside = footprint.intersection(box(west, south, 180, north))
    beyond = affinity.translate(footprint.intersection(box(180, south, east, north)),
                                xoff=-360)
    parts = [orient(p) for g in (inside, beyond) for p in getattr(g, "geoms", [g])
             if isinstance(p, Polygon) and not p.is_empty]
    if len(parts) == 1:
        return parts[0], list(parts[0].bounds)
    return MultiPolygon(parts), [west, south, east - 360, north]


def _east_of_cut(xy: np.ndarray) -> np.ndarray:
    """Longitudes west of 0 moved east by 360, so a footprint crossing 180 is continuous."""
    xy = xy.copy()
    xy[xy[:, 0] < 0, 0] += 360
    return xy
