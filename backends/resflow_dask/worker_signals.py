"""Preloaded by every worker of an embedded cluster: Ctrl-C is the driver's to handle.

The workers of an embedded cluster run in the driver's process group, so a terminal's
Ctrl-C reaches each of them too; each would die of it mid-task and print a traceback. They
ignore SIGINT instead: the driver stops the run, says how to resume, and closes the cluster,
which ends them.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (where its main thread runs the worker)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
