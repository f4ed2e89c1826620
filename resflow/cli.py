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
                                     "bench", "eval", "export", "predict", "view")

for _module in COMMAND_MODULES:
    importlib.import_module(f"resflow.commands.{_module}").register(app)


def _print_version(asked: bool) -> None:
    """``--version``: print the package version and exit before any command runs."""
    if asked:
        from resflow import __version__

        typer.echo(f"resflow {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="print the resflow version and exit")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="log debug lines too")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="log warnings and errors only")] = False,
    log_json: Annotated[bool, typer.Option(
        "--log-json", help="log one JSON object per line on stderr (time, level, logger, "
        "message and the record's fields)")] = False,
) -> None:
    """Partitioned three-stage deep-learning inference over satellite imagery archives.

    Log lines (progress, status, warnings, errors) go to stderr; what a command produces
    (the run's summary line, tables, JSON) to stdout.
    """
    from resflow.logs import configure

    if verbose and quiet:
        raise typer.BadParameter("give -v or -q, not both", param_hint="-v/-q")
    ctx.call_on_close(configure(1 if verbose else -1 if quiet else 0, json_lines=log_json))


def main() -> None:  # pragma: no cover - console entry point
    app()
