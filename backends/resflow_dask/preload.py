"""The worker plugin that loads per-process state (the models) once on every Dask worker.

Its own module because subclassing ``WorkerPlugin`` imports distributed, which the rest of
the engine's modules import only when an executor is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class PreloadPlugin(WorkerPlugin):
    """Runs a setup function (load the models) once on every worker, late joiners included."""

    idempotent = True

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def setup(self, worker: Any) -> None:
        self.fn()
