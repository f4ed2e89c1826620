"""Quicklooks: a PNG of a scene's imagery with its building mask, a title and a scale bar.

The imagery is what the models saw (harmonised RGB), read every n-th pixel chip by chip, so
memory stays bounded for large scenes; matplotlib is imported only when one is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pyproj import CRS

from resflow import storage
from resflow.store.writer import OutputStore

if TYPE_CHECKING:
    from resflow.archive import Archive


def scene_rgb(archive: Archive, scene: str, step: int) -> np.ndarray:
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
    rgb = scene_rgb(archive, scene, step)
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
