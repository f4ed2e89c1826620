"""A shard on its way into the store: the unit of writing, assembled whole in memory.

One task assembles every chip of a shard into one block per array and writes it at once
(never a read-modify-write, never two writers), so a re-executed task rewrites identical
bytes. The ledger block of a shard is written only after its pixels, so a chip counts as
done only once its pixels are stored; that order lives in
:meth:`resflow.store.writer.OutputStore.write_shards`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.core.sync import sync

from resflow.chips import shard_chip_window
from resflow.errors import ResflowError
from resflow.store.format import LEDGER, NOT_MAPPED, UNWRITTEN

if TYPE_CHECKING:
    from resflow.chips import ChipRef

Write = tuple[zarr.Array, Any, np.ndarray]
"""``(array, selection, values)``: one write into an array of the store."""


def write_together(writes: Sequence[Write]) -> list[Exception | None]:
    """Write ``writes`` concurrently, in one round trip through zarr's I/O loop; each one's
    error (``None``: written), once all have finished."""
    async def write_all() -> list[Any]:
        return await asyncio.gather(*(array.async_array.setitem(selection, values)
                                      for array, selection, values in writes),
                                    return_exceptions=True)

    outcomes = sync(write_all()) if writes else []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # an interrupt, not a failed write
    return [outcome if isinstance(outcome, Exception) else None for outcome in outcomes]


@dataclass(frozen=True)
class ShardWrite:
    """One whole shard of a scene on its way to the store
    (:meth:`~resflow.store.writer.OutputStore.write_shards`).

    Attributes
    ----------
    scene, shard
        The scene and the shard's row-major index on its shard grid.
    refs
        The shard's chips that were mapped; every other chip of the shard is stored as
        not mapped (255), which is what a chip without valid pixels is.
    probabilities, masks
        uint8 ``(ref.height, ref.width)`` per chip: the quantised probability
        (:func:`~resflow.store.format.quantise`) and the building mask (0/1;
        :meth:`~resflow.store.mask_rule.MaskRule.apply`), where invalid pixels already
        hold :data:`~resflow.store.format.NOT_MAPPED`.
    buckets
        Per chip, its bucket, or :data:`~resflow.store.format.NO_DATA_CHIP` for a chip
        without valid pixels (whose pixels stay not mapped), or
        :data:`~resflow.store.format.UNWRITTEN` for a chip that failed.
    transform
        The scene's affine ``(a, b, c, d, e, f)``, for the coordinates written with
        shard 0 (read from ``spatial_ref`` when not given).
    """

    scene: str
    shard: int
    refs: Sequence[ChipRef]
    probabilities: Sequence[np.ndarray]
    masks: Sequence[np.ndarray]
    buckets: Sequence[int]
    transform: tuple[float, ...] | None = None

    def arrays(self) -> tuple[str, ...]:
        """The scene's arrays this shard writes: the coordinates come with shard 0."""
        return ("probability", "mask", LEDGER, *(("x", "y") if self.shard == 0 else ()))




def shard_writes(write: ShardWrite, arrays: Sequence[zarr.Array], shard_chips: int,
                 georeference: Callable[[str], tuple[str, tuple[float, ...]]],
                 display: str) -> tuple[list[Write], Write]:
    """The pixel writes of one shard (its scene's coordinates with shard 0) and its
    ledger write, from ``arrays``, the open arrays named by :meth:`ShardWrite.arrays`;
    ``georeference`` gives the scene's transform when the write carries none."""
    probability_array, mask_array, ledger_array, *coordinates = arrays
    height, width = probability_array.shape
    chip = probability_array.chunks[0]
    r0, r1, c0, c1 = shard_chip_window(write.shard, height, width, chip, shard_chips)
    y0, x0 = r0 * chip, c0 * chip
    y1, x1 = min(height, r1 * chip), min(width, c1 * chip)
    probability = np.full((y1 - y0, x1 - x0), NOT_MAPPED, np.uint8)
    mask = np.full_like(probability, NOT_MAPPED)
    ledger = np.full((r1 - r0, c1 - c0), UNWRITTEN, np.int16)
    for ref, prob, chip_mask, bucket in zip(write.refs, write.probabilities, write.masks,
                                            write.buckets, strict=True):
        check_window(ref, prob, chip_mask, write.scene, (r0, r1, c0, c1), chip, display)
        ledger[ref.row - r0, ref.col - c0] = bucket
        if bucket >= 0:
            window = (slice(ref.y0 - y0, ref.y0 - y0 + ref.height),
                      slice(ref.x0 - x0, ref.x0 - x0 + ref.width))
            probability[window] = prob
            mask[window] = chip_mask
    region = np.s_[y0:y1, x0:x1]
    writes: list[Write] = [(probability_array, region, probability),
                           (mask_array, region, mask)]
    if coordinates:  # the scene's x and y come with its first shard
        a, _, c, _, e, f = (write.transform or georeference(write.scene)[1])[:6]
        writes += [(coordinates[0], np.s_[:], c + (np.arange(width) + 0.5) * a),
                   (coordinates[1], np.s_[:], f + (np.arange(height) + 0.5) * e)]
    return writes, (ledger_array, np.s_[r0:r1, c0:c1], ledger)


def check_window(ref: ChipRef, probability: np.ndarray, mask: np.ndarray, scene: str,
                 window: tuple[int, int, int, int], chip: int, display: str) -> None:
    """Refuse a chip that is not one whole chunk of this shard, before any write."""
    where = f"{display}: chip {ref.scene}/{ref.row}_{ref.col}"
    r0, r1, c0, c1 = window
    if ref.scene != scene or not (r0 <= ref.row < r1 and c0 <= ref.col < c1):
        raise ResflowError(where, f"the chip is not in shard rows {r0}..{r1 - 1}, cols "
                           f"{c0}..{c1 - 1} of scene {scene}", "plan shards with "
                           "resflow.planning")
    if probability.dtype != np.uint8 or probability.shape != (ref.height, ref.width):
        raise ResflowError(where, f"probability is {probability.dtype} {probability.shape}, "
                           f"expected uint8 {(ref.height, ref.width)}",
                           "quantise the chip's probability to uint8 and trim the halo")
    if mask.shape != probability.shape:
        raise ResflowError(where, f"mask is {mask.shape}, its probability {probability.shape}",
                           "trim the mask's halo as the probability's")
    if ref.y0 != ref.row * chip or ref.x0 != ref.col * chip:
        raise ResflowError(where, f"the window (y0={ref.y0}, x0={ref.x0}) is not chunk "
                           f"({ref.row}, {ref.col}) of the {chip}-pixel chip grid",
                           "plan chips with Archive.shard_chips()")
