"""Paths built from outside data stay inside their folder, and private folders stay private.

resflow turns names it did not choose into file names: object keys of a remote gallery,
file names in a gallery manifest, scene names recorded in an output store. Whoever
published those can write ``../../.bashrc``; :func:`confined` is the one place such a name
becomes a path, and it refuses anything that would leave its folder (a ``..`` component,
an absolute path, a link inside the folder pointing out) with one clear error.

:func:`private_folder` is the check behind every per-user folder resflow keeps in the
shared temporary directory (the gallery cache, the device tickets): a folder that is a
link, belongs to someone else or that others can write to is refused, not used.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from pathlib import Path, PurePosixPath

from resflow.errors import InputError, ResflowError


def confined(base: Path | str, relative: str, *, what: str = "a file name",
             where: str | None = None, error: type[ResflowError] = InputError,
             fix: str = "rename it to a plain name inside its folder, or get the data from "
                        "a source you trust") -> Path:
    """``base / relative``, refused unless it stays inside ``base``.

    ``relative`` is a ``/``-separated name from outside data. Refused: an empty name, an
    absolute one, a ``..`` component, a backslash or NUL, and a name that resolves (through
    links already on disk) outside ``base``.

    Parameters
    ----------
    base
        The folder the name must stay in.
    relative
        The untrusted name.
    what
        What the name is, for the message (``"object key"``, ``"manifest file name"``).
    where
        What the error names (default ``relative`` itself).
    error
        The :class:`~resflow.errors.ResflowError` subclass raised.
    fix
        The fix the message gives.

    Raises
    ------
    ResflowError
        Of type ``error``, naming ``where`` and the name.

    Examples
    --------
    >>> confined("/cache/gal", "weights/mono.safetensors")
    PosixPath('/cache/gal/weights/mono.safetensors')
    >>> confined("/cache/gal", "../../etc/hostname")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    resflow.errors.InputError: ../../etc/hostname: a file name ('../../etc/hostname') would \
lead outside /cache/gal (...). Fix: ...
    """
    base = Path(base)
    text = str(relative)
    parts = PurePosixPath(text).parts
    if not text or "\\" in text or "\x00" in text:
        reason = "it is empty or holds a backslash or NUL character"
    elif text.startswith("/"):
        reason = "it is an absolute path"
    elif ".." in parts:
        reason = "it holds a '..' component"
    else:
        path = base.joinpath(*parts)
        resolved_base = base.resolve()
        resolved = path.resolve()
        if resolved == resolved_base or resolved_base in resolved.parents:
            return path
        reason = f"it resolves to {resolved} through a link"
    raise error(where if where is not None else text,
                f"{what} ({text!r}) would lead outside {base} ({reason})", fix)


def private_folder(path: Path | str, what: str, fix: str) -> Path:
    """``path`` as a folder of this user that only they can write, created (0700) if absent.

    A folder of a predictable name in a shared temporary directory can be planted by anyone
    before resflow first makes it; a link, a folder another user owns or one others can
    write to is refused rather than used.

    Parameters
    ----------
    path
        The folder.
    what
        What it is, for the message (``"the gallery cache folder"``).
    fix
        The fix the message gives.

    Raises
    ------
    ResflowError
        If the path exists but is not a folder of this user that only they can write.
    """
    path = Path(path)
    uid = os.getuid()
    with suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory (a symlink or file someone else may have planted)"
    elif info.st_uid != uid:
        problem = f"is owned by user id {info.st_uid}, not by this user ({uid})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
    else:
        return path
    raise ResflowError(str(path), f"{what} {problem}", fix)
