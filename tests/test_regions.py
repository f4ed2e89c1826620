"""Regions are contiguous bands of whole chip rows, disjoint and complete."""

import pytest

from resflow.chips import ChipRef, chip_grid
from resflow.training.regions import region_rows, split_regions


def _scene(name, height, width, chip=256):
    return [ChipRef(name, r, c, y0, x0, h, w, chip, 0.1, 1.0)
            for r, c, y0, x0, h, w in chip_grid(height, width, chip)]


def test_atlanta_sized_scene_splits_by_rows():
    chips = _scene("atlanta", 900, 900)
    regions = split_regions(chips)
    assert {k: sorted({c.row for c in v}) for k, v in regions.items()} == {
        "train": [0, 1], "validation": [2], "test": [3]}
    assert sum(len(v) for v in regions.values()) == len(chips)
    assert region_rows(regions["test"]) == {"atlanta": (768, 900)}


def test_regions_never_share_a_chip_row_and_are_contiguous():
    chips = _scene("a", 2048, 512, chip=128) + _scene("b", 640, 300, chip=128)
    regions = split_regions(chips)
    for scene in ("a", "b"):
        rows = {k: {c.row for c in v if c.scene == scene} for k, v in regions.items()}
        assert not (rows["train"] & rows["validation"] or rows["train"] & rows["test"]
                    or rows["validation"] & rows["test"])
        for r in rows.values():
            assert r == set(range(min(r), max(r) + 1))
        assert max(rows["train"]) < min(rows["validation"]) < min(rows["test"])


def test_the_split_does_not_depend_on_input_order():
    chips = _scene("a", 1000, 700)
    assert split_regions(chips) == split_regions(chips[::-1])


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="summing to 1"):
        split_regions(_scene("a", 512, 512), fractions=(0.5, 0.5, 0.5))
