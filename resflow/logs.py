"""Where the command line's log lines go: plain lines or one JSON object per line, on stderr.

resflow's library code logs to the ``resflow`` logger and configures nothing, so a notebook
or a host application decides where its records go. The ``resflow`` command calls
:func:`configure` once per invocation: ``-q`` keeps warnings and errors, ``-v`` adds debug
lines, ``--log-json`` makes every line a JSON object a log shipper can parse. Standard output
is left to what a command produces (the run's summary line, tables, JSON documents).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

LOGGER = "resflow"
"""The logger every resflow module logs under (``resflow.<module>``)."""

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime"}
"""Attributes every log record has: anything else on a record is a structured field, given
by the caller as ``extra={...}``."""


class PlainLines(logging.Formatter):
    """The message as a person reads it: warnings and errors say so first.

    >>> record = logging.LogRecord("resflow", logging.ERROR, "", 0, "no archive", None, None)
    >>> PlainLines().format(record)
    'error: no archive'
    """

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.ERROR:
            text = f"error: {text}"
        elif record.levelno >= logging.WARNING:
            text = f"warning: {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonLines(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message`` and the record's structured fields (``chips_done``, ``path``, ...).

    >>> record = logging.LogRecord("resflow", logging.INFO, "", 0, "wrote %s", ("a.tif",), None)
    >>> record.path = "a.tif"
    >>> doc = json.loads(JsonLines().format(record))
    >>> doc["level"], doc["message"], doc["path"]
    ('INFO', 'wrote a.tif', 'a.tif')
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        doc.update((key, value) for key, value in vars(record).items()
                   if key not in _RECORD_FIELDS and not key.startswith("_"))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted, so a test's
    captured stream or a notebook's replaced one gets the lines."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """The stream is always the current stderr; the one given is ignored."""


def configure(verbosity: int = 0, *, json_lines: bool = False) -> Callable[[], None]:
    """Send ``resflow`` records to stderr: ``verbosity`` -1 warnings and errors only, 0 info
    too, 1 debug too; as JSON objects with ``json_lines``.

    Returns the undo: the CLI calls it when the command ends, so a command run in-process
    (a test, a notebook's ``CliRunner``) leaves the logger as it found it.
    """
    logger = logging.getLogger(LOGGER)
    handler = _CurrentStderr()
    handler.setFormatter(JsonLines() if json_lines else PlainLines())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else
                    logging.DEBUG if verbosity > 0 else logging.INFO)

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(level)

    return undo
