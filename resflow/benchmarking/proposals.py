"""Engine changes the benchmarks point to, measured side by side with the installed engines.

These are candidates, not engines users select: ``resflow bench`` runs them next to the
registered backends so a proposed change to an engine comes with its measured effect.

``ThreadedLocalExecutor``
    The local engine runs one task at a time, and every stage call uses one torch thread
    (:mod:`resflow.stages`), so on an N-core machine it leaves N - 1 cores idle. Running
    each stage's partitions on one thread per core, as the compute limit does, uses them
    all; results are the same records (stage functions are pure and set their own threads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from resflow.benchmarking.machine import usable_cores
from resflow.executor import CPU, StageResources, TaskEnv
from resflow.local import LocalExecutor

if TYPE_CHECKING:
    from resflow.config import RunConfig


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
