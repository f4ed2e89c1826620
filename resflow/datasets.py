"""A torch ``Dataset`` of an archive's chips, read as training reads them.

Each item is one chip read with ``halo`` pixels of context, reflected beyond the scene edge
(:mod:`resflow.chips`) and harmonised to the models' input (:mod:`resflow.harmonise`), with
its building labels burnt on the same grid when labels are given
(:mod:`resflow.training.labels`). Identity and georeferencing travel as plain Python
values, so ``torch.utils.data.DataLoader``'s default collate batches items as they are.

The dataset holds chip references, never pixels: a train/validation/test split or a
sampler is a choice of :attr:`ChipDataset.chips` (:func:`resflow.training.regions.split_regions`
picks training's bands). The archive travels to DataLoader workers as its path and
metadata, and its array handles are opened again in each worker process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine
from torch.utils.data import Dataset

from resflow.archive import Archive
from resflow.chips import ChipPixels, ChipRef, grid_shape
from resflow.errors import InputError
from resflow.training.labels import Labels, load_labels, rasterise

ChipKey = tuple[str, int, int]
"""``(scene, row, col)``: a chip named by its scene and place on the chip grid."""


class ChipDataset(Dataset):
    """Chips of an archive with their halo, harmonised, and their labels where given.

    Parameters
    ----------
    archive
        An :class:`~resflow.archive.Archive` or the path of one (``resflow ingest``'s store).
    labels
        Building footprints or mask rasters (paths or loaded :class:`Labels`) burnt onto each
        chip as ``mask``; None for imagery alone.
    chips
        Which chips, in this order: :class:`ChipRef` or ``(scene, row, col)``; default every
        chip of every mapped scene (:meth:`Archive.chips`).
    halo
        Context pixels read around each chip on every side.

    Each item is a dict, ``S = chip + 2 * halo``:

    - ``image``: float32 ``(3, S, S)`` in ``[0, 1]``, 0 where invalid;
    - ``valid``: bool ``(S, S)``, False where the source held nodata, NaN or Inf;
    - ``inside``: bool ``(S, S)``, True on the scene's own pixels, False on those reflected
      beyond its edge (where ``transform`` does not locate them);
    - ``mask`` (with labels): int32 ``(S, S)`` building ids, 0 = background
      (``mask > 0`` is the building mask), burnt at each pixel's place by ``transform``;
    - ``scene``, ``row``, ``col``: the chip's identity;
    - ``crs`` (WKT) and ``transform``: the affine ``(a, b, c, d, e, f)`` of the read with
      its halo, pixel corner to CRS units.

    Raises
    ------
    InputError
        if ``archive`` is not a resflow archive, a chip is not on a mapped scene's chip grid,
        or labels cannot be reprojected to a chosen scene's CRS.

    Examples
    --------
    >>> chips = ChipDataset("atlanta.zarr", ["labels.geojson"], halo=32)  # doctest: +SKIP
    >>> batch = next(iter(torch.utils.data.DataLoader(chips, batch_size=4)))  # doctest: +SKIP
    >>> batch["image"].shape, batch["mask"].shape                       # doctest: +SKIP
    (torch.Size([4, 3, 320, 320]), torch.Size([4, 320, 320]))
    """

    def __init__(self, archive: Archive | Path | str,
                 labels: Labels | Path | str | Sequence[Labels | Path | str] | None = None, *,
                 chips: Iterable[ChipRef | ChipKey] | None = None, halo: int = 0) -> None:
        if halo < 0:
            raise ValueError(f"halo {halo} must be 0 or more pixels")
        self.archive = archive if isinstance(archive, Archive) else Archive.open(archive)
        self.chips = (self.archive.chips() if chips is None
                      else _resolve(self.archive, chips))
        if isinstance(labels, str | Path | Labels):
            labels = [labels]
        self.labels = (None if labels is None else
                       [lab if isinstance(lab, Labels) else load_labels(lab) for lab in labels])
        self.halo = halo
        for scene in sorted({ref.scene for ref in self.chips}):
            for lab in self.labels or []:
                lab.extent_in(self.archive.scenes[scene].crs_wkt)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ref = self.chips[index]
        return self._item(ref, self._reader().read_chip(ref, self.halo))

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Items ``indices`` at once, as a ``DataLoader`` fetches a batch: neighbouring chips
        are read as one slab (:meth:`~resflow.archive.Archive.read_chips`), so the chunks
        they share are fetched and decoded once, not once per chip (a chip with its halo
        spans up to 3 x 3 chunks), which matters most for an archive in a bucket."""
        refs = [self.chips[i] for i in indices]
        pixels = self._reader().read_chips(refs, self.halo)
        return [self._item(ref, chip) for ref, chip in zip(refs, pixels, strict=True)]

    def _item(self, ref: ChipRef, pixels: ChipPixels) -> dict[str, Any]:
        info = self.archive.scenes[ref.scene]
        size = ref.chip + 2 * self.halo
        y0, x0 = ref.y0 - self.halo, ref.x0 - self.halo
        rows = np.arange(y0, y0 + size)
        cols = np.arange(x0, x0 + size)
        inside = ((rows >= 0) & (rows < info.height))[:, None] & (
            (cols >= 0) & (cols < info.width))[None, :]
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(pixels.image)),
            "valid": torch.from_numpy(np.ascontiguousarray(pixels.valid)),
            "inside": torch.from_numpy(inside),
            "scene": ref.scene, "row": ref.row, "col": ref.col, "crs": info.crs_wkt,
            "transform": tuple((Affine(*info.transform[:6]) @ Affine.translation(x0, y0))[:6]),
        }
        if self.labels is not None:
            item["mask"] = torch.from_numpy(rasterise(self.labels, info.crs_wkt,
                                                      info.transform, (y0, x0, size, size)))
        return item

    def _reader(self) -> Archive:
        """The archive with array handles of this process: a DataLoader worker forked from
        the process that opened them starts its own (a pickled archive does so anyway)."""
        if os.getpid() != self._pid:
            self.archive = Archive(self.archive.path, self.archive.scenes,
                                   self.archive.refused, self.archive.skipped)
            self._pid = os.getpid()
        return self.archive


def _resolve(archive: Archive, chips: Iterable[ChipRef | ChipKey]) -> list[ChipRef]:
    """The archive's own references of ``chips``, each checked to lie on its scene's grid."""
    grids: dict[str, dict[tuple[int, int], ChipRef]] = {}
    refs = []
    for chip in chips:
        scene, row, col = ((chip.scene, chip.row, chip.col) if isinstance(chip, ChipRef)
                           else chip)
        if scene not in grids:
            if scene not in archive.scenes:
                skipped = archive.skipped.get(scene)
                raise InputError(f"{archive.display}: scene '{scene}'",
                                 f"not mapped ({skipped.skip})" if skipped
                                 else "no mapped scene of that name",
                                 f"choose among {sorted(archive.scenes)}")
            grids[scene] = {(r.row, r.col): r for r in archive.chips([scene])}
        if (row, col) not in grids[scene]:
            info = archive.scenes[scene]
            rows, cols = grid_shape(info.height, info.width, info.chip)
            raise InputError(f"{archive.display}: scene '{scene}' chip ({row}, {col})",
                             f"outside the scene's grid of {rows} x {cols} chips of "
                             f"{info.chip} pixels",
                             f"choose rows 0..{rows - 1} and columns 0..{cols - 1}, e.g. "
                             f"from Archive.chips(['{scene}'])")
        refs.append(grids[scene][row, col])
    return refs
