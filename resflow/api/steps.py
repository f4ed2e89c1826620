"""The steps around a run, from Python: ``resflow.ingest``, ``resflow.train``,
``resflow.export``, ``resflow.evaluate`` and ``resflow.view``.

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
    from pathlib import Path

    from resflow.gallery import Gallery
    from resflow.ingestion import IngestResult

__all__ = ["evaluate", "export", "ingest", "train", "view"]


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
    from resflow.ingestion import ingest as ingest_sources

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


@worded_for_python
def export(maps: storage.Location, *, cog_dir: storage.Location | None = None,
           footprints: storage.Location | None = None,
           stac_dir: storage.Location | None = None, **settings: Any) -> list[Path]:
    """Export the maps of a finished run as ``resflow export STORE`` does: COGs, building
    footprints and a STAC Collection, whichever are asked for.

    The maps are the output; ``cog_dir``, ``footprints`` and ``stac_dir`` name what to
    write, as on ``resflow run`` (at least one). Settings and every target are checked
    before anything is written: a refused export writes nothing.

    Parameters
    ----------
    maps
        A complete output store (from :func:`run`): a folder or a URL.
    cog_dir
        Write two Cloud-Optimized GeoTIFFs per scene (probability, mask) here.
    footprints
        Write every scene's buildings to this file, in WGS 84, in the format of its suffix
        (``.gpkg``, ``.fgb``, ``.parquet``, ``.geojson``).
    stac_dir
        Write a STAC Collection (one Item per scene) here.
    **settings
        Any :class:`~resflow.exports.settings.ExportConfig` field: ``threshold=0.4`` (cut
        the stored probability again), ``min_building_m2=8``, ``simplify_m=0.5``,
        ``footprints_format="fgb"``, ``overwrite=True`` (replace files already there; by
        default they are refused).

    Returns
    -------
    list of Path
        Every file written.

    Examples
    --------
    >>> resflow.export("maps.zarr", footprints="buildings.gpkg")     # doctest: +SKIP
    [PosixPath('buildings.gpkg')]
    """
    from resflow.exports import export_run
    from resflow.exports.settings import ExportConfig

    config = settings_of(ExportConfig, "resflow.export", **settings)
    return export_run(maps, cog_dir=cog_dir, footprints=footprints, stac_dir=stac_dir,
                      **config.model_dump())


@worded_for_python
def evaluate(maps: storage.Location, out: storage.Location | None = None, *,
             labels: Sequence[storage.Location], **settings: Any) -> dict[str, Any]:
    """Score the building maps of a finished run against footprint ``labels``, as
    ``resflow eval STORE --labels L`` does; ``eval.json`` and an overlay PNG per scored
    scene go to ``out``.

    Parameters
    ----------
    maps
        A complete output store (from :func:`run`).
    out
        The report folder; default: ``<store>-eval`` beside the store.
    labels
        Building footprints in any vector format GDAL/OGR reads, or georeferenced masks,
        any CRS.
    **settings
        Any :class:`~resflow.evaluation_settings.EvalConfig` field: ``threshold=0.4``
        (re-threshold the stored probability), ``covered=["scene"]`` (scenes the labels
        cover though no polygon reaches them: their false alarms count).

    Returns
    -------
    dict
        What ``eval.json`` holds: per scene and overall pixel and object scores, and every
        scene's seam ratios.

    Examples
    --------
    >>> scores = resflow.evaluate("maps.zarr", labels=["buildings.geojson"])  # doctest: +SKIP
    >>> scores["overall"]["object_f1"]                                        # doctest: +SKIP
    0.43
    """
    from resflow.evaluation import evaluate as score_maps
    from resflow.evaluation_settings import EvalConfig

    config = settings_of(EvalConfig, "resflow.evaluate", **settings)
    return score_maps(maps, list(labels), report_dir=out, **config.model_dump())


@worded_for_python
def view(maps: storage.Location, out: storage.Location | None = None, *,
         scenes: Sequence[str] | None = None, max_px: int = 2048) -> Path:
    """Write the maps of a finished run as one HTML page that needs no network, as
    ``resflow view STORE`` does: imagery (where the run's archive is still there), mask,
    probability and footprints per scene, toggled in a layer control.

    Parameters
    ----------
    maps
        A complete output store (from :func:`run`): a folder or a URL.
    out
        The HTML file, replaced if there; default: ``<store>-view.html`` beside the store.
    scenes
        Only these scenes (default: all).
    max_px
        Longest side of a scene's images, pixels: a larger scene is downsampled, and the
        page says so.

    Returns
    -------
    Path
        The page written.

    Examples
    --------
    >>> resflow.view("maps.zarr")                                   # doctest: +SKIP
    PosixPath('maps-view.html')
    """
    from resflow.exports.map_page import write_map_page

    return write_map_page(maps, out, scenes=scenes, max_px=max_px).path
