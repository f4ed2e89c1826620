"""What every function of the Python API shares: settings given as keyword arguments are
validated as the command line validates its flags, and refusals are worded for Python.

A refusal is raised deep in code the CLI and the API share, worded for the command line
(``pass --resume``); :func:`worded_for_python` rewords it for a caller of a function
(``pass resume=True``: :meth:`resflow.errors.ResflowError.for_python`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from resflow.errors import ConfigError, ResflowError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from resflow.engine_sections import EngineModels

P = ParamSpec("P")
R = TypeVar("R")


def worded_for_python(call: Callable[P, R]) -> Callable[P, R]:
    """``call`` whose refusals name keyword arguments (``resume=True``) where the CLI's
    name flags (``--resume``)."""
    @functools.wraps(call)
    def worded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except ResflowError as err:
            err.for_python()
            raise

    return worded


def settings_of(model: type[BaseModel], caller: str, *, engines: EngineModels | None = None,
                **settings: Any) -> Any:
    """``model`` from its defaults and ``settings``, the keyword arguments of ``caller``
    (:func:`resflow.config.load_config`, as for a command's flags).

    Raises
    ------
    ConfigError
        naming the first bad field, or a setting named like one of ``load_config``'s own
        parameters (``sets``, ``model``), which it would otherwise take as that parameter.
    """
    from resflow.config import load_config

    own = [name for name, parameter in inspect.signature(load_config).parameters.items()
           if parameter.kind is not inspect.Parameter.VAR_KEYWORD and name in settings]
    if own:
        raise ConfigError(f"{caller}: field '{own[0]}'", f"not a setting of {caller}",
                          f"pass the fields of {model.__name__} only "
                          "(docs/python-api.md lists them)")
    return load_config(None, model, origin=f"{caller}() argument", engines=engines,
                       **settings)
