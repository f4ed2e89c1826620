"""What tasks return to the driver: a :class:`PartitionSummary` per partition.

Counts, km^2, bucket use, seconds, failures and storage retries, instead of a record per
chip; the driver adds them up into one :class:`Tally` as they arrive, so its memory does
not grow with the archive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from resflow.failures import ChipFailure, describe_error
from resflow.planning import Partition, Segment


@dataclass
class Tally:
    """What tasks wrote and spent: one partition's (a :class:`PartitionSummary`) or the
    whole run's, added up summary by summary as they arrive (:meth:`add`).

    Its size does not grow with chips: counts, a failure per failed chip, scene names.

    Attributes
    ----------
    chips, km2
        Chips mapped and written, and their ground area.
    empty_chips
        Chips without a valid pixel, stored as not mapped.
    buckets
        ``(bucket, model) -> chips`` served.
    seconds
        Task seconds per stage (keys of ``resflow.report.STAGES``).
    failures
        Chips that could not be mapped.
    lost_shards
        ``(segment, problem)`` of shards whose whole task failed, so no chip of them was
        read (their chips stay unwritten for ``--resume``).
    retries
        Reads and writes tried again after a transient storage error.
    scenes, scenes_with_data
        Scenes covered, and those where a valid pixel was found.
    """

    chips: int = 0
    km2: float = 0.0
    empty_chips: int = 0
    buckets: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: list[ChipFailure] = field(default_factory=list)
    lost_shards: list[tuple[Segment, str]] = field(default_factory=list)
    retries: int = 0
    scenes: set[str] = field(default_factory=set)
    scenes_with_data: set[str] = field(default_factory=set)

    def add(self, other: Tally) -> None:
        """Fold in another tally (a partition's summary)."""
        self.chips += other.chips
        self.km2 += other.km2
        self.empty_chips += other.empty_chips
        self.retries += other.retries
        self.buckets.update(other.buckets)
        for key, value in other.seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + value
        self.failures.extend(other.failures)
        self.lost_shards.extend(other.lost_shards)
        self.scenes |= other.scenes
        self.scenes_with_data |= other.scenes_with_data

    @property
    def complete(self) -> bool:
        """Whether every planned chip was written (failures leave the ledger short)."""
        return not self.failures and not self.lost_shards


@dataclass
class PartitionSummary(Tally):
    """One partition's :class:`Tally`: the only thing a task returns to the driver."""

    #: the partition's index in the plan
    partition: int = -1


def failed_partition(partition: Partition, stage: str, exc: Exception) -> PartitionSummary:
    """A partition whose task failed outside any one chip: its shards are reported lost
    (the archive itself may be what failed, so chips are not expanded)."""
    summary = PartitionSummary(partition=partition.index)
    problem = f"{stage}: the partition's task failed ({describe_error(exc)})"
    for segment in partition.segments:
        summary.scenes.add(segment.scene)
        summary.lost_shards.append((segment, problem))
    return summary
