"""Partition planning: every chip once, in archive order, partitions shrinking to the end."""

from __future__ import annotations

import pytest

from resflow.graph import MIN_PARTITION_CHIPS, PARTITIONS_PER_SLOT, partition_sizes


@pytest.mark.parametrize(("chips", "cap", "slots"),
                         [(0, 16, 2), (1, 16, 2), (16, 16, 2), (120, 16, 2), (1000, 16, 8),
                          (37, 3, 1), (5, 1, 4)])
def test_sizes_cover_every_chip_and_shrink_towards_the_end(chips: int, cap: int,
                                                           slots: int) -> None:
    sizes = partition_sizes(chips, cap, slots)
    assert sum(sizes) == chips
    assert all(0 < s <= cap for s in sizes)
    assert sizes == sorted(sizes, reverse=True)
    assert all(s >= min(MIN_PARTITION_CHIPS, cap) for s in sizes[:-1])


def test_no_partition_outweighs_a_slots_share_of_what_is_left() -> None:
    sizes = partition_sizes(120, 16, slots=2)
    left = 120
    for size in sizes:
        assert size <= max(MIN_PARTITION_CHIPS, -(-left // (PARTITIONS_PER_SLOT * 2)))
        left -= size
    assert sizes[0] == 16 and sizes[-1] <= MIN_PARTITION_CHIPS
