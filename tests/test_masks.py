"""Building masks: threshold, split touching roofs, drop specks, and the same answer chip by
chip as scene-wide."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from resflow.chips import chip_grid, halo_indices
from resflow.masks import SMOOTH_REACH, building_mask, min_pixels, split_touching


def test_specks_go_edges_and_buildings_stay() -> None:
    p = np.zeros((10, 10), np.uint8)
    p[4, 4] = 200                      # a one-pixel speck: dropped
    p[1:4, 6:9] = 200                  # 9 pixels: kept at min 9
    p[8:10, 0] = 200                   # 2 pixels touching the edge: may go on beyond, kept
    p[6, 6] = 120                      # below the threshold
    mask = building_mask(p, 127.5, 9)
    assert mask.sum() == 9 + 2 and not mask[4, 4] and mask[9, 0]
    assert (building_mask(p, 127.5, 0) == (p > 127.5)).all()


def test_min_pixels_follow_ground_resolution() -> None:
    assert min_pixels(8, 0.5) == 32 and min_pixels(8, 0.3) == 89 and min_pixels(0, 0.3) == 0


def roofs(*, dip: float, seed: int = 0) -> np.ndarray:
    """Two 12 x 12 roofs of probability about 0.9 sharing a wall, whose pixels dip by
    ``dip``, with noise of +-0.02 on every pixel, on a background of 0.05."""
    p = np.full((30, 40), 0.05)
    p[8:20, 6:31] = 0.9
    p[8:20, 18] = 0.9 - dip
    return p + np.random.default_rng(seed).uniform(-0.02, 0.02, p.shape)


def blobs(mask: np.ndarray) -> int:
    return ndimage.label(mask)[1]


def test_touching_roofs_are_split_where_the_probability_dips() -> None:
    wall = roofs(dip=0.3)
    assert blobs(wall > 0.5) == 1                                   # one blob above 0.5
    split = building_mask(wall, 0.5, 9, split=0.05)
    assert blobs(split) == 2 and split.sum() >= 2 * 12 * 12 - 12    # cut along the wall
    assert blobs(building_mask(wall, 0.5, 9, split=0.0)) == 1       # 0: kept whole
    assert blobs(building_mask(wall, 0.5, 9, split=0.4)) == 1       # dip too shallow


@pytest.mark.parametrize("seed", range(5))
def test_one_noisy_roof_stays_one_building(seed: int) -> None:
    assert blobs(building_mask(roofs(dip=0.0, seed=seed), 0.5, 9, split=0.05)) == 1


def test_splitting_only_removes_pixels_and_every_blob_keeps_some() -> None:
    scene = smooth_field(seed=1)
    above = scene > 0.6
    split = split_touching(scene, above, 0.05)
    labels, count = ndimage.label(above)
    assert not (split & ~above).any()
    assert blobs(split) > count                                     # the field has splits
    assert (np.bincount(labels[split], minlength=count + 1)[1:] > 0).all()


def smooth_field(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scene = ndimage.gaussian_filter(rng.random((300, 260)), 2.5)
    return (scene - scene.min()) / (scene.max() - scene.min())


@pytest.mark.parametrize("split", [0.0, 0.05])
@pytest.mark.parametrize("smallest", [1, 12, 33])
def test_masking_chips_with_their_halo_equals_masking_the_scene(smallest: int,
                                                                 split: float) -> None:
    """Chips read with a reflected halo, masked, then trimmed, tile into the scene-wide mask
    (reflected the same way), seams and scene edges included, whenever the minimum is at
    most the halo plus one. Split roofs are cut the same way in every blob small enough to
    lie, with what it is smoothed with, inside each chip's halo."""
    scene = smooth_field()
    threshold, chip, halo = 0.6, 64, 32
    whole = building_mask(scene, threshold, smallest, reflect=halo, split=split)
    specks = np.bincount(ndimage.label(scene > threshold)[0].ravel())[1:]
    assert (specks < smallest).any() or smallest == 1  # the test has specks to drop
    tiled = np.zeros_like(whole)
    for _, _, y0, x0, h, w in chip_grid(*scene.shape, chip):
        rows = halo_indices(y0, chip, halo, scene.shape[0])
        cols = halo_indices(x0, chip, halo, scene.shape[1])
        mask = building_mask(scene[np.ix_(rows, cols)], threshold, smallest, split=split)
        tiled[y0:y0 + h, x0:x0 + w] = mask[halo:halo + h, halo:halo + w]
    if not split:
        assert (tiled == whole).all()
        return
    labels, _ = ndimage.label(np.pad(scene, halo, mode="symmetric") > threshold)
    labels = labels[halo:-halo, halo:-halo]
    small = [i + 1 for i, box in enumerate(ndimage.find_objects(labels))
             if box and max(s.stop - s.start for s in box) <= halo - 2 * SMOOTH_REACH]
    inside = np.isin(labels, small)
    assert inside.sum() > 0.5 * (labels > 0).sum()      # most blobs are small enough
    assert (tiled[inside] == whole[inside]).all()
    assert (tiled != building_mask(scene, threshold, smallest, reflect=halo)).any()


# A reference written for reading, not speed: the guarantees of resflow.masks spelt out
# pixel by pixel in plain Python, on arrays small enough for it.

Pixel = tuple[int, int]
STEPS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right: the first wins a tie


def neighbours(pixel: Pixel, inside: set[Pixel]) -> list[Pixel]:
    y, x = pixel
    return [(y + dy, x + dx) for dy, dx in STEPS if (y + dy, x + dx) in inside]


def reference_split(probability: np.ndarray, mask: np.ndarray, split: float) -> np.ndarray:
    """Steepest ascent to a peak per pixel, passes between basins, union-find from the
    highest pass down (the lower peak's set joins, a region only if its dynamic reaches
    ``split``), then the higher region's pixel removed wherever two regions touch."""
    if split <= 0 or not mask.any():
        return mask
    height = ndimage.gaussian_filter(probability.astype(np.float32), 1.0).tolist()
    inside = {(int(y), int(x)) for y, x in zip(*np.nonzero(mask), strict=True)}
    up: dict[Pixel, Pixel] = {}
    for p in inside:  # the first neighbour of the highest ones, if above the pixel
        best = max([height[q[0]][q[1]] for q in neighbours(p, inside)], default=-np.inf)
        if best > height[p[0]][p[1]]:
            up[p] = next(q for q in neighbours(p, inside) if height[q[0]][q[1]] == best)
        else:
            up[p] = p

    def peak_of(p: Pixel) -> Pixel:
        while up[p] != p:
            p = up[p]
        return p

    peaks = sorted({peak_of(p) for p in inside})
    basin = {p: peaks.index(peak_of(p)) + 1 for p in inside}
    top = {basin[p]: height[p[0]][p[1]] for p in peaks}
    passes: dict[tuple[int, int], float] = {}
    for p in inside:
        for q in neighbours(p, inside):
            if basin[p] != basin[q]:
                pair = (min(basin[p], basin[q]), max(basin[p], basin[q]))
                level = min(height[p[0]][p[1]], height[q[0]][q[1]])
                passes[pair] = max(passes.get(pair, -np.inf), level)
    parent = {b: b for b in top}
    joined = {b: b for b in top}

    def root(b: int) -> int:
        while parent[b] != b:
            b = parent[b]
        return b

    for (low, high), level in sorted(passes.items(), key=lambda item: (-item[1], item[0])):
        a, b = root(low), root(high)
        if a == b:
            continue
        if (top[a], -a) < (top[b], -b):
            a, b = b, a
        parent[b] = a
        if top[b] - level < split:
            joined[b] = a

    def region(p: Pixel) -> int:
        b = basin[p]
        while joined[b] != b:
            b = joined[b]
        return b

    out = mask.copy()
    for p in inside:
        for q in neighbours(p, inside):
            if region(p) > region(q):
                out[p] = False
    return out


def reference_keep(mask: np.ndarray, smallest: int) -> np.ndarray:
    """Flood fill each 4-connected component; drop it if smaller than ``smallest`` and
    away from the edge."""
    rows, cols = mask.shape
    inside = {(int(y), int(x)) for y, x in zip(*np.nonzero(mask), strict=True)}
    out, seen = mask.copy(), set()
    for start in inside:
        if start in seen:
            continue
        component, todo = [], [start]
        seen.add(start)
        while todo:
            p = todo.pop()
            component.append(p)
            for q in neighbours(p, inside):
                if q not in seen:
                    seen.add(q)
                    todo.append(q)
        edge = any(y in (0, rows - 1) or x in (0, cols - 1) for y, x in component)
        if smallest > 1 and len(component) < smallest and not edge:
            for p in component:
                out[p] = False
    return out


def reference_mask(probability: np.ndarray, threshold: float, smallest: int, reflect: int,
                   split: float) -> np.ndarray:
    padded = np.pad(probability, reflect, mode="symmetric")
    mask = reference_keep(reference_split(padded, padded > threshold, split), smallest)
    return mask[reflect:mask.shape[0] - reflect, reflect:mask.shape[1] - reflect]


def random_probability(rng: np.random.Generator) -> np.ndarray:
    """Small probability maps of every kind the masks meet: few levels (plateaus and ties
    everywhere), blocks, smooth fields, noise, and constants; uint8 or float."""
    rows, cols = (int(n) for n in rng.integers(1, 20, 2))
    kind = int(rng.integers(5))
    if kind == 0:
        return (rng.integers(0, rng.integers(2, 5), (rows, cols)) * 80).astype(np.uint8)
    if kind == 1:
        blocks = rng.integers(0, 4, (rows // 3 + 1, cols // 3 + 1)) * 80
        return blocks.repeat(3, 0).repeat(3, 1)[:rows, :cols].astype(np.uint8)
    if kind == 2:
        field = ndimage.gaussian_filter(rng.random((rows, cols)), rng.uniform(0.5, 2.5))
        return (254 * (field - field.min()) / (np.ptp(field) or 1)).astype(np.uint8)
    if kind == 3:
        return rng.random((rows, cols))
    return np.full((rows, cols), rng.choice([0.0, 0.6, 1.0]))


@pytest.mark.parametrize("seed", range(400))
def test_masks_equal_the_plain_reference(seed: int) -> None:
    """Touching roofs split, specks dropped and edges reflected exactly as the pixel by pixel
    reference does, on maps full of plateaus and ties, empty and full masks included."""
    rng = np.random.default_rng(seed)
    probability = random_probability(rng)
    scale = 254 if probability.dtype == np.uint8 else 1.0
    threshold = float(rng.choice([-1.0, 0.2, 0.5, 0.7, 1.1])) * scale
    split = float(rng.choice([0.0, 1e-6, 0.02, 0.1, 0.3])) * scale
    smallest, reflect = int(rng.choice([0, 1, 3, 12])), int(rng.choice([0, 1, 4]))
    expected = reference_mask(probability, threshold, smallest, reflect, split)
    assert np.array_equal(building_mask(probability, threshold, smallest, reflect, split),
                          expected)
    mask = rng.random(probability.shape) < rng.uniform(0.3, 1.0)  # not only thresholds
    assert np.array_equal(split_touching(probability, mask, split),
                          reference_split(probability, mask, split))
