"""The run report: what a run did, how fast, on what, and the exact config to redo it.

One JSON document per run, kept next to the maps it describes (``OUT/run_report.json`` and
the output store's root attribute ``run_report``, both written by
:meth:`resflow.store.writer.OutputStore.finalize`). It embeds the exact run config, so any map can
be reproduced, and the library versions, so any speed can be explained.
"""

from __future__ import annotations

import html
import json
import platform
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from resflow.redaction import redact

STAGES = ("read", "stage1", "stage2", "regroup", "stage3", "write", "scheduling")
"""Per-stage time keys, seconds summed over all tasks (``scheduling`` = wall time the engine
spent outside the stage functions: task dispatch, serialisation, waiting)."""

REPORT_NAME = "run_report.json"
"""File name of the report inside an output store."""

VERSIONED = ("torch", "numpy", "zarr", "xarray", "rasterio", "rioxarray", "resflow")
"""The core's libraries whose versions a report records; each engine adds what it
``requires`` (:func:`collect_versions`)."""


def collect_versions() -> dict[str, str]:
    """Versions of Python and of the installed libraries that shape a run's results and speed:
    the core's (:data:`VERSIONED`) and those every installed engine ``requires``.

    Libraries that are not installed (an engine's, where only another engine is) are left out.
    """
    return dict(_installed_versions())


@cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """:func:`collect_versions`, once per process: what is installed does not change while a
    process runs."""
    from resflow.plugins import engine_classes

    engine_modules = sorted({module.split(".")[0] for cls in engine_classes().values()
                             for module in cls.requires})
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        if (found := _version(name)) is not None:
            versions[name] = found
    unnamed = []
    for module in engine_modules:  # most distributions are named as their module
        if (found := _version(module)) is not None:
            versions[module] = found
        else:
            unnamed.append(module)
    if unnamed:  # scanning every installed distribution takes about half a second
        distributions = metadata.packages_distributions()
        for dist in (d for module in unnamed for d in distributions.get(module, [])):
            if (found := _version(dist)) is not None:
                versions[dist] = found
    return tuple(versions.items())


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


class BucketUse(BaseModel):
    """One spectral/semantic bucket of the run: how many chips it served and with what model."""

    model_config = ConfigDict(extra="forbid")

    bucket: int
    model: str = Field(description='the segmenter serving it: "mono" or "bucket-<k>"')
    chips: int = Field(ge=0)


class ClusterShape(BaseModel):
    """The compute the run had: the engine's workers (processes or executors) x threads each."""

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(ge=0)
    threads_per_worker: int = Field(ge=1)
    gpus: int = Field(0, ge=0)
    details: dict[str, Any] = Field(default_factory=dict,
                                    description="the engine's own description, as given "
                                    "(secrets redacted: resflow.redaction)")

    @model_validator(mode="before")
    @classmethod
    def _redacted(cls, data: Any) -> Any:
        """An engine's description may name a master URL with credentials: masked here."""
        return redact(data) if isinstance(data, dict) else data

    @classmethod
    def from_executor(cls, description: dict[str, Any]) -> ClusterShape:
        """Normalise an ``Executor.describe()`` dict, keeping it whole in ``details``.

        Engines report threads as one number or a list (workers may differ: the largest is
        kept) and GPUs as a count, a list of devices, or ``"pinned"`` (one GPU per worker).
        """
        threads = description.get("threads_per_worker", 1)
        gpus = description.get("gpus", 0)
        workers = int(description.get("workers", 1))
        if isinstance(gpus, list | tuple):
            gpus = len(gpus)
        elif not isinstance(gpus, int):
            gpus = workers if gpus else 0
        return cls(workers=workers,
                   threads_per_worker=max(threads) if isinstance(threads, list | tuple) and threads
                   else int(threads or 1),
                   gpus=gpus, details=description)

    def __str__(self) -> str:
        text = (f"{self.workers} worker{'s' * (self.workers != 1)} x "
                f"{self.threads_per_worker} thread{'s' * (self.threads_per_worker != 1)}")
        return text + (f", {self.gpus} GPU{'s' * (self.gpus != 1)}" if self.gpus else "")


class RunReport(BaseModel):
    """Everything one inference run produced and spent.

    Attributes
    ----------
    out
        The output store.
    chips
        Chips written by this run (a resumed run counts only its own).
    km2
        Ground area of those chips, km^2.
    buckets
        Buckets used, with chips per bucket and the model serving each.
    stage_seconds
        Seconds per stage (keys of :data:`STAGES`), summed over tasks.
    wall_s
        Wall-clock seconds from planning to the last chip written.
    backend, cluster
        Engine name and the shape of its cluster.
    config
        The exact run config (``RunConfig.model_dump(mode="json")``), with every secret
        masked as ``"***"`` (:func:`resflow.redaction.redact`).
    errors
        Per-input errors, each ``{"where", "problem", "fix"}`` (``ResflowError.as_record()``).
    skipped
        Scenes of the archive not mapped because they are too coarse for buildings, each
        ``{"name", "source", "source_gsd_m", "reason"}`` (:mod:`resflow.resolution`).
    empty_chips
        Chips skipped because they hold no valid pixel (stored as not mapped).
    store_retries
        Reads and writes of the archive or the output store that failed transiently and
        were tried again (:func:`resflow.retries.retrying`).
    peak_rss_mb
        Peak resident memory of the driver process, MiB, if measured.

    Examples
    --------
    >>> r = RunReport(out="o.zarr", chips=24, km2=5.31, wall_s=12.4, backend="dask",
    ...               cluster=ClusterShape(workers=2, threads_per_worker=1))
    >>> r.summary_line()
    'resflow: 24 chips, 5.31 km^2 in 12.4 s = 0.43 km^2/s on dask (2 workers x 1 thread) -> o.zarr'
    """

    model_config = ConfigDict(extra="forbid")

    out: str
    chips: int = Field(ge=0)
    km2: float = Field(ge=0)
    buckets: list[BucketUse] = Field(default_factory=list)
    stage_seconds: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_s: float = Field(ge=0)
    backend: str
    cluster: ClusterShape
    config: dict[str, Any] = Field(default_factory=dict)
    errors: list[dict[str, str]] = Field(default_factory=list)
    skipped: list[dict[str, Any]] = Field(default_factory=list)
    empty_chips: int = Field(0, ge=0)
    store_retries: int = Field(0, ge=0)
    versions: dict[str, str] = Field(default_factory=collect_versions)
    finished_utc: str = Field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    peak_rss_mb: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _redacted(cls, data: Any) -> Any:
        """Secrets in the config (``spark.conf`` keys naming a secret, URLs with
        ``user:secret@``), the output's name and the errors are masked on the way in
        (:func:`resflow.redaction.redact`), so no report, file or line ever holds them."""
        return redact(data) if isinstance(data, dict) else data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def km2_per_s(self) -> float:
        """Area rate, km^2 of imagery per wall-clock second."""
        return self.km2 / self.wall_s if self.wall_s else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def chips_per_s(self) -> float:
        """Chips per wall-clock second."""
        return self.chips / self.wall_s if self.wall_s else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def summary(self) -> str:
        """The one-line summary, kept in the JSON so ``resflow info`` can show it."""
        return self.summary_line()

    def summary_line(self) -> str:
        """The CLI's final line: chips, area, time, rate, engine and cluster, output."""
        line = (f"resflow: {self.chips} chips, {self.km2:.2f} km^2 in {self.wall_s:.1f} s = "
                f"{self.km2_per_s:.2f} km^2/s on {self.backend} ({self.cluster}) -> {self.out}")
        if self.errors:
            line += f" ({len(self.errors)} input error{'s' * (len(self.errors) != 1)})"
        if self.skipped:
            line += (f" ({len(self.skipped)} scene{'s' * (len(self.skipped) != 1)} too coarse "
                     "for buildings, skipped)")
        if self.empty_chips:
            line += f" ({self.empty_chips} chips without valid pixels, skipped)"
        if self.store_retries:
            line += f" ({self.store_retries} storage retries)"
        return line

    def __str__(self) -> str:
        """The one-line summary (:meth:`summary_line`): a report printed in a script or a
        notebook reads as the CLI's last line, not as every field."""
        return self.summary_line()

    def _repr_html_(self) -> str:
        """A notebook cell's view: the summary line, then seconds per stage and the buckets
        as HTML tables; every text from the run (paths, names, errors) escaped."""
        stages = "".join(f"<tr><td>{html.escape(stage)}</td><td>{seconds:.1f}</td></tr>"
                         for stage, seconds in self.stage_seconds.items())
        parts = [f"<p><b>{html.escape(self.summary_line())}</b></p>",
                 "<table><thead><tr><th>stage</th><th>task seconds</th></tr></thead>"
                 f"<tbody>{stages}</tbody></table>"]
        if self.buckets:
            rows = "".join(f"<tr><td>{use.bucket}</td><td>{html.escape(use.model)}</td>"
                           f"<td>{use.chips}</td></tr>" for use in self.buckets)
            parts.append("<table><thead><tr><th>bucket</th><th>model</th><th>chips</th></tr>"
                         f"</thead><tbody>{rows}</tbody></table>")
        if self.errors:
            items = "".join(f"<li>{html.escape(e.get('where', ''))}: "
                            f"{html.escape(e.get('problem', ''))}. Fix: "
                            f"{html.escape(e.get('fix', ''))}.</li>" for e in self.errors)
            parts.append(f"<p>errors:</p><ul>{items}</ul>")
        return "<div>" + "".join(parts) + "</div>"

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready report, as passed to :meth:`resflow.store.writer.OutputStore.finalize`."""
        return self.model_dump(mode="json")

    def write(self, path: Path | str) -> Path:
        """Write the report as JSON to ``path`` (a file, or a directory to hold
        ``run_report.json``); returns the file written.

        For a finished run :meth:`resflow.store.writer.OutputStore.finalize` writes it into the
        store; this is for reports kept elsewhere (a failed run, a benchmark series).
        """
        target = Path(path)
        if target.is_dir():
            target = target / REPORT_NAME
        target.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return target

    @classmethod
    def read(cls, path: Path | str) -> RunReport:
        """Read a report written by :meth:`write` or by ``OutputStore.finalize``."""
        target = Path(path)
        if target.is_dir():
            target = target / REPORT_NAME
        data = json.loads(target.read_text())
        for derived in ("km2_per_s", "chips_per_s", "summary"):
            data.pop(derived, None)
        return cls.model_validate(data)
