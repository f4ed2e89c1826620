"""The ``resflow`` command line: a thin layer that fills config objects and calls the core.

Command modules live in :mod:`resflow.commands` and import heavy libraries (torch, dask,
pyspark) inside their functions, so ``resflow --help`` is instant.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

app = typer.Typer(
    name="resflow",
    help="Partitioned three-stage deep-learning inference over satellite imagery archives.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES: tuple[str, ...] = ("ingest", "info", "doctor", "train", "gallery", "run", "demo",
                                     "bench", "eval", "export", "predict")

for _module in COMMAND_MODULES:
    importlib.import_module(f"resflow.commands.{_module}").register(app)


def _print_version(asked: bool) -> None:
    """``--version``: print the package version and exit before any command runs."""
    if asked:
        from resflow import __version__

        typer.echo(f"resflow {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="print the resflow version and exit")] = False) -> None:
    """Partitioned three-stage deep-learning inference over satellite imagery archives."""


def main() -> None:  # pragma: no cover - console entry point
    app()
