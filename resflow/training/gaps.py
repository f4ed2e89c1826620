"""Touching roofs kept apart: the training target and loss weights around building gaps.

Footprints are counted as connected components of the map, so two touching roofs mapped as
one blob lose both buildings. The training target opens a one-pixel gap between touching
footprints, and the loss weighs the narrow background between close buildings up, as the
U-Net authors did for touching cells, so the decoder learns to keep neighbours apart.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def separated(ids: np.ndarray) -> np.ndarray:
    """Building mask with the pixels where two buildings touch set to background.

    Footprints are counted as connected components of the map, so two touching roofs
    mapped as one blob lose both buildings. Training on a one-pixel gap between touching
    footprints (as the U-Net authors did for touching cells) teaches the decoder to keep
    neighbours apart.

    Examples
    --------
    >>> separated(np.array([[1, 1, 2, 2]])).astype(int).tolist()
    [[1, 0, 0, 1]]
    """
    inside = ids > 0
    highest = ndimage.grey_dilation(ids, size=3)
    lowest = ndimage.grey_erosion(np.where(inside, ids, np.iinfo(ids.dtype).max), size=3)
    return inside & (highest <= ids) & (lowest >= ids)


def gap_weight(ids: np.ndarray, target: np.ndarray, peak: float, sigma_px: float
               ) -> np.ndarray:
    """Loss weight of each pixel: ``1 + peak * exp(-(d1 + d2)^2 / (2 sigma_px^2))`` on
    background, where ``d1`` and ``d2`` are the distances to the nearest and the second
    nearest building; 1 on buildings.

    The U-Net authors' weight map for touching cells. The narrow gap between two roofs is
    a handful of pixels among thousands, so an unweighted loss barely notices when the
    decoder fills it, and two roofs become one footprint. Weighting the gap makes the
    decoder's probability dip there, which is where :func:`resflow.masks.split_touching`
    cuts. The gap pixels :func:`separated` makes between touching footprints weigh most.

    Examples
    --------
    >>> ids = np.array([[1, 1, 0, 2, 2, 0, 0, 0, 0]])
    >>> [round(float(w), 1) for w in gap_weight(ids, ids > 0, 10.0, 1.0)[0]]
    [1.0, 1.0, 2.4, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    weight = np.ones(ids.shape, np.float32)
    buildings = np.unique(ids[ids > 0])
    if buildings.size < 2 or peak <= 0:
        return weight
    nearest = np.full(ids.shape, np.inf, np.float32)
    second = nearest.copy()
    for building in buildings:
        distance = ndimage.distance_transform_edt(ids != building).astype(np.float32)
        second = np.minimum(second, np.maximum(nearest, distance))
        nearest = np.minimum(nearest, distance)
    gap = 1 + peak * np.exp(-((nearest + second) ** 2) / (2 * sigma_px**2))
    return np.where(target, weight, gap).astype(np.float32)
