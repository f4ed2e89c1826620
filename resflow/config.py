"""The one validated configuration model behind every resflow command.

Every run is a :class:`RunConfig`; the CLI only fills it (YAML file first, then flags), and
the run report embeds the exact config so any map can be reproduced. Validation happens
before any work: a malformed file or field is a :class:`~resflow.errors.ConfigError` naming
the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from resflow.errors import ConfigError
from resflow.resolution import DEFAULT_GSD_M, MAX_GSD_M

#: Default smallest building kept in a mask, m^2: about 2 x 4 m. Chosen by the accuracy
#: study (docs/accuracy.md), which scores 0, 4 and 8 m^2.
MIN_BUILDING_M2 = 8.0


class _Strict(BaseModel):
    """Unknown keys are refused: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestConfig(_Strict):
    """How rasters become a Zarr imagery archive."""

    chip: int = Field(
        256, ge=32, le=4096, description="chip edge in pixels; also the Zarr chunk edge")
    workers: int = Field(2, ge=1, description="scenes ingested in parallel (threads)")
    window_rows: int = Field(
        1024, ge=32, description="rows read per window while streaming a scene (bounds memory)"
    )
    gsd: float | None = Field(
        DEFAULT_GSD_M, gt=0, description="working ground resolution in metres every scene is "
        "resampled to (the gallery's; see resflow.resolution); null keeps each scene's own")
    max_gsd: float = Field(
        MAX_GSD_M, gt=0, description="scenes coarser than this many metres per pixel are "
        "recorded as skipped, never mapped")


class DaskConfig(_Strict):
    """Dask backend: an embedded LocalCluster, or ``scheduler_address`` to join one."""

    scheduler_address: str | None = Field(
        None, description="tcp://host:port of a running scheduler")
    workers: int = Field(2, ge=1, description="embedded cluster: worker processes")
    threads_per_worker: int = Field(1, ge=1, description="embedded cluster: threads per worker")
    dashboard_address: str = Field("127.0.0.1:8787", description="bind address of the dashboard")
    gpu_per_task: float = Field(0.25, gt=0, le=1, description="GPU share a GPU task declares")
    gpus: list[str] | None = Field(
        None, description="GPU numbers the workers of one host share through device tickets; "
        "None = detect on an embedded cluster")
    ticket_dir: Path | None = Field(
        None, description="device-ticket lock directory shared by one host's workers; "
        "None = <tmp>/resflow-tickets-<uid>, private to the user running the workers")


MASTER_PATTERN = (r"local(\[(\*|\d+)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]"
                  r"|spark://[^/\s]+:\d+(,[^/\s]+:\d+)*|yarn|k8s://\S+")
"""Master URLs resflow accepts: the forms Spark's own ``SparkContext`` parses."""


class SparkConfig(_Strict):
    """Spark backend: ``local[*]`` by default, or any master URL."""

    master: str = Field(
        "local[2]", description="local[N], local-cluster[..], spark://, yarn, k8s://")
    executor_cores: int = Field(1, ge=1)
    executor_memory: str = Field("1g")
    gpu_per_task: float = Field(
        0.25, gt=0, le=1, description="GPU share of a GPU task (fractional)")
    ui_host: str = Field("127.0.0.1", description="bind address of the Spark UI")
    task_max_failures: int = Field(
        4, ge=1, description="attempts per task before the run fails; a task lost with its "
        "executor or Python worker is retried (local[N] becomes local[N,F])")
    conf: dict[str, str] = Field(default_factory=dict, description="extra spark.* settings")

    @field_validator("master")
    @classmethod
    def _known_master(cls, master: str) -> str:
        """Refuse a master URL Spark would not parse, before any JVM starts."""
        if not re.fullmatch(MASTER_PATTERN, master):
            raise ValueError(f"{master!r} is not a Spark master URL: use local[N], "
                             "local-cluster[workers,cores,MiB], spark://host:port, yarn or "
                             "k8s://https://host:port")
        return master


class RunConfig(_Strict):
    """One inference run: archive in, georeferenced building maps out."""

    archive: Path | None = None
    gallery: Path | None = Field(None, description="model gallery; None = the bundled default")
    out: Path | None = None
    backend: str = Field(
        "dask", description="local, dask or spark (any installed resflow.backends)")
    batch_size: int = Field(8, ge=1, description="chips per model forward pass")
    partition_chips: int = Field(16, ge=1, description="chips per partition of the graph")
    plan: Literal["fused", "regrouped"] = Field(
        "fused", description="fused: stages 1-3 of a partition in one task, each chip read "
        "once; regrouped: regroup chips by bucket between stages 2 and 3, so every stage-3 "
        "task serves one bucket's model (RESFlow's shape). Same maps either way")
    halo: int = Field(
        32, ge=0, description="context pixels around each chip for overlap-tile inference")
    torch_threads: int = Field(
        1, ge=1, description="intra-op threads per task (avoid oversubscription)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threshold: float = Field(
        0.5, gt=0, lt=1, description="probability above which a pixel is building")
    min_building_m2: float = Field(
        MIN_BUILDING_M2, ge=0, description="smaller connected groups of building pixels, in "
        "m^2 on the ground, are dropped from the mask (specks, not buildings); 0 keeps all")
    cog_dir: Path | None = None
    footprints: Path | None = None
    resume: bool = False
    overwrite: bool = False
    dask: DaskConfig = Field(default_factory=DaskConfig)
    spark: SparkConfig = Field(default_factory=SparkConfig)


def load_config(path: Path | str | None, model: type[BaseModel] = RunConfig,
                **overrides: Any) -> Any:
    """Load ``model`` from a YAML file, then apply non-None ``overrides`` (the CLI flags).

    Nested overrides use dotted keys, ``{"dask.workers": 4}``.

    Raises
    ------
    ConfigError
        naming the file and the first bad field, for unreadable YAML or invalid values.
    """
    data: dict[str, Any] = {}
    where = str(path) if path is not None else "command line"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(where, "the config file does not exist", "check the path")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(where, f"not valid YAML ({exc.__class__.__name__}: {exc})",
                              "fix the YAML syntax at the position shown") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(where, "the top level must be a mapping of settings",
                              "write `key: value` lines, e.g. `backend: dask`")
        data = loaded or {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        fix = f"see `resflow --help` or the README for valid values of '{field}'"
        raise ConfigError(f"{where}: field '{field}'", first["msg"], fix) from exc
