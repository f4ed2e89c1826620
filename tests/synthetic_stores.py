"""A synthetic output store whose large, ragged buildings cross many chip and window edges
and which holds a chip without data: what the export and STAC tests read besides a real run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from resflow.archive import Archive
from resflow.masks import building_mask, min_pixels
from resflow.planning import shards_of
from resflow.store.format import NO_DATA_CHIP, quantise
from resflow.store.writer import OutputStore

RUN = {"threshold": 0.5, "halo": 32, "gallery": None, "backend": "local",
       "min_building_m2": 8.0, "split_dip": 0.0}
"""The synthetic store's run settings: blobs kept whole, so that many span several windows."""
MODELS = {0: "mono", 1: "bucket-1"}
EMPTY_CHIP = (1, 1)
"""The chip of every synthetic scene that holds no valid pixel (bucket -1, not mapped)."""


def blobs(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random probability field: ragged blobs of every size, some with holes,
    many far larger than a chip."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).random((height, width)), 6)
    field = (field - field.min()) / (field.max() - field.min())
    return np.clip((field - 0.35) * 3, 0, 1)


def write_blobs(archive: Archive, out: Path) -> OutputStore:
    """A complete store of :func:`blobs`, masked as the run masks (whole scene, mirrored by
    the halo, specks under 8 m^2 dropped), chip ``EMPTY_CHIP`` not mapped, and bucket
    ``(row + col) % 2`` for every other chip."""
    store = OutputStore.create(out, archive, run_config=RUN, shard_chips=2,
                               bucket_models=MODELS)
    for n, (scene, info) in enumerate(sorted(archive.scenes.items())):
        probability = quantise(blobs(info.height, info.width, n))
        r, c = EMPTY_CHIP
        empty = np.s_[r * info.chip:(r + 1) * info.chip, c * info.chip:(c + 1) * info.chip]
        probability[empty] = 0
        mask = building_mask(probability, RUN["threshold"] * 254,
                             min_pixels(RUN["min_building_m2"], info.gsd_m),
                             reflect=RUN["halo"], split=RUN["split_dip"] * 254).astype(np.uint8)
        for shard in range(shards_of(info, store.shard_chips)):
            refs = archive.shard_chips(scene, shard, store.shard_chips)
            windows = [np.s_[r.y0:r.y0 + r.height, r.x0:r.x0 + r.width] for r in refs]
            store.write_shard(scene, shard, refs, [probability[w] for w in windows],
                              [mask[w] for w in windows],
                              [NO_DATA_CHIP if (r.row, r.col) == EMPTY_CHIP
                               else (r.row + r.col) % 2 for r in refs])
    store.finalize({"summary": "synthetic blobs", "finished_utc": "2025-01-02T03:04:05+00:00"})
    return store
