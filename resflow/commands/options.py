"""The flags several commands share, so each concept has one spelling and one meaning.

Every command whose settings are a model (``run`` and ``demo``: the run config; ``ingest``;
``train``) resolves them the same way, lowest precedence first: the model's defaults, the
YAML file of ``--config``, each ``--set KEY=VALUE`` in order, then the command's own flags
(:func:`resflow.config.load_config`). ``--print-config`` prints the result as YAML and exits
0 before any work. Choices (``--backend``, ``--plan``) are listed in ``--help`` and checked
by the command line itself.

Nothing heavy is imported here: ``resflow --help`` builds every command's flags.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from resflow.plugins import INSTALL_HINT, declared_backends

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pydantic import BaseModel

ConfigFile = Annotated[Path | None, typer.Option(
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


Backend = Annotated[str | None, typer.Option(
    parser=parse_backend, metavar=f"<{'|'.join(declared_backends())}>",
    help="the engine: an installed backend (`resflow doctor` lists them; default dask)")]


def show_config(settings: BaseModel) -> None:
    """Print ``settings`` as the YAML file that reproduces them (``--print-config``)."""
    from resflow.config import dump_config

    typer.echo(dump_config(settings), nl=False)


def resolve_run_config(config: Path | None, sets: list[str] | None, print_config: bool,
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
