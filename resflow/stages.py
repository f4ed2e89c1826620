"""The pure batch functions of the inference graph: encoding, codes, segmentation.

Each takes arrays and a model and returns arrays; none knows about engines, stores or chip
references, so the local, Dask and Spark engines all call the same code.

One encoder pass per chip
-------------------------
The frozen Lite0 encoder is shared by stage 1 and every stage-3 segmenter, so the graph
runs it once per chip, on the chip read with its halo: :func:`encode` returns the chip's
embedding (pooled over the chip without its halo, for stage 2) together with the encoder
maps, which :func:`decode` turns into probabilities with the chip's model (stage 3). The
maps are exactly those :func:`segment` computes inside a segmenter, so a chip's
probabilities are the same bits either way (``tests/test_stages.py``).

Determinism
-----------
A chip's outputs must be bitwise identical whether it runs in-process, on a Dask worker or
on a Spark executor, alone or in any batch. On the CPU both the intra-op thread count and
the batch shape change results (oneDNN splits reductions across threads and picks its
kernels by batch size, and linear layers use other kernels for one row than for many; the
differences measured are in ``benchmarks/README.md``, "Determinism"), so:

* stage functions run with :data:`STAGE_THREADS` intra-op threads in the calling thread (the
  setting is per thread, so concurrent tasks do not disturb each other) and engines get
  parallelism from concurrent tasks instead;
* on the CPU every convolution call holds exactly one chip (also the fastest measured), so
  ``batch_size`` does not affect CPU results at all, and the hashing head's linear layers
  run in fixed blocks of :data:`HEAD_ROWS` rows, zero-padded;
* on CUDA, micro-batches have exactly ``batch_size`` chips (the last one zero-padded and
  the padding dropped) and cuDNN runs in deterministic mode, so that a chip's result does
  not depend on the batch it lands in (not yet measured on a GPU). GPU results differ
  from CPU results, and may change with ``batch_size`` or the GPU model.

Bitwise reproducibility across machines also needs the same torch build and CPU
instruction set (oneDNN dispatches on AVX2/AVX-512).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from resflow.allocator import steady_malloc
from resflow.devices import inference_context, memory_format, torch_threads, use_device
from resflow.models.efficientnet import EMBEDDING_DIM
from resflow.models.hashing import hamming_nearest

#: Intra-op threads inside every stage call; part of the result, so it is fixed.
STAGE_THREADS = 1
#: Rows per call of the hashing head, padded, so a chip's code never depends on N.
HEAD_ROWS = 64

FeatureMaps = tuple[torch.Tensor, ...]
"""One chip's encoder maps at strides 2, 4, 8, 16 and 32, each ``(1, C, h, w)``, on the
device that computed them (:func:`encode`)."""


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, S, S), got {images.shape}")
    return images


def _run_batched(
    array: np.ndarray,
    model: Callable[[torch.Tensor], torch.Tensor],
    rows: int,
    device: torch.device,
) -> np.ndarray:
    """Apply ``model`` to fixed-size blocks of ``rows`` items, zero-padding the last block.

    Every call sees the same tensor shape, so an item's result depends neither on ``N`` nor
    on its neighbours. Outputs are returned as float32 numpy, padding dropped.
    """
    return np.concatenate([model(tensor)[:count].float().cpu().numpy()
                           for tensor, count in _blocks(array, rows, device)])


def _blocks(array: np.ndarray, rows: int, device: torch.device
            ) -> Iterator[tuple[torch.Tensor, int]]:
    """``array`` in blocks of exactly ``rows`` items on ``device``, the last one zero-padded,
    each with the count of its real items."""
    layout = memory_format(device) if array.ndim == 4 else torch.contiguous_format
    for start in range(0, len(array), rows):
        block = np.ascontiguousarray(array[start : start + rows], dtype=np.float32)
        count = len(block)
        if count < rows:
            padding = np.zeros((rows - count, *block.shape[1:]), dtype=np.float32)
            block = np.concatenate([block, padding])
        yield torch.from_numpy(block).to(device, memory_format=layout, non_blocking=True), count


def _rows_per_call(device: torch.device, batch_size: int) -> int:
    """One chip per call on the CPU (see Determinism), ``batch_size`` chips on CUDA."""
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
    makes parts the models share (the encoder) one copy per device, as on the CPU.
    """
    key = str(device)
    with _DEVICE_COPIES_LOCK:
        memo = _DEVICE_COPIES.setdefault(key, {})
        if id(model) not in memo:
            moved = copy.deepcopy(model, memo)
            moved.to(device, memory_format=memory_format(device)).eval()
        return memo[id(model)]


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """The model to run on ``device``: itself on the CPU, a per-device copy elsewhere."""
    steady_malloc()  # before the first pass in this process (see resflow.allocator)
    use_device(device)
    if device.type == "cpu":
        return model.eval()
    return _device_copy(model, device)


def extract_features(
    images: np.ndarray, extractor: nn.Module, *, halo: int = 0, batch_size: int,
    device: torch.device
) -> np.ndarray:
    """Stage 1 alone: the 1280-d Lite0 embedding of each chip, its encoder maps dropped.

    The same bits as :func:`encode`'s embedding, for callers that route chips without
    segmenting them (the regrouped plan's stage 1, training, bucket mosaics).

    Parameters
    ----------
    images
        ``(N, 3, S, S)`` float32 chips in ``[0, 1]``, each with ``halo`` pixels of context
        on every side.
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
    images = _check_images(images)
    if len(images) == 0:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    model = _prepare(extractor, device)
    with torch_threads(STAGE_THREADS), inference_context(device):
        return _run_batched(images, lambda x: model(x, halo), _rows_per_call(device, batch_size),
                            device)


def encode(
    images: np.ndarray, extractor: nn.Module, *, halo: int, batch_size: int,
    device: torch.device
) -> tuple[np.ndarray, list[FeatureMaps]]:
    """Stage 1 of the one-pass graph: one encoder pass per chip read with its halo.

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
    images = _check_images(images)
    if len(images) == 0:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32), []
    model = _prepare(extractor, device)
    features, maps = [], []
    with torch_threads(STAGE_THREADS), inference_context(device):
        for tensor, count in _blocks(images, _rows_per_call(device, batch_size), device):
            levels, embedding = model.encode(tensor, halo)
            features.append(embedding[:count].float().cpu().numpy())
            maps.extend(tuple(level[i : i + 1] for level in levels) for i in range(count))
    return np.concatenate(features), maps


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
    images: np.ndarray, segmenter: nn.Module, *, batch_size: int, device: torch.device
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
    images = _check_images(images)
    if len(images) == 0:
        return np.zeros((0, *images.shape[2:]), dtype=np.float32)
    model = _prepare(segmenter, device)

    def probability(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(x).float())[:, 0]

    with torch_threads(STAGE_THREADS), inference_context(device):
        return _run_batched(images, probability, _rows_per_call(device, batch_size), device)


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
    model = _prepare(segmenter, device)
    rows = _rows_per_call(device, batch_size)
    outputs = []
    with torch_threads(STAGE_THREADS), inference_context(device):
        for start in range(0, len(maps), rows):
            chips = list(maps[start : start + rows])
            count = len(chips)
            if count < rows:
                chips += [tuple(torch.zeros_like(level) for level in chips[0])] * (rows - count)
            levels = [parts[0] if rows == 1 else torch.cat(parts)
                      for parts in zip(*chips, strict=True)]
            logits = model.decode(levels, size)
            outputs.append(torch.sigmoid(logits.float())[:count, 0].cpu().numpy())
    return np.concatenate(outputs)
