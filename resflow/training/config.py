"""The settings of a training run, apart from the code that trains (and imports torch), so
that ``resflow train --print-config`` and config validation stay fast."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from resflow.config import MIN_BUILDING_M2, SPLIT_DIP
from resflow.errors import InputError
from resflow.training.regions import DEFAULT_FRACTIONS
from resflow.windows import WINDOW_CHIPS, WINDOW_HALO

BucketRule = Literal["validation", "nested"]
BUCKET_RULES = typing.get_args(BucketRule)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; recorded in the manifest.

    ``buckets`` None means chosen by silhouette (:mod:`resflow.training.buckets`).
    ``patience`` is the number of validation checks without improvement after which a
    decoder stops early. ``min_bucket_chips`` is the fewest train chips a bucket needs for
    a decoder of its own to be tried. ``halo`` is the context around a chip when its
    features are computed for bucket fitting; test chips are scored as runs map them, a
    ``window`` of chips at a time with ``window_halo`` pixels of context
    (:mod:`resflow.windows`). ``context`` is the imagery around each chip the encoder
    sees while decoders train (the loss scores the chip only): a prediction window has
    real imagery around nearly every chip, so features of bare chips, padded with zeros a
    few pixels away, would teach the decoders inputs that runs never give them; a multiple
    of 32 (the encoder's deepest stride). ``augment`` encodes each train chip in its eight flips and
    rotations, each also radiometrically jittered
    (:func:`resflow.training.segmentation.encode_training`); off, each chip is encoded once
    as read: 16 times less encoding, for quick trial runs, with models that transfer worse.
    ``bucket_rule`` decides whether a bucket keeps its own decoder: ``validation`` if it
    beats mono on the bucket's validation chips, which come from the places it trained on;
    ``nested`` if it beats mono on places it did not train on, by a leave-one-place-out
    inside the training places (:mod:`resflow.training.nested`).
    """

    seed: int = 0
    buckets: int | None = None
    bits: int = 16
    hidden: int = 128
    hash_steps: int = 300
    mono_steps: int = 600
    bucket_steps: int = 200
    batch: int = 8
    lr: float = 2e-3
    bucket_lr: float = 5e-4
    eval_every: int = 25
    patience: int = 6
    min_bucket_chips: int = 8
    halo: int = 32
    context: int = 64
    window: int = WINDOW_CHIPS
    window_halo: int = WINDOW_HALO
    threshold: float = 0.5
    min_building_m2: float = MIN_BUILDING_M2
    gap_weight: float = 10.0
    gap_sigma_m: float = 1.0
    split_dip: float = SPLIT_DIP
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    augment: bool = True
    bucket_rule: BucketRule = "validation"

    def __post_init__(self) -> None:
        if self.bucket_rule not in BUCKET_RULES:
            raise InputError("bucket_rule", f"{self.bucket_rule!r} is not a bucket rule",
                             f"use one of {list(BUCKET_RULES)}")
        if self.context < 0 or self.context % 32:
            raise InputError("context", f"{self.context} pixels is not a multiple of 32, the "
                             "encoder's deepest stride", "use 0, 32, 64 or another multiple")


@functools.cache
def training_settings() -> type[BaseModel]:
    """The settings model of ``resflow train`` and ``resflow.train``: the fields of
    :class:`TrainConfig` (a dataclass, the one definition), validated by pydantic like every
    other config, unknown keys refused."""
    hints = typing.get_type_hints(TrainConfig)
    fields: dict[str, Any] = {
        f.name: (hints[f.name], f.default if f.default is not dataclasses.MISSING
                 else Field(default_factory=f.default_factory))
        for f in dataclasses.fields(TrainConfig)}
    return create_model("TrainSettings", __config__=ConfigDict(extra="forbid", frozen=True),
                        __doc__=TrainConfig.__doc__, **fields)
