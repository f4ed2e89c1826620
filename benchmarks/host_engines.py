"""Engines that run the graph with the models replayed, clocked in CPU time.

:class:`ReplayingExecutor` wraps any engine (local, Dask, Spark) and hands its workers each
task wrapped in :class:`Replayed`, which, in whatever process runs it first, puts a
:class:`~benchmarks.host_replay.ReplayGallery` where
:func:`resflow.inference.caches.load_gallery` finds the run's gallery (its per-process cache),
so the stages call the replayed models as they call the real ones. Tasks pickle by reference
to this module, so the repository root goes on workers' ``PYTHONPATH`` before an engine starts
(:func:`importable_here`). :func:`cpu_clocks` switches the graph's stage clocks
(:mod:`resflow.inference.clock`) to ``time.process_time`` and times the mask rule
(:meth:`resflow.store.mask_rule.MaskRule.apply`) on its own, so the run report's stage seconds
are CPU seconds. Process CPU time is a task's only while the process runs one task at a time,
so :func:`start_engine` gives each worker process one task slot.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import types
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.host_replay import ReplayGallery, Tape, spent, take_spent
from resflow.executor import CPU, Executor, StageResources, TaskEnv

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Sub-timer of the mask rule (touching roofs split, specks dropped), inside ``stage3``.
MASK = "mask"

_LOCK = threading.Lock()
_INSTALLED: dict[tuple[str, str], str] = {}


def importable_here() -> None:
    """Put the repository root on ``PYTHONPATH`` for the worker processes engines start
    from now on (Dask's spawned workers, Spark's Python workers), so they import
    ``benchmarks`` to unpickle a :class:`Replayed` task."""
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def cpu_clocks(on: bool = True) -> None:
    """Make this process's stage clocks count CPU seconds and time the mask rule under
    :data:`MASK` (``on=False``: wall time and the plain mask rule again)."""
    from resflow.inference import clock
    from resflow.store.mask_rule import MaskRule

    apply = getattr(MaskRule.apply, "untimed", MaskRule.apply)
    if not on:
        clock.time = time  # type: ignore[attr-defined]
        MaskRule.apply = apply  # type: ignore[method-assign]
        return
    clock.time = types.SimpleNamespace(perf_counter=time.process_time)  # type: ignore[attr-defined]

    @functools.wraps(apply)
    def timed_apply(self: MaskRule, *args: Any, **kwargs: Any) -> Any:
        with spent(MASK):
            return apply(self, *args, **kwargs)

    timed_apply.untimed = apply  # type: ignore[attr-defined]
    MaskRule.apply = timed_apply  # type: ignore[method-assign]


def gallery_cache_key(gallery: Path | str | None, version: str) -> tuple[str, str]:
    """The key under which :func:`resflow.inference.caches.load_gallery` caches a run's
    gallery in each process."""
    return str(gallery), version


def install_replay(tape: str, gallery: Path | str | None, version: str) -> None:
    """Have this process's tasks of a run over ``gallery`` (pinned at ``version``) use the
    models recorded in the tape folder ``tape``; the tape is loaded once per process."""
    from resflow.gallery import Gallery
    from resflow.inference import caches

    key = gallery_cache_key(gallery, version)
    with _LOCK:
        if _INSTALLED.get(key) == tape:
            return
        real = Gallery.load(caches.gallery_folder(gallery))
        replay = ReplayGallery(real, Tape.load(Path(tape)))
        with caches._LOCK:
            caches._GALLERIES[key] = replay
        cpu_clocks()
        _INSTALLED[key] = tape


def put_gallery(substitute: Any, gallery: Path | str | None, version: str) -> None:
    """Have this process's tasks use ``substitute`` for ``gallery``; None: the real one
    again (loaded anew when next asked for), with wall-time clocks."""
    from resflow.inference import caches

    key = gallery_cache_key(gallery, version)
    with _LOCK, caches._LOCK:
        if substitute is None:
            caches._GALLERIES.pop(key, None)
            if _INSTALLED.pop(key, None) is not None:
                cpu_clocks(on=False)
        else:
            _INSTALLED.pop(key, None)
            caches._GALLERIES[key] = substitute


class Replayed:
    """A stage function run with the models replayed from ``tape``, its sub-timers
    (:data:`MASK` and the replayed models' own lookups) added to its first summary's
    seconds, so they reach the run report beside the stage clocks."""

    def __init__(self, fn: Callable[..., Any], tape: str, gallery: Path | str | None,
                 version: str) -> None:
        self.fn, self.tape, self.gallery, self.version = fn, tape, gallery, version

    def __call__(self, records: list[Any], env: TaskEnv) -> list[Any]:
        install_replay(self.tape, self.gallery, self.version)
        take_spent()
        out = self.fn(records, env)
        extra = take_spent()
        if out and hasattr(out[0], "seconds"):
            for key, value in extra.items():
                out[0].seconds[key] = out[0].seconds.get(key, 0.0) + value
        return out


class ReplayingExecutor(Executor):
    """``inner`` with every stage function run under :class:`Replayed`.

    Parameters
    ----------
    inner
        The engine that runs the graph.
    tape
        Folder of recorded tapes (:class:`~benchmarks.host_replay.Tape`).
    gallery, version
        The run's gallery location (``RunConfig.gallery``) and its manifest's sha256.
    """

    def __init__(self, inner: Executor, tape: Path, gallery: Path | str | None,
                 version: str) -> None:
        self.inner = inner
        self.name, self.progress, self.gpu_share = inner.name, inner.progress, inner.gpu_share
        self._replay = (str(tape), gallery, version)

    def _wrapped(self, fn: Callable[..., Any]) -> Replayed:
        return Replayed(fn, *self._replay)

    def from_partitions(self, partitions: Sequence[Sequence[Any]]) -> Any:
        return self.inner.from_partitions(partitions)

    def map_partitions(self, coll: Any, fn: Callable[[list[Any], TaskEnv], list[Any]], *,
                       name: str, resources: StageResources = CPU) -> Any:
        return self.inner.map_partitions(coll, self._wrapped(fn), name=name,
                                         resources=resources)

    def group_by_key(self, coll: Any, key: Callable[[Any], Hashable], npartitions: int, *,
                     blocks: int = 1) -> Any:
        return self.inner.group_by_key(coll, key, npartitions, blocks=blocks)

    def collect(self, coll: Any) -> list[Any]:
        return self.inner.collect(coll)

    def on_task_done(self, name: str, done: Callable[[int], None]) -> None:
        self.inner.on_task_done(name, done)

    def preload(self, setup: Callable[[], None], *, name: str) -> None:
        # unwrapped: a Dask plugin outlives the run and would replay in workers started later
        self.inner.preload(setup, name=name)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        """Nothing: the inner engine is the caller's to close."""


def start_engine(name: str) -> Executor:
    """Engine ``name`` on this host, one task slot in one worker process, models on the
    CPU, no progress bars: ``local`` with one thread; Dask one worker of one thread; Spark
    ``local[1]``."""
    from resflow.local import LocalExecutor
    from resflow.plugins import load_backend

    importable_here()
    if name == "local":
        return LocalExecutor(gpus=[], progress=False, threads=1)
    sections: dict[str, dict[str, Any]] = {
        "dask": {"workers": 1, "threads_per_worker": 1, "dashboard_address": "127.0.0.1:0"},
        "spark": {"master": "local[1]",
                  "conf": {"spark.executorEnv.PYTHONPATH": os.environ["PYTHONPATH"]}}}
    return load_backend(name).from_settings(sections.get(name), device="cpu", progress=False)
