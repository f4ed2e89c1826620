"""Bucket decisions nested in a leave-one-place-out of the training places.

A bucket keeps its own decoder where it maps imagery better than mono. Judged on the
bucket's validation chips, which come from the very places the decoder trained on, the
answer does not carry over to a new place: the study's ensemble trailed mono on held-out
places with every bucket decoder having won on validation. Here each training place is
held out in turn: mono and the bucket's fine-tune are trained on the other training places
(train and validation bands, with the same settings as the real ones) and both are scored
on the held-out place's chips of that bucket. The bucket keeps its decoder only if its
loss, pooled over every held-out chip of every place, is below mono's. The encoder maps are
the ones the real training computed, so the inner trainings cost decoder steps only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from resflow.training.config import TrainConfig
from resflow.training.segmentation import Encoded, evaluate_loss, train_decoder


def nested_decisions(train_set: Encoded, val_set: Encoded | None, train_places: np.ndarray,
                     val_places: np.ndarray, train_buckets: np.ndarray,
                     val_buckets: np.ndarray, buckets: int,
                     config: TrainConfig) -> list[dict[str, Any]]:
    """For each bucket, whether its own decoder beats mono on training places held out.

    Parameters
    ----------
    train_set, val_set
        The real training's encoded train and validation chips.
    train_places, val_places
        The place of each chip of ``train_set`` and ``val_set``.
    train_buckets, val_buckets
        The bucket of each chip.
    buckets
        Number of buckets.
    config
        The training's settings: steps, learning rates, patience, ``min_bucket_chips``.

    Returns
    -------
    list of dict
        Per bucket: ``keep`` (bool), ``mono_loss`` and ``own_loss`` pooled over the held-out
        chips (None where no place could be held out), and per held-out place its
        ``chips``, ``mono_loss`` and ``own_loss`` (or why it was not scored).
    """
    if val_set is None:
        val_places = val_buckets = np.zeros(0, int)
    results: list[dict[str, Any]] = [{"places": {}} for _ in range(buckets)]
    places = sorted(set(train_places.tolist()) | set(val_places.tolist()))
    for place in places if len(places) > 1 else []:
        _hold_out(place, train_set, val_set, train_places, val_places, train_buckets,
                  val_buckets, results, config)
    for k, result in enumerate(results):
        scored = [p for p in result["places"].values() if "own_loss" in p]
        chips = sum(p["chips"] for p in scored)
        if not chips:
            result.update(keep=False, mono_loss=None, own_loss=None,
                          reason="no training place could be held out with chips of "
                          f"bucket {k} on both sides" if len(places) > 1
                          else "one training place: nothing to hold out")
            continue
        mono = sum(p["mono_loss"] * p["chips"] for p in scored) / chips
        own = sum(p["own_loss"] * p["chips"] for p in scored) / chips
        result.update(keep=own < mono, mono_loss=mono, own_loss=own,
                      reason=f"loss {own:.4f} against mono's {mono:.4f} on {chips} chips of "
                      f"{len(scored)} held-out place(s)")
    return results


def _hold_out(place: str, train_set: Encoded, val_set: Encoded | None,
              train_places: np.ndarray, val_places: np.ndarray, train_buckets: np.ndarray,
              val_buckets: np.ndarray, results: list[dict[str, Any]],
              config: TrainConfig) -> None:
    """Train mono and each bucket's fine-tune without ``place``; score both on it."""
    inner_train = np.flatnonzero(train_places != place)
    inner_val = np.flatnonzero(val_places != place)
    if not len(inner_train):
        return
    inner_val_set = _rows(val_set, inner_val) if len(inner_val) else None
    mono, history = train_decoder(
        train_set, inner_val_set, rows=inner_train, steps=config.mono_steps,
        batch=config.batch, lr=config.lr, eval_every=config.eval_every,
        patience=config.patience, seed=config.seed, desc=f"mono without {place}")
    for k, result in enumerate(results):
        held = _rows(train_set, np.flatnonzero((train_places == place)
                                                & (train_buckets == k)))
        if val_set is not None:
            held = _join(held, _rows(val_set, np.flatnonzero((val_places == place)
                                                              & (val_buckets == k))))
        if not len(held):
            continue
        own_train = np.flatnonzero((train_places != place) & (train_buckets == k))
        own_val = np.flatnonzero((val_places != place) & (val_buckets == k))
        if len(own_train) < config.min_bucket_chips or not len(own_val):
            result["places"][place] = {"chips": len(held), "skipped": (
                f"{len(own_train)} train and {len(own_val)} validation chips of the bucket "
                "without this place")}
            continue
        own, _ = train_decoder(
            train_set, _rows(val_set, own_val), init=mono, rows=own_train,
            steps=config.bucket_steps, batch=config.batch, lr=config.bucket_lr,
            eval_every=config.eval_every, patience=config.patience,
            seed=config.seed + 1 + k, desc=f"bucket-{k} without {place}")
        result["places"][place] = {
            "chips": len(held),
            "mono_loss": evaluate_loss(mono, held, history["pos_weight"]),
            "own_loss": evaluate_loss(own, held, history["pos_weight"])}


def _rows(data: Encoded, rows: np.ndarray) -> Encoded:
    """Chips ``rows`` as read: the first variant (no flip, no jitter), the one validation
    losses are computed on."""
    index = torch.as_tensor(rows, dtype=torch.long)
    return Encoded([[m[index] for m in data.maps[0]]], data.target[:1, index],
                   data.weight[:1, index], data.size)


def _join(a: Encoded, b: Encoded) -> Encoded:
    return Encoded([[torch.cat([x, y]) for x, y in zip(a.maps[0], b.maps[0], strict=True)]],
                   torch.cat([a.target, b.target], dim=1),
                   torch.cat([a.weight, b.weight], dim=1), a.size)
