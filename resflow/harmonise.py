"""Band harmonisation: any source raster to the models' 3-channel float32 input in [0, 1].

Sources differ (1-band uint16 panchromatic, 3-band uint16 blue/green/red, 4-band float64
multispectral, uint8 RGB and RGBN), so one mapping is defined here and applied everywhere.

Band names (kept in the archive), first rule that applies:

1. the band descriptions stored in the raster, lower-cased;
2. GDAL colour interpretation ``red``/``green``/``blue`` (a 1-band ``gray`` raster is ``pan``);
3. a per-source rule matched on the file name (:data:`SOURCE_RULES`), e.g. Landsat
   ``LC08_*`` 3-band composites, whose bands are blue, green, red;
4. ``b1``, ``b2``, ... (4-band rasters: the 4th band of an RGB-interpreted file is ``nir``).

Band selection (0-based indices into the source bands, kept as ``rgb``):

* an explicit override (``ingest(..., rgb=(2, 1, 0))`` or ``resflow ingest --rgb 3,2,1``)
  wins;
* bands named ``red``, ``green`` and ``blue`` are used by name (so blue,green,red files are
  reordered);
* 1 band (panchromatic): the band is replicated to all three channels;
* 3 or more bands: the first three, read as R, G, B (RGB, or R, G, B of RGBN);
* 2 bands: refused, pass an override.

Scaling: per scene and per band, robust ``low``/``high`` values are the 2nd and 98th
percentiles of the valid pixels, computed once at ingest on a regular subsample of at most
about a million pixels (bounded memory, independent of scene size) and stored in the
scene's attributes. A pixel value ``v`` becomes ``clip((v - low) / (high - low), 0, 1)``.

Validity: a pixel is invalid when any band is NaN or Inf, or when every band equals the
nodata value (rasterio's dataset-mask rule). Invalid pixels read as 0 with ``valid=False``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resflow.errors import InputError

PERCENTILES: tuple[float, float] = (2.0, 98.0)
"""Low and high percentiles used for robust per-band scaling."""

STATS_SAMPLE_PIXELS = 1_000_000
"""Upper bound on pixels per band kept for the percentile estimate (bounds memory)."""

SOURCE_RULES: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    # Landsat 8/9 three-band composites named by their product id hold blue, green, red.
    (r"^L[COT]0[89]_", 3, ("blue", "green", "red")),
)
"""``(file-name regex, band count, band names)`` used when a raster names no bands."""


def band_names(path: Path, count: int, descriptions: Sequence[str | None],
               colorinterp: Sequence[str]) -> tuple[str, ...]:
    """Name the bands of a raster by the rules in the module docstring.

    Examples
    --------
    >>> band_names(Path("x.tif"), 4, [None] * 4, ["red", "green", "blue", "undefined"])
    ('red', 'green', 'blue', 'nir')
    >>> band_names(Path("LC08_L1TP_x.TIF"), 3, [None] * 3, ["gray", "undefined", "undefined"])
    ('blue', 'green', 'red')
    """
    if all(descriptions) and len(set(descriptions)) == count:
        return tuple(str(d).strip().lower() for d in descriptions)
    if count == 1 and colorinterp[0] in ("gray", "grey", "undefined"):
        return ("pan",)
    if tuple(colorinterp[:3]) == ("red", "green", "blue"):
        extra = ["nir"] if count == 4 else [f"b{i + 1}" for i in range(3, count)]
        return ("red", "green", "blue", *extra)
    for pattern, n, names in SOURCE_RULES:
        if n == count and re.match(pattern, path.name):
            return names
    return tuple(f"b{i + 1}" for i in range(count))


def select_rgb(where: str, names: Sequence[str],
               override: Sequence[int] | None = None) -> tuple[int, int, int]:
    """Choose the 0-based source bands feeding the models' R, G, B channels.

    Raises
    ------
    InputError
        if the override is out of range, or a 2-band raster has no override.

    Examples
    --------
    >>> select_rgb("a.tif", ("blue", "green", "red"))
    (2, 1, 0)
    >>> select_rgb("a.tif", ("pan",))
    (0, 0, 0)
    """
    count = len(names)
    if override is not None:
        rgb = tuple(int(i) for i in override)
        if len(rgb) != 3 or not all(0 <= i < count for i in rgb):
            raise InputError(where, f"band override {list(override)} does not name 3 of the "
                             f"{count} bands (0-based)", f"give 3 indices in 0..{count - 1}")
        return rgb  # type: ignore[return-value]
    if {"red", "green", "blue"} <= set(names):
        return names.index("red"), names.index("green"), names.index("blue")
    if count == 1:
        return 0, 0, 0
    if count >= 3:
        return 0, 1, 2
    raise InputError(where, f"a {count}-band raster has no default RGB mapping",
                     "pass --rgb with three 1-based band numbers, e.g. --rgb 1,2,2")


def valid_mask(pixels: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels holding data: ``(band, y, x)`` in, bool ``(y, x)`` out (rule in module doc)."""
    valid = np.ones(pixels.shape[1:], dtype=bool)
    if np.issubdtype(pixels.dtype, np.floating):
        valid &= np.isfinite(pixels).all(axis=0)
    if nodata is not None and not np.isnan(nodata) and _representable(nodata, pixels.dtype):
        valid &= ~(pixels == nodata).all(axis=0)
    return valid


def _representable(value: float, dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(value).is_integer() and info.min <= value <= info.max
    return True


@dataclass
class StatsSampler:
    """Collects a bounded, regular subsample of valid pixels while a scene streams by.

    The stride is chosen from the scene size so at most about :data:`STATS_SAMPLE_PIXELS`
    pixels per band are kept, whatever the scene size.
    """

    height: int
    width: int
    nodata: float | None
    step: int = 1
    _parts: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.step = max(1, int(np.ceil(np.sqrt(self.height * self.width / STATS_SAMPLE_PIXELS))))

    def add(self, y0: int, x0: int, window: np.ndarray) -> None:
        """Add a ``(band, y, x)`` window whose top-left pixel is scene pixel ``(y0, x0)``."""
        sub = window[:, (-y0) % self.step::self.step, (-x0) % self.step::self.step]
        keep = valid_mask(sub, self.nodata)
        self._parts.append(sub[:, keep].astype(np.float64))

    def stats(self) -> dict[str, list[float]]:
        """Per-band low/high percentiles of the sampled valid pixels (0/1 if none valid)."""
        values = np.concatenate(self._parts, axis=1) if self._parts else np.empty((0, 0))
        if values.size == 0:
            n = self._parts[0].shape[0] if self._parts else 0
            return {"low": [0.0] * n, "high": [1.0] * n, "percentiles": list(PERCENTILES)}
        low, high = np.percentile(values, PERCENTILES, axis=1)
        return {"low": low.tolist(), "high": high.tolist(), "percentiles": list(PERCENTILES)}


def harmonise(pixels: np.ndarray, nodata: float | None, rgb: Sequence[int],
              stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """Source pixels ``(band, y, x)`` to the models' input.

    8- and 16-bit integer pixels go through a per-band lookup table (:func:`scaled_table`):
    one gather per source band instead of five float64 passes per channel, and bit for bit
    the same values (the table is the same formula over every possible pixel value). Float
    pixels are scaled directly.

    Returns
    -------
    image, valid
        float32 ``(3, y, x)`` in [0, 1] with invalid pixels 0, and bool ``(y, x)``.

    Examples
    --------
    >>> px = np.array([[[0, 50, 100]]], dtype=np.uint16)
    >>> img, ok = harmonise(px, 0, (0, 0, 0), {"low": [0.0], "high": [100.0]})
    >>> img[0].tolist(), ok.tolist()
    ([[0.0, 0.5, 1.0]], [[False, True, True]])
    """
    valid = valid_mask(pixels, nodata)
    if pixels.dtype.kind not in "iu" or pixels.dtype.itemsize > 2:
        return _scaled(pixels, valid, rgb, stats), valid
    offset = np.iinfo(pixels.dtype).min
    image = np.empty((3, *pixels.shape[1:]), dtype=np.float32)
    gathered: dict[int, int] = {}
    for channel, band in enumerate(rgb):
        if band in gathered:  # a panchromatic band feeds all three channels
            image[channel] = image[gathered[band]]
            continue
        table = scaled_table(pixels.dtype.str, float(stats["low"][band]),
                             float(stats["high"][band]))
        index = pixels[band] if offset == 0 else pixels[band].astype(np.int32) - offset
        np.take(table, index, out=image[channel])
        gathered[band] = channel
    if not valid.all():
        image[:, ~valid] = 0.0
    return image, valid


@functools.lru_cache(maxsize=64)
def scaled_table(dtype: str, low: float, high: float) -> np.ndarray:
    """Every value of an 8- or 16-bit integer ``dtype`` scaled to float32 [0, 1] between
    ``low`` and ``high``, indexed from the dtype's minimum (256 KiB for 16 bits)."""
    info = np.iinfo(np.dtype(dtype))
    values = np.arange(info.min, info.max + 1, dtype=np.float64)[None, :, None]
    table = _scaled(values, np.ones(values.shape[1:], dtype=bool), (0,),
                    {"low": [low], "high": [high]})[0, :, 0]
    table.flags.writeable = False
    return table


def _scaled(pixels: np.ndarray, valid: np.ndarray, rgb: Sequence[int],
            stats: dict) -> np.ndarray:
    """The scaling rule in float64, channel by channel (module doc); invalid pixels 0."""
    idx = list(rgb)
    low = np.asarray(stats["low"], dtype=np.float64)[idx][:, None, None]
    high = np.asarray(stats["high"], dtype=np.float64)[idx][:, None, None]
    span = np.where(high > low, high - low, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.clip((pixels[idx].astype(np.float64) - low) / span, 0.0, 1.0)
    return np.where(valid[None], scaled, 0.0).astype(np.float32)
