"""A finished run as one self-contained HTML map: imagery, mask, probability and footprints.

The page opens in any browser with no network and no GIS: Leaflet (bundled in
``resflow/exports/leaflet``) and every layer are inlined. Each scene's images are PNG data
URIs placed with ``L.imageOverlay`` at their WGS 84 bounds, and the footprints are GeoJSON
in EPSG:4326. An image overlay is a rectangle on Leaflet's Web Mercator map, so each image
is first warped (nearest neighbour) to Web Mercator: as a longitude/latitude rectangle, a
UTM scene would be stretched by its grid's rotation against north (1.4 degrees at the
Atlanta sample) and sit metres off its own footprints.

Images are read every ``step``-th pixel, chunk by chunk as the quicklooks read them, so
memory and the page stay bounded whatever the store's size: each scene's longest side is at
most ``max_px`` pixels, and all scenes together at most :data:`PAGE_PIXELS`. A scene read so
is named in the page and in :attr:`MapPage.notes`.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from resflow import storage
from resflow.archive import Archive, recorded_archive
from resflow.errors import ResflowError
from resflow.exports.cog import probability_colours
from resflow.exports.files import replacing
from resflow.exports.footprints import WGS84, scene_footprints
from resflow.exports.map_html import BUILDING_RGB, page_html
from resflow.exports.quicklook import scene_rgb
from resflow.exports.settings import default_min_building_m2
from resflow.store.reader import (
    SceneMaps,
    open_complete,
    root_attributes,
    run_settings,
    scene_attributes,
    scene_maps,
)
from resflow.store.writer import OutputStore

logger = logging.getLogger(__name__)

MAX_PX = 2048
"""Longest side of a scene's images, pixels: a larger scene is strided down to it."""

PAGE_PIXELS = 4 * 2048 * 2048
"""Pixels of all scenes' images together: many scenes are strided alike to fit it, so a
country's store still makes a page a browser opens (each image is held three times: imagery,
mask, probability)."""

MAX_BUILDINGS = 100_000
"""Footprints drawn on one page at most, so that a country's buildings do not make a page
too large to open; the scenes past it keep their images and leave their footprints out,
said in the page."""



COORDINATE_DIGITS = 7
"""Decimals of the footprints' degrees: about 1 cm on the ground."""

WEB_MERCATOR = "EPSG:3857"
"""Leaflet's map CRS: an image on this grid is exact as an ``L.imageOverlay`` rectangle."""


@dataclass(frozen=True)
class ScenePage:
    """One scene as the page shows it.

    Attributes
    ----------
    scene
        The archive's scene name.
    shape
        ``(height, width)`` of the scene, pixels.
    step
        Every ``step``-th pixel is drawn; 1 is full resolution.
    bounds
        ``(south, west, north, east)`` of the drawn images, degrees (EPSG:4326).
    imagery
        Whether the archive's imagery is under the maps.
    buildings
        Footprints drawn (0 where they were left out).
    footprints_left_out
        Whether the page's :data:`MAX_BUILDINGS` left this scene's footprints out.
    """

    scene: str
    shape: tuple[int, int]
    step: int
    bounds: tuple[float, float, float, float]
    imagery: bool
    buildings: int
    footprints_left_out: bool = False


@dataclass(frozen=True)
class MapPage:
    """A written map page: its path, each scene's layers and what the page tells of them."""

    path: Path
    scenes: list[ScenePage]
    notes: list[str]


def default_page(out_store: storage.Location) -> Path:
    """``OUT.zarr``'s folder / ``<OUT stem>-view.html``: beside the maps, as eval's report;
    for a store at a URL, that name in the working folder.

    >>> default_page("runs/maps.zarr").as_posix(), default_page("s3://b/m.zarr").as_posix()
    ('runs/maps-view.html', 'm-view.html')
    """
    location = storage.normalise(out_store)
    if isinstance(location, Path):
        return location.parent / f"{location.stem}-view.html"
    return Path(f"{PurePosixPath(location).stem}-view.html")


def write_map_page(out_store: OutputStore | storage.Location, page: Path | str | None = None,
                   *, scenes: Sequence[str] | None = None, max_px: int = MAX_PX) -> MapPage:
    """Write the maps of a finished run as one HTML page that needs no network.

    Per scene: the archive's harmonised RGB (when the archive the run read is still there,
    with the same scene), the building mask, the probability (off at first) and the
    building footprints with their area in a popup; a layer control toggles each kind, and
    the map opens fitted to the scenes. A page already at ``page`` is replaced.

    Parameters
    ----------
    page
        The HTML file; default :func:`default_page`.
    scenes
        Only these scenes (default: all).
    max_px
        Longest side of a scene's images, pixels.

    Returns
    -------
    MapPage
        The page, its scenes and its notes (scenes strided, imagery missing).

    Raises
    ------
    ResflowError
        The store is not a complete output, a scene is not in it, ``max_px`` is under 1, or
        the page cannot be written there.
    """
    if max_px < 1:
        raise ResflowError("max_px", f"{max_px} pixels is no image",
                           f"give 1 or more (default {MAX_PX})")
    store = open_complete(out_store)
    target = Path(page) if page is not None else default_page(store.path)
    chosen = _chosen(store, scenes)
    steps = _steps(chosen, max_px)
    archive, imagery_note = _archive(store)
    min_building = default_min_building_m2(store)
    mapped = scene_attributes(store)
    layers: list[dict[str, Any]] = []
    shown: list[ScenePage] = []
    drawn = 0
    for maps in chosen:
        step = steps[maps.scene]
        logger.info("map page: scene %s, 1 pixel in %d along each side", maps.scene, step)
        rgb = (_imagery(archive, maps, step, mapped[maps.scene].get("sha256"))
               if archive else None)
        frame = (scene_footprints(store, maps, min_building_m2=min_building)
                 if drawn < MAX_BUILDINGS else None)  # a full page vectorises nothing more
        left_out = frame is None or drawn + len(frame) > MAX_BUILDINGS
        buildings = 0 if left_out else len(frame)
        drawn += buildings
        grid = _MercatorGrid.of(maps, step)
        bounds = grid.bounds()
        layers.append({"scene": maps.scene, "bounds": bounds,
                       "imagery": _png(grid.warp(_opaque(rgb))) if rgb is not None else None,
                       "mask": _png(grid.warp(_mask_rgba(np.asarray(maps.mask[::step, ::step])))),
                       "probability": _png(grid.warp(_probability_rgba(
                           np.asarray(maps.probability[::step, ::step]), maps))),
                       "footprints": None if left_out else _feature_collection(frame)})
        shown.append(ScenePage(maps.scene, maps.shape, step, bounds, rgb is not None,
                               buildings, left_out))
    notes = _notes(shown, imagery_note)
    with replacing(target) as partial:
        partial.write_text(page_html(store.display, layers, notes), encoding="utf-8")
    return MapPage(target, shown, notes)


def _chosen(store: OutputStore, scenes: Sequence[str] | None) -> list[SceneMaps]:
    """The scenes to show, in the store's order; an unknown name is refused listing them."""
    every = list(scene_maps(store))
    if scenes is None:
        return every
    names = {maps.scene for maps in every}
    unknown = [name for name in scenes if name not in names]
    if unknown:
        raise ResflowError(f"{store.display}: scene {unknown[0]!r}", "not a scene of this "
                           "output", f"name one of {', '.join(sorted(names))}")
    return [maps for maps in every if maps.scene in scenes]


def _steps(chosen: Sequence[SceneMaps], max_px: int) -> dict[str, int]:
    """Each scene's stride: its longest side within ``max_px``, and every scene strided at
    least alike so that all images together stay within :data:`PAGE_PIXELS`."""
    total = sum(maps.shape[0] * maps.shape[1] for maps in chosen)
    page_step = max(1, math.ceil(math.sqrt(total / PAGE_PIXELS)))
    return {maps.scene: max(page_step, math.ceil(max(maps.shape) / max_px)) for maps in chosen}


def _archive(store: OutputStore) -> tuple[Archive | None, str]:
    """The archive the run read, or None and why it is not drawn."""
    recorded = run_settings(store).get("archive") or root_attributes(store).get("archive")
    if not recorded:
        return None, "the store records no archive"
    if not isinstance(store.path, Path):
        return None, f"the store is at a URL, so its archive {recorded} is not looked for"
    archive = recorded_archive(recorded, store.path)
    if archive is None:
        return None, f"the archive the run read ({recorded}) is not readable from here"
    return archive, ""


def _imagery(archive: Archive, maps: SceneMaps, step: int,
             sha256: str | None) -> np.ndarray | None:
    """The scene's harmonised RGB as uint8, or None where the archive no longer holds the
    scene that was mapped (another checksum or size)."""
    if not archive.holds(maps.scene, sha256, maps.shape):
        return None
    return (np.clip(scene_rgb(archive, maps.scene, step), 0.0, 1.0) * 255).round().astype(
        np.uint8)


@dataclass(frozen=True)
class _MercatorGrid:
    """A scene's strided grid and the Web Mercator grid its images are warped onto."""

    crs: CRS
    transform: Affine
    shape: tuple[int, int]
    mercator: Affine
    mercator_shape: tuple[int, int]

    @classmethod
    def of(cls, maps: SceneMaps, step: int) -> _MercatorGrid:
        """Every ``step``-th pixel of the scene (whole blocks of ``step`` pixels, so the last
        row and column may reach past the scene by under a block), and a Web Mercator grid of
        about as many pixels (square ones) that covers all of it, edges included."""
        from rasterio.transform import array_bounds

        crs = CRS.from_wkt(maps.crs_wkt)
        shape = (-(-maps.shape[0] // step), -(-maps.shape[1] // step))
        transform = maps.transform @ Affine.scale(step)
        to_mercator = Transformer.from_crs(crs, WEB_MERCATOR, always_xy=True)
        left, bottom, right, top = to_mercator.transform_bounds(
            *array_bounds(*shape, transform), densify_pts=21)
        size = math.sqrt((right - left) * (top - bottom) / (shape[0] * shape[1]))
        mercator = Affine.translation(left, top) @ Affine.scale(size, -size)
        return cls(crs, transform, shape, mercator,
                   (math.ceil((top - bottom) / size), math.ceil((right - left) / size)))

    def bounds(self) -> tuple[float, float, float, float]:
        """``(south, west, north, east)`` of the Web Mercator grid, degrees (EPSG:4326):
        its edges are meridians and parallels, so its corners are its bounds."""
        to_wgs84 = Transformer.from_crs(WEB_MERCATOR, WGS84, always_xy=True)
        height, width = self.mercator_shape
        west, north = to_wgs84.transform(*(self.mercator @ (0, 0)))
        east, south = to_wgs84.transform(*(self.mercator @ (width, height)))
        return (south, west, north, east)

    def warp(self, rgba: np.ndarray) -> np.ndarray:
        """``rgba`` (rows x columns x 4, uint8, on the strided grid) on the Web Mercator
        grid, nearest neighbour, so colours stay as drawn; clear outside the scene."""
        from rasterio.warp import Resampling, reproject

        warped = np.zeros((4, *self.mercator_shape), np.uint8)
        reproject(np.ascontiguousarray(rgba.transpose(2, 0, 1)), warped,
                  src_transform=self.transform, src_crs=self.crs,
                  dst_transform=self.mercator, dst_crs=WEB_MERCATOR,
                  resampling=Resampling.nearest)
        return warped.transpose(1, 2, 0)


def _opaque(rgb: np.ndarray) -> np.ndarray:
    """Imagery with an alpha channel: opaque inside the scene, so the warp's fill is clear."""
    return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)


def _mask_rgba(mask: np.ndarray) -> np.ndarray:
    """Buildings in :data:`BUILDING_RGB`, everything else (background, not mapped) clear."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask == 1] = (*BUILDING_RGB, 255)
    return rgba


def _probability_rgba(stored: np.ndarray, maps: SceneMaps) -> np.ndarray:
    """The stored probability in the colours of the probability COGs (blue 0 to yellow 1,
    :data:`~resflow.exports.cog.RAMP_ENDS`); pixels not mapped clear."""
    colours = np.zeros((256, 4), np.uint8)
    for value, rgba in probability_colours(maps.probability_encoding.nodata).items():
        colours[value] = rgba
    return colours[stored]


def _png(pixels: np.ndarray) -> str:
    """``pixels`` (rows x columns x RGB or RGBA, uint8) as a PNG data URI."""
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, pixels, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _feature_collection(frame: Any) -> dict[str, Any]:
    """Footprints (EPSG:4326) as a GeoJSON FeatureCollection: longitude, latitude to
    :data:`COORDINATE_DIGITS` decimals, with ``area_m2`` and ``prob_mean``."""
    geometries = shapely.transform(frame.geometry.to_numpy(),
                                   lambda xy: np.round(xy, COORDINATE_DIGITS))
    features = [{"type": "Feature", "geometry": json.loads(geometry),
                 "properties": {"area_m2": round(float(area), 1),
                                "prob_mean": round(float(prob), 3)}}
                for geometry, area, prob in zip(shapely.to_geojson(geometries),
                                                frame["area_m2"], frame["prob_mean"],
                                                strict=True)]
    return {"type": "FeatureCollection", "features": features}


def _notes(shown: Sequence[ScenePage], imagery_note: str) -> list[str]:
    """What the page says about what it leaves out or thins."""
    notes = [f"{s.scene}: downsampled, 1 pixel in {s.step} drawn along each side "
             f"({s.shape[1]} x {s.shape[0]} px shown as {-(-s.shape[1] // s.step)} x "
             f"{-(-s.shape[0] // s.step)})" for s in shown if s.step > 1]
    if imagery_note:
        notes.append(f"no imagery: {imagery_note}")
    else:
        notes += [f"{s.scene}: no imagery, the archive no longer holds the scene that was "
                  "mapped" for s in shown if not s.imagery]
    notes += [f"{s.scene}: footprints left out, the page draws {MAX_BUILDINGS} at most"
              for s in shown if s.footprints_left_out]
    return notes
