"""The backend registry: engines are found through the ``resflow.backends`` entry points.

Modelled on xarray's engine plugins: the core never imports an engine, the entry points
are read once (cached), a backend whose import fails becomes a warning naming it rather
than a crash, and an unknown name gets an error listing what is installed and how to
install more.

Two views, so that validating a config or building ``resflow --help`` stays light:
:func:`engine_classes` imports each backend's own module only (its settings model and flags;
engine modules import their engines inside their methods), while :func:`list_backends` and
:func:`load_backend` also import what an engine ``requires`` to run, so an engine whose
libraries are missing is reported as broken, not as installed.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from importlib.metadata import EntryPoint, entry_points

from resflow.engine_sections import EngineModels
from resflow.errors import BackendError
from resflow.executor import Executor

GROUP = "resflow.backends"
INSTALL_HINT = 'pip install "resflow[dask]" or "resflow[spark]"'


def _entry_points() -> dict[str, EntryPoint]:
    """Entry points of the group, first one wins for a duplicated name (sorted by name)."""
    found: dict[str, EntryPoint] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        found.setdefault(ep.name, ep)
    return found


def _broken(name: str, value: str, exc: Exception) -> None:
    """Warn that backend ``name`` cannot be used, and why."""
    warnings.warn(f"resflow backend '{name}' ({value}) could not be loaded: "
                  f"{exc.__class__.__name__}: {exc}. Fix: {INSTALL_HINT}",
                  RuntimeWarning, stacklevel=4)


def _load(ep: EntryPoint) -> type[Executor] | None:
    """Load one entry point; a broken plugin is a warning, not a crash."""
    try:
        cls = ep.load()
    except Exception as exc:  # any import-time failure of a third-party plugin
        _broken(ep.name, ep.value, exc)
        return None
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        _broken(ep.name, ep.value, TypeError("the entry point must name a subclass of "
                                             "resflow.executor.Executor"))
        return None
    return cls


@functools.cache
def engine_classes() -> dict[str, type[Executor]]:
    """Every declared backend whose own module imports, by name, mapped to its executor class.

    The light view: what a backend ``requires`` to run is not imported, so this serves config
    validation (each class's ``config_model``) and the CLI (its ``cli_options``). Cached;
    a backend whose module fails to import is left out with a warning naming it.
    """
    loaded = {name: _load(ep) for name, ep in _entry_points().items()}
    return {name: cls for name, cls in loaded.items() if cls is not None}


def engine_models() -> EngineModels:
    """The installed engines' settings models: the context a run config's engine sections
    are validated in (``load_config(..., engines=engine_models())``)."""
    classes = engine_classes()
    return EngineModels(
        models={name: cls.config_model for name, cls in classes.items() if cls.config_model},
        without_settings=frozenset(name for name, cls in classes.items()
                                   if cls.config_model is None),
        unloadable=frozenset(declared_backends()) - set(classes))


@functools.cache
def _runnable(name: str) -> bool:
    """Whether every module backend ``name`` requires imports; a warning names it if not."""
    cls = engine_classes()[name]
    for module in cls.requires:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a missing or broken engine library
            _broken(name, f"requires {module}", exc)
            return False
    return True


@functools.cache
def list_backends() -> dict[str, type[Executor]]:
    """Installed backends that can run, by name, each mapped to its executor class.

    Cached: entry points are read once per process. Backends whose dependencies are missing
    (e.g. pyspark not installed) are left out with a warning naming them.
    """
    return {name: cls for name, cls in engine_classes().items() if _runnable(name)}


def declared_backends() -> list[str]:
    """Names declared in the entry-point group, whether or not they load."""
    return sorted(_entry_points())


def load_backend(name: str) -> type[Executor]:
    """The executor class of backend ``name``.

    Raises
    ------
    BackendError
        naming the installed backends and how to install more, for an unknown or
        unloadable name.
    """
    classes = engine_classes()
    if name in classes and _runnable(name):
        return classes[name]
    installed = ", ".join(sorted(list_backends())) or "none"
    problem = (f"backend '{name}' is declared but could not be loaded" if name in
               declared_backends() else f"unknown backend '{name}'")
    raise BackendError(f"backend '{name}'", f"{problem}; installed backends: {installed}",
                       INSTALL_HINT)
