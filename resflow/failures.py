"""Chips that could not be mapped: recorded one by one, never allowed to stop the run.

One bad input (pixels that harmonise to NaN, a read that fails, a model that raises or
returns NaN) must not cost the rest of the archive. The graph predicts a window of chips
at a time (:mod:`resflow.windows`); a window that fails fails each of its chips as a
:class:`ChipFailure` record that travels through the rest of the graph in their place. The
run then ends with every other chip written and each failure in the run report as a
per-input error, and ``--resume`` maps the failed chips again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from resflow.archive import Archive
    from resflow.chips import ChipRef

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
        The stage it failed in (``resflow.inference.settings.STAGE1`` ...).
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
