"""A finished run as one self-contained HTML map: imagery, mask, probability and footprints.

The page opens in any browser with no network and no GIS: Leaflet (bundled in
``resflow/exports/leaflet``) and every layer are inlined. Each scene's images are PNG data
URIs placed with ``L.imageOverlay`` at their WGS 84 bounds, and the footprints are GeoJSON
in EPSG:4326. An image overlay is a rectangle on Leaflet's Web Mercator map, so each image
is first warped (nearest neighbour) from the scene's grid to Web Mercator: drawn as a
longitude/latitude rectangle instead, a UTM scene would be stretched by its grid's rotation
against north (1.4 degrees at the Atlanta sample, 84.5 W in UTM zone 16: its bounding box
is 2.4 % wider than the scene) and sit metres off its own footprints.

Images are read every ``step``-th pixel, chunk by chunk as the quicklooks read them, so
memory and the page stay bounded whatever the store's size: each scene's longest side is at
most ``max_px`` pixels, and all scenes together at most :data:`PAGE_PIXELS`. A scene read so
is named in the page and in :attr:`MapPage.notes`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import re
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
from resflow.exports.cog import RAMP_ENDS, probability_colours
from resflow.exports.files import replacing
from resflow.exports.footprints import WGS84, scene_footprints
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

BUILDING_RGB = (255, 26, 13)
"""The mask's building colour: the quicklooks' red."""

LEAFLET = Path(__file__).with_name("leaflet")
"""Leaflet 1.9.4 from npm, unchanged (``PROVENANCE.md`` there)."""

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
        frame = scene_footprints(store, maps, min_building_m2=min_building)
        left_out = drawn + len(frame) > MAX_BUILDINGS
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
        partial.write_text(_html(store.display, layers, notes), encoding="utf-8")
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
    info = archive.scenes.get(maps.scene)
    if info is None or info.sha256 != sha256 or (info.height, info.width) != maps.shape:
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


def _leaflet() -> tuple[str, str]:
    """Leaflet's script and style sheet, ready to inline: no source map comment and no
    image the page does not bundle (marker icons, the collapsed layer control's icon)."""
    script = (LEAFLET / "leaflet.js").read_text(encoding="utf-8")
    script = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", script)
    style = re.sub(r"url\(images/[^)]*\)", "none",
                   (LEAFLET / "leaflet.css").read_text(encoding="utf-8"))
    return script, style


def _html(title: str, layers: list[dict[str, Any]], notes: list[str]) -> str:
    """The page: Leaflet, the layers as JSON, the script that places them, the notes."""
    script, style = _leaflet()
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    values = {
        "TITLE": html.escape(title), "LEAFLET_CSS": style, "LEAFLET_JS": script,
        "NOTES": f"<ul>{items}</ul>" if items else "",
        "RAMP": "linear-gradient(to right, {}, {})".format(
            *("rgb({},{},{})".format(*end) for end in RAMP_ENDS)),
        "BUILDING": "rgb({},{},{})".format(*BUILDING_RGB),
        # no "<" at all inside the JSON script element, so no scene name can end it
        "SCENES": json.dumps(layers, separators=(",", ":")).replace("<", "\\u003c")}
    # one pass, so no inlined text is searched for markers again
    return re.sub(r"%([A-Z_]+)%", lambda marker: values[marker.group(1)], PAGE)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>resflow: %TITLE%</title>
<style>%LEAFLET_CSS%</style>
<style>
html, body, #map { height: 100%; margin: 0; }
#legend { position: absolute; right: 10px; bottom: 10px; z-index: 1000; max-width: 40em;
  padding: 6px 10px; background: rgba(255,255,255,0.9); border-radius: 4px;
  font: 12px/1.4 sans-serif; }
#legend ul { margin: 4px 0 0; padding-left: 1.2em; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: middle; }
.ramp { display: inline-block; width: 80px; height: 10px; vertical-align: middle;
  background: %RAMP%; }
.resflow-pixels { image-rendering: pixelated; }
</style>
</head>
<body>
<div id="map"></div>
<div id="legend"><b>resflow: %TITLE%</b><br>
<span class="swatch" style="background: %BUILDING%"></span> buildings (mask)
&nbsp; probability 0 <span class="ramp"></span> 1
&nbsp; footprints: click one for its area<br>
<label>zoom to <select id="zoom"><option value="">every scene</option></select></label>
%NOTES%</div>
<script>%LEAFLET_JS%</script>
<script type="application/json" id="scenes">%SCENES%</script>
<script>
(function () {
  var scenes = JSON.parse(document.getElementById("scenes").textContent);
  var map = L.map("map", {zoomSnap: 0.25, attributionControl: false});
  var panes = {imagery: 350, probability: 400, mask: 410, footprints: 450};
  Object.keys(panes).forEach(function (name) {
    map.createPane(name).style.zIndex = panes[name];
  });
  var groups = {imagery: L.layerGroup(), mask: L.layerGroup(),
                probability: L.layerGroup(), footprints: L.layerGroup()};
  var all = null;
  var extents = [];
  var zoom = document.getElementById("zoom");
  scenes.forEach(function (s) {
    var b = L.latLngBounds([s.bounds[0], s.bounds[1]], [s.bounds[2], s.bounds[3]]);
    all = all ? all.extend(b) : L.latLngBounds(b.getSouthWest(), b.getNorthEast());
    var option = document.createElement("option");
    option.value = extents.push(b) - 1;
    option.textContent = s.scene;
    zoom.appendChild(option);
    if (s.imagery) {
      L.imageOverlay(s.imagery, b, {pane: "imagery", className: "resflow-imagery"})
        .addTo(groups.imagery);
    }
    L.imageOverlay(s.probability, b, {pane: "probability", opacity: 0.7,
                                      className: "resflow-pixels resflow-probability"})
      .addTo(groups.probability);
    L.imageOverlay(s.mask, b, {pane: "mask", opacity: 0.6,
                               className: "resflow-pixels resflow-mask"})
      .addTo(groups.mask);
    if (s.footprints) {
      L.geoJSON(s.footprints, {pane: "footprints",
                               style: {color: "#00e5ff", weight: 1.5, fillOpacity: 0,
                                       className: "resflow-footprint"}})
        .bindPopup(function (layer) {
          var box = document.createElement("div");  // text only: no markup from the data
          var p = layer.feature.properties;
          box.textContent = "building, " + p.area_m2.toFixed(1) + " m\\u00b2, mean "
            + "probability " + p.prob_mean.toFixed(2) + ", scene " + s.scene;
          return box;
        })
        .addTo(groups.footprints);
    }
  });
  var overlays = {};
  if (scenes.some(function (s) { return s.imagery; })) {
    overlays["imagery"] = groups.imagery.addTo(map);
  }
  overlays["buildings (mask)"] = groups.mask.addTo(map);
  overlays["probability"] = groups.probability;
  overlays["footprints"] = groups.footprints.addTo(map);
  L.control.layers(null, overlays, {collapsed: false}).addTo(map);
  L.control.scale({imperial: false}).addTo(map);
  zoom.addEventListener("change", function () {
    map.fitBounds(zoom.value === "" ? all : extents[Number(zoom.value)], {padding: [20, 20]});
  });
  if (all) { map.fitBounds(all, {padding: [20, 20]}); } else { map.setView([0, 0], 2); }
})();
</script>
</body>
</html>
"""
