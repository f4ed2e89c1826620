"""Seam ratios: do chip borders show in a stitched map?

A map stitched from chips predicted one by one shows its chip grid when a chip's edge
pixels are predicted with less context than its centre, or by another model than its
neighbour's. The seam ratio measures that from the map alone: the mean absolute change
between adjacent pixel lines that straddle a chip border, divided by the mean change
between every other pair of adjacent lines (rows and columns together). A seamless map
scores about 1; a map whose chip grid shows scores well above it. The same ratio over a
0/1 building mask compares how often a mask edge lies on a chip border with how often it
lies anywhere else.

Only pairs of pixels that were both mapped count, so nodata and unmapped chips make no
false seams. ``resflow eval`` reports both ratios per scene and the accuracy study per fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    values = np.asarray(values, dtype=np.float64)
    if mapped is None:
        mapped = np.ones(values.shape, bool)
    sums, counts = np.zeros(2), np.zeros(2, np.int64)  # [other, border]
    for axis, start in ((0, origin[0]), (1, origin[1])):
        change = np.abs(np.diff(values, axis=axis))
        both = np.logical_and(mapped.take(range(1, values.shape[axis]), axis=axis),
                              mapped.take(range(values.shape[axis] - 1), axis=axis))
        # pair i joins lines i and i + 1 of the window: a border when scene line i + 1
        # starts a chip
        border = (start + np.arange(1, values.shape[axis])) % chip == 0
        border = border[:, None] if axis == 0 else border[None, :]
        for kind, where in ((0, both & ~border), (1, both & border)):
            sums[kind] += change[where].sum()
            counts[kind] += int(where.sum())
    return _from_sums(float(sums[1]), float(sums[0]), int(counts[1]), int(counts[0]))


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
