"""The pure batch functions of the inference graph: encoding, codes, segmentation.

Each takes arrays and a model and returns arrays; none knows about engines, stores or chip
references, so the local, Dask and Spark engines all call the same code. The frozen encoder
is shared by stage 1 and every stage-3 segmenter, so the graph runs it once per image it
predicts (:func:`encode`) and decodes its maps with the routed model (:func:`decode`).

A chip's outputs must be bitwise identical whether it runs in-process, on a Dask worker or
on a Spark executor, alone or in any batch: hence the fixed thread count
(:data:`STAGE_THREADS`) and fixed call shapes (:func:`_rows_per_call`, :data:`HEAD_ROWS`).
``docs/architecture.md`` ("Models: the stage functions") says why each is needed.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from resflow.allocator import steady_malloc
from resflow.devices import (
    autocast_dtype,
    cast_for_autocast,
    cuda_autocasts,
    inference_context,
    memory_format,
    torch_threads,
    use_device,
)
from resflow.model_input import ChipImages, array_blocks, as_chip_images, staging
from resflow.models.efficientnet import EMBEDDING_DIM
from resflow.models.hashing import hamming_nearest
from resflow.store.format import NOT_MAPPED, PROBABILITY_SCALE, quantised_threshold
from resflow.store.mask_rule import MaskRule

#: Intra-op threads inside every stage call; part of the result, so it is fixed.
STAGE_THREADS = 1
#: Rows per call of the hashing head, padded, so a chip's code never depends on N.
HEAD_ROWS = 64

FeatureMaps = tuple[torch.Tensor, ...]
"""One chip's encoder maps at strides 2, 4, 8, 16 and 32, each ``(1, C, h, w)``, on the
device that computed them (:func:`encode`)."""


def _run_batched(
    array: np.ndarray,
    model: Callable[[torch.Tensor], torch.Tensor],
    rows: int,
    device: torch.device,
) -> np.ndarray:
    """Apply ``model`` to fixed-size blocks of ``rows`` items, zero-padding the last block.

    Every call sees the same tensor shape, so an item's result depends neither on ``N`` nor
    on its neighbours. Outputs are returned as float32 numpy, padding dropped, in one copy
    from the device at the end (a copy per block would wait for the device every block).
    """
    return _host(torch.cat([model(tensor)[:count].float()
                            for tensor, count in array_blocks(array, rows, device)]))


def _host(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a numpy array on the host: the one wait for the device of a call."""
    return tensor.cpu().numpy()


def _rows_per_call(device: torch.device, batch_size: int) -> int:
    """One chip per call on the CPU, ``batch_size`` chips on CUDA.

    On the CPU oneDNN picks its kernels by batch size, so one chip per convolution call keeps
    ``batch_size`` out of CPU results (and is the fastest measured). On CUDA every
    micro-batch has exactly ``batch_size`` chips (the last one zero-padded, the padding
    dropped) and cuDNN runs in deterministic mode, so a chip's result does not depend on
    the batch it lands in (not yet measured on a GPU); GPU results differ from CPU results
    and may change with ``batch_size`` or the GPU model.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return batch_size if device.type == "cuda" else 1


#: Per device, the ``copy.deepcopy`` memo of every model copied to it: ``id(original)`` ->
#: copy, for the models and each of their parts. The memo also keeps the originals alive, so
#: an ``id`` is never reused while it is a key (the models are cached per process anyway).
_DEVICE_COPIES: dict[str, dict[int, Any]] = {}
_DEVICE_COPIES_LOCK = threading.Lock()


def _device_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """This process's copy of ``model`` on ``device``, made on first use and then reused.

    The cached models are shared by every task thread of a process (and the encoder sits
    inside every segmenter and the feature extractor), so moving one in place with
    ``.to(device)`` would pull it from under a task running on another GPU. Each device
    gets its own deep copy instead and the original is never touched. One memo per device
    makes parts the models share (the encoder) one copy per device, as on the CPU. On CUDA
    the copy's convolution and linear weights are cast once to the autocast dtype
    (:func:`resflow.devices.cast_for_autocast`), not on every forward; inside
    :func:`resflow.devices.cuda_float32` a separate float32 copy serves.
    """
    autocast = device.type == "cuda" and cuda_autocasts()
    key = str(device) if autocast or device.type != "cuda" else f"{device}/float32"
    with _DEVICE_COPIES_LOCK:
        memo = _DEVICE_COPIES.setdefault(key, {})
        if id(model) not in memo:
            moved = copy.deepcopy(model, memo)
            moved.to(device, memory_format=memory_format(device)).eval()
            if autocast:  # inference_context autocasts these calls
                cast_for_autocast(moved, autocast_dtype(
                    torch.cuda.get_device_capability(device)))
                # every task thread reads the copy from its own stream: finish the casts
                torch.cuda.current_stream(device).synchronize()
        return memo[id(model)]


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """The model to run on ``device``: itself on the CPU, a per-device copy elsewhere."""
    steady_malloc()  # before the first pass in this process (see resflow.allocator)
    use_device(device)
    if device.type == "cpu":
        return model.eval()
    return _device_copy(model, device)


def extract_features(
    images: np.ndarray | ChipImages, extractor: nn.Module, *, halo: int = 0,
    batch_size: int, device: torch.device
) -> np.ndarray:
    """Stage 1 alone: the 1280-d Lite0 embedding of each chip, its encoder maps dropped.

    The same bits as :func:`encode`'s embedding, for callers that route chips without
    segmenting them (the regrouped plan's stage 1, training, bucket mosaics).

    Parameters
    ----------
    images
        ``(N, 3, S, S)`` float32 chips in ``[0, 1]``, each with ``halo`` pixels of context
        on every side, or chips as stored (:class:`resflow.model_input.SourceImages`),
        harmonised on ``device``.
    extractor
        :class:`resflow.models.efficientnet.FeatureExtractor` (``gallery.feature_extractor()``).
    halo
        Context pixels on each edge; they shape the features but are left out of the
        pooling, so the embedding describes the chip.
    batch_size
        Chips per model call on CUDA; results on the CPU do not depend on it.
    device
        Where to run (see :func:`resflow.devices.resolve_device`).

    Returns
    -------
    numpy.ndarray
        ``(N, 1280)`` float32.
    """
    images = as_chip_images(images)
    if len(images) == 0:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    model = _prepare(extractor, device)
    with torch_threads(STAGE_THREADS), inference_context(device):
        return _host(torch.cat([
            model(tensor, halo)[:count].float()
            for tensor, count in images.blocks(_rows_per_call(device, batch_size), device)]))


def encode(
    images: np.ndarray | ChipImages, extractor: nn.Module, *, halo: int, batch_size: int,
    device: torch.device
) -> tuple[np.ndarray, list[FeatureMaps]]:
    """Stage 1 of the one-pass graph: one encoder pass per chip read with its halo.

    A "chip" here is any image the graph predicts, such as a prediction window of chips
    (:mod:`resflow.windows`). The embedding is pooled without the halo, for stage 2; the
    encoder maps are exactly those :func:`segment` computes inside a segmenter, so
    :func:`decode` gives the same probabilities bit for bit (``tests/test_stages.py``).

    Parameters
    ----------
    images, extractor, halo, batch_size, device
        As for :func:`extract_features`.

    Returns
    -------
    tuple
        The ``(N, 1280)`` float32 embeddings (bit for bit those of
        :func:`extract_features`) and each chip's :data:`FeatureMaps`, left on ``device``
        for :func:`decode`: about 2.8 MB a chip of 320 px in float32.
    """
    images = as_chip_images(images)
    if len(images) == 0:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32), []
    model = _prepare(extractor, device)
    features, maps = [], []
    with torch_threads(STAGE_THREADS), inference_context(device):
        for tensor, count in images.blocks(_rows_per_call(device, batch_size), device):
            levels, embedding = model.encode(tensor, halo)
            features.append(embedding[:count].float())
            maps.extend(tuple(level[i : i + 1] for level in levels) for i in range(count))
    return _host(torch.cat(features)), maps


def map_codes(
    features: np.ndarray, head: nn.Module, bucket_codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2: binary codes of the embeddings and the nearest bucket of each.

    Parameters
    ----------
    features
        ``(N, 1280)`` float32 embeddings from :func:`encode` or :func:`extract_features`.
    head
        Module mapping embeddings to signed codes, positive meaning bit set
        (:class:`resflow.models.hashing.HashingHead`). Runs on the device it is on.
    bucket_codes
        ``(K, b)`` bool reference codes, one per bucket.

    Returns
    -------
    tuple of numpy.ndarray
        Codes ``(N, b)`` bool and bucket ``(N,)`` int64, the lowest bucket index on ties.
    """
    features = np.asarray(features, dtype=np.float32)
    refs = np.asarray(bucket_codes, dtype=bool)
    if len(features) == 0:
        return np.zeros((0, refs.shape[1]), dtype=bool), np.zeros(0, dtype=np.int64)
    device = next(head.parameters()).device
    use_device(device)
    head = head.eval()
    with torch_threads(STAGE_THREADS), inference_context(device):
        signed = _run_batched(features, head, HEAD_ROWS, device)
    codes = signed > 0
    return codes, hamming_nearest(codes, refs)


def segment(
    images: np.ndarray | ChipImages, segmenter: nn.Module, *, batch_size: int,
    device: torch.device
) -> np.ndarray:
    """Stage 3 with its own encoder pass: building probability per pixel.

    The same bits as :func:`decode` on :func:`encode`'s maps of the same images; for
    callers that have no maps (training's scoring, comparisons across devices).

    Parameters
    ----------
    images
        ``(N, 3, S, S)`` float32 chips in ``[0, 1]``.
    segmenter
        Module mapping ``(n, 3, S, S)`` images to ``(n, 1, S, S)`` building logits
        (:class:`resflow.models.segmentation.BuildingSegmenter`).
    batch_size
        Chips per model call on CUDA; results on the CPU do not depend on it.
    device
        Where to run.

    Returns
    -------
    numpy.ndarray
        ``(N, S, S)`` float32 probabilities in ``[0, 1]``.
    """
    images = as_chip_images(images)
    if len(images) == 0:
        return np.zeros((0, images.edge, images.edge), dtype=np.float32)
    model = _prepare(segmenter, device)
    with torch_threads(STAGE_THREADS), inference_context(device):
        return _host(torch.cat([
            torch.sigmoid(model(tensor).float())[:count, 0]
            for tensor, count in images.blocks(_rows_per_call(device, batch_size), device)]))


def decode(
    maps: Sequence[FeatureMaps], segmenter: nn.Module, *, size: tuple[int, int],
    batch_size: int, device: torch.device
) -> np.ndarray:
    """Stage 3 of the one-pass graph: building probability per pixel from encoder maps.

    Parameters
    ----------
    maps
        Each chip's :data:`FeatureMaps` from :func:`encode`; chips of any buckets that one
        model serves may be decoded together.
    segmenter
        :class:`resflow.models.segmentation.BuildingSegmenter`: its decoder runs, its
        encoder (the one that made ``maps``) does not.
    size
        ``(S, S)``: the edge of the images ``maps`` were encoded from, pixels.
    batch_size
        Chips per decoder call on CUDA, the last call zero-padded; one chip per call on the
        CPU, so results do not depend on it.
    device
        Where to run: the device ``maps`` are on.

    Returns
    -------
    numpy.ndarray
        ``(N, S, S)`` float32 probabilities in ``[0, 1]``.
    """
    if len(maps) == 0:
        return np.zeros((0, *size), dtype=np.float32)
    with torch_threads(STAGE_THREADS), inference_context(device):
        return _host(torch.cat([probability for probability, _ in _decoded(
            maps, segmenter, size=size, batch_size=batch_size, device=device)]))


def _decoded(maps: Sequence[FeatureMaps], segmenter: nn.Module, *, size: tuple[int, int],
             batch_size: int, device: torch.device
             ) -> Iterator[tuple[torch.Tensor, slice]]:
    """:func:`decode`'s probabilities micro-batch by micro-batch, left on ``device``: each
    ``(count, S, S)`` float32 with the slice of ``maps`` it belongs to."""
    model = _prepare(segmenter, device)
    rows = _rows_per_call(device, batch_size)
    for start in range(0, len(maps), rows):
        chips = list(maps[start : start + rows])
        count = len(chips)
        if count < rows:
            chips += [tuple(torch.zeros_like(level) for level in chips[0])] * (rows - count)
        levels = [parts[0] if rows == 1 else torch.cat(parts)
                  for parts in zip(*chips, strict=True)]
        logits = model.decode(levels, size)
        yield torch.sigmoid(logits.float())[:count, 0], slice(start, start + count)


@dataclass(frozen=True)
class QuantisedChip:
    """One chip's stage-3 result as the output store keeps it (:mod:`resflow.store`).

    Attributes
    ----------
    probability
        uint8 ``(S, S)``: probability x :data:`~resflow.store.format.PROBABILITY_SCALE`, and
        :data:`~resflow.store.format.NOT_MAPPED` where the chip holds no data.
    above
        bool ``(S, S)``: pixels above the threshold, before touching roofs are split and
        small components dropped (:meth:`building_mask`).
    finite
        Whether the model's probabilities were all finite; if not, the other fields mean
        nothing and the chip fails.
    """

    probability: np.ndarray
    above: np.ndarray
    finite: bool

    def building_mask(self, rule: MaskRule) -> np.ndarray:
        """``above`` with touching roofs split and small components dropped by ``rule``
        (:meth:`~resflow.store.mask_rule.MaskRule.apply`, whose threshold made ``above``),
        on the host.

        Called on the chip with its halo, so blobs and specks crossing the chip's border
        are judged by what lies beyond it; pixels not mapped count as probability 0.
        """
        return rule.apply(self.probability, above=self.above)


def quantise_tensor(probability: torch.Tensor, valid: torch.Tensor, threshold: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`resflow.store.format.quantise` and the threshold of
    :meth:`resflow.store.mask_rule.MaskRule.apply`, on the tensors' device, with the host's bits.

    Parameters
    ----------
    probability
        float32 ``(n, S, S)`` in ``[0, 1]``.
    valid
        bool ``(n, S, S)``: pixels holding data.
    threshold
        Probability threshold in ``[0, 1]``.

    Returns
    -------
    tuple of torch.Tensor
        The stored probability, uint8 with :data:`~resflow.store.format.NOT_MAPPED` where not
        ``valid``, and the pixels above ``threshold`` (never where not ``valid``).
    """
    scaled = torch.clamp(torch.where(valid, probability, 0.0), 0.0, 1.0) * PROBABILITY_SCALE
    stored = torch.round(scaled).to(torch.uint8)  # half to even, as numpy's rint
    # an integer exceeds t exactly when it exceeds floor(t): no rounding of t to float32
    above = stored > math.floor(quantised_threshold(threshold))
    return stored.masked_fill(~valid, NOT_MAPPED), above & valid


def decode_quantised(
    maps: Sequence[FeatureMaps], valid: Sequence[np.ndarray], segmenter: nn.Module, *,
    threshold: float, size: tuple[int, int], batch_size: int, device: torch.device
) -> list[QuantisedChip]:
    """Stage 3 as the graph runs it: :func:`decode`, then quantised and thresholded on
    ``device`` (:func:`quantise_tensor`), so that 2 bytes a pixel come back instead of 4:
    one copy back per model group instead of float32 probabilities after every micro-batch.

    Parameters
    ----------
    maps, segmenter, size, batch_size, device
        As for :func:`decode`.
    valid
        Per chip, bool ``size``: its pixels holding data (sent to ``device`` in
        :func:`resflow.model_input.staging`'s pinned buffers on a GPU).
    threshold
        Probability above which a pixel is building.

    Returns
    -------
    list of QuantisedChip
        One per chip; :func:`decode`'s probabilities quantised, bit for bit.
    """
    if len(maps) == 0:
        return []
    stored, above, finite = [], [], []
    with torch_threads(STAGE_THREADS), inference_context(device):
        for probability, rows in _decoded(maps, segmenter, size=size, batch_size=batch_size,
                                          device=device):
            mask = _to_device(np.stack(valid[rows]), device)
            finite.append(torch.isfinite(probability).flatten(1).all(1))
            quantised, over = quantise_tensor(probability, mask, threshold)
            stored.append(quantised)
            above.append(over)
    stored_host, above_host, finite_host = (_host(torch.cat(parts))
                                            for parts in (stored, above, finite))
    return [QuantisedChip(*chip) for chip in zip(stored_host, above_host,
                                                  finite_host.tolist(), strict=True)]


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` on ``device``: as it is on the CPU, through pinned memory on a GPU."""
    if device.type == "cpu":
        return torch.from_numpy(array)
    return staging(device).send([array])[0]
