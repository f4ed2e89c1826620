"""The ``resflow`` command line: a thin layer that fills config objects and calls the core.

Command modules live in :mod:`resflow.commands` and import heavy libraries (torch, dask,
pyspark) inside their functions, so ``resflow --help`` is instant.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="resflow",
    help="Partitioned three-stage deep-learning inference over satellite imagery archives.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES: tuple[str, ...] = ("ingest", "info", "doctor", "train", "gallery", "run", "demo",
                                     "bench", "eval", "export")

for _module in COMMAND_MODULES:
    importlib.import_module(f"resflow.commands.{_module}").register(app)


def main() -> None:  # pragma: no cover - console entry point
    app()
