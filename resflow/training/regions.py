"""Spatially separate train, validation and test regions of labelled scenes.

Neighbouring pixels are nearly copies of each other, so a random pixel or chip split leaks
the test set into training and flatters every score. resflow instead cuts each labelled
scene into three contiguous horizontal bands of whole chip rows, top to bottom: train, then
validation, then test. A chip row goes to the band holding its centre line, measured as a
fraction of the scene height against the cumulative ``fractions`` (default 60/20/20), so
the bands follow pixel area even when the last chip row is a short edge row.

The bands share an edge only along a chip-row boundary; with a halo read, the few context
pixels across that edge are image only, never labels, so no label crosses the split. A
region's chips travel with their pixels, labels and loss weights as :class:`Chips`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from resflow.chips import ChipRef

REGIONS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


def split_regions(chips: Iterable[ChipRef],
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                  ) -> dict[str, list[ChipRef]]:
    """Assign every chip to ``train``, ``validation`` or ``test`` by its chip row.

    Parameters
    ----------
    chips
        Chips of the labelled scenes (any order, several scenes allowed).
    fractions
        Shares of each scene's height for train, validation and test, top to bottom.

    Returns
    -------
    dict
        Region name to its chips, in sorted (scene, row, col) order.

    Examples
    --------
    >>> from resflow.chips import ChipRef
    >>> rows = [ChipRef("s", r, 0, 256 * r, 0, 256 if r < 3 else 132, 256, 256, 0.1, 1.0)
    ...         for r in range(4)]
    >>> {k: [c.row for c in v] for k, v in split_regions(rows).items()}
    {'train': [0, 1], 'validation': [2], 'test': [3]}
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions {fractions} must be three shares >= 0 summing to 1")
    chips = sorted(chips)
    heights: dict[str, int] = {}
    for ref in chips:
        heights[ref.scene] = max(heights.get(ref.scene, 0), ref.y0 + ref.height)
    bounds = (fractions[0], fractions[0] + fractions[1])
    out: dict[str, list[ChipRef]] = {name: [] for name in REGIONS}
    for ref in chips:
        centre = (ref.y0 + ref.height / 2) / heights[ref.scene]
        region = 0 if centre < bounds[0] else 1 if centre < bounds[1] else 2
        out[REGIONS[region]].append(ref)
    return out


def region_rows(chips: Iterable[ChipRef]) -> dict[str, tuple[int, int]]:
    """Per scene, the pixel rows ``(y0, y1)`` a region's chips span (one contiguous band).

    Used to score a region as one mosaic, so footprints cut by chip edges count once.
    """
    rows: dict[str, tuple[int, int]] = {}
    for ref in chips:
        y0, y1 = rows.get(ref.scene, (ref.y0, ref.y0 + ref.height))
        rows[ref.scene] = (min(y0, ref.y0), max(y1, ref.y0 + ref.height))
    return rows


@dataclass
class Chips:
    """Pixels, labels and scoring weights of one region's chips."""

    refs: list[ChipRef]
    images: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    buckets: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
