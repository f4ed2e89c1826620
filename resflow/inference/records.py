"""The records the regrouped plan passes between its stages, one per chip or partition.

Stage 1 turns a partition into :class:`Features` (and a :class:`Planned` for the partition
itself), stage 2 into :class:`Routed`, stage 3 into :class:`Segmented`; failures travel as
:class:`~resflow.failures.ChipFailure` and storage retries as :class:`StorageRetries`, all
back to the task that writes the partition (``origin``). All are picklable; only
:class:`Segmented` carries pixels (a chip's quantised maps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resflow.chips import ChipRef
from resflow.planning import Partition


@dataclass(frozen=True)
class Features:
    """Stage 1 output: one chip and its window's embedding (regrouped plan)."""

    ref: ChipRef
    features: np.ndarray
    seconds: dict[str, float]
    origin: int


@dataclass(frozen=True)
class Routed:
    """Stage 2 output: a chip reference and the bucket whose model will segment it."""

    ref: ChipRef
    bucket: int
    seconds: dict[str, float]
    origin: int
    #: which stage-3 partition of its bucket it goes to, so a big bucket spreads out
    split: int = 0


@dataclass(frozen=True)
class Segmented:
    """Stage 3 output of the regrouped plan: a chip's quantised maps, on their way back to
    the task that writes its shard."""

    ref: ChipRef
    bucket: int
    probability: np.ndarray
    mask: np.ndarray
    seconds: dict[str, float]
    origin: int


@dataclass(frozen=True)
class StorageRetries:
    """Retries a regrouped-plan task made, on their way to the write stage's summary."""

    origin: int
    count: int


@dataclass(frozen=True)
class Planned:
    """The partition itself, travelling with its chips so the write stage knows every
    shard it must write, including shards whose chips all failed or hold no data."""

    partition: Partition

    @property
    def origin(self) -> int:
        return self.partition.index
