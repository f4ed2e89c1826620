"""The in-process reference engine: the meaning of the executor contract, with no cluster.

Every stage runs its partitions on a pool of threads in the calling process (one per core
by default: each stage call uses one torch thread and releases the GIL inside the models),
reporting each task as it finishes (:meth:`LocalExecutor.on_task_done`). The Dask and Spark
engines must give the same records as this one; the contract tests hold them to it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from resflow.executor import (
    CPU,
    Executor,
    StageResources,
    TaskEnv,
    split_by_key,
    stage_key,
    visible_gpus,
)


class LocalExecutor(Executor):
    """Run the graph in this process, ``threads`` tasks at a time.

    Parameters
    ----------
    gpus
        GPU addresses GPU stages may use, ``None`` = the CUDA devices torch sees; task ``i``
        of a GPU stage gets device ``i mod len(gpus)``.
    progress
        Show the run's progress.
    threads
        Tasks run at once; ``None`` = the cores this process may use.

    Examples
    --------
    >>> with LocalExecutor(gpus=[], progress=False) as ex:
    ...     parts = ex.from_partitions([[1, 2], [3]])
    ...     ex.collect(ex.map_partitions(parts, lambda rs, env: [r * 10 for r in rs], name="x"))
    [10, 20, 30]
    """

    name = "local"

    def __init__(self, gpus: Sequence[str] | None = None, progress: bool = True,
                 threads: int | None = None) -> None:
        self.gpus = list(visible_gpus() if gpus is None else gpus)
        self.progress = progress
        self.threads = threads or len(os.sched_getaffinity(0))
        self._watchers: dict[str, Callable[[int], None]] = {}

    def from_partitions(self, partitions: Sequence[Sequence[Any]]) -> list[list[Any]]:
        return [list(p) for p in partitions]

    def map_partitions(
        self,
        coll: list[list[Any]],
        fn: Callable[[list[Any], TaskEnv], list[Any]],
        *,
        name: str,
        resources: StageResources = CPU,
    ) -> list[list[Any]]:
        def task(index: int) -> list[Any]:
            gpu = (self.gpus[index % len(self.gpus)]
                   if resources.uses_gpu and self.gpus else None)
            return list(fn(coll[index], TaskEnv(self.name, name, index, gpu)))

        done = self._watchers.get(name)
        with ThreadPoolExecutor(self.threads, thread_name_prefix=stage_key(name)) as pool:
            futures = {pool.submit(task, index): index for index in range(len(coll))}
            for future in as_completed(futures):
                future.result()  # a failed task raises here, as with pool.map
                if done is not None:
                    done(futures[future])
            return [future.result() for future in futures]

    def on_task_done(self, name: str, done: Callable[[int], None]) -> None:
        self._watchers[name] = done

    def group_by_key(
        self, coll: list[list[Any]], key: Callable[[Any], Hashable], npartitions: int, *,
        blocks: int = 1,
    ) -> list[list[Any]]:
        # in one process every record is at hand: blocks change nothing but the promise
        out: list[list[Any]] = [[] for _ in range(npartitions)]
        for part in coll:
            for i, piece in enumerate(split_by_key(part, key, npartitions)):
                out[i].extend(piece)
        return out

    def collect(self, coll: list[list[Any]]) -> list[Any]:
        return [record for part in coll for record in part]

    def preload(self, setup: Callable[[], None], *, name: str) -> None:
        setup()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "workers": 1, "threads_per_worker": self.threads,
                "gpus": self.gpus}
