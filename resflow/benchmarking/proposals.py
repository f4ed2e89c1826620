"""Engine changes the benchmarks point to, measured side by side with the installed engines.

These are candidates, not engines users select: ``resflow bench`` runs them next to the
registered backends so a proposed change to an engine comes with its measured effect.

``ThreadedLocalExecutor``
    The local engine runs one task at a time, and every stage call uses one torch thread
    (:mod:`resflow.stages`), so on an N-core machine it leaves N - 1 cores idle. Running
    each stage's partitions on one thread per core, as the compute limit does, uses them
    all; results are the same records (stage functions are pure and set their own threads).

``dask_without_malloc_trim()``
    Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Setting any glibc malloc tunable freezes the
    mmap threshold at 128 KiB, so every activation tensor of a forward pass is a fresh
    ``mmap`` whose pages fault in again: measured stage 1 at 150 ms per 256 px chip in a
    worker against 30 ms in a plain process. Unsetting the variable for the embedded
    cluster's workers brings them back to 30 ms.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from resflow.benchmarking.machine import usable_cores
from resflow.executor import CPU, Executor, StageResources, TaskEnv
from resflow.local import LocalExecutor

if TYPE_CHECKING:
    from resflow.config import RunConfig


#: Dask config key of the malloc tunable the nanny exports to every worker it spawns.
MALLOC_TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def dask_without_malloc_trim() -> type[Executor]:
    """The Dask engine, its embedded workers started without ``MALLOC_TRIM_THRESHOLD_``.

    Built on demand so that importing this module never imports dask.
    """
    import dask
    from resflow_dask import DaskExecutor

    class DaskWithoutMallocTrim(DaskExecutor):
        @classmethod
        def from_config(cls, config: RunConfig) -> DaskExecutor:
            with dask.config.set({MALLOC_TRIM_KEY: None}):  # None unsets it (dask's rule)
                return super().from_config(config)

    return DaskWithoutMallocTrim


class ThreadedLocalExecutor(LocalExecutor):
    """The local engine with each stage's partitions on ``threads`` concurrent threads.

    Examples
    --------
    >>> with ThreadedLocalExecutor(gpus=[], progress=False, threads=2) as ex:
    ...     parts = ex.from_partitions([[1, 2], [3]])
    ...     ex.collect(ex.map_partitions(parts, lambda rs, env: [r * 10 for r in rs], name="x"))
    [10, 20, 30]
    """

    def __init__(self, gpus: Sequence[str] | None = None, progress: bool = True,
                 threads: int | None = None) -> None:
        super().__init__(gpus=gpus, progress=progress)
        self.threads = threads or usable_cores()

    @classmethod
    def from_config(cls, config: RunConfig) -> ThreadedLocalExecutor:
        return cls(gpus=[] if config.device == "cpu" else None, progress=False)

    def map_partitions(
        self,
        coll: list[list[Any]],
        fn: Callable[[list[Any], TaskEnv], list[Any]],
        *,
        name: str,
        resources: StageResources = CPU,
    ) -> list[list[Any]]:
        gpu = self.gpus[0] if resources.uses_gpu and self.gpus else None

        def task(index: int) -> list[Any]:
            return list(fn(coll[index], TaskEnv(self.name, name, index, gpu)))

        with ThreadPoolExecutor(self.threads, thread_name_prefix=f"resflow-{name}") as pool:
            return list(pool.map(task, range(len(coll))))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threads_per_worker": self.threads}
