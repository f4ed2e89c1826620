"""Ctrl-C during a Spark job: cancel the jobs from another thread, then stop in the driver.

PySpark's own SIGINT handler calls the JVM from inside the signal handler, while the main
thread is waiting in a Py4J call for the job's result. Py4J refuses the reentrant call and
logs two tracebacks through the root logger, which also sets up that logger, so every later
line of the run (the message saying how to resume included) is printed twice. Here a Ctrl-C
only asks another thread to cancel the jobs; the waiting call returns with the cancellation
and ``KeyboardInterrupt`` is raised in the driver once it has, outside any Py4J call. A
second Ctrl-C stops waiting at once.

A terminal's Ctrl-C reaches every process of the run; Python workers leave it to the driver
(:mod:`resflow_spark.daemon`), so the tasks are cancelled, not crashed.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


@contextmanager
def cancel_on_interrupt(spark_context: Any) -> Iterator[None]:
    """Within the block (a blocking Spark action), Ctrl-C cancels every job of
    ``spark_context`` and raises ``KeyboardInterrupt`` when the action returns or fails.
    Outside the main thread, where signals are not handled, the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = threading.Event()

    def cancel() -> None:
        try:
            spark_context.cancelAllJobs()
        except Exception as exc:  # the session is already going down: nothing to cancel
            logger.debug("cancelling the Spark jobs failed: %s", exc)

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        threading.Thread(target=cancel, name="resflow-cancel-jobs", daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    except Exception:
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt
