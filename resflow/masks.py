"""From building probability to a building mask: threshold, split touching roofs, drop specks.

A pixel above the threshold is not yet a building. Roofs that touch (dense settlements,
terraces) come out of the threshold as one blob; counted as footprints, a blob over five
houses matches none of them. Where the probability rises to two peaks with a dip between
them, :func:`split_touching` cuts the blob along the dip (keeping apart the peaks that
stand at least ``split`` above the pass between them, as morphological h-maxima do),
leaving a one-pixel gap between the roofs. Isolated clusters of a few pixels (a car roof, a
shadow edge) would each become a footprint and ruin object counts: resflow then keeps only
connected components (4-connected, as footprints are counted by
:mod:`resflow.training.metrics`) of at least ``min_pixels`` pixels; ``min_pixels`` comes
from ``min_building_m2`` and the scene's ground resolution (:func:`min_pixels`).

Inference calls :func:`building_mask` on each prediction window *with its halo*
(:mod:`resflow.windows`; reflected beyond the scene edge, as every read is), then trims, so
a speck is judged by its whole extent even where it crosses a window border. A component
touching the edge of the array may continue beyond it, so it is always kept. The windowed
result therefore equals masking the whole scene at once, reflected the same way
(``reflect``), whenever ``min_pixels`` is at most the halo plus one: a component that
reaches from the window to the halo's edge has at least that many pixels. Larger minimums
may keep a few long thin components the whole-scene mask would drop; they never remove a
building the whole-scene mask keeps. Splitting looks at a whole blob and its surroundings
up to :data:`SMOOTH_REACH` pixels away, so it too is the same window by window as
scene-wide for every blob that lies that far inside the window and its halo (any blob up to
``halo - 2 * SMOOTH_REACH`` pixels across); a bigger blob crossing a window border may be
cut differently on its two sides.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

SMOOTH_SIGMA = 1.0
"""Gaussian smoothing of the probability, in pixels, before its peaks are found: a roof's
one-pixel noise makes no second peak."""

SMOOTH_REACH = 4
"""Pixels the smoothing reaches (scipy's default truncation at 4 sigma)."""


def min_pixels(min_building_m2: float, gsd_m: float) -> int:
    """Pixels of the smallest building kept, at ``gsd_m`` metres per pixel.

    Examples
    --------
    >>> min_pixels(4.0, 0.5), min_pixels(0.0, 0.5)
    (16, 0)
    """
    return math.ceil(min_building_m2 / gsd_m**2 - 1e-9)


def building_mask(probability: np.ndarray, threshold: float, min_pixels: int,
                  reflect: int = 0, split: float = 0.0) -> np.ndarray:
    """Pixels above ``threshold``, touching roofs split (``split``), in components of at
    least ``min_pixels`` pixels.

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
                             min_pixels, split=split)[inner]
    return keep_components(split_touching(probability, probability > threshold, split),
                           min_pixels)


def split_touching(probability: np.ndarray, mask: np.ndarray, split: float) -> np.ndarray:
    """``mask`` with a one-pixel gap cut between touching roofs.

    Each blob of ``mask`` is cut into the basins of the peaks of the probability, smoothed
    by :data:`SMOOTH_SIGMA` (:func:`_basins`). Two regions stay apart where the lower of
    their peaks stands at least ``split`` above the highest pass between them (its
    *dynamic*); shallower peaks join the region they first meet (:func:`_regions`).
    Regions that stay apart are separated by removing the boundary pixels of one of them,
    so 4-connected counting sees two buildings. Every blob keeps at least one region whole,
    so no blob disappears, and pixels are only ever removed, never added.

    Found by the leave-one-place-out study (``docs/accuracy.md``): roofs that touch in
    dense settlements are found as blobs; the dip in probability along the shared wall or
    the gap between them is where a footprint ends.

    >>> p = np.array([[0.9, 0.9, 0.8, 0.6, 0.8, 0.9, 0.9]] * 4)  # two roofs, one blob
    >>> ndimage.label(split_touching(p, p > 0.5, 0.1))[1]         # the dip splits it
    2
    >>> ndimage.label(split_touching(p, p > 0.5, 0.4))[1]         # too shallow a dip
    1
    """
    if split <= 0 or not mask.any():
        return mask
    height = ndimage.gaussian_filter(probability.astype(np.float32), SMOOTH_SIGMA)
    basins = _basins(height, mask)
    keep = _regions(basins, height, split)
    return _separated(keep[basins])


def _basins(height: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` cut into basins of ``height``'s peaks, by steepest ascent: every pixel
    belongs to the peak it reaches by stepping, again and again, to its highest
    4-neighbour in the mask while that is higher. 0 outside ``mask``.

    Each pixel's step depends only on its neighbours, so a blob's basins depend only on
    the blob and the pixels it is smoothed with: chip by chip as scene-wide. Every pixel
    no neighbour of which is higher is a peak of its own, so plateaus start several
    basins; :func:`_regions` merges basins whose peaks stand less than ``split`` above
    their pass, so too many basins cost nothing but time.
    """
    rows, cols = mask.shape
    inside = np.pad(np.where(mask, height, -np.inf), 1, constant_values=-np.inf)
    index = np.arange(rows * cols).reshape(rows, cols)
    best, step = inside[1:-1, 1:-1].copy(), index.copy()
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = inside[1 + dy:1 + dy + rows, 1 + dx:1 + dx + cols]
        higher = neighbour > best
        best = np.where(higher, neighbour, best)
        step = np.where(higher, np.roll(index, (-dy, -dx), axis=(0, 1)), step)
    step = step.ravel()
    while True:  # pointer jumping: every pixel reaches its peak in log2(steps) rounds
        further = step[step]
        if np.array_equal(further, step):
            break
        step = further
    peaks = np.flatnonzero(mask.ravel() & (step == np.arange(step.size)))
    label = np.zeros(step.size, np.int64)
    label[peaks] = np.arange(1, peaks.size + 1)
    basins = label[step].reshape(rows, cols)
    basins[~mask] = 0
    return basins


def _regions(basins: np.ndarray, height: np.ndarray, split: float) -> np.ndarray:
    """For each basin, the basin whose region it belongs to after merging shallow peaks.

    Passes between neighbouring basins are visited from the highest down (union-find);
    at each, the basin set with the lower peak joins the other, and its top basin stays a
    region of its own only if its peak stands at least ``split`` above the pass.
    """
    count = int(basins.max())
    top = np.full(count + 1, -np.inf, np.float32)
    np.maximum.at(top, basins.ravel(), height.ravel())
    lows, highs, passes = _passes(basins, height)
    order = np.argsort(-passes, kind="stable")
    peaks = top.tolist()  # plain lists: the loop touches single items only
    parent = list(range(count + 1))
    joined = list(range(count + 1))  # the set a shallow top basin joined
    region = [True] * (count + 1)

    def root(b: int) -> int:
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    for low, high, level in zip(lows[order].tolist(), highs[order].tolist(),
                                passes[order].tolist(), strict=True):
        a, b = root(low), root(high)
        if a == b:
            continue
        if peaks[a] < peaks[b] or (peaks[a] == peaks[b] and a > b):
            a, b = b, a  # a: the set with the higher peak; roots are their top basins
        if peaks[b] - level < split:
            region[b] = False
            joined[b] = a
        parent[b] = a
    owner = [0] * (count + 1)
    for b in range(1, count + 1):
        r = b
        while not region[r]:
            r = joined[r]
        owner[b] = r
    return np.asarray(owner)


def _passes(basins: np.ndarray, height: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbouring basin pairs ``(low id, high id)`` and the highest pass between each:
    the best, over 4-neighbour pixel pairs straddling their border, of the lower pixel."""
    pairs, levels = [], []
    for a, b, ha, hb in ((basins[:-1], basins[1:], height[:-1], height[1:]),
                         (basins[:, :-1], basins[:, 1:], height[:, :-1], height[:, 1:])):
        border = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a, b)[border], np.maximum(a, b)[border]]))
        levels.append(np.minimum(ha, hb)[border])
    pair, level = np.concatenate(pairs, axis=1), np.concatenate(levels)
    if not level.size:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, np.float32)
    key = pair[0].astype(np.int64) * (int(basins.max()) + 1) + pair[1]
    order = np.lexsort((-level, key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    return pair[0][first], pair[1][first], level[first]


def _separated(regions: np.ndarray) -> np.ndarray:
    """Pixels of ``regions`` (0: background), less those of the higher-numbered region
    wherever two regions are 4-neighbours."""
    cut = np.zeros(regions.shape, bool)
    for a, b, cut_a, cut_b in ((regions[:-1], regions[1:], cut[:-1], cut[1:]),
                               (regions[:, :-1], regions[:, 1:], cut[:, :-1], cut[:, 1:])):
        border = (a != b) & (a > 0) & (b > 0)
        cut_a |= border & (a > b)
        cut_b |= border & (b > a)
    return (regions > 0) & ~cut


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
