"""resflow from Python: map an archive and open the maps, for notebooks and scripts.

Two functions, exported as ``resflow.run`` and ``resflow.open_maps``:

- :func:`run` is ``resflow run`` as a call: the same validated settings, the same checks
  before any engine starts, the same graph; it returns the run report instead of printing
  it, and it can run on a cluster the caller already has (a ``distributed.Client`` or a
  ``SparkSession``), which it uses as is and never closes.
- :func:`open_maps` opens an output store as one ``xarray.DataTree``, a node per scene.

Both are quiet: nothing is printed. What a person may want to see goes to the ``resflow``
logger: the engine's dashboard link (INFO) when the run starts, and each input or chip the
run could not map (WARNING). Progress bars are off unless ``progress=True``: in a notebook
the Dask dashboard shows the stages as they run, and a library call that draws bars into
every cell that uses it is noise.

The core never imports an engine: this module imports only what a call needs, when it is
called, so ``import resflow`` stays light.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from resflow import storage
from resflow.errors import BackendError, ConfigError, ResflowError

if TYPE_CHECKING:
    import xarray as xr

    from resflow.config import RunConfig
    from resflow.executor import Executor
    from resflow.report import RunReport

__all__ = ["ResflowError", "open_maps", "run"]

logger = logging.getLogger("resflow")

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
        Show a progress bar per stage while the run computes (off: watch the dashboard).
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
    resflow.outputs.OutputComplete
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
    from resflow.config import RunConfig, load_config
    from resflow.graph import run_graph
    from resflow.plugins import load_backend
    from resflow.preflight import check_run
    from resflow.redaction import redact

    _refuse_loader_parameters(settings, load_config)
    config: RunConfig = load_config(None, RunConfig, origin="resflow.run() argument",
                                    archive=archive, out=out, backend=backend, **settings)
    executor_class = load_backend(config.backend)
    session = _session(executor_class, client)
    check_run(config)
    with _executor(executor_class, config, session, progress=progress) as executor:
        if executor.dashboard_link:
            logger.info("%s dashboard: %s", config.backend, redact(executor.dashboard_link))
        report = run_graph(config, executor).report
    for error in report.errors:
        logger.warning("input error: %s: %s. Fix: %s.", error["where"], error["problem"],
                       error["fix"])
    return report


def _refuse_loader_parameters(settings: dict[str, Any], loader: Callable[..., Any]) -> None:
    """Refuse a setting named like one of ``loader``'s own parameters (``sets``, ``model``),
    which ``loader`` would take as that parameter instead of refusing it as a setting.

    Raises
    ------
    ConfigError
        naming the setting.
    """
    own = [name for name, parameter in inspect.signature(loader).parameters.items()
           if parameter.kind is not inspect.Parameter.VAR_KEYWORD and name in settings]
    if own:
        raise ConfigError(f"resflow.run: field '{own[0]}'", "not a run setting",
                          "pass run settings (the fields under Configuration in the README) "
                          "and engine sections only")


def _session(executor_class: type[Executor], client: Any) -> dict[str, Any]:
    """``client`` as the keyword argument the engine's constructor takes it under (the
    engine declares it: :attr:`resflow.executor.Executor.session`); empty without a client.

    Raises
    ------
    BackendError
        The engine cannot run on an existing session, or ``client`` is not its kind.
    """
    if client is None:
        return {}
    from resflow.plugins import engine_classes

    backend = executor_class.name
    takers = {name: cls.session for name, cls in engine_classes().items() if cls.session}
    if executor_class.session is None:
        takes = " or ".join(f"backend='{name}'" for name in sorted(takers))
        raise BackendError("client", f"the '{backend}' engine cannot run on an existing "
                           "cluster", f"leave client out, or pass it with {takes}")
    keyword, module, cls_name = executor_class.session
    if not isinstance(client, getattr(importlib.import_module(module), cls_name)):
        given = type(client).__module__.split(".")[0]
        owner = [name for name, (_, m, _) in takers.items() if m.split(".")[0] == given]
        fix = (f"pass backend='{owner[0]}'" if owner else
               f"pass a {module}.{cls_name}, or leave client out to start one")
        raise BackendError("client", f"the '{backend}' engine runs on a {module}.{cls_name}, "
                           f"not a {type(client).__module__}.{type(client).__qualname__}", fix)
    return {keyword: client}


def _executor(executor_class: type[Executor], config: RunConfig, session: dict[str, Any], *,
              progress: bool) -> Executor:
    """The run's engine: from its settings, as ``resflow run`` builds it, or on the caller's
    ``session`` (:func:`_session`)."""
    if not session:
        return executor_class.from_config(config, progress=progress)
    # what from_config passes (the engine's settings; no GPUs for device="cpu"), plus the
    # session
    return executor_class(config.engine_settings(config.backend),  # type: ignore[call-arg]
                          **session, gpus=[] if config.device == "cpu" else None,
                          progress=progress)


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

    from resflow.outputs import OutputStore

    location = storage.normalise(out)
    if not storage.exists(location):
        raise ResflowError(storage.display(location), "no output store is there",
                           "check the location, or make one with resflow.run")
    store = OutputStore.open(location)  # refuses what is not a resflow output
    return xr.open_datatree(storage.zarr_store(store.path, read_only=True), engine="zarr",
                            **open_kwargs)
