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
    basins, peaks = _basins(height, mask)
    owner = _regions(peaks, *_passes(basins, height), split)
    return _separated(owner[basins])


def _basins(height: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` cut into basins of ``height``'s peaks, by steepest ascent: every pixel
    belongs to the peak it reaches by stepping, again and again, to its highest
    4-neighbour in the mask while that is higher (the first of up, down, left, right
    on a tie). Basins are numbered from 1 in the order of their peaks' flat index, 0
    outside ``mask``; also returns each basin's peak height (index 0 unused).

    Each pixel's step depends only on its neighbours, so a blob's basins depend only on
    the blob and the pixels it is smoothed with: chip by chip as scene-wide. Every pixel
    no neighbour of which is higher is a peak of its own, so plateaus start several
    basins; :func:`_regions` merges basins whose peaks stand less than ``split`` above
    their pass, so too many basins cost nothing but time.
    """
    rows, cols = mask.shape
    inside = np.full((rows + 2, cols + 2), -np.inf, np.float32)
    np.copyto(inside[1:-1, 1:-1], height, where=mask)
    best = inside[1:-1, 1:-1].copy()
    offset = np.zeros((rows, cols), np.int32)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = inside[1 + dy:1 + dy + rows, 1 + dx:1 + dx + cols]
        higher = neighbour > best
        np.copyto(best, neighbour, where=higher)
        np.copyto(offset, dy * cols + dx, where=higher)
    pixels = np.flatnonzero(mask)
    at = np.empty(rows * cols, np.int32)  # a mask pixel's place in ``pixels``
    at[pixels] = np.arange(pixels.size, dtype=np.int32)
    step = at[pixels + offset.ravel()[pixels]]
    while True:  # pointer jumping: every pixel reaches its peak in log2(steps) rounds
        further = step[step]
        if np.array_equal(further, step):
            break
        step = further
    peak = step == np.arange(step.size)
    label = np.cumsum(peak, dtype=np.int32)
    basins = np.zeros(rows * cols, np.int32)
    basins[pixels] = label[step]
    peaks = np.concatenate([[-np.inf], height.ravel()[pixels[peak]]]).astype(np.float32)
    return basins.reshape(rows, cols), peaks


def _passes(basins: np.ndarray, height: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbouring basin pairs ``(low id, high id)`` and the highest pass between each,
    the best, over 4-neighbour pixel pairs straddling their border, of the lower pixel;
    highest pass first, pairs in id order on a tie (the order :func:`_regions` merges)."""
    lows, highs, levels = [], [], []
    for a, b, ha, hb in ((basins[:-1], basins[1:], height[:-1], height[1:]),
                         (basins[:, :-1], basins[:, 1:], height[:, :-1], height[:, 1:])):
        border = np.flatnonzero((a != b) & (a > 0) & (b > 0))
        a, b = a.ravel()[border], b.ravel()[border]
        lows.append(np.minimum(a, b))
        highs.append(np.maximum(a, b))
        levels.append(np.minimum(ha.ravel()[border], hb.ravel()[border]))
    low, high, level = np.concatenate(lows), np.concatenate(highs), np.concatenate(levels)
    if not level.size:
        return low, high, level
    key = low.astype(np.int64) * (int(high.max()) + 1) + high
    order = np.argsort(key, kind="stable")
    key, low, high, level = key[order], low[order], high[order], level[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    level = np.maximum.reduceat(level, first)
    order = np.argsort(-level, kind="stable")
    return low[first][order], high[first][order], level[order]


def _regions(peaks: np.ndarray, low: np.ndarray, high: np.ndarray, level: np.ndarray,
             split: float) -> np.ndarray:
    """For each basin, the basin whose region it belongs to after merging shallow peaks.

    The passes are visited in order (union-find, Kruskal's order): at each, the basin set
    with the lower peak (the higher id on a tie) joins the other, and its top basin stays
    a region of its own only if its peak stands at least ``split`` above the pass, or else
    belongs to the region of the set it joined. The visit is replayed in a few rounds of
    array operations (Boruvka's): each set takes its first pass; sets so linked form
    trees in which later passes hang below earlier ones, so up to the first pass leading
    out of its tree, a tree merges in the order of its passes, every set joining the
    union of the sets before it, whose top is a running maximum.
    """
    count = peaks.size - 1
    rank = np.empty(count + 1, np.int64)  # peak order: higher peak, lower id on a tie
    ids = np.arange(count + 1)
    rank[np.lexsort((-ids[1:], peaks[1:])) + 1] = ids[:-1]
    basin_of = np.empty(count, np.int64)
    basin_of[rank[1:]] = ids[1:]
    top = rank.copy()  # per set, named by one of its basins: the rank of its top basin
    joined = ids.copy()  # the basin whose region a basin belongs to (itself: a region)
    low, high = low.astype(np.int64), high.astype(np.int64)
    while level.size:
        edges = np.arange(level.size)
        first = np.full(count + 1, level.size)
        np.minimum.at(first, low, edges)
        np.minimum.at(first, high, edges)
        sets = np.flatnonzero(first < level.size)
        link = first[sets]
        other = np.where(low[link] == sets, high[link], low[link])
        parent = ids.copy()
        parent[sets] = other
        root = sets[(parent[other] == sets) & (sets < other)]
        parent[root] = root
        tree = parent
        while True:
            further = tree[tree]
            if np.array_equal(further, tree):
                break
            tree = further
        out_low, out_high = tree[low], tree[high]
        leaving = out_low != out_high
        exit_ = np.full(count + 1, level.size)
        np.minimum.at(exit_, out_low[leaving], edges[leaving])
        np.minimum.at(exit_, out_high[leaving], edges[leaving])
        merging = sets[link < exit_[tree[sets]]]
        order_key = first[merging]
        order_key[parent[merging] == merging] = -1
        merging = merging[np.lexsort((order_key, tree[merging]))]
        group = tree[merging]
        starts = np.r_[True, group[1:] != group[:-1]]
        shift = (np.cumsum(starts) - 1) * (count + 1)
        running = np.maximum.accumulate(top[merging] + shift) - shift
        joining = ~starts
        before = np.r_[0, running[:-1]][joining]
        own = top[merging][joining]
        winner = basin_of[np.maximum(own, before)]
        loser = basin_of[np.minimum(own, before)]
        at = level[first[merging][joining]]
        shallow = peaks[loser].astype(np.float64) - at.astype(np.float64) < split
        joined[loser[shallow]] = winner[shallow]
        ends = np.r_[starts[1:], True]
        top[group[ends]] = running[ends]
        rename = ids.copy()
        rename[merging] = group
        low, high = rename[low], rename[high]
        kept = low != high
        low, high, level = low[kept], high[kept], level[kept]
    while True:
        further = joined[joined]
        if np.array_equal(further, joined):
            return joined
        joined = further


def _separated(regions: np.ndarray) -> np.ndarray:
    """Pixels of ``regions`` (0: background), less those of the higher-numbered region
    wherever two regions are 4-neighbours."""
    cut = np.zeros(regions.shape, bool)
    for a, b, cut_a, cut_b in ((regions[:-1], regions[1:], cut[:-1], cut[1:]),
                               (regions[:, :-1], regions[:, 1:], cut[:, :-1], cut[:, 1:])):
        cut_a |= (a > b) & (b > 0)
        cut_b |= (b > a) & (a > 0)
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
