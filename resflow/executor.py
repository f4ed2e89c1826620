"""The small interface every resflow engine implements, so the graph is written once.

:class:`Executor` is the contract: the four operations on partitioned collections the graph
in :mod:`resflow.graph` needs, a fifth (``group_by_key``) for its ``regrouped`` plan only,
the settings an engine owns and how one type of stage resources becomes each engine's. The
helpers beside it (:class:`StageResources`, :class:`TaskEnv`, :func:`stable_partition`,
:func:`block_of`) are the vocabulary every engine shares.
"""

from __future__ import annotations

import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from resflow.errors import ConfigError
from resflow.tickets import SharedDevices

T = TypeVar("T")

STAGE_PREFIX = "resflow_"


@dataclass(frozen=True)
class StageResources:
    """What one task of a stage needs; each backend translates it to its own terms.

    Parameters
    ----------
    cpus
        Cores one task uses (torch intra-op threads).
    gpu
        Share of one GPU a task uses, in ``[0, 1]``: 0 for CPU stages, 0.25 lets four tasks
        share a device. Honoured only where the cluster declares GPUs.
    memory_mb
        Memory one task needs, in MiB, where the engine can reserve it; ``None`` = no claim.

    Examples
    --------
    >>> StageResources(gpu=0.25).uses_gpu
    True
    """

    cpus: int = 1
    gpu: float = 0.0
    memory_mb: int | None = None

    def __post_init__(self) -> None:
        if self.cpus < 1:
            raise ValueError(f"cpus must be at least 1, got {self.cpus}")
        if not 0.0 <= self.gpu <= 1.0:
            raise ValueError(f"gpu is a share of one device in [0, 1], got {self.gpu}")

    @property
    def uses_gpu(self) -> bool:
        """Whether a task of this stage asks for a GPU at all."""
        return self.gpu > 0


CPU = StageResources()


@dataclass(frozen=True)
class TaskEnv:
    """Where one task runs: handed to every stage function by the executor.

    Parameters
    ----------
    backend
        The engine name (``"local"``, ``"dask"``, ``"spark"``).
    stage
        The stage name given to ``map_partitions``.
    partition
        Index of the input partition this task processes.
    gpu
        Address of the GPU assigned to the task (``"0"``, ``"1"``, ... as CUDA numbers it in
        this process), or ``None`` when the task was given no GPU (or shares ``tickets``).
    tickets
        GPUs the processes of this host share through device tickets, where the engine
        schedules GPU work that way (Dask workers declaring shared GPUs): the task holds one
        only around its device work (:meth:`gpu_held`).
    """

    backend: str
    stage: str
    partition: int
    gpu: str | None = None
    tickets: SharedDevices | None = None

    @contextmanager
    def gpu_held(self) -> Iterator[str | None]:
        """The GPU for one stretch of device work, such as a window's encoder, routing and
        decoder: a ticket checked out for that stretch only where the host's processes share
        GPUs through tickets, else the GPU the engine gave the whole task (or ``None``).

        Reads, masks and writes then run without holding a device, so another task's
        device work runs beside them instead of waiting for a whole partition.
        """
        if self.tickets is None:
            yield self.gpu
            return
        with self.tickets.checkout() as address:
            yield address

    def torch_device(self, cuda_available: bool) -> str:
        """The torch device string for this task: its GPU if it has one and CUDA works."""
        return f"cuda:{self.gpu}" if self.gpu is not None and cuda_available else "cpu"


def stable_partition(key: Hashable, npartitions: int) -> int:
    """The output partition of ``key``: the same in every process, unlike ``hash(str)``.

    Integers (bucket numbers) go to ``key % npartitions`` so buckets spread evenly; other
    keys go by the CRC-32 of their ``repr``.

    Examples
    --------
    >>> stable_partition(7, 4)
    3
    """
    if isinstance(key, int):
        return key % npartitions
    return zlib.crc32(repr(key).encode()) % npartitions


def split_by_key(
    records: Sequence[T], key: Callable[[T], Hashable], npartitions: int,
    window: tuple[int, int] | None = None,
) -> list[list[T]]:
    """Split one partition's records into ``npartitions`` lists by :func:`stable_partition`.

    The map side of every backend's ``group_by_key``, so all engines regroup identically.
    With ``window=(lo, hi)`` only output partitions ``lo..hi-1`` (one block) are produced,
    as ``hi - lo`` lists; a record keyed outside the block is a caller's bug and raises.
    """
    lo, hi = window or (0, npartitions)
    out: list[list[T]] = [[] for _ in range(hi - lo)]
    for record in records:
        target = stable_partition(key(record), npartitions)
        if not lo <= target < hi:
            raise ValueError(f"a record keyed to partition {target} left its block "
                             f"{lo}..{hi - 1} of group_by_key(blocks=...)")
        out[target - lo].append(record)
    return out


def block_size(n: int, blocks: int) -> int:
    """Partitions per block when ``n`` partitions form ``blocks`` consecutive blocks.

    >>> block_size(100, 7)
    15
    """
    return max(1, -(-n // max(1, blocks)))


def block_of(index: int, n: int, blocks: int) -> int:
    """The block of partition ``index`` among ``n`` partitions cut into ``blocks`` blocks.

    >>> block_of(29, 100, 7), block_of(30, 100, 7)
    (1, 2)
    """
    return index // block_size(n, blocks)


def block_window(block: int, n: int, blocks: int) -> tuple[int, int]:
    """Partitions ``[lo, hi)`` of ``block``."""
    size = block_size(n, blocks)
    return min(n, block * size), min(n, (block + 1) * size)


@dataclass(frozen=True)
class CliOption:
    """A command-line flag an engine adds to ``resflow run`` and ``resflow demo``.

    A given value is written to ``field`` of the engine's settings section
    (``<engine>.<field>``), through ``template`` when set, and overrides the YAML file.
    Several engines may declare one flag with the same ``type`` (``--workers``): it is then
    one flag filling each engine's own field. Where two flags of one engine fill the same
    field, the one the engine declares first wins.

    Parameters
    ----------
    flag
        The flag, ``--`` and lower-case words joined by hyphens.
    field
        The field of the engine's ``config_model`` it sets.
    help
        One line for ``--help`` (the engine's name is put in front).
    type
        What the flag parses: ``str``, ``int`` or ``float``.
    template
        A ``str.format`` pattern turning the value into the field's (``"local[{}]"``).

    Examples
    --------
    >>> option = CliOption("--workers", "master", "N in local[N]", type=int, template="local[{}]")
    >>> option.param, option.value(4)
    ('workers', 'local[4]')
    """

    flag: str
    field: str
    help: str
    type: type = str
    template: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"--[a-z][a-z0-9]*(-[a-z0-9]+)*", self.flag):
            raise ValueError(f"engine flag {self.flag!r} must look like --lower-case-words")
        if self.type not in (str, int, float):
            raise ValueError(f"engine flag {self.flag}: type must be str, int or float")

    @property
    def param(self) -> str:
        """The Python name of the flag's value: ``--spark-master`` -> ``spark_master``."""
        return self.flag.removeprefix("--").replace("-", "_")

    def value(self, given: Any) -> Any:
        """What the field is set to when the flag is given ``given``."""
        return self.template.format(given) if self.template else given


class Executor(ABC):
    """A partitioned-collection engine: the contract every engine implements.

    The graph in :mod:`resflow.graph` needs four operations on partitioned collections, a fifth
    (``group_by_key``) for its ``regrouped`` plan only, and nothing else:

    ``from_partitions(parts)``
        A collection whose partitions are the given lists of records (chip references).
    ``map_partitions(coll, fn, *, name, resources)``
        Run ``fn(records, env)`` once per partition; ``fn`` returns the records of the output
        partition. ``name`` is the stage's name in dashboards and UIs (each
        backend shows it as :func:`stage_key`); ``resources`` is a :class:`StageResources`
        stating what one task of the stage needs; ``env`` is the :class:`TaskEnv` the task runs
        in: ``with env.gpu_held() as gpu`` around its device work gives the GPU it may use
        (``None``: none), held for that work only where the host's GPUs are ticketed.
    ``group_by_key(coll, key, npartitions, blocks=1)``, optional
        Regroup records so that all records with the same ``key(record)`` share one output
        partition (the shuffle between stage 2 and stage 3 of the ``regrouped`` plan; the
        default ``fused`` plan never regroups). An engine without it runs the ``fused`` plan,
        and a run asking it for ``plan: regrouped`` is refused before any work
        (:meth:`Executor.regroups`). Which partition a key lands in is a
        stable function of the key, not of Python's per-process ``hash``. With ``blocks=B`` the
        caller promises that records of input block ``b`` (consecutive partitions, see
        :func:`block_of`) only go to output block ``b``, so an engine may wire each output to
        its own block's inputs only: bounded fan-in, work linear in partitions, not quadratic.
    ``collect(coll)``
        Compute and return all records, output partitions in order.
    ``preload(setup, *, name)``
        Run ``setup()`` once in every worker process before its tasks (Dask: a ``WorkerPlugin``),
        so per-process state such as loaded models is ready and never shipped with a task.

    Plus ``on_task_done(name, done)`` (call ``done(partition)`` on the driver as each
    task of a stage finishes: the run's progress in chips is counted from it),
    ``gpu_share`` (the GPU share a GPU task claims on this
    engine, from its config), ``close()`` (also via ``with``), ``describe()`` (the cluster shape
    for run reports) and ``dashboard_link`` (where to watch the run, or ``None``).

    An engine owns its settings: ``config_model`` is the pydantic model of its section of a run
    config (the YAML section named after the engine, ``dask:``), ``cli_options`` the flags it adds
    to ``resflow run`` (:class:`CliOption`), ``requires`` the modules it imports to run and
    ``environment()`` what ``resflow doctor`` shows for it. resflow reads these without building
    the engine, so an engine's module imports its heavy libraries inside its methods, and
    ``resflow --help`` or validating a config never imports them. ``docs/backends.md`` walks
    through writing one.

    Records and functions must be picklable: the local engine runs them in-process, the Dask and
    Spark engines ship them to worker processes. Collections are opaque: only the executor that
    made one may use it. Within a partition, record order is not part of the contract; callers
    that need an order sort what ``collect`` returns.

    Resource translation, one type for all engines: ``StageResources(gpu=0.25)`` becomes
    ``resources={"GPU": 0.25}`` on a Dask task (when the workers declare a ``GPU`` resource) and a
    stage-level Spark ``ResourceProfile`` asking 0.25 of a ``gpu`` per task (when the executors
    have GPUs), so four tasks share one device. Where a scheduler assigns no GPUs (the local
    engine, Spark's ``local[N]``), task ``i`` of a GPU stage runs on GPU ``i mod n`` of the ``n``
    the engine was given.
    """

    #: engine name, as registered in the ``resflow.backends`` entry-point group
    name: str = "abstract"
    #: share of one GPU a GPU task claims here (``StageResources.gpu`` of GPU stages)
    gpu_share: float = 1.0
    #: pydantic model of the engine's section of a run config (the YAML section named after
    #: the engine); ``None``: the engine has no settings and a section for it is refused
    config_model: ClassVar[type[BaseModel] | None] = None
    #: flags ``resflow run`` and ``resflow demo`` add for this engine
    cli_options: ClassVar[tuple[CliOption, ...]] = ()
    #: modules the engine imports to run (``("dask", "distributed")``): an engine whose
    #: module imports them only when used is still listed as broken when one is missing
    requires: ClassVar[tuple[str, ...]] = ()
    #: an existing session the engine can run on, for ``resflow.run(..., client=...)``:
    #: ``(constructor keyword, module, class)``, e.g. ``("client", "distributed", "Client")``;
    #: ``None``: the engine always starts its own
    session: ClassVar[tuple[str, str, str] | None] = None
    #: whether a run on this engine shows its progress (``from_settings(progress=...)``)
    progress: bool = False

    @classmethod
    def environment(cls) -> dict[str, str]:
        """What this machine offers the engine, for ``resflow doctor`` (``{"java": ...}``).

        Must be cheap and must not import the engine's libraries; empty by default.
        """
        return {}

    @classmethod
    def from_settings(cls, section: BaseModel | Mapping[str, Any] | None = None, *,
                      device: str = "auto", progress: bool = True, **session: Any) -> Executor:
        """The engine a run asks for, built from its own section of the run config
        (``run_config.engine_settings(name)``): what ``resflow run --backend <name>`` and
        ``resflow.run`` construct, one way for every engine.

        The constructor receives the section checked by ``config_model`` (its defaults where
        ``None``) as its first argument, unless the engine has no settings; ``gpus=[]`` for
        ``device="cpu"`` (else ``None``: the engine finds its GPUs); ``progress``, kept as
        ``self.progress`` (``resflow run`` shows it, ``resflow.run`` unless asked and the
        benchmarks do not); and ``session``, an existing cluster under the keyword of
        :attr:`session` (``client=...``).

        Raises
        ------
        ConfigError
            naming ``<engine>.<field>`` for a section the engine's model refuses.
        """
        gpus = [] if device == "cpu" else None
        if cls.config_model is None:
            return cls(gpus=gpus, progress=progress, **session)  # type: ignore[call-arg]
        return cls(_checked_section(cls.name, cls.config_model, section),  # type: ignore[call-arg]
                   gpus=gpus, progress=progress, **session)

    @abstractmethod
    def from_partitions(self, partitions: Sequence[Sequence[T]]) -> Any:
        """A collection whose partitions are ``partitions`` (lists of picklable records)."""

    @abstractmethod
    def map_partitions(
        self,
        coll: Any,
        fn: Callable[[list[Any], TaskEnv], list[Any]],
        *,
        name: str,
        resources: StageResources = CPU,
    ) -> Any:
        """Apply ``fn(records, env)`` to each partition as one task of stage ``name``."""

    def group_by_key(self, coll: Any, key: Callable[[Any], Hashable], npartitions: int, *,
                     blocks: int = 1) -> Any:
        """Regroup records so equal keys share a partition (see :func:`stable_partition`);
        ``blocks`` bounds the fan-in (:class:`Executor`).

        Optional: only the ``regrouped`` plan calls it, and runs refuse that plan on an
        engine that does not override it (:meth:`regroups`), so this default is never
        reached from a run.
        """
        raise NotImplementedError(f"the '{self.name}' engine does not implement group_by_key, "
                                  "so it runs the fused plan only")

    @classmethod
    def regroups(cls) -> bool:
        """Whether the engine implements :meth:`group_by_key`, which the ``regrouped`` plan
        needs; read from the class, so a run is refused before the engine is built."""
        return cls.group_by_key is not Executor.group_by_key

    @abstractmethod
    def collect(self, coll: Any) -> list[Any]:
        """Compute ``coll`` and return its records, partitions in order."""

    def on_task_done(self, name: str, done: Callable[[int], None]) -> None:  # noqa: B027
        """Have ``done(partition)`` called on the driver, from any thread, as each task of
        stage ``name`` finishes while a later :meth:`collect` computes; a run counts its
        progress in chips by it. An engine that cannot tell shows no progress: the default
        does nothing."""

    def preload(self, setup: Callable[[], None], *, name: str) -> None:  # noqa: B027
        """Run ``setup()`` once per worker process before its tasks; a no-op by default.

        Engines whose worker processes live across tasks override it (Dask registers a
        ``WorkerPlugin``); elsewhere the first task fills the per-process cache itself.
        """

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The cluster shape for run reports: backend, workers, threads, GPUs, addresses."""

    @property
    def dashboard_link(self) -> str | None:
        """Where a person can watch the run (Dask dashboard, Spark UI), if anywhere."""
        return None

    def close(self) -> None:  # noqa: B027
        """Release what this executor started (clusters, sessions); never what it joined."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stage_key(name: str) -> str:
    """The name a stage shows under in dashboards, UIs and bars: ``resflow_<name>``.

    Underscores, not hyphens: the Dask dashboard groups tasks by the key's words up to the
    first one that is not purely alphabetic or looks like hex (``stage1``, ``features``), so
    ``resflow-stage1-features`` would show as just ``resflow``.

    Examples
    --------
    >>> stage_key("stage1-features")
    'resflow_stage1_features'
    """
    return f"{STAGE_PREFIX}{name}".replace("-", "_")


def visible_gpus() -> list[str]:
    """CUDA device numbers this process can use (``[]`` without CUDA or without torch)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return []
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _checked_section(name: str, model: type[BaseModel],
                     section: BaseModel | Mapping[str, Any] | None) -> BaseModel:
    """Engine ``name``'s settings section as an instance of its ``model``.

    A run config validated with the installed engines already holds one; a config validated
    without them holds the mapping as written, checked here.
    """
    if isinstance(section, model):
        return section
    try:
        return model.model_validate(dict(section or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in (name, *first["loc"]))
        raise ConfigError(f"field '{field}'", first["msg"],
                          f"see `resflow run --help` for the {name} settings") from exc
