"""From building probability to a building mask: threshold, then drop specks.

A pixel above the threshold is not yet a building: isolated clusters of a few pixels (a car
roof, a shadow edge) would each become a footprint and ruin object counts. resflow keeps
only connected components (4-connected, as footprints are counted by
:mod:`resflow.training.metrics`) of at least ``min_pixels`` pixels; ``min_pixels`` comes
from ``min_building_m2`` and the scene's ground resolution (:func:`min_pixels`).

Inference calls :func:`building_mask` on each chip *with its halo* (reflected beyond the
scene edge, as every read is), then trims, so a speck is judged by its whole extent even
where it crosses a chip border. A component touching the edge of the array may continue
beyond it, so it is always kept. The per-chip result therefore equals masking the whole
scene at once, reflected the same way (``reflect``), whenever ``min_pixels`` is at most the
halo plus one: a component that reaches from the chip to the halo's edge has at least that
many pixels. Larger minimums may keep a few long thin components the whole-scene mask
would drop; they never remove a building the whole-scene mask keeps.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def min_pixels(min_building_m2: float, gsd_m: float) -> int:
    """Pixels of the smallest building kept, at ``gsd_m`` metres per pixel.

    Examples
    --------
    >>> min_pixels(4.0, 0.5), min_pixels(0.0, 0.5)
    (16, 0)
    """
    return math.ceil(min_building_m2 / gsd_m**2 - 1e-9)


def building_mask(probability: np.ndarray, threshold: float, min_pixels: int,
                  reflect: int = 0) -> np.ndarray:
    """Pixels above ``threshold`` in components of at least ``min_pixels`` pixels.

    Parameters
    ----------
    probability
        ``(H, W)`` probability, float in ``[0, 1]`` or uint8 ``0..255``.
    threshold
        In the units of ``probability`` (``0.5``, or ``127.5`` for uint8).
    min_pixels
        Smallest component kept; components touching the array's edge are always kept.
    reflect
        Mask a whole scene as its chips are masked: mirror this many pixels beyond every
        edge first (the run's halo), and trim them after. 0 for an already padded chip.

    Examples
    --------
    >>> p = np.zeros((5, 6)); p[1, 1] = p[1:4, 3:5] = 0.9
    >>> building_mask(p, 0.5, 2).astype(int)
    array([[0, 0, 0, 0, 0, 0],
           [0, 0, 0, 1, 1, 0],
           [0, 0, 0, 1, 1, 0],
           [0, 0, 0, 1, 1, 0],
           [0, 0, 0, 0, 0, 0]])
    """
    if reflect:
        inner = np.s_[reflect:-reflect, reflect:-reflect]
        return building_mask(np.pad(probability, reflect, mode="symmetric"), threshold,
                             min_pixels)[inner]
    return keep_components(probability > threshold, min_pixels)


def keep_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """``mask`` without its 4-connected components of fewer than ``min_pixels`` pixels,
    keeping every component that touches the array's edge (its rest may lie beyond it).

    >>> m = np.zeros((4, 5), dtype=bool); m[1, 1] = m[1:3, 3] = m[0, 0] = True
    >>> keep_components(m, 2).astype(int)
    array([[1, 0, 0, 0, 0],
           [0, 0, 0, 1, 0],
           [0, 0, 0, 1, 0],
           [0, 0, 0, 0, 0]])
    """
    if min_pixels <= 1 or not mask.any():
        return mask
    labels, _ = ndimage.label(mask)
    keep = np.bincount(labels.ravel()) >= min_pixels
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    keep[edge] = True
    keep[0] = False
    return keep[labels]
