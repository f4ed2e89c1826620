"""Export files appear whole: each is written under a temporary name and renamed when
complete, so an interrupted export never leaves a file that looks finished.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resflow.errors import ResflowError


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temporary path to write ``target`` to; it takes ``target``'s name only once the
    block completes, so a reader never finds a half-written file under the final name.

    Raises
    ------
    ResflowError
        ``target`` is an existing folder.
    """
    if target.is_dir():
        raise ResflowError(str(target), "a folder is in the way of the file to write",
                           "give a file name, or remove the folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".partial"))
    try:
        yield staging / target.name
        (staging / target.name).replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
