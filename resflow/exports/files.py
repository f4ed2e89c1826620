"""Export files appear whole, never replace a file unasked, and say so when a folder cannot be
written: each is written under a temporary name and renamed when complete, so an
interrupted export never leaves a file that looks finished.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from resflow.errors import ResflowError


def refuse_existing(targets: Iterable[Path]) -> None:
    """Refuse to replace a file that is already there, before anything is written.

    Raises
    ------
    ResflowError
        Naming the first existing file and ``--overwrite``.
    """
    for target in targets:
        if target.is_file() or target.is_symlink():
            raise ResflowError(str(target), "the file already exists and would be replaced",
                               "pass --overwrite to replace it, or choose another name")


def check_writable(targets: Iterable[Path]) -> None:
    """Refuse, before anything is written, a target whose folder (or the nearest existing
    folder above it, where it is still to be made) this process cannot write to.

    Raises
    ------
    ResflowError
        Naming that folder.
    """
    for target in targets:
        folder = target.absolute().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise _not_writable(folder, "it is read-only for this user")


def _not_writable(folder: Path, why: str) -> ResflowError:
    return ResflowError(str(folder), f"the output folder cannot be written: {why}",
                        "choose a folder you can write to, or change its permissions")


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temporary path to write ``target`` to; it takes ``target``'s name only once the
    block completes, so a reader never finds a half-written file under the final name.

    Raises
    ------
    ResflowError
        ``target`` is an existing folder, or its folder cannot be made or written (a
        read-only file system, missing permissions).
    """
    if target.is_dir():
        raise ResflowError(str(target), "a folder is in the way of the file to write",
                           "give a file name, or remove the folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.",
                                        suffix=".partial"))
    except OSError as err:
        raise _not_writable(target.parent, err.strerror or str(err)) from None
    try:
        yield staging / target.name
        (staging / target.name).replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
