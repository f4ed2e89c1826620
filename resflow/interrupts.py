"""What a stopped run says, and SIGTERM treated as Ctrl-C.

A run can stop part-way: Ctrl-C (SIGINT), a batch scheduler's SIGTERM, an engine that gave
up. The output store's chip ledger already records every chip whose pixels are on disk, so
stopping is always safe; what the user needs is one line saying how far the output got and
that ``--resume`` finishes it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType


def progress_line(out: Path | str, verb: str) -> str:
    """``"<verb> OUT at 12/64 chips (18.8%)"``, or why there is nothing to resume.

    Examples
    --------
    >>> progress_line("/nonexistent.zarr", "stopped")
    'stopped before /nonexistent.zarr was created'
    """
    from resflow.errors import ResflowError
    from resflow.redaction import redact_text
    from resflow.store.reader import describe

    shown = redact_text(str(out))  # a URL given with user:secret@ is printed without them
    try:
        desc = describe(out)
    except ResflowError:
        return f"{verb} before {shown} was created"
    except Exception as exc:  # a store cut off while it was being created
        return f"{verb} while {shown} was being created ({exc.__class__.__name__})"
    return f"{verb} {shown} at {desc['chips_done']}/{desc['chips_total']} chips " \
           f"({desc['percent']:.1f}%)"


def stop_message(out: Path | str) -> str:
    """How far a stopped run got and, if it wrote anything, how to finish it."""
    line = progress_line(out, "stopped")
    if line.startswith("stopped before"):
        return f"{line}; nothing to resume"
    return f"{line}; finish it with the same command plus --resume"


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` in the main thread, as Ctrl-C.

    So a run stopped by a batch scheduler closes its engine and prints how to resume, instead
    of dying without a word. Outside the main thread (where signals cannot be handled) the
    block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
