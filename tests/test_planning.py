"""Partition planning: every shard once, in archive order, partitions shrinking to the end,
a few numbers per partition rather than a record per chip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from resflow.archive import Archive
from resflow.archive_layout import SceneInfo
from resflow.planning import (
    MIN_PARTITION_CHIPS,
    PARTITIONS_PER_SLOT,
    Segment,
    partition_sizes,
    plan,
    shard_size,
    shards_of,
)


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


@pytest.fixture(scope="module")
def scenes(sample_archive: Path) -> dict[str, SceneInfo]:
    """The two mapped sample scenes plus copies, so partitions cross scene boundaries."""
    real = Archive.open(sample_archive).scenes
    extra = {f"copy{i}_{name}": replace(info, name=f"copy{i}_{name}")
             for i in range(3) for name, info in real.items()}
    return {**real, **extra}


@pytest.mark.parametrize(("shard", "cap", "slots"), [(1, 16, 2), (2, 16, 2), (4, 16, 4),
                                                      (2, 3, 1), (3, 64, 2)])
def test_every_shard_is_planned_once_in_archive_order(scenes, shard: int, cap: int,
                                                      slots: int) -> None:
    partitions = plan(scenes, shard_chips=shard, partition_chips=cap, slots=slots)
    planned = [s for p in partitions for s in p.shards()]
    assert planned == [(name, i) for name in sorted(scenes)
                       for i in range(shards_of(scenes[name], shard))]
    assert [p.index for p in partitions] == list(range(len(partitions)))
    for p in partitions:
        assert p.chips == sum(shard_size(scenes[s], i, shard) for s, i in p.shards())
        # a partition exceeds the cap only when a single shard does
        assert p.chips <= cap or len(list(p.shards())) == 1
    sizes = [p.chips for p in partitions]
    assert sizes[-1] <= sizes[0]


def test_partitions_are_runs_of_shards_not_lists_of_chips(scenes) -> None:
    partitions = plan(scenes, shard_chips=2, partition_chips=64, slots=1)
    for p in partitions:
        assert len(p.segments) <= len({s for s, _ in p.shards()})  # one run per scene
        assert all(isinstance(seg, Segment) and seg.stop > seg.start for seg in p.segments)


def test_resume_plans_only_the_shards_not_done(scenes) -> None:
    done = {"ms1": {0, 2, 3}, "sample_geotiff": set(range(shards_of(scenes["sample_geotiff"],
                                                                     2)))}
    partitions = plan(scenes, shard_chips=2, partition_chips=8, slots=2,
                      done=lambda scene: done.get(scene, set()))
    planned = {s for p in partitions for s in p.shards()}
    assert not any(scene == "sample_geotiff" for scene, _ in planned)
    assert {i for scene, i in planned if scene == "ms1"} == \
        set(range(shards_of(scenes["ms1"], 2))) - done["ms1"]
