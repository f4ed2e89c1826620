"""Building masks: threshold, drop specks, and the same answer chip by chip as scene-wide."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from resflow.chips import chip_grid, halo_indices
from resflow.masks import building_mask, min_pixels


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


@pytest.mark.parametrize("smallest", [1, 12, 33])
def test_masking_chips_with_their_halo_equals_masking_the_scene(smallest: int) -> None:
    """Chips read with a reflected halo, masked, then trimmed, tile into the scene-wide mask
    (reflected the same way), seams and scene edges included, whenever the minimum is at
    most the halo plus one."""
    rng = np.random.default_rng(0)
    scene = ndimage.gaussian_filter(rng.random((300, 260)), 2.5)
    scene = (scene - scene.min()) / (scene.max() - scene.min())
    threshold, chip, halo = 0.6, 64, 32
    whole = building_mask(scene, threshold, smallest, reflect=halo)
    specks = np.bincount(ndimage.label(scene > threshold)[0].ravel())[1:]
    assert (specks < smallest).any() or smallest == 1  # the test has specks to drop
    tiled = np.zeros_like(whole)
    for _, _, y0, x0, h, w in chip_grid(*scene.shape, chip):
        rows = halo_indices(y0, chip, halo, scene.shape[0])
        cols = halo_indices(x0, chip, halo, scene.shape[1])
        mask = building_mask(scene[np.ix_(rows, cols)], threshold, smallest)
        tiled[y0:y0 + h, x0:x0 + w] = mask[halo:halo + h, halo:halo + w]
    assert (tiled == whole).all()
