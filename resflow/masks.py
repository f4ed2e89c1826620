"""From building probability to a building mask: threshold, split touching roofs, drop specks.

A pixel above the threshold is not yet a building. Roofs that touch (dense settlements,
terraces) come out of the threshold as one blob, and a blob over five houses matches none
of them: :func:`split_touching` cuts a blob along the dip between two probability peaks.
Isolated clusters of a few pixels (a car roof, a shadow edge) would each become a footprint
and ruin object counts: only 4-connected components of at least ``min_pixels`` pixels
(:func:`min_pixels`, from ``min_building_m2`` and the ground resolution) are kept.
:func:`building_mask` does all three and states how its windowed result matches a
whole-scene mask.

Every step is a whole-array numpy or scipy operation, or a few rounds of them, never a
loop over pixels or basins: a host masks every prediction window while feeding the models
(``benchmarks/README.md``, "Host cost").
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

    Where the probability rises to two peaks with a dip between them, :func:`split_touching`
    cuts the blob along the dip (keeping apart the peaks that stand at least ``split`` above
    the pass between them, as morphological h-maxima do), leaving a one-pixel gap between
    the roofs. Components are 4-connected, as footprints are counted by
    :mod:`resflow.training.metrics`.

    Inference calls :func:`building_mask` on each prediction window *with its halo*
    (:mod:`resflow.windows`; reflected beyond the scene edge, as every read is), then trims,
    so a speck is judged by its whole extent even where it crosses a window border. A
    component touching the edge of the array may continue beyond it, so it is always kept.
    The windowed result therefore equals masking the whole scene at once, reflected the same
    way (``reflect``), whenever ``min_pixels`` is at most the halo plus one: a component
    that reaches from the window to the halo's edge has at least that many pixels. Larger
    minimums may keep a few long thin components the whole-scene mask would drop; they never
    remove a building the whole-scene mask keeps. Splitting looks at a whole blob and its
    surroundings up to :data:`SMOOTH_REACH` pixels away, so it too is the same window by
    window as scene-wide for every blob that lies that far inside the window and its halo
    (any blob up to ``halo - 2 * SMOOTH_REACH`` pixels across); a bigger blob crossing a
    window border may be cut differently on its two sides.

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
    height = _smoothed(probability)
    basins, peaks = _basins(height, mask)
    near, far = _borders(basins, mask)
    near_basin, far_basin = basins.ravel()[near], basins.ravel()[far]
    passes = _passes(near_basin, far_basin, height.ravel()[near], height.ravel()[far])
    owner = _regions(peaks, *passes, split)
    return _separated(mask, near, far, owner[near_basin], owner[far_basin])


def _smoothed(probability: np.ndarray) -> np.ndarray:
    """``probability`` as float32, smoothed by :data:`SMOOTH_SIGMA`. uint8 and float32 are
    filtered as they are (scipy reads them exactly), saving a float copy of the window."""
    if probability.dtype in (np.uint8, np.float32):
        return ndimage.gaussian_filter(probability, SMOOTH_SIGMA, output=np.float32)
    return ndimage.gaussian_filter(probability.astype(np.float32), SMOOTH_SIGMA)


STEPS = ((np.s_[1:], np.s_[:-1]), (np.s_[:-1], np.s_[1:]),
         (np.s_[:, 1:], np.s_[:, :-1]), (np.s_[:, :-1], np.s_[:, 1:]))
"""Up, down, left, right: the pixels that have such a neighbour, and that neighbour."""


def _basins(height: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mask`` cut into basins of ``height``'s peaks, by steepest ascent: every pixel
    belongs to the peak it reaches by stepping, again and again, to its highest
    4-neighbour in the mask while that is higher (the first of up, down, left, right on a
    tie). Basins are numbered from 1 in the order of their peaks' flat index, 0 outside
    ``mask``; also returns each basin's peak height (index 0 unused).

    Each pixel's step depends only on its neighbours, so a blob's basins depend only on
    the blob and the pixels it is smoothed with: chip by chip as scene-wide. Every pixel
    no neighbour of which is higher is a peak of its own, so plateaus start several
    basins; :func:`_regions` merges basins whose peaks stand less than ``split`` above
    their pass, so too many basins cost nothing but time.
    """
    rows, cols = mask.shape
    inside = np.full(mask.shape, -np.inf, np.float32)
    np.copyto(inside, height, where=mask)
    best = inside.copy()
    way = np.zeros(mask.shape, np.int8)  # 0: a peak, else 1 + index in STEPS
    for code, (here, there) in enumerate(STEPS, 1):
        higher = inside[there] > best[here]
        way[here][higher] = code
        np.maximum(best[here], inside[there], out=best[here])
    pixels = np.flatnonzero(mask)
    at = np.empty(rows * cols, np.int32)  # a mask pixel's place in ``pixels``
    at[pixels] = np.arange(pixels.size, dtype=np.int32)
    offsets = np.array([0, -cols, cols, -1, 1])
    step = at[pixels + offsets[way.ravel()[pixels]]]
    while True:  # pointer jumping: every pixel reaches its peak in log2(steps) rounds
        further = step[step]
        if np.array_equal(further, step):
            break
        step = further
    peak = step == np.arange(step.size)
    label = np.cumsum(peak, dtype=np.int32)
    basins = np.zeros(mask.shape, np.int32)
    basins[mask] = label[step]
    peaks = np.concatenate([[-np.inf], height.ravel()[pixels[peak]]]).astype(np.float32)
    return basins, peaks


def _borders(basins: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the 4-neighbour pixel pairs of ``mask`` in different basins: the
    upper or left pixel of each pair, and the other."""
    cols = basins.shape[1]
    down = (basins[:-1] != basins[1:]) & mask[:-1] & mask[1:]
    across = (basins[:, :-1] != basins[:, 1:]) & mask[:, :-1] & mask[:, 1:]
    near_down = np.flatnonzero(down)
    row, col = np.nonzero(across)
    near_across = row * cols + col
    return (np.concatenate([near_down, near_across]),
            np.concatenate([near_down + cols, near_across + 1]))


def _passes(near: np.ndarray, far: np.ndarray, near_height: np.ndarray,
            far_height: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbouring basin pairs ``(low id, high id)`` and the highest pass between each,
    from the basins and heights of the pixel pairs straddling their borders: the best of
    the lower pixel of each pair. Highest pass first, pairs in id order on a tie (the order
    :func:`_regions` merges them in)."""
    low, high = np.minimum(near, far), np.maximum(near, far)
    level = np.minimum(near_height, far_height)
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
    array operations (:func:`_merge_round`), each merging sets in the order the visit
    would, every set joining the union of the sets before it, whose top is a running
    maximum.
    """
    count = peaks.size - 1
    ids = np.arange(count + 1)
    basin_of = np.lexsort((-ids[1:], peaks[1:])) + 1  # lowest peak first, on a tie higher id
    rank = np.zeros(count + 1, np.int64)
    rank[basin_of] = ids[:-1]
    top = rank.copy()  # per set, named by one of its basins: the rank of its top basin
    joined = ids.copy()  # the basin whose region a basin belongs to (itself: a region)
    low, high = low.astype(np.int64), high.astype(np.int64)
    while level.size:
        merging, tree, link = _merge_round(count, low, high)
        starts = np.r_[True, tree[1:] != tree[:-1]]
        shift = (np.cumsum(starts) - 1) * (count + 1)  # keeps each tree's maximum its own
        running = np.maximum.accumulate(top[merging] + shift) - shift
        joining = ~starts
        own, before = top[merging][joining], running[np.flatnonzero(joining) - 1]
        winner = basin_of[np.maximum(own, before)]
        loser = basin_of[np.minimum(own, before)]
        shallow = (peaks[loser].astype(np.float64)
                   - level[link[joining]].astype(np.float64) < split)
        joined[loser[shallow]] = winner[shallow]
        ends = np.r_[starts[1:], True]
        top[tree[ends]] = running[ends]
        rename = ids.copy()
        rename[merging] = tree
        low, high = rename[low], rename[high]
        kept = low != high
        low, high, level = low[kept], high[kept], level[kept]
    while True:
        further = joined[joined]
        if np.array_equal(further, joined):
            return joined
        joined = further


def _merge_round(count: int, low: np.ndarray, high: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sets (ids up to ``count``) that the ordered passes ``low``-``high`` between them
    merge first, as Boruvka's algorithm finds them: the sets, grouped by the tree they
    merge into (named by its root) and within it in the order they join it, the tree, and
    the pass each joins by (-1 for the root).

    Each set links to the set across its first pass. Two sets linked to each other share
    that pass and are a tree's root; further down a tree, passes come later. Up to the
    first pass leading out of a tree, every pass of the visit touching a set of the tree
    joins the set to the union of those of the tree before it, so these sets merge in
    the order of their links, all trees at once.
    """
    index = np.arange(low.size)
    first = _first_passes(count, low, high, index)
    sets = np.flatnonzero(first < low.size)
    link = first[sets]
    parent = np.arange(count + 1)
    parent[sets] = np.where(low[link] == sets, high[link], low[link])
    root = sets[(parent[parent[sets]] == sets) & (sets < parent[sets])]
    parent[root] = root
    tree = parent
    while True:
        further = tree[tree]
        if np.array_equal(further, tree):
            break
        tree = further
    ends = tree[low], tree[high]
    leaving = ends[0] != ends[1]
    out = _first_passes(count, ends[0][leaving], ends[1][leaving], index[leaving])
    merging = sets[link < out[tree[sets]]]
    link = first[merging]
    link[parent[merging] == merging] = -1
    order = np.lexsort((link, tree[merging]))
    return merging[order], tree[merging][order], link[order]


def _first_passes(count: int, low: np.ndarray, high: np.ndarray, index: np.ndarray
                  ) -> np.ndarray:
    """For each set up to ``count``, the least ``index`` of the passes touching it, or
    more than any pass where none does."""
    first = np.full(count + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, low, index)
    np.minimum.at(first, high, index)
    return first


def _separated(mask: np.ndarray, near: np.ndarray, far: np.ndarray, near_region: np.ndarray,
               far_region: np.ndarray) -> np.ndarray:
    """``mask`` less, wherever two regions are 4-neighbours (pixel pairs ``near``, ``far``
    with their regions), the pixel of the higher-numbered region."""
    separated = np.array(mask, dtype=bool, order="C")
    flat = separated.ravel()
    flat[near[near_region > far_region]] = False
    flat[far[far_region > near_region]] = False
    return separated


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
    labels, _ = ndimage.label(mask, output=np.intp)  # as bincount counts: no copy
    keep = np.bincount(labels.ravel()) >= min_pixels
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    keep[edge] = True
    keep[0] = False
    return keep[labels]
