"""Prediction windows: blocks of chips encoded, routed and segmented in one piece.

The encoder's deepest features have stride 32 and a receptive field of hundreds of
pixels, so a pixel's probability depends on how far the predicted window reaches around
it. Chips predicted one by one, each with its own halo, meet at borders where each side
saw other context, and the maps show the chip grid (``resflow.seams``). A window of
``window x window`` chips on a fixed lattice of the scene's chip grid is predicted as one
image with ``halo`` pixels of context, then cut back into its chips, so only window
borders are chip borders predicted apart, and a wide halo makes those agree too.

The lattice depends on the scene and the ``window`` setting only, never on how chips are
partitioned, so each chip's map is the same on every engine and on resume: a task whose
chips cover part of a window still predicts the whole window and keeps its own chips. A
window is routed as a whole (its embedding is pooled over its chips), so one model serves it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from resflow.chips import ChipRef, grid_shape

WINDOW_CHIPS = 4
"""Default chips per side of a prediction window: 1024 px at 256-px chips."""

WINDOW_HALO = 128
"""Default context around a window, pixels: with 4 x 4 windows of 256-px chips, the
models see as many pixels per chip as chip by chip with a 32-pixel halo (1280^2 / 16 =
320^2), and the seam ratios of the demo and study scenes drop to about 1; on a CPU the
larger images cost about twice the time per chip (``benchmarks/README.md``)."""


@dataclass(frozen=True, order=True)
class Window:
    """A block of chips of one scene, predicted together.

    Attributes
    ----------
    scene
        Scene name in the archive.
    row, col
        Position on the window lattice (window units).
    y0, x0
        Top-left pixel of its first chip.
    chip_rows, chip_cols
        Chips it spans: ``window`` each way, fewer at the scene's last row or column.
    chip
        Nominal chip edge, pixels.
    """

    scene: str
    row: int
    col: int
    y0: int
    x0: int
    chip_rows: int
    chip_cols: int
    chip: int

    @property
    def shape(self) -> tuple[int, int]:
        """Nominal size in pixels, without halo (edge chips count at their nominal edge,
        as chip reads do: beyond the scene the pixels are reflected)."""
        return self.chip_rows * self.chip, self.chip_cols * self.chip

    def crop(self, array: np.ndarray, ref: ChipRef, halo: int) -> np.ndarray:
        """The in-scene pixels of chip ``ref`` from an array predicted over this window
        with ``halo`` pixels of context (``map_overlap``'s trim).

        Examples
        --------
        >>> w = Window("s", 0, 0, 0, 0, 2, 2, 4)
        >>> ref = ChipRef("s", 1, 0, 4, 0, 3, 4, 4, 0.0, 1.0)
        >>> w.crop(np.arange(144).reshape(12, 12), ref, halo=2)[0]
        array([74, 75, 76, 77])
        """
        y = ref.y0 - self.y0 + halo
        x = ref.x0 - self.x0 + halo
        return array[y:y + ref.height, x:x + ref.width]


def window_of(ref: ChipRef, size: int, height: int, width: int) -> Window:
    """The window of ``size x size`` chips holding chip ``ref`` of a ``height x width`` scene.

    Examples
    --------
    >>> window_of(ChipRef("s", 5, 2, 1280, 512, 20, 256, 256, 0.0, 1.0), 4, 1300, 900)
    Window(scene='s', row=1, col=0, y0=1024, x0=0, chip_rows=2, chip_cols=4, chip=256)
    """
    rows, cols = grid_shape(height, width, ref.chip)
    wr, wc = ref.row // size, ref.col // size
    return Window(ref.scene, wr, wc, wr * size * ref.chip, wc * size * ref.chip,
                  min(size, rows - wr * size), min(size, cols - wc * size), ref.chip)


def group_by_window(refs: Iterable[ChipRef], size: int,
                    scene_shapes: dict[str, tuple[int, int]]) -> dict[Window, list[ChipRef]]:
    """``refs`` grouped by their window, windows in scene and lattice order, chips in the
    order given; ``scene_shapes`` maps each scene to its ``(height, width)`` in pixels."""
    groups: dict[Window, list[ChipRef]] = {}
    for ref in refs:
        groups.setdefault(window_of(ref, size, *scene_shapes[ref.scene]), []).append(ref)
    return dict(sorted(groups.items()))
