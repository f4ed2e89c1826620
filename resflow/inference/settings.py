"""What every task of a run is told: the stage names and :class:`GraphSettings`.

Tasks carry these few locations and pixel settings, never models or pixels from the driver;
:func:`settings_from_config` makes them from a run's config on the driver and pins the
gallery's version there, so every task maps with the gallery the run started with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from resflow import storage
from resflow.inference.caches import gallery_key
from resflow.windows import WINDOW_CHIPS, WINDOW_HALO

if TYPE_CHECKING:
    from resflow.config import RunConfig

STAGE1 = "stage1-features"
STAGE2 = "stage2-hashing"
STAGE3 = "stage3-segment"
#: the regrouped plan's last stage: chips back with their partition, shards written
WRITE = "write-shards"
#: the three stages of one partition and its writes as one task (the ``fused`` plan)
FUSED = "stages-fused"


@dataclass(frozen=True)
class GraphSettings:
    """What every task needs to know: locations and pixel settings, cheap to ship.

    Parameters
    ----------
    archive, gallery, out
        Imagery archive, model gallery (``None`` = bundled default) and output store
        locations (paths or URLs, :mod:`resflow.storage`).
    halo
        Context pixels read around each prediction window, encoded with it (stages 1 and 3)
        and trimmed before writing.
    window
        Chips per side of a prediction window (:mod:`resflow.windows`).
    threshold
        Probability above which a pixel is building, for the mask.
    min_building_m2
        Smallest building kept in the mask, m^2 on the ground (:mod:`resflow.masks`).
    split_dip
        Probability dip between two roof peaks that splits a blob (:mod:`resflow.masks`).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``; a task uses the GPU its engine assigned.
    torch_threads
        Intra-op threads per worker process.
    gallery_version
        The sha256 of the gallery's manifest when the run started
        (:func:`~resflow.inference.caches.load_gallery`); empty: whatever the gallery holds
        when a task loads it.
    """

    archive: Path | str
    gallery: Path | str | None
    out: Path | str
    halo: int = WINDOW_HALO
    window: int = WINDOW_CHIPS
    threshold: float = 0.5
    min_building_m2: float = 0.0
    split_dip: float = 0.0
    device: str = "auto"
    torch_threads: int = 1
    gallery_version: str = ""


def settings_from_config(config: RunConfig) -> GraphSettings:
    """The task settings of a run, the gallery's version (its manifest's sha256) pinned
    here so that every task maps with the gallery the run started with."""
    if config.archive is None or config.out is None:
        raise ValueError("a run needs both an archive and an output location")
    return GraphSettings(archive=storage.normalise(config.archive), gallery=config.gallery,
                         out=storage.normalise(config.out),
                         halo=config.halo, window=config.window,
                         threshold=config.threshold,
                         min_building_m2=config.min_building_m2,
                         split_dip=config.split_dip, device=config.device,
                         torch_threads=config.torch_threads,
                         gallery_version=gallery_key(config.gallery)[1])
