"""The one building-mask rule (:class:`resflow.store.mask_rule.MaskRule`): on the stored
scale it is :func:`resflow.masks.building_mask` bit for bit, however the caller holds the
threshold (computed here, or on the device as the run does) and however the edges are
mirrored (all four for a whole scene, some for an export window)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from resflow.masks import building_mask
from resflow.store.format import NOT_MAPPED, PROBABILITY_SCALE, Encoding, quantise
from resflow.store.mask_rule import MaskRule


def stored_scene(seed: int, shape: tuple[int, int] = (90, 120)) -> np.ndarray:
    """Smooth blobs of probability, quantised as the store keeps them, with a strip not
    mapped."""
    rng = np.random.default_rng(seed)
    probability = ndimage.gaussian_filter(rng.random(shape), 3.0)
    probability = (probability - probability.min()) / np.ptp(probability)
    stored = quantise(probability)
    stored[:, :7] = NOT_MAPPED
    return stored


def reference(stored: np.ndarray, rule: MaskRule, reflect: int) -> np.ndarray:
    """The rule written out with :func:`resflow.masks.building_mask` on the 0..254 scale."""
    mapped = np.where(stored == NOT_MAPPED, 0, stored)
    return building_mask(mapped, rule.threshold * PROBABILITY_SCALE, rule.min_pixels,
                         reflect=reflect, split=rule.split * PROBABILITY_SCALE)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("split", [0.0, 0.05])
def test_apply_is_the_masks_rule_on_the_stored_scale(seed: int, split: float) -> None:
    stored = stored_scene(seed)
    rule = MaskRule(0.55, min_pixels=12, halo=8, split=split)
    got = rule.apply(stored, reflect=rule.halo)
    assert got.dtype == bool and got.shape == stored.shape
    assert np.array_equal(got, reference(stored, rule, rule.halo))
    assert got.any() and not got[:, :7].any()  # buildings found, none where not mapped


def test_a_threshold_made_on_the_device_gives_the_same_mask() -> None:
    """The run thresholds on the device (``stored > floor(t x 254)``) and passes ``above``."""
    stored = stored_scene(7)
    rule = MaskRule(0.5, min_pixels=9, split=0.05)
    above = (stored > np.floor(rule.threshold * PROBABILITY_SCALE)) & (stored != NOT_MAPPED)
    assert np.array_equal(rule.apply(stored, above=above), rule.apply(stored))


def test_mirroring_some_edges_is_mirroring_all_then_cutting() -> None:
    """An export window at the scene's top-left corner mirrors only the edges it shares."""
    stored = stored_scene(3)
    rule = MaskRule(0.5, min_pixels=6, halo=5)
    whole = rule.apply(stored, reflect=rule.halo)
    corner = rule.apply(stored[:60, :80], reflect=((rule.halo, 0), (rule.halo, 0)))
    assert whole[:40, :60].any() and np.array_equal(corner[:40, :60], whole[:40, :60])


def test_another_encoding_is_read_at_its_own_scale() -> None:
    """A store written at 0..255 with no nodata: 255 is probability 1, not 'not mapped'."""
    encoding = Encoding(scale=1 / 255, levels=255, nodata=None)
    stored = np.full((5, 5), 255, np.uint8)
    stored[0] = 100
    got = MaskRule(0.5).apply(stored, encoding=encoding)
    assert got[1:].all() and not got[0].any()


def test_the_store_mask_rule_has_nothing_to_apply() -> None:
    with pytest.raises(ValueError, match="store's mask"):
        MaskRule().apply(stored_scene(0))
