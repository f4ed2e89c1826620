"""Planning, on the driver: the archive's shards cut into partitions, scene by scene.

The unit of work is an output *shard* (:func:`resflow.chips.shard_grid`): ``shard_chips x
shard_chips`` chips that one task reads, maps and writes as one object per output array. A
partition is a few runs of consecutive shards (:class:`Segment`), so what the driver plans
and ships is a few numbers per partition, never a reference per chip: a worker expands its
partition into chip references itself (:meth:`resflow.archive.Archive.shard_chips`).

Planning needs only scene sizes (already in memory once the archive is open) and, to
resume, each scene's ledger, read one scene at a time; its memory is the list of
partitions, about ``chips / partition_chips`` small records, and its time is linear in
shards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resflow.chips import grid_shape, shard_chip_window, shard_grid

if TYPE_CHECKING:
    from resflow.archive_layout import SceneInfo

#: A partition holds at most ``1 / (PARTITIONS_PER_SLOT x slots)`` of the chips still to
#: plan, so partitions shrink towards the end of a run and every slot finishes at about the
#: same time. Measured on 2 cores (benchmarks/README.md): 2 beat equal partitions on the x8
#: archive (local 0.83 -> 0.90 of the limit, Dask 0.90 -> 0.93, Spark level) where 4 made
#: too many small tasks for Spark's per-task cost (about 30 ms of wall time each).
PARTITIONS_PER_SLOT = 2
#: The smallest partition planned while more chips remain: smaller ones pay a task's fixed
#: costs (dispatch, a read and a write per array) for too little model work.
MIN_PARTITION_CHIPS = 2
#: Input partitions whose chips one regroup block mixes in the ``regrouped`` plan: a
#: stage-3 task gathers from at most this many stage-2 tasks, whatever the archive's size.
FAN_IN = 16


@dataclass(frozen=True, slots=True)
class Segment:
    """Shards ``start..stop-1`` (row-major on the scene's shard grid) of one scene."""

    scene: str
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class Partition:
    """One task's work: runs of whole shards, and how many chips they hold.

    Attributes
    ----------
    index
        Position in the plan (the engine's partition number).
    segments
        The shards, as runs per scene.
    chips
        Chips in those shards (with or without valid pixels).
    """

    index: int
    segments: tuple[Segment, ...]
    chips: int

    def shards(self) -> Iterator[tuple[str, int]]:
        """``(scene, shard)`` of every shard, in plan order."""
        for segment in self.segments:
            for shard in range(segment.start, segment.stop):
                yield segment.scene, shard


def shard_size(info: SceneInfo, shard: int, shard_chips: int) -> int:
    """Chips in one shard of a scene (edge shards hold fewer)."""
    r0, r1, c0, c1 = shard_chip_window(shard, info.height, info.width, info.chip, shard_chips)
    return (r1 - r0) * (c1 - c0)


def shards_of(info: SceneInfo, shard_chips: int) -> int:
    """Shards on a scene's shard grid."""
    rows, cols = shard_grid(info.height, info.width, info.chip, shard_chips)
    return rows * cols


def shard_edge(partition_chips: int, window: int = 1) -> int:
    """The shard edge in chips for a new output: the largest square shard that fits in one
    partition, in whole prediction windows (:mod:`resflow.windows`), so a task predicts
    each window of its chips once and no other task needs it. The window wins where it is
    larger than a partition.

    >>> shard_edge(16), shard_edge(8), shard_edge(1), shard_edge(8, window=4)
    (4, 2, 1, 4)
    >>> shard_edge(64, window=4), shard_edge(36, window=4)
    (8, 4)
    """
    return max(window, math.isqrt(partition_chips) // window * window)


def plan(scenes: Mapping[str, SceneInfo], *, shard_chips: int, partition_chips: int,
         slots: int = 1, done: Callable[[str], set[int]] | None = None) -> list[Partition]:
    """Partitions of whole shards covering every scene, sizes shrinking towards the end.

    Parameters
    ----------
    scenes
        The archive's scenes to map, by name (planned in name order).
    shard_chips
        Shard edge in chips, as the output store records it.
    partition_chips
        The most chips a partition holds (the user's setting); a partition holds at least
        one shard even if that is more.
    slots
        Tasks the engine runs at once (workers x threads).
    done
        ``done(scene)`` -> shards already written (``--resume``), read one scene at a time.
    """
    names = sorted(scenes)
    finished = {name: done(name) for name in names} if done else {}
    total = sum(_todo_chips(scenes[name], shard_chips, finished.get(name, set()))
                for name in names)
    return list(_partitions(((name, scenes[name]) for name in names), shard_chips,
                            partition_chips, slots, total, finished))


def _todo_chips(info: SceneInfo, shard_chips: int, finished: set[int]) -> int:
    rows, cols = grid_shape(info.height, info.width, info.chip)
    return rows * cols - sum(shard_size(info, s, shard_chips) for s in finished)


def _partitions(scenes: Iterable[tuple[str, SceneInfo]], shard_chips: int,
                partition_chips: int, slots: int, total: int,
                finished: dict[str, set[int]]) -> Iterator[Partition]:
    left, index = total, 0
    target = next_size(left, partition_chips, slots)
    segments: list[Segment] = []
    chips = 0
    for name, info in scenes:
        skip = finished.get(name, set())
        for shard in range(shards_of(info, shard_chips)):
            if shard in skip:
                continue
            size = shard_size(info, shard, shard_chips)
            if chips and chips + size > target:
                yield Partition(index, tuple(segments), chips)
                index, left = index + 1, left - chips
                target = next_size(left, partition_chips, slots)
                segments, chips = [], 0
            if segments and segments[-1].scene == name and segments[-1].stop == shard:
                segments[-1] = Segment(name, segments[-1].start, shard + 1)
            else:
                segments.append(Segment(name, shard, shard + 1))
            chips += size
    if chips:
        yield Partition(index, tuple(segments), chips)


def next_size(chips_left: int, partition_chips: int, slots: int) -> int:
    """The next partition's size in chips: at most ``1 / (PARTITIONS_PER_SLOT x slots)`` of
    the chips left, capped at ``partition_chips`` and floored at :data:`MIN_PARTITION_CHIPS`.

    Equal partitions leave every slot but one idle while the last of them runs (up to a whole
    partition's time); shrinking ones end within a small partition of each other, at the
    cost of a few more tasks.
    """
    floor = min(MIN_PARTITION_CHIPS, max(1, partition_chips))
    share = math.ceil(chips_left / (PARTITIONS_PER_SLOT * max(1, slots)))
    return min(max(chips_left, 1), max(floor, min(partition_chips, share)))


def partition_sizes(chips: int, partition_chips: int, slots: int) -> list[int]:
    """Chips per partition when shards are single chips: :func:`next_size` in sequence.

    >>> partition_sizes(16, 16, slots=2)
    [4, 3, 3, 2, 2, 2]
    >>> partition_sizes(120, 16, slots=2)
    [16, 16, 16, 16, 14, 11, 8, 6, 5, 3, 3, 2, 2, 2]
    """
    sizes, left = [], chips
    while left > 0:
        size = next_size(left, partition_chips, slots)
        sizes.append(size)
        left -= size
    return sizes


def task_slots(description: dict[str, Any]) -> int:
    """Tasks an engine runs at once, from its :meth:`~resflow.executor.Executor.describe`."""
    threads = description.get("threads_per_worker", 1)
    threads = max(threads) if isinstance(threads, list) and threads else int(threads or 1)
    return max(1, int(description.get("workers", 1)) * threads)


def regroup_blocks(partitions: int) -> int:
    """Blocks of at most :data:`FAN_IN` input partitions for the ``regrouped`` plan."""
    return max(1, -(-partitions // FAN_IN))


def bucket_splits(block_chips: int, n_buckets: int, partition_chips: int) -> int:
    """Stage-3 partitions per bucket within one block, so that they hold about
    ``partition_chips`` chips even when every chip falls in one bucket."""
    return max(1, math.ceil(block_chips / max(1, n_buckets * partition_chips)))
