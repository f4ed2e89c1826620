"""Larger benchmark scenes derived from the real bundled imagery.

A scaling study needs archives of x1, x2, x4, x8... the size of one real scene, with the same
texture statistics, so that time per km^2 can be compared across sizes. resflow builds them
as mosaics of the real SpaceNet Atlanta tile: tile ``i`` of the mosaic is the original under
the ``i``-th of the eight dihedral transforms (flips and 90-degree rotations), so adjacent
tiles differ and no chip is a byte-for-byte copy of its neighbour. The tile is first brought
to the working ground resolution (:mod:`resflow.resolution`, as ingest would), so the
archive and the hand-written baseline read the very same pixels. The mosaic keeps the
original CRS and upper-left corner; it is documented everywhere as *derived from real
imagery*, not as new imagery.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from resflow.resolution import DEFAULT_GSD_M, working_grid
from resflow.samples import sample_path

#: The dihedral group of the square, applied to (y, x) planes: identity, rotations, flips.
_DIHEDRAL = (
    lambda a: a,
    lambda a: np.rot90(a, 1, axes=(-2, -1)),
    lambda a: np.rot90(a, 2, axes=(-2, -1)),
    lambda a: np.rot90(a, 3, axes=(-2, -1)),
    lambda a: a[..., ::-1, :],
    lambda a: a[..., :, ::-1],
    lambda a: np.swapaxes(a, -2, -1),
    lambda a: np.rot90(a, 2, axes=(-2, -1)).swapaxes(-2, -1),
)


def mosaic_grid(factor: int) -> tuple[int, int]:
    """Rows and columns of tiles for ``factor`` tiles, as square as possible.

    >>> mosaic_grid(1), mosaic_grid(2), mosaic_grid(8)
    ((1, 1), (1, 2), (2, 4))
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    rows = 2 ** (int(math.log2(factor)) // 2) if factor & (factor - 1) == 0 else 1
    return rows, math.ceil(factor / rows)


def read_on_working_grid(source: Path, gsd_m: float | None = DEFAULT_GSD_M,
                         window: Window | None = None) -> tuple[np.ndarray, dict]:
    """Pixels and GeoTIFF profile of ``source`` (or of ``window`` of it) resampled onto its
    working grid at ``gsd_m`` metres, as ingest resamples (None: the source's own grid)."""
    with rasterio.open(source) as src:
        window = window or Window(0, 0, src.width, src.height)
        transform = src.window_transform(window)
        grid = working_grid(src.crs.to_wkt(), tuple(transform)[:6], int(window.height),
                            int(window.width), gsd_m)
        resampling = Resampling[grid.resampling if grid.resampling != "none" else "nearest"]
        with WarpedVRT(src, crs=src.crs, transform=Affine(*grid.transform), width=grid.width,
                       height=grid.height, resampling=resampling) as vrt:
            pixels = vrt.read()
        profile = src.profile | {"transform": Affine(*grid.transform), "height": grid.height,
                                 "width": grid.width}
    return pixels, profile


def write_scaled_scene(factor: int, out: Path, source: Path | None = None,
                       gsd_m: float | None = DEFAULT_GSD_M) -> Path:
    """Write a GeoTIFF of ``factor`` tiles of ``source`` (default: the SpaceNet Atlanta sample).

    The file is written tile by tile, so memory holds one source tile whatever the factor.

    Parameters
    ----------
    factor
        How many source tiles the mosaic holds (its area is ``factor`` times the source's).
    out
        Path of the GeoTIFF to write (tiled 256 x 256, deflate).
    source
        A single-scene GeoTIFF; its CRS and upper-left corner are kept.
    gsd_m
        Working ground resolution the tile is resampled to first (None: keep its own).
    """
    source = Path(source) if source is not None else sample_path("atlanta-pan")
    rows, cols = mosaic_grid(factor)
    tile, profile = read_on_working_grid(source, gsd_m)
    height, width = tile.shape[-2:]
    if height != width:  # the dihedral transforms swap axes: keep tiles square
        edge = min(height, width)
        tile, height, width = tile[:, :edge, :edge], edge, edge
    profile.update(
        driver="GTiff", height=rows * height, width=cols * width, tiled=True,
        blockxsize=256, blockysize=256, compress="deflate",
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        for index in range(rows * cols):
            r, c = divmod(index, cols)
            variant = _DIHEDRAL[index % len(_DIHEDRAL)](tile)
            window = Window(c * width, r * height, width, height)
            dst.write(np.ascontiguousarray(variant), window=window)
    return out
