"""The steps around a run, from Python: ``resflow.ingest``, ``resflow.train``,
``resflow.export`` and ``resflow.evaluate``.

Each is its command as a call, in the API's one calling convention: the input first
(positional), then ``out``, then the command's settings as keyword arguments named as in a
YAML file or ``--set`` (validated the same way: a bad one is a ``ConfigError`` naming the
field). Nothing is printed; refusals name keyword arguments where the CLI names flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from resflow import storage
from resflow.api.calls import settings_of, worded_for_python

if TYPE_CHECKING:
    from resflow.gallery import Gallery
    from resflow.ingest import IngestResult

__all__ = ["ingest", "train"]


@worded_for_python
def ingest(sources: Sequence[storage.Location], out: storage.Location, *,
           rgb: Sequence[int] | None = None, progress: bool = False,
           **settings: Any) -> IngestResult:
    """Ingest rasters into the imagery archive ``out``, as ``resflow ingest SRC... --out
    OUT`` does.

    Parameters
    ----------
    sources
        Raster files, folders of rasters, URLs (``s3://...``) or STAC files.
    out
        The archive, created or updated in place: a folder or a URL.
    rgb
        0-based band indices feeding R, G, B for every source (``--rgb 3,2,1`` is
        ``rgb=[2, 1, 0]``); default: by band names, as the command.
    progress
        Show a bar over scenes.
    **settings
        Any :class:`~resflow.config.IngestConfig` field: ``chip=256``, ``gsd=0.3`` (metres;
        ``None`` keeps each scene's own), ``workers=2``, ``stac_asset="visual"``...

    Returns
    -------
    IngestResult
        The scenes ingested, skipped as unchanged, and refused (each with where, problem
        and fix): a refused input is not an exception, the others still ingest.

    Examples
    --------
    >>> done = resflow.ingest(["scene.tif"], "archive.zarr", gsd=0.3)  # doctest: +SKIP
    >>> done.ingested                                               # doctest: +SKIP
    ['scene']
    """
    from resflow.config import IngestConfig
    from resflow.ingest import ingest as ingest_sources

    config = settings_of(IngestConfig, "resflow.ingest", **settings)
    return ingest_sources(sources, out, config, rgb=rgb, progress=progress)


@worded_for_python
def train(archive: storage.Location, out: storage.Location, *,
          labels: Sequence[storage.Location], scenes: Sequence[str] | None = None,
          holdout: Sequence[str] = (), **settings: Any) -> Gallery:
    """Train a model gallery on ``archive`` and building ``labels`` into the folder ``out``,
    as ``resflow train ARCHIVE --labels L --out GALLERY`` does.

    Parameters
    ----------
    archive
        The imagery archive (from :func:`ingest`).
    out
        The gallery folder to write (manifest, weights, ``metrics.json``).
    labels
        Building footprints in any vector format OGR reads, or georeferenced masks, any
        CRS; each file labels the scenes its extent covers.
    scenes
        Train on these labelled scenes only (default: all).
    holdout
        Labelled scenes scored whole as the test set and never trained on (default: the
        bottom 20 % of every labelled scene).
    **settings
        Any training setting (``seed=0``, ``mono_steps=600``, ``buckets=4``...:
        ``resflow train --print-config`` lists them).

    Returns
    -------
    Gallery
        The gallery written; its manifest holds the settings and the held-out scores.
    """
    from resflow.training.config import training_settings
    from resflow.training.train import train as train_gallery

    config = settings_of(training_settings(), "resflow.train", **settings)
    return train_gallery(archive, labels, out, scenes=scenes, holdout=holdout,
                         **config.model_dump())
