"""Nested bucket decisions: each training place held out in turn decides whether a bucket
keeps its own decoder (:mod:`resflow.training.nested`), on encoder maps made up so that one
bucket's roofs look the opposite of everyone else's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resflow.errors import InputError
from resflow.models.efficientnet import FEATURE_CHANNELS, FEATURE_STRIDES
from resflow.training.config import TrainConfig
from resflow.training.nested import nested_decisions
from resflow.training.segmentation import Encoded

SIZE = 32
SETTINGS = TrainConfig(mono_steps=25, bucket_steps=25, batch=4, lr=0.01, bucket_lr=0.01,
                       eval_every=10, patience=0, min_bucket_chips=2)


def encoded(buckets: np.ndarray, seed: int) -> Encoded:
    """Chips whose first map channel says 'roof' (bucket 0) or 'not roof' (bucket 1) where
    it is positive: what mono learns from the many bucket-0 chips is wrong for bucket 1."""
    generator = torch.Generator().manual_seed(seed)
    n = len(buckets)
    maps = [torch.randn(n, c, SIZE // s, SIZE // s, generator=generator)
            for c, s in zip(FEATURE_CHANNELS, FEATURE_STRIDES, strict=True)]
    signal = torch.nn.functional.interpolate(maps[0][:, :1], size=(SIZE, SIZE)) > 0
    flip = torch.as_tensor(buckets == 1)[:, None, None, None]
    target = (signal ^ flip).float()
    return Encoded([maps], target[None], torch.ones_like(target)[None], (SIZE, SIZE))


def scenario(places: list[str]) -> tuple[Encoded, Encoded, np.ndarray, np.ndarray,
                                          np.ndarray, np.ndarray]:
    """Per place 12 train and 4 validation chips; a quarter of them in bucket 1."""
    train_places = np.repeat(places, 12).astype(object)
    val_places = np.repeat(places, 4).astype(object)
    train_buckets = np.tile([0, 0, 0, 1], 3 * len(places))
    val_buckets = np.tile([0, 0, 0, 1], len(places))
    return (encoded(train_buckets, 0), encoded(val_buckets, 1), train_places, val_places,
            train_buckets, val_buckets)


def test_a_bucket_that_maps_held_out_places_better_keeps_its_decoder() -> None:
    train_set, val_set, train_places, val_places, train_buckets, val_buckets = scenario(
        ["a", "b"])
    first = nested_decisions(train_set, val_set, train_places, val_places, train_buckets,
                             val_buckets, 2, SETTINGS)
    odd = first[1]
    assert odd["keep"] and odd["own_loss"] < odd["mono_loss"], odd
    assert set(odd["places"]) == {"a", "b"}
    held = odd["places"].values()
    assert sum(p["chips"] for p in held) == 2 * 4  # 3 train + 1 validation chip per place
    pooled = sum(p["own_loss"] * p["chips"] for p in held) / sum(p["chips"] for p in held)
    assert odd["own_loss"] == pytest.approx(pooled)
    again = nested_decisions(train_set, val_set, train_places, val_places, train_buckets,
                             val_buckets, 2, SETTINGS)
    assert again == first  # seeded: the same decisions and losses


def test_with_one_training_place_nothing_is_held_out_and_mono_serves() -> None:
    train_set, val_set, train_places, val_places, train_buckets, val_buckets = scenario(["a"])
    decisions = nested_decisions(train_set, val_set, train_places, val_places, train_buckets,
                                 val_buckets, 2, SETTINGS)
    assert [d["keep"] for d in decisions] == [False, False]
    assert all("nothing to hold out" in d["reason"] for d in decisions)


def test_an_unknown_bucket_rule_is_refused() -> None:
    with pytest.raises(InputError, match="'by-vote' is not a bucket rule"):
        TrainConfig(bucket_rule="by-vote")
