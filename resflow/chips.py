"""Chips: the unit of work, its ground footprint, and halo reads padded by reflection.

A scene is cut on a regular grid of ``chip x chip`` pixels (the Zarr chunk grid), so every
chip is exactly one chunk and the chips of a scene tile it exactly once. Chips on the right
and bottom edges are smaller in the scene; when read they are padded to the nominal shape.

Halo reads follow dask's ``map_overlap`` vocabulary: a chip read with ``halo=h`` returns
``chip + 2*h`` pixels a side, and pixels beyond the scene edge are filled with
``boundary="reflect"`` exactly as dask does it (the edge pixel is repeated, which numpy calls
``np.pad(mode="symmetric")``). Every read therefore has the same shape wherever the chip
lies, and a chip's result never depends on its neighbours in a batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from pyproj import CRS, Geod, Proj, Transformer

if TYPE_CHECKING:
    from resflow.harmonise import Scaling


@dataclass(frozen=True, order=True)
class ChipRef:
    """A reference to one chip of one scene: cheap to ship to any worker.

    Attributes
    ----------
    scene
        Scene (group) name inside the archive.
    row, col
        Position on the chip grid (chip units).
    y0, x0
        Top-left pixel of the in-scene window.
    height, width
        Size of the in-scene window in pixels; edge chips are smaller than ``chip``.
    chip
        Nominal chip edge in pixels (the Zarr chunk edge).
    km2
        Ground footprint of the in-scene window in km^2.
    valid_fraction
        Share of the in-scene window's pixels that hold data (not nodata, finite), 0..1.
    """

    scene: str
    row: int
    col: int
    y0: int
    x0: int
    height: int
    width: int
    chip: int
    km2: float
    valid_fraction: float


@dataclass
class ChipPixels:
    """The harmonised pixels of one chip read with a halo.

    Attributes
    ----------
    image
        float32 ``(3, chip + 2*halo, chip + 2*halo)`` in ``[0, 1]``; invalid pixels are 0.
    valid
        bool ``(chip + 2*halo, chip + 2*halo)``; False where the source held nodata, NaN or Inf.
    """

    image: np.ndarray
    valid: np.ndarray

    def finite(self) -> bool:
        """Whether every pixel is finite, so that a model can map the chip."""
        return bool(np.isfinite(self.image).all())


@dataclass
class SourceChip:
    """One chip read with a halo, as stored: what travels to the models, which harmonise
    it where they run (:class:`resflow.harmonise.Scaling`).

    Attributes
    ----------
    pixels
        ``(len(scaling.bands), chip + 2*halo, chip + 2*halo)`` in the stored dtype: the
        bands feeding R, G and B, each once.
    valid
        bool ``(chip + 2*halo, chip + 2*halo)``, as :attr:`ChipPixels.valid`.
    scaling
        The scene's scaling of ``pixels`` to the models' input.
    """

    pixels: np.ndarray
    valid: np.ndarray
    scaling: Scaling

    def harmonised(self) -> ChipPixels:
        """The chip as the models see it, harmonised on the host."""
        return ChipPixels(image=self.scaling.apply(self.pixels, self.valid), valid=self.valid)

    def finite(self) -> bool:
        """Whether every pixel harmonises to a finite value (checked without harmonising
        where the scaling guarantees it)."""
        return self.scaling.always_finite or self.harmonised().finite()


def chip_grid(height: int, width: int, chip: int) -> Iterator[tuple[int, int, int, int, int, int]]:
    """Yield ``(row, col, y0, x0, h, w)`` for the chips tiling a ``height x width`` scene.

    Row-major order; windows are clipped at the scene edge so they never overlap.

    Examples
    --------
    >>> [w[4:] for w in chip_grid(300, 200, 256)]
    [(256, 200), (44, 200)]
    """
    for row, y0 in enumerate(range(0, height, chip)):
        for col, x0 in enumerate(range(0, width, chip)):
            yield row, col, y0, x0, min(chip, height - y0), min(chip, width - x0)


def grid_shape(height: int, width: int, chip: int) -> tuple[int, int]:
    """Number of chip rows and columns covering the scene (ceil division)."""
    return -(-height // chip), -(-width // chip)


#: Projections whose areal scale at a window stays within this of 1 (UTM inside its zone:
#: 0.2 %) give map area as ground area; beyond it (web mercator away from the equator)
#: the area is divided by the areal scale at the window centre.
AREAL_TOLERANCE = 0.01


@lru_cache(maxsize=64)
def _crs(crs_wkt: str) -> CRS:
    return CRS.from_wkt(crs_wkt)


@lru_cache(maxsize=64)
def _projection(crs_wkt: str) -> tuple[Transformer, Proj]:
    crs = _crs(crs_wkt)
    return Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True), Proj(crs)


def areal_scale(crs_wkt: str, x: float, y: float) -> float:
    """Map area per ground area of a projected CRS at ``(x, y)`` (CRS units).

    Examples
    --------
    >>> round(areal_scale(CRS.from_epsg(3857).to_wkt(), 0.0, 3228135.0), 3)  # 27.8 N
    1.279
    """
    to_lonlat, proj = _projection(crs_wkt)
    lon, lat = to_lonlat.transform(x, y)
    return float(proj.get_factors(lon, lat).areal_scale)


def window_km2(transform: tuple[float, ...], crs_wkt: str,
               y0: int, x0: int, h: int, w: int) -> float:
    """Ground area of a pixel window in km^2.

    Projected CRSs: pixel area from the affine determinant times the CRS unit in metres,
    squared, divided by the projection's areal scale at the window centre where that is
    not within :data:`AREAL_TOLERANCE` of 1 (a web-mercator metre is ``cos(latitude)``
    ground metres). Geographic CRSs (degrees): geodesic area of the window's corner polygon on the
    CRS ellipsoid (``pyproj.Geod``), so a chip near the pole is correctly smaller.

    Examples
    --------
    >>> from pyproj import CRS
    >>> window_km2((10.0, 0, 0, 0, -10.0, 0), CRS.from_epsg(32631).to_wkt(), 0, 0, 100, 100)
    1.0
    """
    a, b, c, d, e, f = transform[:6]
    crs = _crs(crs_wkt)
    if crs.is_geographic:
        corners = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
        lons = [a * px + b * py + c for px, py in corners]
        lats = [d * px + e * py + f for px, py in corners]
        geod = crs.get_geod() or Geod(ellps="WGS84")
        area_m2, _ = geod.polygon_area_perimeter(lons, lats)
        return abs(area_m2) / 1e6
    unit_m = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    area = abs(a * e - b * d) * h * w * unit_m**2 / 1e6
    cx, cy = x0 + w / 2, y0 + h / 2
    scale = areal_scale(crs_wkt, a * cx + b * cy + c, d * cx + e * cy + f)
    return area / scale if abs(scale - 1) > AREAL_TOLERANCE else area


def symmetric_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer pixel index onto ``[0, n)`` by mirror reflection, edge repeated.

    This is dask's ``boundary="reflect"`` (numpy's ``mode="symmetric"``), extended
    periodically so halos wider than the scene still resolve.

    Examples
    --------
    >>> symmetric_index(np.arange(-2, 7), 5).tolist()
    [1, 0, 0, 1, 2, 3, 4, 4, 3]
    """
    period = 2 * n
    folded = np.mod(index, period)
    return np.where(folded >= n, period - 1 - folded, folded)


def halo_indices(start: int, length: int, halo: int, n: int) -> np.ndarray:
    """In-scene indices of a chip axis of nominal ``length`` plus ``halo`` on each side."""
    return symmetric_index(np.arange(start - halo, start + length + halo), n)


def chip_runs(refs: Sequence[ChipRef]) -> list[list[int]]:
    """Indices of ``refs`` grouped into runs: same scene and chip row, consecutive columns.

    A run's chips form one window of the scene, read or written with one call per array
    (each call to a Zarr array costs a round trip through its I/O thread).

    Examples
    --------
    >>> from resflow.chips import ChipRef
    >>> def at(row, col):
    ...     return ChipRef("s", row, col, row * 4, col * 4, 4, 4, 4, 0.0, 1.0)
    >>> chip_runs([at(0, 1), at(1, 0), at(0, 2), at(0, 0), at(0, 4)])
    [[3, 0, 2], [4], [1]]
    """
    order = sorted(range(len(refs)), key=lambda i: (refs[i].scene, refs[i].row, refs[i].col))
    runs: list[list[int]] = []
    for i in order:
        last = refs[runs[-1][-1]] if runs else None
        ref = refs[i]
        if last is not None and (last.scene, last.row, last.col + 1) == (ref.scene, ref.row,
                                                                         ref.col):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def shard_grid(height: int, width: int, chip: int, shard_chips: int) -> tuple[int, int]:
    """Shard rows and columns of a scene: a shard is ``shard_chips x shard_chips`` chips,
    the unit one task writes (one object per array in the output store).

    >>> shard_grid(1000, 600, 256, 2)
    (2, 2)
    """
    rows, cols = grid_shape(height, width, chip)
    return -(-rows // shard_chips), -(-cols // shard_chips)


def shard_chip_window(index: int, height: int, width: int, chip: int,
                      shard_chips: int) -> tuple[int, int, int, int]:
    """Chip rows ``[r0, r1)`` and columns ``[c0, c1)`` of shard ``index`` (row-major).

    >>> shard_chip_window(3, 1000, 600, 256, 2)
    (2, 4, 2, 3)
    """
    rows, cols = grid_shape(height, width, chip)
    _, shard_cols = shard_grid(height, width, chip, shard_chips)
    sr, sc = divmod(index, shard_cols)
    r0, c0 = sr * shard_chips, sc * shard_chips
    return r0, min(rows, r0 + shard_chips), c0, min(cols, c0 + shard_chips)


def shard_index(row: int, col: int, height: int, width: int, chip: int,
                shard_chips: int) -> int:
    """The row-major shard index holding chip ``(row, col)``.

    >>> shard_index(3, 2, 1000, 600, 256, 2)
    3
    """
    _, shard_cols = shard_grid(height, width, chip, shard_chips)
    return (row // shard_chips) * shard_cols + col // shard_chips
