"""The flags several commands share, so each concept has one spelling and one meaning.

Every command whose settings are a model (``run``, ``demo`` and ``predict``: the run
config; ``ingest``; ``train``; ``eval``; ``export``) resolves them the same way, lowest
precedence first: the model's defaults, the YAML file of ``--config``, each ``--set
KEY=VALUE`` in order, then the command's own flags (:func:`resflow.config.load_config`).
``--print-config`` prints the result as YAML and exits 0 before any work. Choices
(``--backend``, ``--plan``) are listed in ``--help`` and checked by the command line
itself. Locations are ``str``, so an ``s3://`` URL keeps its slashes; a flag whose files
only local disk takes refuses a URL (:func:`local_path`).

Nothing heavy is imported here: ``resflow --help`` builds every command's flags.
"""

from __future__ import annotations

import logging
import typing
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from resflow.plugins import INSTALL_HINT, declared_backends

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pydantic import BaseModel

ConfigFile = Annotated[str | None, typer.Option(
    "--config", help="YAML file of this command's settings, applied first: then --set, then "
    "the other flags (--print-config shows every setting)")]

Sets = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="set one setting (repeatable), after --config and "
    "before the other flags: any field, dotted for a section (dask.workers=4); VALUE is read "
    "as YAML, so 0.6, true and null are a number, a bool and null")]

PrintConfig = Annotated[bool, typer.Option(
    "--print-config", help="print the resolved settings as YAML and exit, doing nothing")]

PlanChoice = Literal["fused", "regrouped"]
"""The graph plans ``--plan`` accepts: ``RunConfig.plan``'s values (a test holds them equal;
importing the config here would slow every ``resflow`` command down)."""

PlanName = StrEnum("PlanName", [(plan, plan) for plan in typing.get_args(PlanChoice)])
""":data:`PlanChoice` as an enum, for a repeatable ``--plan``: typer lists and checks the
choices of a list only when they are an enum's."""


def parse_backend(value: str) -> str:
    """``--backend``: one of the declared engines, or an error listing them.

    Declared, not loaded: reading the entry points imports no engine, and
    :func:`resflow.plugins.load_backend` says later why a declared one does not load.
    """
    names = declared_backends()
    if value not in names:
        # Two lines, so the engines stay on one line of the terminal's error box.
        raise typer.BadParameter(f"unknown backend '{value}'\ninstalled backends: "
                                 f"{', '.join(names)}. Fix: {INSTALL_HINT}")
    return value


BACKEND_METAVAR = f"<{'|'.join(declared_backends())}>"
"""``--backend``'s choices as ``--help`` shows them."""

Backend = Annotated[str | None, typer.Option(
    parser=parse_backend, metavar=BACKEND_METAVAR,
    help="the engine: an installed backend (`resflow doctor` lists them; default dask)")]


@typing.overload
def local_path(flag: str, location: str, fix: str) -> Path: ...


@typing.overload
def local_path(flag: str, location: str | None, fix: str) -> Path | None: ...


def local_path(flag: str, location: str | None, fix: str) -> Path | None:
    """``location`` as a local path, or ``None`` for ``None``.

    For the flags whose files only local disk takes: a URL would otherwise become a
    relative path (``Path`` folds ``s3://b`` into ``s3:/b``), so it is refused
    before any work.

    Raises
    ------
    ConfigError
        naming ``flag`` and the URL, with ``fix``.
    """
    from resflow.errors import ConfigError
    from resflow.storage import is_url, normalise

    if location is None:
        return None
    if is_url(location):
        raise ConfigError(flag, f"'{location}' is a URL, and {flag} takes a local path only",
                          fix)
    return Path(normalise(location))


def show_config(settings: BaseModel) -> None:
    """Print ``settings`` as the YAML file that reproduces them (``--print-config``)."""
    from resflow.config import dump_config

    typer.echo(dump_config(settings), nl=False)


def resolve_run_config(config: str | None, sets: list[str] | None, print_config: bool,
                       **overrides: Any) -> Any:
    """The run config of ``run`` and ``demo``, resolved from ``--config``, ``--set`` and the
    command's flags (:func:`resflow.config.load_config`); ``None`` once ``--print-config``
    has printed it. Bad settings end the command: the error on stderr, exit code 2."""
    from resflow.config import RunConfig, load_config
    from resflow.errors import ResflowError
    from resflow.plugins import engine_models

    try:
        settings = load_config(config, RunConfig, sets=sets or (), engines=engine_models(),
                               **overrides)
    except ResflowError as err:
        logger.error("%s", err)
        raise typer.Exit(2) from None
    if print_config:
        show_config(settings)
        return None
    return settings
