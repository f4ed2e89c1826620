"""Which pixels are buildings: the one rule the run, exports, eval and benchmarks apply.

A pixel is building where its probability is above the threshold, touching roofs are split
where the probability dips, and groups smaller than the smallest building are dropped
(:mod:`resflow.masks` holds the algorithm). The run writes this mask; ``resflow export``
and ``resflow eval`` cut the stored probability again with the same rule, so a mask cut
again at the run's settings equals the run's own, bit for bit. The rule works on the stored
scale, the one every caller holds: the run quantises on the device before masking, and
readers get the store's uint8 values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resflow.masks import keep_components, split_touching
from resflow.store.format import PROBABILITY_ENCODING, Encoding

Padding = int | tuple[tuple[int, int], tuple[int, int]]
"""Pixels mirrored beyond the edges, as :func:`numpy.pad` takes them: one width for all
four, or ``((top, bottom), (left, right))``."""


@dataclass(frozen=True)
class MaskRule:
    """Which pixels are buildings: the store's own mask, or the probability cut again.

    Attributes
    ----------
    threshold
        None: the store's mask as the run wrote it (readers use it as is; there is nothing
        to apply). Else a probability in (0, 1): building where the probability is above it.
    min_pixels
        Groups of fewer building pixels are dropped (:func:`resflow.masks.min_pixels` of
        the run's ``min_building_m2`` and the scene's ground resolution).
    halo
        The run's halo, pixels: how far readers mirror the probability beyond the scene's
        edges, as the run read its windows.
    split
        The run's ``split_dip``, a probability: touching roofs are split where the
        probability dips at least this much between them (0: blobs kept whole, as runs
        made before the setting existed did).
    """

    threshold: float | None = None
    min_pixels: int = 0
    halo: int = 0
    split: float = 0.0

    def apply(self, stored: np.ndarray, *, encoding: Encoding = PROBABILITY_ENCODING,
              reflect: Padding = 0, above: np.ndarray | None = None) -> np.ndarray:
        """The building pixels of ``stored``, bool of its shape.

        Parameters
        ----------
        stored
            ``(H, W)`` probability on the stored scale: uint8, probability x
            ``encoding.levels`` (254 in resflow's stores), ``encoding.nodata`` where not
            mapped, which counts as probability 0. The threshold and ``split`` are
            compared on this scale (``threshold x levels``), exactly as the run does.
        encoding
            How ``stored`` encodes probability (:meth:`Encoding.of` for a store read back).
        reflect
            Mirror this many pixels beyond the edges first and trim them after: a whole
            scene masked as the run masked its windows. 0 for a window read with its halo.
        above
            The pixels of ``stored`` above the threshold, where the caller already has
            them (the run thresholds on the device, with the same bits); computed here
            otherwise. Only without ``reflect``.

        Examples
        --------
        >>> stored = np.zeros((4, 5), np.uint8); stored[1:3, 1:3] = 200; stored[0, 4] = 255
        >>> MaskRule(0.5, min_pixels=2).apply(stored).astype(int)
        array([[0, 0, 0, 0, 0],
               [0, 1, 1, 0, 0],
               [0, 1, 1, 0, 0],
               [0, 0, 0, 0, 0]])
        """
        mapped = stored if encoding.nodata is None else \
            np.where(stored == encoding.nodata, 0, stored)
        widths = np.broadcast_to(np.asarray(reflect, dtype=int), (2, 2))
        if widths.any():
            mapped = np.pad(mapped, widths, mode="symmetric")
        if above is None:
            if self.threshold is None:
                raise ValueError("a rule without a threshold keeps the store's mask: there "
                                 "is nothing to apply")
            above = mapped > self.threshold * encoding.levels
        building = keep_components(split_touching(mapped, above, self.split * encoding.levels),
                                   self.min_pixels)
        (top, bottom), (left, right) = widths.tolist()
        return building[top:building.shape[0] - bottom, left:building.shape[1] - right]


STORE_MASK = MaskRule()
"""The rule without a threshold: readers take the mask the run wrote."""
