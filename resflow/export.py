"""Exports of a complete output store: Cloud-Optimized GeoTIFFs, building footprints, quicklooks.

Every export keeps the scene's own CRS and grid: a COG pixel is exactly an output pixel, and
footprint coordinates are in the scene CRS (no reprojection, so no resampling error).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from pyproj import CRS
from rasterio.features import shapes
from rasterio.windows import Window
from shapely.geometry import mapping, shape

from resflow.errors import ResflowError
from resflow.outputs import OutputStore

if TYPE_CHECKING:
    import zarr

    from resflow.archive import Archive

COG_BLOCK = 256
"""COG tile edge, pixels: small enough that every sample scene gets at least one overview."""

COG_BANDS = {"probability": ("average", "building probability x 255"),
             "mask": ("nearest", "building mask (1 = building)")}
"""Per exported array: overview resampling (a mask must stay 0/1) and band description."""


def _open_complete(out_store: OutputStore | Path | str) -> OutputStore:
    store = out_store if isinstance(out_store, OutputStore) else OutputStore.open(out_store)
    if not store.complete:
        raise ResflowError(str(store.path), "the output is not complete, so exports would show "
                           "unwritten chips as empty", "finish the run with --resume first")
    return store


def _blocks(array: zarr.Array) -> Iterator[tuple[Window, np.ndarray]]:
    """Yield each chunk of a 2-D array with its window: memory stays one chunk."""
    height, width = array.shape
    step_y, step_x = array.chunks
    for y0 in range(0, height, step_y):
        for x0 in range(0, width, step_x):
            h, w = min(step_y, height - y0), min(step_x, width - x0)
            yield Window(x0, y0, w, h), array[y0:y0 + h, x0:x0 + w]


def export_cogs(out_store: OutputStore | Path | str, cog_dir: Path | str) -> list[Path]:
    """Write each scene's probability and mask as Cloud-Optimized GeoTIFFs.

    Files are ``<cog_dir>/<group>_probability.tif`` (overviews averaged) and
    ``<group>_mask.tif`` (overviews nearest, so they stay 0/1): uint8, deflate, 256-pixel
    tiles, in the scene's CRS and transform. Each is streamed chunk by chunk into a tiled
    GeoTIFF and then laid out as a COG by GDAL's ``COG`` driver.

    Returns
    -------
    list of Path
        The files written, two per scene.

    Raises
    ------
    ResflowError
        The output is not complete.
    """
    store = _open_complete(out_store)
    cog_dir = Path(cog_dir)
    cog_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for scene, group in store.groups.items():
        crs_wkt, transform = store.georeference(scene)
        for name, (resampling, description) in COG_BANDS.items():
            target = cog_dir / f"{group}_{name}.tif"
            _write_cog(store.read_array(scene, name), target, crs_wkt, Affine(*transform),
                       resampling, description, tags={"scene": scene, "array": name})
            written.append(target)
    return written


def _write_cog(array: zarr.Array, target: Path, crs_wkt: str, transform: Affine,
               resampling: str, description: str, tags: dict[str, str]) -> None:
    height, width = array.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 1,
               "dtype": "uint8", "crs": crs_wkt, "transform": transform, "tiled": True,
               "blockxsize": COG_BLOCK, "blockysize": COG_BLOCK}
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "staging.tif"
        with rasterio.open(staging, "w", **profile) as dst:
            for window, block in _blocks(array):
                dst.write(block, 1, window=window)
            dst.set_band_description(1, description)
            dst.update_tags(**tags)
        rasterio.shutil.copy(staging, target, driver="COG", COMPRESS="DEFLATE", PREDICTOR="2",
                             BLOCKSIZE=str(COG_BLOCK), OVERVIEWS="AUTO",
                             OVERVIEW_RESAMPLING=resampling.upper())


def geojson_crs(crs_wkt: str) -> dict[str, Any]:
    """The GeoJSON (2008) ``crs`` member that GDAL, and so QGIS, reads for a CRS.

    EPSG:4326 is named ``OGC:1.3:CRS84`` so readers keep longitude first; a CRS without an
    EPSG code is named by its WKT, which GDAL also accepts.

    Examples
    --------
    >>> geojson_crs(CRS.from_epsg(32631).to_wkt())["properties"]["name"]
    'urn:ogc:def:crs:EPSG::32631'
    """
    epsg = CRS.from_wkt(crs_wkt).to_epsg()
    if epsg == 4326:
        name = "urn:ogc:def:crs:OGC:1.3:CRS84"
    elif epsg is not None:
        name = f"urn:ogc:def:crs:EPSG::{epsg}"
    else:
        name = crs_wkt
    return {"type": "name", "properties": {"name": name}}


def scene_footprints(store: OutputStore, scene: str, *, min_pixels: int = 8) -> list[dict]:
    """GeoJSON features of one scene's building polygons, in the scene CRS.

    Connected building pixels (4-connectivity) become polygons, simplified by half a pixel
    (removes the staircase of pixel edges but no real corner) and dropped if smaller than
    ``min_pixels`` pixels (specks). Properties: ``scene``, ``id``, ``area_px``.
    """
    _, affine = store.georeference(scene)
    transform = Affine(*affine)
    pixel_area = abs(transform.determinant)
    mask = np.asarray(store.read_array(scene, "mask")[...])
    features = []
    for geometry, _ in shapes(mask, mask=mask.astype(bool), connectivity=4, transform=transform):
        polygon = shape(geometry).simplify(0.5 * math.sqrt(pixel_area), preserve_topology=True)
        area_px = polygon.area / pixel_area
        if area_px < min_pixels:
            continue
        features.append({"type": "Feature", "geometry": mapping(polygon), "properties": {
            "scene": scene, "id": f"{scene}-{len(features) + 1}",
            "area_px": round(area_px, 1)}})
    return features


def export_footprints(out_store: OutputStore | Path | str, path_geojson: Path | str, *,
                      min_pixels: int = 8) -> list[Path]:
    """Vectorise building masks to GeoJSON, in each scene's own CRS.

    Scenes that share a CRS share one FeatureCollection (a ``scene`` property tells them
    apart), with a ``crs`` member naming that CRS. If all scenes share one CRS the file is
    ``path_geojson``; otherwise one file per CRS, ``<stem>.<epsgNNNN or crsN><suffix>``
    beside it, because one GeoJSON file can only carry one CRS.

    Returns
    -------
    list of Path
        The files written.
    """
    store = _open_complete(out_store)
    target = Path(path_geojson)
    by_crs: dict[str, list[str]] = {}
    for scene in store.groups:
        crs_wkt, _ = store.georeference(scene)
        key = next((k for k in by_crs if CRS.from_wkt(k) == CRS.from_wkt(crs_wkt)), crs_wkt)
        by_crs.setdefault(key, []).append(scene)
    written = []
    for n, (crs_wkt, scenes) in enumerate(by_crs.items(), start=1):
        path = target if len(by_crs) == 1 else target.with_name(
            f"{target.stem}.{_crs_tag(crs_wkt, n)}{target.suffix or '.geojson'}")
        features = [f for scene in scenes
                    for f in scene_footprints(store, scene, min_pixels=min_pixels)]
        collection = {"type": "FeatureCollection", "crs": geojson_crs(crs_wkt),
                      "features": features}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(collection))
        written.append(path)
    return written


def _crs_tag(crs_wkt: str, n: int) -> str:
    epsg = CRS.from_wkt(crs_wkt).to_epsg()
    return f"epsg{epsg}" if epsg else f"crs{n}"


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


def quicklook(out_store: OutputStore | Path | str, archive: Archive, scene: str,
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
    mask = np.asarray(store.read_array(scene, "mask")[::step, ::step]).astype(bool)
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
