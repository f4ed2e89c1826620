"""Band harmonisation: any source raster to the models' 3-channel float32 input in [0, 1].

Sources differ (1-band uint16 panchromatic, 3-band uint16 blue/green/red, 4-band float64
multispectral, uint8 RGB and RGBN), so one mapping is defined here and applied everywhere,
in four steps each with one owner: naming the bands (:func:`band_names`), choosing the
three that feed R, G, B (:func:`select_rgb`), judging which pixels hold data
(:func:`valid_mask`, with a source's own mask made part of the pixels by
:func:`apply_mask`), and scaling each band by robust per-scene statistics
(:class:`StatsSampler`, :class:`Scaling`). Messages count bands from 1, as GDAL and
``--rgb`` do.
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
    """Name the bands of a raster (names kept in the archive), by the first rule that applies:

    1. the band descriptions stored in the raster, lower-cased;
    2. GDAL colour interpretation ``red``/``green``/``blue`` (a 1-band ``gray`` raster is
       ``pan``);
    3. a per-source rule matched on the file name (:data:`SOURCE_RULES`), e.g. Landsat
       ``LC08_*`` 3-band composites, whose bands are blue, green, red;
    4. ``b1``, ``b2``, ... (4-band rasters: the 4th band of an RGB-interpreted file is
       ``nir``).

    A band whose colour interpretation is ``alpha`` is named ``alpha`` and is no imagery:
    the rules name the other bands as if it were absent (so RGBA is red, green, blue and a
    gray + alpha raster is ``pan``). Ingest stores only the imagery bands and keeps the
    alpha band as the scene's mask (:func:`apply_mask`).

    Examples
    --------
    >>> band_names(Path("x.tif"), 4, [None] * 4, ["red", "green", "blue", "undefined"])
    ('red', 'green', 'blue', 'nir')
    >>> band_names(Path("x.tif"), 4, [None] * 4, ["red", "green", "blue", "alpha"])
    ('red', 'green', 'blue', 'alpha')
    >>> band_names(Path("LC08_L1TP_x.TIF"), 3, [None] * 3, ["gray", "undefined", "undefined"])
    ('blue', 'green', 'red')
    """
    if all(descriptions) and len(set(descriptions)) == count:
        return tuple(str(d).strip().lower() for d in descriptions)
    imagery = [i for i, c in enumerate(colorinterp[:count]) if c != "alpha"]
    names = iter(_imagery_names(path, [colorinterp[i] for i in imagery],
                                [i + 1 for i in imagery]))
    return tuple("alpha" if c == "alpha" else next(names) for c in colorinterp[:count])


def _imagery_names(path: Path, colorinterp: Sequence[str],
                   numbers: Sequence[int]) -> tuple[str, ...]:
    """Rules 2 to 4 of :func:`band_names` for the bands that are not alpha, whose 1-based
    band numbers are ``numbers`` (``b<number>`` names keep them)."""
    count = len(colorinterp)
    if count == 1 and colorinterp[0] in ("gray", "grey", "undefined"):
        return ("pan",)
    if tuple(colorinterp[:3]) == ("red", "green", "blue"):
        extra = ["nir"] if count == 4 else [f"b{n}" for n in numbers[3:]]
        return ("red", "green", "blue", *extra)
    for pattern, n, names in SOURCE_RULES:
        if n == count and re.match(pattern, path.name):
            return names
    return tuple(f"b{n}" for n in numbers)


def select_rgb(where: str, names: Sequence[str], override: Sequence[int] | None = None,
               numbers: Sequence[int] | None = None) -> tuple[int, int, int]:
    """Choose the bands feeding the models' R, G, B channels, as 0-based indices into
    ``names``.

    ``numbers`` are the source's 1-based band numbers of ``names`` (default 1, 2, ...; ingest
    passes them without the alpha band, which is not imagery). ``override`` holds 0-based
    source band indices; errors name bands by their 1-based numbers. The rule (kept in the
    archive as ``rgb``):

    * an explicit override (``ingest(..., rgb=(2, 1, 0))`` or ``resflow ingest --rgb 3,2,1``)
      wins;
    * bands named ``red``, ``green`` and ``blue`` are used by name (so blue,green,red files
      are reordered);
    * 1 band (panchromatic): the band is replicated to all three channels;
    * 3 or more bands: the first three, read as R, G, B (RGB, or R, G, B of RGBN);
    * 2 bands: refused, pass an override.

    Raises
    ------
    InputError
        if the override does not name three of the bands, or a 2-band raster has no
        override.

    Examples
    --------
    >>> select_rgb("a.tif", ("blue", "green", "red"))
    (2, 1, 0)
    >>> select_rgb("a.tif", ("pan",))
    (0, 0, 0)
    >>> select_rgb("a.tif", ("b1", "b2", "b3"), override=(2, 1, 0))
    (2, 1, 0)
    """
    count = len(names)
    numbers = tuple(numbers) if numbers is not None else tuple(range(1, count + 1))
    if override is not None:
        given = [int(i) + 1 for i in override]
        if len(given) != 3 or not all(b in numbers for b in given):
            raise InputError(where, f"the bands chosen for R, G, B ({','.join(map(str, given))}"
                             f", counted from 1) are not three of its {count} imagery bands, "
                             f"numbered {_numbering(numbers)}",
                             f"pass --rgb with three band numbers from {_numbering(numbers)}")
        return tuple(numbers.index(b) for b in given)  # type: ignore[return-value]
    if {"red", "green", "blue"} <= set(names):
        return names.index("red"), names.index("green"), names.index("blue")
    if count == 1:
        return 0, 0, 0
    if count >= 3:
        return 0, 1, 2
    raise InputError(where, f"a {count}-band raster has no default RGB mapping",
                     "pass --rgb with three 1-based band numbers, e.g. --rgb 1,2,2")


def _numbering(numbers: Sequence[int]) -> str:
    """``(1, 2, 3, 4)`` -> ``"1 to 4"``, ``(2, 3)`` -> ``"2 to 3"``, ``(1, 3)`` -> ``"1, 3"``."""
    if len(numbers) > 1 and list(numbers) == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]} to {numbers[-1]}"
    return ", ".join(map(str, numbers))


def valid_mask(pixels: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels holding data: ``(band, y, x)`` in, bool ``(y, x)`` out.

    A pixel is invalid when any band is NaN or Inf, or when every band equals the nodata
    value (rasterio's dataset-mask rule). Invalid pixels read as 0 with ``valid=False``. A
    source's own mask (an alpha band, or a GDAL mask band: internal or ``.msk``) is made part
    of the pixels at ingest by :func:`apply_mask`: masked pixels are stored as nodata (the
    source's, or one :func:`masked_nodata` chooses), so every reader finds them by this rule.
    """
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


def masked_nodata(dtype: str, nodata: float | None) -> float:
    """The nodata value a scene with a mask stores its masked pixels as.

    The source's own when the pixels can hold it; else NaN for float pixels (never data) and
    the dtype's minimum for integers (0 for unsigned ones, the usual nodata of 8- and 16-bit
    imagery), whose valid pixels :func:`apply_mask` keeps apart from it.

    Examples
    --------
    >>> masked_nodata("uint8", None), masked_nodata("uint16", 65535.0), masked_nodata("int16", None)
    (0.0, 65535.0, -32768.0)
    >>> masked_nodata("float32", None)
    nan
    """
    kind = np.dtype(dtype)
    floating = bool(np.issubdtype(kind, np.floating))
    if nodata is not None and (floating or (not np.isnan(nodata)
                                            and _representable(nodata, kind))):
        return float(nodata)
    return float("nan") if floating else float(np.iinfo(kind).min)


def apply_mask(pixels: np.ndarray, valid: np.ndarray, nodata: float) -> np.ndarray:
    """Write a source mask into ``pixels`` ``(band, y, x)`` in place and return them: where
    ``valid`` is False every band becomes ``nodata``, so :func:`valid_mask` finds the pixel.

    A valid pixel equal to ``nodata`` in every band (possible only for a nodata value chosen
    by :func:`masked_nodata`: the source's own marks its pixels invalid already) has its first
    band moved one step off nodata (one grey level, invisible after scaling), so it stays valid.

    Examples
    --------
    >>> px = np.array([[[0, 5, 0]], [[0, 6, 0]]], dtype=np.uint8)
    >>> apply_mask(px, np.array([[True, False, False]]), 0.0)[:, 0].tolist()
    [[1, 0, 0], [0, 0, 0]]
    """
    pixels[:, ~valid] = nodata
    if not np.isnan(nodata):
        clash = valid & (pixels == nodata).all(axis=0)
        if clash.any():
            pixels[0][clash] = _next_to(nodata, pixels.dtype)
    return pixels


def _next_to(value: float, dtype: np.dtype) -> float:
    """The closest value of ``dtype`` to ``value`` that is not ``value``."""
    if np.issubdtype(dtype, np.integer):
        return value + 1 if value < np.iinfo(dtype).max else value - 1
    return float(np.nextafter(dtype.type(value), dtype.type(np.inf)))


@dataclass
class StatsSampler:
    """Collects a bounded, regular subsample of valid pixels while a scene streams by.

    The stride is chosen from the scene size so at most about :data:`STATS_SAMPLE_PIXELS`
    pixels per band are kept, whatever the scene size: memory stays bounded. Its
    :meth:`stats` are each band's robust ``low``/``high``, the 2nd and 98th percentiles of
    the valid pixels, computed once at ingest and stored in the scene's attributes.
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
    scaling = Scaling.of(pixels.dtype, rgb, stats)
    return scaling.apply(pixels[list(scaling.bands)], valid), valid


@dataclass(frozen=True)
class Scaling:
    """How one scene's stored bands become the models' three channels: a pixel value ``v``
    of a band becomes ``clip((v - low) / (high - low), 0, 1)``, ``low``/``high`` from the
    scene's :class:`StatsSampler` statistics.

    Chips travel to the models as the source's own pixels (1 or 2 bytes each for 8- and
    16-bit imagery, against 12 for three float32 channels) and are scaled where the models
    run, on the host (:meth:`apply`) or on a GPU
    (:func:`resflow.model_input.harmonise_tensor`), with the same values bit for bit.

    Attributes
    ----------
    dtype
        The stored pixels' numpy dtype string (``"|u1"``, ``"<u2"``, ...).
    bands
        The stored bands that feed a channel, each once, in order of first use: only these
        are sent to the models (a panchromatic band once, not three times).
    channels
        For R, G and B, the position in ``bands`` of the band feeding it.
    low, high
        Per entry of ``bands``, the values scaled to 0 and to 1.
    """

    dtype: str
    bands: tuple[int, ...]
    channels: tuple[int, int, int]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def of(cls, dtype: np.dtype | str, rgb: Sequence[int], stats: dict) -> Scaling:
        """The scaling of a scene whose pixels are ``dtype``, R, G, B bands ``rgb`` and
        per-band ``stats`` (``{"low": [...], "high": [...]}``, every stored band)."""
        bands = tuple(dict.fromkeys(int(b) for b in rgb))
        return cls(dtype=np.dtype(dtype).str, bands=bands,
                   channels=tuple(bands.index(int(b)) for b in rgb),  # type: ignore[arg-type]
                   low=tuple(float(stats["low"][b]) for b in bands),
                   high=tuple(float(stats["high"][b]) for b in bands))

    @property
    def tabled(self) -> bool:
        """Whether pixels are scaled by lookup (8- and 16-bit integers) rather than
        arithmetic: one gather per band instead of five float64 passes per channel."""
        kind = np.dtype(self.dtype)
        return kind.kind in "iu" and kind.itemsize <= 2

    def tables(self) -> np.ndarray:
        """``(len(bands), 2**bits)`` float32: every value of the dtype scaled by each band's
        rule, indexed from the dtype's minimum (256 KiB a band for 16 bits)."""
        return np.stack([scaled_table(self.dtype, low, high)
                         for low, high in zip(self.low, self.high, strict=True)])

    @functools.cached_property
    def always_finite(self) -> bool:
        """Whether every pixel scales to a finite value, so chips need no check: lookups of
        finite tables, or finite ``low``, ``high`` and span (``(v - low) / span`` is then
        finite or infinite, and clipped to [0, 1])."""
        if self.tabled:
            return bool(np.isfinite(self.tables()).all())
        low, high = np.asarray(self.low), np.asarray(self.high)
        with np.errstate(over="ignore"):
            return bool(np.isfinite(low).all() and np.isfinite(high).all()
                        and np.isfinite(high - low).all())

    def apply(self, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """``pixels`` ``(len(bands), y, x)`` of :attr:`dtype` to float32 ``(3, y, x)`` in
        [0, 1], pixels not ``valid`` 0.

        8- and 16-bit pixels go through :meth:`tables`, which hold the arithmetic rule's
        values over every possible pixel, so both routes give the same bits.
        """
        if not self.tabled:
            return _scaled(pixels, valid, self.channels,
                           {"low": self.low, "high": self.high})
        offset = np.iinfo(np.dtype(self.dtype)).min
        image = np.empty((3, *pixels.shape[1:]), dtype=np.float32)
        gathered: dict[int, int] = {}
        for channel, band in enumerate(self.channels):
            if band in gathered:  # a panchromatic band feeds all three channels
                image[channel] = image[gathered[band]]
                continue
            table = scaled_table(self.dtype, self.low[band], self.high[band])
            index = pixels[band] if offset == 0 else pixels[band].astype(np.int32) - offset
            np.take(table, index, out=image[channel])
            gathered[band] = channel
        if not valid.all():
            image[:, ~valid] = 0.0
        return image


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
    """The scaling rule in float64, channel by channel (:class:`Scaling`); invalid pixels 0."""
    idx = list(rgb)
    low = np.asarray(stats["low"], dtype=np.float64)[idx][:, None, None]
    high = np.asarray(stats["high"], dtype=np.float64)[idx][:, None, None]
    with np.errstate(invalid="ignore", over="ignore"):
        span = np.where(high > low, high - low, 1.0)
        scaled = np.clip((pixels[idx].astype(np.float64) - low) / span, 0.0, 1.0)
    return np.where(valid[None], scaled, 0.0).astype(np.float32)
