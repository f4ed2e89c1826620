"""resflow on dask.distributed: an embedded LocalCluster, a LocalCUDACluster, or a joined one.

Each stage is a set of futures whose keys start with ``resflow_<stage>``, so the dashboard's
task stream and progress panels show the stages by name. GPU stages carry a ``GPU`` resource
restriction (only when the workers declare a ``GPU`` resource, otherwise nothing would ever
run), models are loaded once per worker by a ``WorkerPlugin``, and when several workers of a
host share GPUs each GPU task checks out a device ticket (:mod:`resflow.tickets`) around
its device work only.

dask-cuda is imported only when this host has GPUs and dask-cuda is installed; dask and
distributed only when an executor is built, so resflow reads this engine's settings and flags
(:mod:`resflow_dask.settings`) without importing them.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from resflow.endpoints import check_endpoint
from resflow.errors import BackendError
from resflow.executor import (
    CPU,
    Executor,
    StageResources,
    block_window,
    split_by_key,
    stage_key,
    visible_gpus,
)
from resflow_dask.settings import CLI_OPTIONS, DaskConfig
from resflow_dask.tasks import GpuPlan, concat_pieces, run_partition

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["DaskExecutor"]

PRELOAD_ATTEMPTS = 5
"""Tries to register the model preload on every worker while workers may be dying."""

@contextmanager
def _spawn_environment() -> Iterator[None]:
    """Put this process's environment back after spawning workers: Dask's nanny edits it
    while spawning (its ``pre-spawn-environ``), and a Spark session started later in the same
    process would inherit the edits. The workers keep them; the one that mattered for speed,
    ``MALLOC_TRIM_THRESHOLD_``, is overridden in every worker by
    :func:`resflow.allocator.steady_malloc`."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _embedded_cluster(config: DaskConfig, gpus: list[str], scratch: str) -> tuple[Any, bool]:
    """Start a cluster on this host, its workers' files under ``scratch``; returns it and
    whether each worker is pinned to one GPU.

    With GPUs every worker declares one ``GPU`` resource and runs several threads
    (:meth:`DaskConfig.worker_threads`), so several GPU tasks share its device. dask-cuda,
    where installed, runs one worker per GPU, unless ``processes_per_gpu`` asks for several
    processes per GPU sharing them through device tickets."""
    from distributed import LocalCluster

    from resflow.gpu_numbers import physical_gpu, visible_devices_env

    common: dict[str, Any] = {
        "threads_per_worker": config.worker_threads(has_gpus=bool(gpus)),
        "dashboard_address": config.dashboard_address,
        "host": "127.0.0.1",
        "local_directory": scratch,
        "preload": ["resflow_dask.worker_signals"],
    }
    if gpus:
        common["resources"] = {"GPU": 1}
        cuda_cluster = _local_cuda_cluster() if config.processes_per_gpu is None else None
        if cuda_cluster is not None:
            # one worker per GPU, each seeing only its own device as cuda:0; ``gpus`` are
            # this process's torch numbers, the workers' CUDA_VISIBLE_DEVICES wants physical ids
            visible = ",".join(physical_gpu(gpu, visible_devices_env()) for gpu in gpus)
            with _spawn_environment():
                return cuda_cluster(CUDA_VISIBLE_DEVICES=visible, **common), True
    with _spawn_environment():
        return LocalCluster(n_workers=config.worker_count(len(gpus)), processes=True,
                            **common), False


def _local_cuda_cluster() -> Any:
    """dask-cuda's ``LocalCUDACluster``, or None where dask-cuda is not installed."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        return None
    return LocalCUDACluster


class DaskExecutor(Executor):
    """Run the graph on a dask.distributed cluster.

    Parameters
    ----------
    config
        Cluster settings; ``scheduler_address`` joins a running cluster, otherwise an
        embedded one is started (and closed again by :meth:`close`).
    client
        An existing ``Client`` to use as is (it is never closed here); overrides ``config``'s
        cluster settings.
    gpus
        GPU numbers the workers of one host share through device tickets. ``None`` = the
        configured ones, else on an embedded cluster without dask-cuda the GPUs torch sees.
    progress
        Show the run's progress.

    Examples
    --------
    >>> with DaskExecutor(DaskConfig(workers=1, dashboard_address=":0")) as ex:  # doctest: +SKIP
    ...     ex.collect(ex.from_partitions([[1], [2]]))
    [1, 2]
    """

    name = "dask"
    session = ("client", "distributed", "Client")
    config_model = DaskConfig
    cli_options = CLI_OPTIONS
    requires = ("dask", "distributed")

    def __init__(
        self,
        config: DaskConfig | None = None,
        *,
        client: Client | None = None,
        gpus: Sequence[str] | None = None,
        progress: bool = True,
    ) -> None:
        from distributed import Client

        config = config or DaskConfig()
        self.progress = progress
        self._cluster: Any = None
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._owns_client = client is None
        pinned = False
        declared = list(gpus) if gpus is not None else config.gpus
        if client is not None:
            self.client = client
        elif config.scheduler_address:
            if config.scheduler_address.startswith(("tcp://", "tls://")):
                check_endpoint("dask.scheduler_address", config.scheduler_address,
                               "start one with `dask scheduler` or check the address and port")
            try:
                self.client = Client(config.scheduler_address, timeout="20s")
            except OSError as exc:
                raise BackendError(
                    config.scheduler_address, f"no Dask scheduler answered ({exc})",
                    "start one with `dask scheduler` or check the address and port",
                ) from exc
            self._await_workers(config)
        else:
            import dask

            detected = visible_gpus() if declared is None else declared
            # the workers' scratch files live in a directory of this run, removed by close()
            self._scratch = tempfile.TemporaryDirectory(prefix="resflow-dask-")
            # the nanny opens dask's shared scratch space too, unless told where it is
            with dask.config.set({"temporary-directory": self._scratch.name}):
                self._cluster, pinned = _embedded_cluster(config, detected, self._scratch.name)
            self.client = Client(self._cluster)
            if declared is None and not pinned:
                declared = detected
        self.gpu_share = config.gpu_per_task
        # None: each worker uses its own user's private default (resflow.tickets)
        ticket_dir = str(config.ticket_dir) if config.ticket_dir else None
        self._gpu_plan = GpuPlan(devices=tuple(declared or ()), ticket_dir=ticket_dir,
                                 pinned=pinned)
        self._stages: list[tuple[str, list[Future]]] = []
        self._watchers: dict[str, Callable[[int], None]] = {}


    def _await_workers(self, config: DaskConfig) -> None:
        """Wait for the joined cluster's first worker: a run planned on a scheduler with no
        workers would size its partitions for none and could wait forever for them."""
        try:
            self.client.wait_for_workers(1, timeout=config.worker_wait_s)
        except TimeoutError as exc:
            self.client.close()
            raise BackendError(
                config.scheduler_address,
                f"the scheduler has no workers after {config.worker_wait_s:g} s",
                f"start some with `dask worker {config.scheduler_address}`, or raise "
                "dask.worker_wait_s",
            ) from exc

    # -- cluster facts -------------------------------------------------------------------

    def _workers(self) -> dict[str, Any]:
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def _workers_declare_gpu(self) -> bool:
        return any(w.get("resources", {}).get("GPU") for w in self._workers().values())

    @property
    def dashboard_link(self) -> str | None:
        return self.client.dashboard_link

    def describe(self) -> dict[str, Any]:
        workers = self._workers()
        return {
            "backend": self.name,
            "scheduler": self.client.scheduler.address,
            "workers": len(workers),
            "threads_per_worker": sorted({w["nthreads"] for w in workers.values()}),
            "worker_resources": sorted({str(w.get("resources", {})) for w in workers.values()}),
            "gpus": list(self._gpu_plan.devices) or ("pinned" if self._gpu_plan.pinned else []),
            "gpu_per_task": self.gpu_share,
            "dashboard": self.dashboard_link,
        }

    # -- the contract --------------------------------------------------------------------

    def _submit_stage(
        self, label: str, calls: list[tuple[Callable, tuple]], **kw: Any
    ) -> list[Future]:
        """Submit one future per call under keys ``(resflow_<label>-<token>, i)``."""
        prefix = f"{stage_key(label)}-{uuid.uuid4().hex}"
        futures = [
            self.client.submit(fn, *args, key=(prefix, i), pure=False, **kw)
            for i, (fn, args) in enumerate(calls)
        ]
        self._stages.append((label, futures))
        return futures

    def from_partitions(self, partitions: Sequence[Sequence[Any]]) -> list[Future]:
        # Tasks, not scattered data: the scheduler can recompute a partition lost with its
        # worker, where scattered data would be gone for good. The uuid keeps equal
        # partitions of two runs from sharing (and racing on releasing) one key.
        prefix = f"{stage_key('partitions')}-{uuid.uuid4().hex}"
        return [self.client.submit(list, list(p), key=(prefix, i), pure=False)
                for i, p in enumerate(partitions)]

    def map_partitions(
        self,
        coll: list[Future],
        fn: Callable[[list[Any], Any], list[Any]],
        *,
        name: str,
        resources: StageResources = CPU,
    ) -> list[Future]:
        kw: dict[str, Any] = {}
        gpu_plan = None
        if resources.uses_gpu:
            declared = self._workers_declare_gpu()
            # workers that declare a GPU but share no ticketed devices own one each (dask-cuda)
            pinned = self._gpu_plan.pinned or (declared and not self._gpu_plan.devices)
            gpu_plan = replace(self._gpu_plan, pinned=pinned,
                               per_device=max(1, round(1 / resources.gpu)))
            if declared:
                kw["resources"] = {"GPU": resources.gpu}
        calls = [(run_partition, (fn, part, name, i, gpu_plan)) for i, part in enumerate(coll)]
        return self._submit_stage(name, calls, **kw)

    def group_by_key(
        self, coll: list[Future], key: Callable[[Any], Hashable], npartitions: int, *,
        blocks: int = 1,
    ) -> list[Future]:
        # Each input partition splits only into its block's outputs, and each output gathers
        # only its block's pieces: tasks and dependencies grow with partitions x block size,
        # not partitions squared.
        splits, gathers = [], []
        for block in range(blocks):
            lo, hi = block_window(block, len(coll), blocks)
            out_lo, out_hi = block_window(block, npartitions, blocks)
            first = len(splits)
            splits.extend((split_by_key, (coll[i], key, npartitions, (out_lo, out_hi)))
                          for i in range(lo, hi))
            gathers.extend((j - out_lo, range(first, len(splits))) for j in range(out_lo, out_hi))
        pieces = self._submit_stage("regroup-split", splits)
        return self._submit_stage("regroup", [
            (concat_pieces, (local, *(pieces[i] for i in inputs))) for local, inputs in gathers])

    def collect(self, coll: list[Future]) -> list[Any]:
        from distributed import as_completed

        try:
            for label, futures in self._stages:
                done = self._watchers.get(label)
                index = {future.key: i for i, future in enumerate(futures)}
                for future in as_completed(futures):
                    if done is not None and future.status == "finished":
                        done(index[future.key])
            parts = self.client.gather(coll)
        finally:
            self._stages.clear()  # drop the intermediate results held on the workers
        return [record for part in parts for record in part]

    def on_task_done(self, name: str, done: Callable[[int], None]) -> None:
        self._watchers[name] = done

    def preload(self, setup: Callable[[], None], *, name: str) -> None:
        from resflow_dask.preload import PreloadPlugin

        plugin, key = PreloadPlugin(setup), stage_key(f"preload-{name}")
        for attempt in range(PRELOAD_ATTEMPTS):
            try:
                self.client.register_plugin(plugin, name=key)
                return
            except OSError:
                # a worker died during the broadcast; the scheduler keeps the plugin for its
                # replacement, and registering again reaches the workers alive now
                if attempt == PRELOAD_ATTEMPTS - 1:
                    raise
                time.sleep(1.0)

    def close(self) -> None:
        self._stages.clear()
        if self._owns_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        if self._scratch is not None:
            self._scratch.cleanup()
