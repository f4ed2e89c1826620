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
