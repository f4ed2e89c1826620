"""Chips that could not be mapped: recorded one by one, never allowed to stop the run.

One bad chip (pixels that harmonise to NaN, a read that fails, a model that raises or
returns NaN) must not cost the rest of the archive. Stage functions read and compute chip by
chip where a failure can happen, and a chip that fails becomes a :class:`ChipFailure` record
that travels through the rest of the graph in its place. The run then ends with every other
chip written and each failure in the run report as a per-input error.

Model calls run on the whole batch first; only when the batch raises is each chip retried
alone, so the common case costs nothing extra. This is exact because stage functions give a
chip the same result alone or in any batch (fixed-shape micro-batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from resflow.archive import Archive
    from resflow.chips import ChipPixels, ChipRef, SourceChip

    Chip = ChipPixels | SourceChip

FIX = ("check the scene's source raster (e.g. `gdalinfo -stats`); re-ingest it once fixed, "
       "then `resflow run ... --resume` maps only the missing chips")


@dataclass(frozen=True)
class ChipFailure:
    """A chip that could not be mapped, in place of its result.

    Attributes
    ----------
    ref
        The chip.
    stage
        The stage it failed in (``resflow.graph.STAGE1`` ...).
    problem
        What went wrong, one sentence.
    """

    ref: ChipRef
    stage: str
    problem: str
    #: the partition the chip was planned in (the regrouped plan brings it back there)
    origin: int = -1

    def as_record(self, source: str) -> dict[str, str]:
        """The failure as a run-report error; ``source`` is the scene's source raster."""
        ref = self.ref
        return {"source": source, "where": f"{source}: scene {ref.scene}, chip (row {ref.row}, "
                f"col {ref.col}), pixels y {ref.y0}..{ref.y0 + ref.height}, x {ref.x0}.."
                f"{ref.x0 + ref.width}", "problem": f"{self.stage}: {self.problem}", "fix": FIX,
                "scene": ref.scene, "chip": f"{ref.row},{ref.col}"}


def describe_error(exc: BaseException) -> str:
    """An exception as one clause: ``Type: message``."""
    return f"{exc.__class__.__name__}: {exc}".rstrip(".")


def read_chips(refs: Sequence[ChipRef], read: Callable[[Sequence[ChipRef]], list[Chip]],
               stage: str, failures: list[ChipFailure]) -> tuple[list[ChipRef], list[Chip]]:
    """Read the chips together; one whose read raises or whose model input is not finite
    fails alone.

    ``read`` takes a list of chips (:meth:`resflow.archive.Archive.read_sources` or
    :meth:`~resflow.archive.Archive.read_chips`). If reading
    them together raises, each chip is read on its own so that only the unreadable ones fail.
    Returns the chips that can go on and their pixels; failures are appended to ``failures``.
    """
    try:
        together: list[Chip | None] = list(read(refs))
    except Exception:  # find the chip(s) at fault; the others are read one by one
        together = []
        for ref in refs:
            try:
                together.extend(read([ref]))
            except Exception as exc:  # one unreadable chip must not stop its partition
                failures.append(ChipFailure(ref, stage,
                                            f"reading the chip failed ({describe_error(exc)})"))
                together.append(None)
    kept: list[ChipRef] = []
    pixels: list[Chip] = []
    for ref, chip in zip(refs, together, strict=True):
        if chip is None:
            continue
        if not chip.finite():
            failures.append(ChipFailure(ref, stage, "its harmonised pixels hold NaN or Inf "
                                        "(source values too extreme to scale), so no model "
                                        "can map it"))
            continue
        kept.append(ref)
        pixels.append(chip)
    return kept, pixels


def compute_chips(refs: Sequence[ChipRef], images: np.ndarray,
                  model: Callable[[np.ndarray], Sequence[Any]], stage: str,
                  failures: list[ChipFailure],
                  finite: Callable[[Any], bool] = lambda out: bool(np.isfinite(out).all())
                  ) -> tuple[list[ChipRef], list[Any]]:
    """``model`` on the batch ``images`` (one row per chip); a chip it cannot map fails alone.

    The batch runs once; if it raises, each chip runs alone so only the chips that raise fail.
    A chip whose output is not ``finite`` (default: every value finite) fails too, so NaN
    never reaches the output store.
    """
    if not refs:
        return [], []
    try:
        outputs: list[Any] = list(model(images))
    except Exception:  # find the chip(s) at fault; the others keep their exact results
        outputs = []
        for ref, image in zip(refs, images, strict=True):
            try:
                outputs.append(model(image[None])[0])
            except Exception as exc:
                failures.append(ChipFailure(ref, stage, f"the model raised {describe_error(exc)}"))
                outputs.append(None)
    kept: list[ChipRef] = []
    results: list[Any] = []
    for ref, out in zip(refs, outputs, strict=True):
        if out is None:
            continue
        if not finite(out):
            failures.append(ChipFailure(ref, stage, "the model returned NaN or Inf"))
            continue
        kept.append(ref)
        results.append(out)
    return kept, results


def empty_scene_errors(archive: Archive, empty_scenes: Iterable[str]) -> list[dict[str, str]]:
    """One run-report error per mapped scene with no valid pixel at all.

    Such a scene still gets its (not mapped) map, so the output stays complete; the error
    says why the map is empty (every pixel nodata, NaN or Inf).
    """
    return [{"source": archive.scenes[scene].source, "where": archive.scenes[scene].source,
             "problem": f"scene {scene} holds no valid pixel (every pixel is nodata, NaN or "
             "Inf), so its map is empty", "fix": "check the raster's nodata value and "
             "contents, or leave it out of the archive", "scene": scene}
            for scene in sorted(empty_scenes)]
