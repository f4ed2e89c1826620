"""Chips on their way into a model: fixed-size blocks of harmonised chips on its device.

The stage functions (:mod:`resflow.stages`) take chips in one of two forms:

* :class:`HarmonisedImages`, float32 ``(N, 3, S, S)`` in ``[0, 1]`` already harmonised on
  the host (training, mosaics, comparisons);
* :class:`SourceImages`, chips as stored (:class:`resflow.chips.SourceChip`), which the
  inference graph reads. On the CPU they are harmonised on the host as they are batched;
  on a GPU they travel in their stored dtype and are harmonised there
  (:func:`harmonise_tensor`), with the host's bits (``tests/test_model_input.py``).

Copies to a GPU go through two page-locked host buffers used in turn (:class:`Staging`),
so the host packs the next block while the device copies and runs the current one.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from resflow.chips import SourceChip
from resflow.devices import memory_format
from resflow.harmonise import Scaling

#: Host buffers a :class:`Staging` uses in turn.
STAGING_SLOTS = 2
#: Byte alignment of every array packed into a staging buffer.
STAGING_ALIGN = 64
#: Bytes a pixel of a harmonised chip takes: three float32 channels.
HARMONISED_BYTES = 12

#: The torch dtype a numpy dtype's bytes travel as: the same width, fully supported by torch
#: (torch's unsigned 16- and 32-bit types support copies only, so they travel as signed and
#: :func:`table_index` reads them back as unsigned).
_WIRE_DTYPES: dict[str, torch.dtype] = {
    "b1": torch.bool, "u1": torch.uint8, "i1": torch.int8, "u2": torch.int16,
    "i2": torch.int16, "u4": torch.int32, "i4": torch.int32, "u8": torch.int64,
    "i8": torch.int64, "f2": torch.float16, "f4": torch.float32, "f8": torch.float64,
}


def wire_dtype(dtype: np.dtype | str) -> torch.dtype:
    """The torch dtype an array of numpy ``dtype`` is sent as (same bytes, same width).

    >>> wire_dtype("uint16"), wire_dtype("float32")
    (torch.int16, torch.float32)
    """
    kind = np.dtype(dtype)
    return _WIRE_DTYPES[f"{kind.kind}{kind.itemsize}"]


class ChipImages(Protocol):
    """What a stage function takes: ``N`` chips it can batch onto a device."""

    def __len__(self) -> int: ...

    def __getitem__(self, rows: np.ndarray) -> ChipImages: ...

    @property
    def edge(self) -> int:
        """Pixels per side of every chip (chip plus halo)."""
        ...

    def blocks(self, rows: int, device: torch.device) -> Iterator[tuple[torch.Tensor, int]]:
        """The chips in blocks of exactly ``rows`` as float32 ``(rows, 3, edge, edge)`` on
        ``device`` (the last zero-padded), each with the count of its real chips."""
        ...


class HarmonisedImages:
    """Chips already harmonised: float32 ``(N, 3, S, S)`` in ``[0, 1]``."""

    def __init__(self, images: np.ndarray) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, S, S), got {images.shape}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows: np.ndarray) -> HarmonisedImages:
        return HarmonisedImages(self.images[rows])

    @property
    def edge(self) -> int:
        return int(self.images.shape[-1])

    def blocks(self, rows: int, device: torch.device) -> Iterator[tuple[torch.Tensor, int]]:
        layout = memory_format(device)
        for tensor, count in array_blocks(self.images, rows, device):
            yield tensor.contiguous(memory_format=layout), count


class SourceImages:
    """Chips as stored, harmonised where the model runs (module doc).

    Parameters
    ----------
    chips
        The chips, each read with the same halo.
    on_device
        Send stored pixels to the device and harmonise them there; default: on any device
        but the CPU. ``True`` on the CPU runs the GPU route (staging, :func:`harmonise_tensor`)
        there, which is how its bits are tested without a GPU.
    """

    def __init__(self, chips: Sequence[SourceChip], on_device: bool | None = None) -> None:
        self.chips = list(chips)
        self.on_device = on_device

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, rows: np.ndarray) -> SourceImages:
        return SourceImages([self.chips[int(i)] for i in np.atleast_1d(rows)], self.on_device)

    @property
    def edge(self) -> int:
        return int(self.chips[0].pixels.shape[-1])

    @property
    def shape(self) -> tuple[int, int]:
        """Pixels per chip, rows and columns (a prediction window need not be square)."""
        rows, cols = self.chips[0].pixels.shape[-2:]
        return int(rows), int(cols)

    def blocks(self, rows: int, device: torch.device) -> Iterator[tuple[torch.Tensor, int]]:
        for start in range(0, len(self.chips), rows):
            chips = self.chips[start:start + rows]
            if self.on_device or (self.on_device is None and device.type != "cpu"):
                yield self._device_block(chips, rows, device), len(chips)
            else:
                yield self._host_block(chips, rows, device), len(chips)

    def _host_block(self, chips: Sequence[SourceChip], rows: int,
                    device: torch.device) -> torch.Tensor:
        block = np.zeros((rows, 3, *self.shape), dtype=np.float32)
        for i, chip in enumerate(chips):
            block[i] = chip.scaling.apply(chip.pixels, chip.valid)
        return torch.from_numpy(block).to(device, memory_format=memory_format(device))

    def _device_block(self, chips: Sequence[SourceChip], rows: int,
                      device: torch.device) -> torch.Tensor:
        """One block through :class:`Staging`, scene by scene (chips of one block may come
        from scenes of other dtypes): stored pixels and validity harmonised on ``device``
        where that is fewer bytes (:func:`travels_stored`), harmonised float32 otherwise."""
        groups: dict[Scaling, list[int]] = {}
        for i, chip in enumerate(chips):
            groups.setdefault(chip.scaling, []).append(i)
        arrays = []
        for scaling, index in groups.items():
            if travels_stored(scaling):
                arrays += [np.stack([chips[i].pixels for i in index]),
                           np.stack([chips[i].valid for i in index])]
            else:
                arrays.append(np.stack([chips[i].harmonised().image for i in index]))
        sent = iter(staging(device).send(arrays))
        block = torch.empty((rows, 3, *self.shape), dtype=torch.float32,
                            device=device, memory_format=memory_format(device))
        block[len(chips):] = 0.0  # the padding rows; every other row is written below
        for scaling, index in groups.items():
            block[index] = (harmonise_tensor(scaling, next(sent), next(sent))
                            if travels_stored(scaling) else next(sent))
        return block


def travels_stored(scaling: Scaling) -> bool:
    """Whether a scene's chips go to the device as stored, with a validity byte a pixel,
    rather than harmonised on the host: only when that is fewer bytes than three float32
    channels. 8- and 16-bit imagery does (4 to 7 bytes a pixel against 12); float64 and
    multi-band 32-bit imagery is harmonised first, as the CPU route does.

    >>> travels_stored(Scaling.of("uint16", (0, 0, 0), {"low": [0], "high": [1]}))
    True
    >>> travels_stored(Scaling.of("float64", (0, 1, 2), {"low": [0] * 3, "high": [1] * 3}))
    False
    """
    return len(scaling.bands) * np.dtype(scaling.dtype).itemsize + 1 < HARMONISED_BYTES


def sent_bytes(chip: SourceChip) -> int:
    """Bytes a chip takes to the device (:func:`travels_stored`)."""
    if travels_stored(chip.scaling):
        return chip.pixels.nbytes + chip.valid.nbytes
    return HARMONISED_BYTES * chip.valid.size


def as_chip_images(images: np.ndarray | ChipImages) -> ChipImages:
    """``images`` as :class:`ChipImages` (a float array becomes :class:`HarmonisedImages`)."""
    if isinstance(images, HarmonisedImages | SourceImages):
        return images
    return HarmonisedImages(images)


def array_blocks(array: np.ndarray, rows: int, device: torch.device
                 ) -> Iterator[tuple[torch.Tensor, int]]:
    """``array`` as float32 in blocks of exactly ``rows`` items on ``device``, the last one
    zero-padded, each with the count of its real items."""
    for start in range(0, len(array), rows):
        block = np.ascontiguousarray(array[start:start + rows], dtype=np.float32)
        count = len(block)
        if count < rows:
            padding = np.zeros((rows - count, *block.shape[1:]), dtype=np.float32)
            block = np.concatenate([block, padding])
        yield torch.from_numpy(block).to(device, non_blocking=True), count


# -- harmonisation on the device -----------------------------------------------------------

def harmonise_tensor(scaling: Scaling, pixels: torch.Tensor, valid: torch.Tensor
                     ) -> torch.Tensor:
    """:meth:`resflow.harmonise.Scaling.apply` for a batch, on the tensors' device.

    Chips reach the GPU in their stored dtype: 8-bit RGB is 3 bytes a pixel on the wire,
    16-bit panchromatic 2 bytes, where harmonised float32 would be 12.

    Parameters
    ----------
    scaling
        The chips' scene scaling.
    pixels
        ``(n, len(scaling.bands), y, x)``: stored pixels as sent (:func:`wire_dtype`).
    valid
        bool ``(n, y, x)``.

    Returns
    -------
    torch.Tensor
        float32 ``(n, 3, y, x)`` in [0, 1], invalid pixels 0: the host's values bit for bit
        (the same tables; float sources in float64 with the same operations).
    """
    if scaling.tabled:
        tables = device_tables(scaling, pixels.device)
        index = table_index(pixels, scaling.dtype)
        bands = [torch.take(tables[band], index[:, band]) for band in range(len(scaling.bands))]
        image = torch.stack([bands[band] for band in scaling.channels], dim=1)
    else:
        def per_band(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64,
                                device=pixels.device)[list(scaling.channels)][:, None, None]

        low, high = per_band(scaling.low), per_band(scaling.high)
        span = torch.where(high > low, high - low, 1.0)
        chosen = stored_values(pixels[:, list(scaling.channels)], scaling.dtype)
        image = torch.clamp((chosen - low) / span, 0.0, 1.0).to(torch.float32)
    return image.masked_fill(~valid[:, None], 0.0)


def table_index(pixels: torch.Tensor, dtype: str) -> torch.Tensor:
    """Each stored pixel's position in its band's table: the value minus the dtype's
    minimum, as int64 (unsigned 16-bit pixels arrive as signed, :func:`wire_dtype`).

    >>> table_index(torch.tensor([-1, 0], dtype=torch.int16), "<u2").tolist()
    [65535, 0]
    >>> table_index(torch.tensor([-32768, 5], dtype=torch.int16), "<i2").tolist()
    [0, 32773]
    """
    kind = np.dtype(dtype)
    values = pixels.to(torch.int64)
    if kind.kind == "u":
        return values & (2 ** (8 * kind.itemsize) - 1)
    return values - int(np.iinfo(kind).min)


def stored_values(pixels: torch.Tensor, dtype: str) -> torch.Tensor:
    """Stored pixels as sent (:func:`wire_dtype`) back to their values, in float64.

    >>> stored_values(torch.tensor([-1], dtype=torch.int32), "<u4").tolist()
    [4294967295.0]
    """
    kind = np.dtype(dtype)
    if kind.kind == "u" and kind.itemsize < 8:
        return table_index(pixels, dtype).to(torch.float64)
    return pixels.to(torch.float64)


@functools.lru_cache(maxsize=64)
def device_tables(scaling: Scaling, device: torch.device) -> torch.Tensor:
    """:meth:`~resflow.harmonise.Scaling.tables` on ``device``, kept for the most recently
    used scenes (768 KiB a 16-bit RGB scene)."""
    return torch.from_numpy(scaling.tables()).to(device)


# -- pinned, double-buffered copies ------------------------------------------------------

class Staging:
    """Host-to-device copies through :data:`STAGING_SLOTS` page-locked buffers used in turn.

    :meth:`send` packs a block's arrays into one buffer and queues their copies on the
    device's current stream without waiting for them; the buffer is reused only once the
    copies queued from it have finished (an event per buffer). The host therefore packs
    block ``k + 1`` while the device copies and computes block ``k``, and no copy waits for
    a pageable buffer to be pinned first. Page-locked (pinned) memory is the only host memory
    a GPU copies from asynchronously; nothing here waits for the GPU except a buffer's reuse.

    One :class:`Staging` per thread and device (:func:`staging`): a task thread's buffers
    are never written by another. ``pin=False`` (the CPU) stages through ordinary memory
    and returns copies, which is how the packing is tested without a GPU.
    """

    def __init__(self, device: torch.device, pin: bool | None = None) -> None:
        self.device = device
        self._pin = device.type == "cuda" if pin is None else pin
        self._buffers: list[torch.Tensor | None] = [None] * STAGING_SLOTS
        self._events: list[torch.cuda.Event | None] = [None] * STAGING_SLOTS
        self._turn = 0

    def send(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Copies of ``arrays`` on the device, in their :func:`wire_dtype` and shapes."""
        slot, self._turn = self._turn, (self._turn + 1) % STAGING_SLOTS
        if self._events[slot] is not None:
            self._events[slot].synchronize()  # the copies from this buffer have left it
        offsets = np.cumsum([0, *(_aligned(a.nbytes) for a in arrays)])
        buffer = self._buffer(slot, int(offsets[-1]))
        host = buffer.numpy()
        sent = []
        for array, start in zip(arrays, offsets[:-1], strict=True):
            end = int(start) + array.nbytes
            np.copyto(host[start:end].view(array.dtype).reshape(array.shape), array)
            staged = buffer[start:end]
            moved = (staged.to(self.device, non_blocking=True) if self.device.type == "cuda"
                     else staged.clone())
            sent.append(moved.view(wire_dtype(array.dtype)).view(array.shape))
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            self._events[slot] = event
        return sent

    def _buffer(self, slot: int, nbytes: int) -> torch.Tensor:
        """Slot ``slot``'s buffer, grown to hold ``nbytes`` (its copies have finished)."""
        buffer = self._buffers[slot]
        if buffer is None or buffer.numel() < nbytes:
            size = max(nbytes, 2 * (buffer.numel() if buffer is not None else 0))
            buffer = torch.empty(size, dtype=torch.uint8, pin_memory=self._pin)
            self._buffers[slot] = buffer
        return buffer


def _aligned(nbytes: int) -> int:
    return -(-nbytes // STAGING_ALIGN) * STAGING_ALIGN


_STAGINGS = threading.local()


def staging(device: torch.device) -> Staging:
    """The calling thread's :class:`Staging` for ``device``."""
    per_device = _STAGINGS.__dict__.setdefault("by_device", {})
    if device not in per_device:
        per_device[device] = Staging(device)
    return per_device[device]
