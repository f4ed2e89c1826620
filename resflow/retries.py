"""Retrying storage reads and writes that fail transiently, counting each retry.

Object stores fail now and then (throttling, timeouts, dropped connections) where a second
try passes. The storage library's own silent retries are off
(:data:`resflow.storage.STORAGE_OPTIONS`), so resflow retries a whole read or write here,
with exponential backoff, and counts every retry for the run report; an error that says the
object or permission is not there is raised at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: Tries of one read or write before it fails (the first try included).
ATTEMPTS = 5
#: Seconds before the first retry; doubled before each next one.
FIRST_BACKOFF_S = 0.2

#: Errors that say the object or permission is not there: retrying cannot help.
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
             KeyError, ValueError, TypeError)


@dataclass
class RetryCount:
    """Retries of one task's reads and writes, reported with its results."""

    retries: int = 0


def transient(exc: BaseException) -> bool:
    """Whether an error may pass if the same request is tried again (timeouts, throttling,
    dropped connections, server errors), as opposed to a missing object or a bad request."""
    if isinstance(exc, PERMANENT):
        return False
    return isinstance(exc, OSError | TimeoutError | ConnectionError) or \
        exc.__class__.__module__.split(".")[0] in {"botocore", "aiobotocore", "aiohttp"}


def retrying(operation: Callable[[], T], counter: RetryCount | None = None, *,
             attempts: int = ATTEMPTS, first_backoff_s: float = FIRST_BACKOFF_S) -> T:
    """``operation()``, tried again with exponential backoff while it fails transiently.

    Each retry adds one to ``counter``; the last failure, or any permanent one, is raised.
    Every chip read and write is idempotent (the same bytes), so retrying one is always safe.

    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise TimeoutError("slow")
    ...     return "ok"
    >>> count = RetryCount()
    >>> retrying(flaky, count, first_backoff_s=0.0), count.retries
    ('ok', 2)
    """
    for attempt in range(attempts):
        try:
            return operation()
        except Exception as exc:
            if attempt == attempts - 1 or not transient(exc):
                raise
            if counter is not None:
                counter.retries += 1
            time.sleep(first_backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def retrying_each(operation: Callable[[list[int]], dict[int, Exception]], count: int,
                  counter: RetryCount | None = None, *, attempts: int = ATTEMPTS,
                  first_backoff_s: float = FIRST_BACKOFF_S) -> dict[int, Exception]:
    """:func:`retrying` for ``count`` items done together: ``operation(items)`` does the
    items (indices) it is given and returns the errors of those it could not; the ones that
    failed transiently are tried again, together, with backoff, each retry counted.

    Returns the items that failed for good, with their last errors.

    >>> tries = {0: 0, 1: 0}
    >>> def some(items):
    ...     for i in items:
    ...         tries[i] += 1
    ...     return {1: TimeoutError("slow")} if tries[1] < 2 else {}
    >>> count = RetryCount()
    >>> retrying_each(some, 2, count, first_backoff_s=0.0), tries, count.retries
    ({}, {0: 1, 1: 2}, 1)
    """
    pending, failed = list(range(count)), {}
    for attempt in range(attempts):
        errors = operation(pending)
        again = [i for i in pending if i in errors and transient(errors[i])
                 and attempt < attempts - 1]
        failed.update((i, error) for i, error in errors.items() if i not in again)
        if not again:
            return failed
        if counter is not None:
            counter.retries += len(again)
        time.sleep(first_backoff_s * 2 ** attempt)
        pending = again
    raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns
