"""How every command answers a refusal: one line on stderr and exit code 2.

A :class:`~resflow.errors.ResflowError` already names where, what and the fix, so a command
needs no handler of its own: :func:`exit_2_on_refusal` wraps it once, and a refusal raised
anywhere inside it ends the command the same way.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from resflow.errors import ResflowError

P = ParamSpec("P")
R = TypeVar("R")


def exit_2_on_refusal(command: Callable[P, R]) -> Callable[P, R]:
    """``command``, with a refusal logged as one error line (by the command's own module
    logger, so ``--log-json`` names where it came from) and turned into exit code 2."""

    @functools.wraps(command)
    def refusing(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ResflowError as err:
            logging.getLogger(command.__module__).error("%s", err)
            raise typer.Exit(2) from None

    return refusing
