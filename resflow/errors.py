"""One error type that always says what happened, where, and how to fix it.

Every refusal resflow makes (bad raster, malformed config, tampered gallery, unknown
backend) is a :class:`ResflowError` so the CLI can print it as one clear message and exit
non-zero, and reports can record it per input without a traceback.
"""

from __future__ import annotations

import re
from typing import Self

PYTHON_WORDING: dict[str, str] = {
    "the same command plus --resume": "the same call with resume=True",
    "--overwrite": "overwrite=True",
    "--resume": "resume=True",
    "--keep-archive": "keep_archive=True",
    "--out folder": "out folder",
}
"""How a fix worded for the command line reads for a caller of :mod:`resflow.api`: flags
become keyword arguments. The one place that knows both spellings; longer phrases first."""

_COMMAND = re.compile(r"`resflow (run|predict)\b([^`]*)`")
"""A whole command quoted in a fix (``resflow run ... --overwrite`` in backquotes), said as
the call instead."""


def python_wording(text: str) -> str:
    """``text`` with command lines and flags said as :mod:`resflow.api` calls and keywords.

    Examples
    --------
    >>> python_wording("pass --resume to finish it or --overwrite to replace it")
    'pass resume=True to finish it or overwrite=True to replace it'
    >>> python_wording("recompute it with `resflow run --overwrite`")
    'recompute it with `resflow.run(..., overwrite=True)`'
    """
    def call(match: re.Match[str]) -> str:
        keywords = [word for flag, word in PYTHON_WORDING.items()
                    if "=" in word and re.search(rf"{flag}\b", match[2])]
        return f"`resflow.{match[1]}({', '.join(['...', *keywords])})`"

    text = _COMMAND.sub(call, text)
    for flag, word in PYTHON_WORDING.items():
        text = re.sub(rf"{re.escape(flag)}(?![\w-])", word, text)
    return text


class ResflowError(Exception):
    """A user-facing error: the thing at fault, the problem, and the fix.

    Parameters
    ----------
    where
        The file, store, field or address at fault (``"data/scene.tif"``, ``"config.backend"``).
    problem
        What is wrong, in one sentence.
    fix
        What the user can do about it, in one sentence.

    Examples
    --------
    >>> str(ResflowError("a.tif", "the file is empty (0 bytes)", "re-download it"))
    'a.tif: the file is empty (0 bytes). Fix: re-download it.'

    Credentials in a URL never reach the message (:mod:`resflow.redaction`):

    >>> str(ResflowError("s3://KEY:SECRET@b/a.zarr", "no archive here", "check it"))
    's3://***@b/a.zarr: no archive here. Fix: check it.'
    """

    def __init__(self, where: str, problem: str, fix: str) -> None:
        from resflow.redaction import redact_text

        # A message is printed, logged and stored: no URL credentials ever reach it.
        self.where = redact_text(str(where))
        self.problem = redact_text(problem.rstrip("."))
        self.fix = redact_text(fix.rstrip("."))
        super().__init__(f"{self.where}: {self.problem}. Fix: {self.fix}.")

    def for_python(self) -> Self:
        """This error worded for a caller of the Python API (:func:`python_wording`): the
        same object, so its type and traceback stay, with keywords where the CLI names
        flags."""
        self.problem = python_wording(self.problem)
        self.fix = python_wording(self.fix)
        self.args = (f"{self.where}: {self.problem}. Fix: {self.fix}.",)
        return self

    def as_record(self) -> dict[str, str]:
        """The error as a JSON-ready record for store attributes and run reports."""
        return {"where": self.where, "problem": self.problem, "fix": self.fix}


class InputError(ResflowError):
    """An input raster, label file or archive that cannot be used."""


class ConfigError(ResflowError):
    """A malformed or inconsistent configuration, refused before any work starts."""


class GalleryError(ResflowError):
    """A model gallery that is missing, tampered with or of an unknown schema."""


class BackendError(ResflowError):
    """An engine that is unknown, not installed, or unreachable."""
