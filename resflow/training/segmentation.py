"""Stage 3 offline: the mono decoder on all labelled chips, then per-bucket fine-tunes.

The encoder is the frozen ImageNet Lite0 shared by every model, so only decoders train and
the encoder's feature maps can be computed once per chip and augmentation instead of once
per step (:func:`encode_training`): training then costs decoder passes only and runs in
minutes on two CPU cores. The loss (:func:`loss_fn`) is class-balanced and scores only
valid data inside the scene, and :func:`train_decoder` keeps the checkpoint the validation
region, never the test region, picks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from resflow.models.efficientnet import EfficientNetLite0
from resflow.models.segmentation import SIZE_MULTIPLE, SegmentationDecoder

#: Dihedral variants as (quarter turns, flip left-right): identity first.
AUGMENTATIONS = tuple((k, flip) for flip in (False, True) for k in range(4))
#: Chips per encoder call while training encodes: the activations of a call, not the maps
#: kept, bound its memory (several GB for a few hundred chips of 256 px with context).
ENCODE_CHIPS = 32
#: Cap on the positive-class weight, so a chip set with almost no buildings stays stable.
MAX_POS_WEIGHT = 10.0


@dataclass
class Encoded:
    """Encoder maps of a chip set under each augmentation, with targets and scoring weights.

    ``maps[a][level]`` is ``(N, C, h, w)`` for augmentation ``a``; ``target`` and ``weight``
    are ``(A, N, 1, S, S)`` float32, transformed like the images.
    """

    maps: list[list[torch.Tensor]]
    target: torch.Tensor
    weight: torch.Tensor
    size: tuple[int, int]

    def __len__(self) -> int:
        return self.target.shape[1]


def radiometric_jitter(images: torch.Tensor, valid: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """Random gain, offset, gamma and per-band cast per chip; nodata stays 0.

    Parameters
    ----------
    images
        ``(N, 3, S, S)`` float32 in ``[0, 1]``.
    valid
        ``(N, 1, S, S)``, 1 where a pixel holds data.
    generator
        Seeded, so the same seed gives the same jitter.
    """
    n = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, 1, 1, generator=generator)

    gain = uniform(0.75, 1.25, 1) * uniform(0.92, 1.08, 3)
    offset = uniform(-0.08, 0.08, 1)
    gamma = uniform(0.75, 1.35, 1)
    out = (images.clamp(0, 1) ** gamma * gain + offset).clamp(0, 1)
    return out * valid


def encode_training(encoder: EfficientNetLite0, images: np.ndarray, target: np.ndarray,
                    weight: np.ndarray, context: int = 0, augment: bool = True,
                    seed: int = 0) -> Encoded:
    """Run the frozen encoder once per chip and augmentation.

    The encoder sees each chip with ``context`` pixels of imagery around it and its maps
    are cut back to the chip (:func:`chip_maps`), so the maps kept, and the decoder's work,
    do not grow with the context.

    The encoder is not rotation-equivariant, so each of the eight flips/rotations (the
    dihedral group, ``AUGMENTATIONS``) is encoded separately, about 1.8 MB of maps per
    variant for a 256 px chip. Each dihedral variant is encoded twice: as read, and with a
    seeded radiometric jitter (:func:`radiometric_jitter`: gain, offset, gamma and a
    per-band colour cast), because imagery of a new place differs from the training places
    in sensor, sun and haze far more than in orientation.

    Parameters
    ----------
    images
        ``(N, 3, S + 2 context, S + 2 context)`` float32 in ``[0, 1]``: the chips with their
        context.
    target
        ``(N, S, S)`` building mask (0/1) of the chips.
    weight
        ``(N, S, S)`` 1 where a pixel is scored, 0 elsewhere.
    context
        Pixels of imagery on each side of the chips in ``images``, a multiple of
        :data:`SIZE_MULTIPLE`.
    augment
        All eight dihedral variants, each as read and radiometrically jittered (training),
        or the identity only (validation).
    seed
        Seeds the radiometric jitter.
    """
    x = torch.from_numpy(np.ascontiguousarray(images, np.float32))
    y = torch.from_numpy(np.asarray(target, np.float32))[:, None]
    w = torch.from_numpy(np.asarray(weight, np.float32))[:, None]
    data = (x.amax(dim=1, keepdim=True) > 0).float()
    generator = torch.Generator().manual_seed(seed)
    variants = [(0, False, x)]
    if augment:
        variants = [(turns, flip, source) for source in
                    (x, radiometric_jitter(x, data, generator)) for turns, flip in AUGMENTATIONS]
    size = tuple(y.shape[-2:])
    maps, targets, weights = [], [], []
    encoder.eval()
    with torch.no_grad():
        for turns, flip, source in variants:
            image = _dihedral(source, turns, flip)
            parts = [chip_maps(encoder, image[i: i + ENCODE_CHIPS], context, size)
                     for i in range(0, max(len(image), 1), ENCODE_CHIPS)]
            maps.append([torch.cat(level) for level in zip(*parts, strict=True)])
            targets.append(_dihedral(y, turns, flip))
            weights.append(_dihedral(w, turns, flip))
    return Encoded(maps, torch.stack(targets), torch.stack(weights), size)


def chip_maps(encoder: EfficientNetLite0, images: torch.Tensor, context: int,
              size: tuple[int, int]) -> list[torch.Tensor]:
    """Encoder maps of the ``size`` chips at the centre of ``images``, which hold ``context``
    pixels around them: the encoder runs on the whole (grown by reflection to a multiple of
    :data:`SIZE_MULTIPLE`, as far as the chip's own multiple needs) and each level is cut
    to the chip's cells. With no context these are the maps of the reflected chip.
    """
    if context % SIZE_MULTIPLE:
        raise ValueError(f"context {context} is not a multiple of {SIZE_MULTIPLE}")
    covered = [context + n + -n % SIZE_MULTIPLE for n in size]  # the chip's padded extent
    height, width = images.shape[-2:]
    grow_h = max(covered[0], height + -height % SIZE_MULTIPLE) - height
    grow_w = max(covered[1], width + -width % SIZE_MULTIPLE) - width
    if grow_h or grow_w:
        images = F.pad(images, (0, grow_w, 0, grow_h), mode="reflect")
    levels = encoder.feature_maps(images)
    cut = []
    for level in levels:
        stride = images.shape[-1] // level.shape[-1]
        y0 = x0 = context // stride
        cut.append(level[..., y0: covered[0] // stride, x0: covered[1] // stride].contiguous())
    return cut


def positive_weight(data: Encoded, rows: np.ndarray | None = None) -> float:
    """Square root of the negative/positive ratio of the scored pixels (of chips ``rows``
    only, when given), capped at :data:`MAX_POS_WEIGHT`.

    The full ratio, on top of the Dice term, made maps too fat: neighbouring roofs merged
    into one footprint. The square root keeps sparse buildings from being ignored without
    that bias.
    """
    target, weight = data.target, data.weight
    if rows is not None:
        index = torch.as_tensor(rows, dtype=torch.long)
        target, weight = target[:, index], weight[:, index]
    scored = (weight > 0).float()
    pos = float((target * scored).sum())
    neg = float(((1 - target) * scored).sum())
    return float(min(MAX_POS_WEIGHT, max(1.0, (neg / max(pos, 1.0)) ** 0.5)))


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
            pos_weight: float) -> torch.Tensor:
    """Class-balanced BCE weighted by ``weight``, plus soft Dice, over pixels with
    ``weight > 0`` only.

    Scored pixels are valid data inside the scene (reflected padding is not a label); the
    positive class is weighted by :func:`positive_weight`, and ``weight`` also weighs the
    narrow gaps between buildings up (:func:`resflow.training.gaps.gap_weight`), so
    touching roofs stay apart.
    """
    bce = F.binary_cross_entropy_with_logits(
        logits, target, weight=weight, pos_weight=torch.tensor(pos_weight), reduction="sum")
    bce = bce / weight.sum().clamp_min(1.0)
    scored = (weight > 0).float()
    prob = torch.sigmoid(logits) * scored
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + (target * scored).sum() + 1)
    return bce + dice


def train_decoder(train: Encoded, validation: Encoded | None, *,
                  init: SegmentationDecoder | None = None, rows: np.ndarray | None = None,
                  steps: int = 200, batch: int = 4, lr: float = 1e-3, eval_every: int = 25,
                  patience: int = 0, seed: int = 0,
                  desc: str = "decoder") -> tuple[SegmentationDecoder, dict]:
    """Train one decoder on pre-encoded chips; keep the best checkpoint on validation.

    The checkpoint kept is the one with the lowest validation loss, evaluated every
    ``eval_every`` steps (and, for a fine-tune, before its first step), so the validation
    region, never the test region, decides when to stop, and a fine-tune that never beats
    its ``init`` on validation keeps ``init``'s weights.

    Parameters
    ----------
    train, validation
        From :func:`encode_training`; without validation the last step is kept.
    init
        Decoder to fine-tune (copied, never modified); a fresh one when ``None``.
    rows
        Train on these chips of ``train`` only (indices; all when ``None``): a subset
        without copying the encoder maps, as nested bucket decisions train many.
    steps, batch, lr
        Adam steps, chips per step, learning rate.
    patience
        Stop after this many validation checks without a new best (0: never stop early).
    seed
        Seeds the fresh decoder and the sampling of chips and augmentations.

    Returns
    -------
    (decoder, history)
        The best decoder (eval mode) and ``{"best_step", "best_validation_loss",
        "initial_validation_loss", "pos_weight", "steps"}`` (``steps`` run, fewer than asked
        when stopped early).
    """
    torch.manual_seed(seed)
    decoder = copy.deepcopy(init) if init is not None else SegmentationDecoder()
    generator = torch.Generator().manual_seed(seed)
    pos_weight = positive_weight(train, rows)
    chosen = torch.as_tensor(rows if rows is not None else np.arange(len(train)),
                             dtype=torch.long)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=lr)
    initial = evaluate_loss(decoder, validation, pos_weight) if validation is not None else None
    # A fine-tune starts from its init's own validation loss, so it never ends worse than it.
    start = initial if initial is not None and init is not None else float("inf")
    best = (start, 0, copy.deepcopy(decoder.state_dict()))
    n_aug, n = train.target.shape[0], len(chosen)
    for step in tqdm(range(1, steps + 1), desc=desc, leave=False):
        decoder.train()
        aug = int(torch.randint(n_aug, (1,), generator=generator))
        idx = chosen[torch.randperm(n, generator=generator)[:batch]]
        logits = _decode(decoder, [m[idx] for m in train.maps[aug]], train.size)
        loss = loss_fn(logits, train.target[aug, idx], train.weight[aug, idx], pos_weight)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if validation is not None and (step % eval_every == 0 or step == steps):
            val = evaluate_loss(decoder, validation, pos_weight)
            if val < best[0]:
                best = (val, step, copy.deepcopy(decoder.state_dict()))
            elif patience and step - best[1] >= patience * eval_every:
                break
    if validation is not None:
        decoder.load_state_dict(best[2])
    history = {"best_step": best[1] if validation is not None else steps,
               "best_validation_loss": best[0] if validation is not None else None,
               "initial_validation_loss": initial, "pos_weight": pos_weight, "steps": step}
    return decoder.eval(), history


def evaluate_loss(decoder: SegmentationDecoder, data: Encoded, pos_weight: float) -> float:
    """Mean loss over the identity variant of ``data``, in eval mode."""
    decoder.eval()
    with torch.no_grad():
        logits = _decode(decoder, data.maps[0], data.size)
        return float(loss_fn(logits, data.target[0], data.weight[0], pos_weight))


def _decode(decoder: SegmentationDecoder, maps: list[torch.Tensor],
            size: tuple[int, int]) -> torch.Tensor:
    padded = (size[0] + -size[0] % SIZE_MULTIPLE, size[1] + -size[1] % SIZE_MULTIPLE)
    return decoder(maps, padded)[..., : size[0], : size[1]]


def _dihedral(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    x = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x
