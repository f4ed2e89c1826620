"""resflow: partitioned three-stage deep-learning inference over satellite imagery archives.

The core package is engine-agnostic: it never imports dask or pyspark. Engines are found
through the ``resflow.backends`` entry-point group (see :mod:`resflow.plugins`).

From Python, each command is a function with one calling convention (:mod:`resflow.api`):
:func:`resflow.ingest`, :func:`resflow.train`, :func:`resflow.run` (returns the run
report), :func:`resflow.predict` (rasters to a folder of maps, COGs, footprints and STAC),
:func:`resflow.export`, :func:`resflow.evaluate`, :func:`resflow.view` (the maps as one HTML
page), and :func:`resflow.open_maps` (the maps as an ``xarray.DataTree``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resflow.errors import ResflowError

if TYPE_CHECKING:
    from resflow.api import evaluate, export, ingest, open_maps, predict, run, train, view

__version__ = "0.1.0"
__all__ = ["ResflowError", "__version__", "evaluate", "export", "ingest", "open_maps",
           "predict", "run", "train", "view"]

_API = frozenset({"evaluate", "export", "ingest", "open_maps", "predict", "run", "train",
                  "view"})


def __getattr__(name: str) -> Any:
    """The Python API's functions (:mod:`resflow.api`), imported on first use, so that
    ``import resflow`` (which every worker task and CLI command does) loads neither torch
    nor xarray."""
    if name in _API:
        from resflow import api

        return getattr(api, name)
    raise AttributeError(f"module 'resflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names with the lazy ones, for tab completion in notebooks."""
    return sorted({*globals(), *_API})
