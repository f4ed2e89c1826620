"""The backend registry: engines are found through the ``resflow.backends`` entry points.

Modelled on xarray's engine plugins: the core never imports an engine, the entry points
are read once (cached), a backend whose import fails becomes a warning naming it rather
than a crash, and an unknown name gets an error listing what is installed and how to
install more.
"""

from __future__ import annotations

import functools
import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from resflow.errors import BackendError

GROUP = "resflow.backends"
INSTALL_HINT = 'pip install "resflow[dask]" or "resflow[spark]"'


def _entry_points() -> dict[str, EntryPoint]:
    """Entry points of the group, first one wins for a duplicated name (sorted by name)."""
    found: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        found.setdefault(ep.name, ep)
    return found


def _load(ep: EntryPoint) -> Any | None:
    """Load one entry point; a broken plugin is a warning, not a crash."""
    try:
        return ep.load()
    except Exception as exc:  # any import-time failure of a third-party plugin
        warnings.warn(f"resflow backend '{ep.name}' ({ep.value}) could not be loaded: "
                      f"{exc.__class__.__name__}: {exc}. Fix: {INSTALL_HINT}",
                      RuntimeWarning, stacklevel=3)
        return None


@functools.cache
def list_backends() -> dict[str, Any]:
    """Installed backends that load, by name, each mapped to its executor class.

    Cached: entry points are read once per process. Backends whose dependencies are missing
    (e.g. pyspark not installed) are left out with a warning naming them.
    """
    loaded = {name: _load(ep) for name, ep in _entry_points().items()}
    return {name: cls for name, cls in loaded.items() if cls is not None}


def declared_backends() -> list[str]:
    """Names declared in the entry-point group, whether or not they load."""
    return sorted(_entry_points())


def load_backend(name: str) -> Any:
    """The executor class of backend ``name``.

    Raises
    ------
    BackendError
        naming the installed backends and how to install more, for an unknown or
        unloadable name.
    """
    backends = list_backends()
    if name in backends:
        return backends[name]
    installed = ", ".join(sorted(backends)) or "none"
    problem = (f"backend '{name}' is declared but could not be loaded" if name in
               declared_backends() else f"unknown backend '{name}'")
    raise BackendError(f"backend '{name}'", f"{problem}; installed backends: {installed}",
                       INSTALL_HINT)
