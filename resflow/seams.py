"""Seam ratios: do chip borders show in a stitched map?

A map stitched from chips predicted one by one shows its chip grid when a chip's edge
pixels are predicted with less context than its centre, or by another model than its
neighbour's. The seam ratio measures that from the map alone: the mean absolute change
between adjacent pixel lines that straddle a chip border, divided by the mean change
between every other pair of adjacent lines (rows and columns together): about 1 for a
seamless map, well above it where the grid shows. Over a 0/1 building mask it compares how
often a mask edge lies on a chip border with how often it lies anywhere else.

Only pairs of pixels that were both mapped count, so nodata and unmapped chips make no
false seams. :class:`SeamCheck` sets the ratio beside the same ratio off the chip grid, the
spread it has by chance on a small map. ``resflow eval`` reports both per scene, and the
accuracy study per fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from resflow.store.format import NOT_MAPPED

SEAM_TARGET = 1.2
"""Highest seam ratio of a map whose chip grid does not show."""

OFF_GRID_EIGHTHS = range(1, 8)
"""Where :class:`SeamCheck` moves the grid: each eighth of a chip off the borders."""


@dataclass(frozen=True)
class SeamRatio:
    """Mean change across chip-border pairs over the mean change across all other pairs.

    Ratios of several maps add (``a + b``) by summing their pairs and changes, so the ratio
    of the whole weighs each pair alike and a small scene cannot weigh like a big one.

    Examples
    --------
    >>> flat, ramp = np.zeros((8, 8)), np.arange(64.0).reshape(8, 8)
    >>> both = seam_ratio(flat, chip=4) + seam_ratio(ramp, chip=4)
    >>> both.summary(), both.border_pairs
    (1.0, 32)
    """

    ratio: float | None
    """None when either kind of pair has no change to compare (a blank map)."""
    border_pairs: int
    other_pairs: int
    border_change: float = 0.0
    """Sum of the absolute changes across border pairs (value units)."""
    other_change: float = 0.0
    """Sum of the absolute changes across all other pairs."""

    def summary(self) -> float | None:
        """The ratio rounded for reports, None when undefined."""
        return None if self.ratio is None else round(self.ratio, 3)

    def __add__(self, other: SeamRatio) -> SeamRatio:
        """The ratio of both maps taken as one: pairs and changes summed."""
        return _from_sums(self.border_change + other.border_change,
                          self.other_change + other.other_change,
                          self.border_pairs + other.border_pairs,
                          self.other_pairs + other.other_pairs)


def seam_ratio(values: np.ndarray, chip: int, mapped: np.ndarray | None = None,
               origin: tuple[int, int] = (0, 0)) -> SeamRatio:
    """The seam ratio of a ``(H, W)`` map whose chips are ``chip`` pixels on a side.

    Parameters
    ----------
    values
        Probability (any numeric dtype) or a 0/1 mask.
    chip
        Chip edge in pixels; chip borders lie between lines ``k * chip - 1`` and
        ``k * chip`` of the scene grid.
    mapped
        Pixels that hold a prediction; pairs with an unmapped pixel are left out.
    origin
        Scene row and column of ``values[0, 0]``, for a window cut from a scene.

    Examples
    --------
    >>> grid = np.kron(np.eye(2), np.ones((4, 4)))  # chips of 4 pixels, each flat
    >>> seam_ratio(grid + np.arange(8) % 2 * 0.1, chip=4).summary()  # texture and seams
    20.0
    >>> seam_ratio(np.arange(64.0).reshape(8, 8), chip=4).summary()
    1.0
    """
    return seam_ratios_at(values, chip, (0,), mapped, origin)[0]


@dataclass(frozen=True)
class SeamCheck:
    """A map's seam ratio beside the same ratio with the grid moved off the chip borders,
    by each of :data:`OFF_GRID_EIGHTHS` eighths of a chip: lines where nothing is stitched.

    The off-grid ratios spread as far as this map's ratio varies with no seam at all: a
    scene a few chips across has few border lines, so its ratio follows the few roofs and
    roads those lines happen to cross. The chip grid shows (:meth:`shows`) when the ratio
    is above :data:`SEAM_TARGET` *and* above every off-grid ratio. Checks of several maps
    add (``a + b``) as their ratios do.
    """

    on_grid: SeamRatio
    off_grid: tuple[SeamRatio, ...]

    def shows(self) -> bool | None:
        """Whether the chip grid shows; None when the ratio is undefined."""
        if self.on_grid.ratio is None:
            return None
        spread = [r.ratio for r in self.off_grid if r.ratio is not None]
        return self.on_grid.ratio > SEAM_TARGET and self.on_grid.ratio > max(spread,
                                                                               default=0.0)

    def spread(self) -> list[float] | None:
        """``[lowest, highest]`` off-grid ratio, rounded for reports; None if none."""
        defined = [r.summary() for r in self.off_grid if r.ratio is not None]
        return [min(defined), max(defined)] if defined else None  # type: ignore[type-var]

    def __add__(self, other: SeamCheck) -> SeamCheck:
        return SeamCheck(self.on_grid + other.on_grid,
                         tuple(a + b for a, b in zip(self.off_grid, other.off_grid,
                                                     strict=True)))


def seam_check(values: np.ndarray, chip: int, mapped: np.ndarray | None = None,
               origin: tuple[int, int] = (0, 0)) -> SeamCheck:
    """The seam ratio of a map (as :func:`seam_ratio`) and its off-grid ratios.

    Examples
    --------
    >>> check = seam_check(np.arange(256.0).reshape(16, 16), chip=8)
    >>> check.on_grid.summary(), check.spread(), check.shows()
    (1.0, [1.0, 1.0], False)
    """
    offsets = [chip * eighth // 8 for eighth in OFF_GRID_EIGHTHS]
    ratios = seam_ratios_at(values, chip, [0, *offsets], mapped, origin)
    return SeamCheck(ratios[0], tuple(ratios[1:]))


NO_CHECK = SeamCheck(SeamRatio(None, 0, 0), tuple(SeamRatio(None, 0, 0)
                                                  for _ in OFF_GRID_EIGHTHS))
"""The check of an empty map: the start of a sum (``sum(checks, NO_CHECK)``)."""


def seam_ratios_at(values: np.ndarray, chip: int, offsets: Sequence[int],
                   mapped: np.ndarray | None = None,
                   origin: tuple[int, int] = (0, 0)) -> list[SeamRatio]:
    """The ratio with the grid's lines at ``offset + k * chip``, for each of ``offsets``
    (0: the chip borders), the map's changes computed once for all."""
    values = np.asarray(values, dtype=np.float64)
    if mapped is None:
        mapped = np.ones(values.shape, bool)
    sums = np.zeros((len(offsets), 2))  # [other, border] per offset
    counts = np.zeros((len(offsets), 2), np.int64)
    for axis, start in ((0, origin[0]), (1, origin[1])):
        change = np.abs(np.diff(values, axis=axis))
        both = np.logical_and(mapped.take(range(1, values.shape[axis]), axis=axis),
                              mapped.take(range(values.shape[axis] - 1), axis=axis))
        change = np.where(both, change, 0.0)
        # totals per line across the axis: pair i joins lines i and i + 1 of the window
        line_change = change.sum(axis=1 - axis)
        line_pairs = both.sum(axis=1 - axis)
        lines = start + np.arange(1, values.shape[axis])
        for index, offset in enumerate(offsets):
            border = (lines - offset) % chip == 0  # scene line i + 1 starts a chip
            sums[index] += (line_change[~border].sum(), line_change[border].sum())
            counts[index] += (int(line_pairs[~border].sum()), int(line_pairs[border].sum()))
    return [_from_sums(float(s[1]), float(s[0]), int(c[1]), int(c[0]))
            for s, c in zip(sums, counts, strict=True)]


NO_PAIRS = SeamRatio(None, 0, 0)
"""The ratio of an empty map: the start of a sum (``sum(ratios, NO_PAIRS)``)."""


def _from_sums(border_change: float, other_change: float, border_pairs: int,
               other_pairs: int) -> SeamRatio:
    """A SeamRatio from summed changes and pair counts (None when either mean is undefined
    or the other pairs do not change at all)."""
    ratio = None
    if border_pairs and other_pairs and other_change > 0:
        ratio = (border_change / border_pairs) / (other_change / other_pairs)
    return SeamRatio(ratio, border_pairs, other_pairs, border_change, other_change)


def scene_seams(probability: np.ndarray, mask: np.ndarray, chip: int
                ) -> dict[str, SeamCheck]:
    """Seam checks of one scene's probability and building mask on its chip grid.

    Parameters
    ----------
    probability
        ``(H, W)`` uint8 probability as stored (x 254, 255 where not mapped).
    mask
        ``(H, W)`` stored mask (1 = building).
    chip
        Chip edge in pixels (the store's chunk edge).

    Returns
    -------
    dict
        ``probability`` and ``mask`` -> :class:`SeamCheck`, over pairs of
        mapped pixels only: a ratio about 1 when chip borders do not show.
    """
    mapped = probability != NOT_MAPPED
    return {"probability": seam_check(probability, chip, mapped),
            "mask": seam_check(np.asarray(mask) == 1, chip, mapped)}


def seams_summary(checks: dict[str, SeamCheck]) -> dict[str, Any]:
    """A scene's seam checks as reported: per kind its ratio, the ``[lowest, highest]``
    off-grid ratio and whether the grid shows (:meth:`SeamCheck.shows`)."""
    return {**{kind: check.on_grid.summary() for kind, check in checks.items()},
            **{f"{kind}_off_grid": check.spread() for kind, check in checks.items()},
            **{f"{kind}_grid_shows": check.shows() for kind, check in checks.items()}}
