"""Mapping from Python: ``resflow.run``, ``resflow.predict`` and ``resflow.open_maps``.

:func:`run` is ``resflow run`` as a call (the same settings, checks and graph,
:func:`resflow.service.run_config`; it returns the run report and can run on a cluster the
caller already has), :func:`predict` is ``resflow predict``, and :func:`open_maps` opens an
output store as one ``xarray.DataTree``, a node per scene.

All are quiet: nothing is printed. What a person may want to see goes to the ``resflow``
logger: the engine's dashboard link (INFO) when the run starts, and each input or chip the
run could not map (WARNING). Refusals name keyword arguments where the CLI's name flags
(:func:`resflow.errors.python_wording`). The core never imports an engine: this module
imports only what a call needs, when it is called, so ``import resflow`` stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from resflow import storage
from resflow.api.calls import settings_of, worded_for_python
from resflow.errors import ConfigError, ResflowError, python_wording

if TYPE_CHECKING:
    import xarray as xr

    from resflow.config import IngestConfig, RunConfig
    from resflow.prediction import Prediction
    from resflow.report import RunReport

__all__ = ["open_maps", "predict", "run"]

logger = logging.getLogger("resflow")


@worded_for_python
def run(archive: storage.Location, out: storage.Location, backend: str = "dask",
        client: Any = None, *, progress: bool = False, **settings: Any) -> RunReport:
    """Map the buildings of every scene of ``archive`` into the output store ``out``.

    What ``resflow run ARCHIVE --out OUT`` does, as one call that returns the run report
    (also kept in ``OUT/run_report.json``). Settings are validated as the CLI validates its
    flags and YAML file, and the archive, gallery and output location are checked before
    an engine starts, so a refused run starts no cluster and writes nothing.

    Parameters
    ----------
    archive
        The imagery archive (from ``resflow ingest``): a folder or a URL (``s3://...``).
    out
        The output store: a folder or a URL.
    backend
        The engine: ``"dask"``, ``"spark"``, ``"local"`` or any installed backend
        (``resflow doctor`` lists them).
    client
        A cluster to run on that the caller already has, used as is and never closed: a
        ``distributed.Client`` for ``backend="dask"``, a ``pyspark.sql.SparkSession`` for
        ``backend="spark"``. ``None`` starts the engine from its settings (an embedded
        cluster by default) and closes it again after the run.
    progress
        Show the run's progress in chips and km^2 while it computes (:mod:`resflow.bars`).
        Off by default: in a notebook the Dask dashboard shows the stages as they run, and
        a library call that draws bars into every cell that uses it is noise.
    **settings
        Any :class:`~resflow.config.RunConfig` field (``batch_size=4``, ``plan="regrouped"``,
        ``device="cpu"``, ``overwrite=True``, ``gallery=...``), and engine sections as
        dicts, named as in a YAML file (``dask={"workers": 2}``, ``spark={"master": ...}``).

    Returns
    -------
    RunReport
        What the run did: ``summary_line()``, chips, km^2, seconds per stage, the cluster
        (``report.cluster.details`` holds the engine's description, with its dashboard
        address), the exact config, and ``errors``: inputs and chips that could not be
        mapped, each also logged as a warning. With errors the store is left incomplete
        for ``resume=True`` to finish.

    Raises
    ------
    ConfigError
        A setting that is unknown or out of range, naming the field (``'dask.workers'``).
    BackendError
        An engine that is not installed, or a ``client`` that is not the engine's session.
    resflow.store.targets.OutputComplete
        ``resume=True`` over an output that is already complete (nothing to do).
    ResflowError
        An unusable archive, gallery or output location, before any work.

    Examples
    --------
    >>> from distributed import Client, LocalCluster           # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> report = resflow.run("samples.zarr", "maps.zarr", client=client)  # doctest: +SKIP
    >>> report.summary_line()                                   # doctest: +SKIP
    'resflow: 52 chips, 0.29 km^2 in 9.1 s = 0.03 km^2/s on dask (2 workers x 1 thread) ...'
    """
    config = _run_config("resflow.run", archive=archive, out=out, backend=backend, **settings)
    return _run(config, client, progress=progress)


@worded_for_python
def predict(sources: Sequence[storage.Location], out: storage.Location, backend: str = "dask",
            client: Any = None, *, keep_archive: bool = False, ingest: IngestConfig | None = None,
            rgb: Sequence[int] | None = None, progress: bool = False,
            **settings: Any) -> Prediction:
    """Map the buildings of ``sources`` into the folder ``out``: ingest, run and export.

    What ``resflow predict SRC... --out OUT`` does, as one call (:mod:`resflow.prediction`):
    the sources are ingested into ``OUT/archive.zarr`` as :func:`resflow.ingestion.ingest`
    does, mapped into ``OUT/maps.zarr`` as :func:`run` does, and exported as COGs
    (``OUT/cogs``), footprints (``OUT/footprints.gpkg``, WGS 84) and a STAC Collection
    (``OUT/stac``). The archive is removed after a run that mapped every chip, unless
    ``keep_archive``; a run that did not finish keeps it for ``resume=True``.

    Parameters
    ----------
    sources
        Raster files, folders of rasters, URLs (``s3://...``) or STAC files, as ingest takes.
    out
        A local folder: missing, empty, or an earlier predict folder (with ``resume=True``
        or ``overwrite=True``).
    backend, client, progress, **settings
        As :func:`run` (``resume=True``, ``overwrite=True``, ``device="cpu"``...), but for
        the settings that place files (``archive``, ``out``, ``cog_dir``, ``footprints``,
        ``stac``, ``stac_dir``), which the folder fixes.
    keep_archive
        Keep ``OUT/archive.zarr`` after a run that mapped every chip.
    ingest
        Ingest settings (chip, working resolution...); default: ingest's.
    rgb
        0-based band indices feeding R, G, B for every source, as ingest's ``rgb``.

    Returns
    -------
    Prediction
        The run report and the paths written; ``refused`` lists inputs that could not be
        ingested (each also logged as a warning).

    Raises
    ------
    resflow.store.targets.OutputComplete
        ``resume=True`` over a folder whose maps are complete (nothing to do).
    ResflowError
        Bad settings, a folder that may not be written, sources that differ from those a
        resumed folder was started from, or no source that could be ingested. A refused
        new job leaves nothing it made.

    Examples
    --------
    >>> done = resflow.predict(["scene.tif"], "buildings", backend="local")  # doctest: +SKIP
    >>> done.footprints                                          # doctest: +SKIP
    PosixPath('buildings/footprints.gpkg')
    """
    from resflow import prediction as jobs
    from resflow.config import IngestConfig

    folder = jobs.PredictFolder.at(out)
    placed = sorted(set(settings) & set(jobs.folder_settings(folder)))
    if placed:
        raise ConfigError(f"resflow.predict: field '{placed[0]}'", "predict places the "
                          "archive, the maps and the exports in its folder itself",
                          "leave it out; the files go under out")
    config = _run_config("resflow.predict", backend=backend, **settings,
                         **jobs.folder_settings(folder))
    _check_engine(config, client)
    job = jobs.start(folder, sources, resume=config.resume, overwrite=config.overwrite)
    refused = jobs.prepare_archive(job, sources, ingest or IngestConfig(), rgb=rgb,
                                   progress=progress)
    for record in refused:
        logger.warning("input refused: %s: %s. Fix: %s.", record["where"], record["problem"],
                       record["fix"])
    jobs.check_run(job, config)
    report = _run(config, client, progress=progress)
    archive = jobs.finish(job, keep_archive=keep_archive) if not report.errors else \
        folder.archive
    return jobs.Prediction(report=report, folder=folder.path, maps=folder.maps,
                           cogs=folder.cogs, footprints=folder.footprints, stac=folder.stac,
                           archive=archive, refused=refused)


def _run_config(caller: str, **settings: Any) -> RunConfig:
    """The run config of a call's arguments, validated as the CLI validates its flags."""
    from resflow.config import RunConfig
    from resflow.plugins import engine_models

    return settings_of(RunConfig, caller, engines=engine_models(), **settings)


def _run(config: RunConfig, client: Any, *, progress: bool) -> RunReport:
    """Run the graph of a checked run config (:func:`resflow.service.run_config`); each
    input or chip it could not map is logged as a warning, worded for Python."""
    from resflow.service import run_config

    report = run_config(config, client=client, progress=progress).report
    for error in report.errors:
        logger.warning("input error: %s: %s. Fix: %s.", error["where"], error["problem"],
                       python_wording(error["fix"]))
    return report


def _check_engine(config: RunConfig, client: Any) -> None:
    """Refuse, before any work, an engine that will not load or cannot run the plan, and a
    client that is not its session."""
    from resflow.plugins import load_backend
    from resflow.preflight import check_plan
    from resflow.service import session

    engine = load_backend(config.backend)
    check_plan(engine, config.plan)
    session(engine, client)


def open_maps(out: storage.Location, **open_kwargs: Any) -> xr.DataTree:
    """The maps of an output store as one tree: a node per scene, CF-decoded, lazy.

    Each node is one scene's group (named as in the store, ``sample_geotiff``; its
    ``scene`` attribute is the archive's scene name) on the scene's own grid and CRS:
    ``probability`` as floats in ``[0, 1]`` and ``mask`` as 0/1, both NaN where nothing
    was mapped (outside the scene's data, chips not written yet); ``chip_bucket`` the
    bucket of each chip (NaN: not written yet); ``x``, ``y`` the pixel centres and
    ``spatial_ref`` the grid mapping, so rioxarray's ``node.to_dataset().rio.crs`` and
    ``.rio.transform()`` give the georeferencing. The root's attributes are the store's:
    ``complete``, ``bucket_models`` (the model of each bucket), ``run_config`` and, once a
    run finished, ``run_report`` (its ``summary`` is the one-line summary).

    Parameters
    ----------
    out
        The output store: a folder or a URL (``s3://bucket/maps.zarr``).
    **open_kwargs
        Passed to ``xarray.open_datatree``: ``chunks={}`` for Dask arrays,
        ``mask_and_scale=False`` for the stored uint8 values (255 = not mapped).

    Raises
    ------
    ResflowError
        Nothing is at ``out``, or it is not a resflow output store of this format.

    Examples
    --------
    >>> maps = resflow.open_maps("maps.zarr")                    # doctest: +SKIP
    >>> maps["sample_geotiff"].probability.plot()                 # doctest: +SKIP
    """
    import xarray as xr

    from resflow.store.writer import OutputStore

    location = storage.normalise(out)
    if not storage.exists(location):
        raise ResflowError(storage.display(location), "no output store is there",
                           "check the location, or make one with resflow.run")
    store = OutputStore.open(location)  # refuses what is not a resflow output
    return xr.open_datatree(storage.zarr_store(store.path, read_only=True), engine="zarr",
                            **open_kwargs)
