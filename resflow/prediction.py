"""Rasters to buildings in one folder: what ``resflow predict`` and :func:`resflow.predict`
own besides the ingest and the run they call.

A predict folder (:class:`PredictFolder`) holds the run's output store, its exports and a
record of its sources. The ingest is :func:`resflow.ingestion.ingest` and the run (exports
included) is ``resflow run``'s, so the maps are those of ``ingest`` then ``run`` on the same
inputs, byte for byte. This module decides only what may be written into the folder, what a
resumed job reuses, and what is removed after: a job refused or with nothing to map leaves
nothing it made.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from resflow import storage
from resflow.errors import ConfigError, InputError, ResflowError

if TYPE_CHECKING:
    from resflow.config import IngestConfig, RunConfig
    from resflow.report import RunReport

RECORD_KIND = "resflow-predict"
"""The ``kind`` of ``predict.json``: a folder holding it is a predict folder."""

State = Literal["new", "resume"]
"""What a job does with its folder: start anew, or finish an interrupted job."""


@dataclass(frozen=True)
class PredictFolder:
    """The files of one predict folder (a local folder: its COGs and footprints are files)::

        DIR/maps.zarr            the output store (``resflow.open_maps``)
        DIR/cogs/                two Cloud-Optimized GeoTIFFs per scene (probability, mask)
        DIR/footprints.gpkg      every scene's buildings, WGS 84 GeoPackage
        DIR/stac/                a STAC Collection of the above
        DIR/predict.json         the sources, as given, that ``--resume`` compares
        DIR/archive.zarr         the ingested imagery: there while the job runs, and after it
                                 only when asked to keep it (or when the run did not finish)
    """

    path: Path

    @classmethod
    def at(cls, out: storage.Location) -> PredictFolder:
        """The predict folder at ``out``.

        Raises
        ------
        ConfigError
            ``out`` is a URL: COGs and footprints are written to local files.
        """
        location = storage.normalise(out)
        if not isinstance(location, Path):
            raise ConfigError(storage.display(location), "predict writes to a local folder",
                              "give a local --out, or use `resflow ingest`, `resflow run` and "
                              "`resflow export` for object storage")
        return cls(location)

    @property
    def archive(self) -> Path:
        """The ingested imagery archive."""
        return self.path / "archive.zarr"

    @property
    def maps(self) -> Path:
        """The output store."""
        return self.path / "maps.zarr"

    @property
    def cogs(self) -> Path:
        """The folder of COGs."""
        return self.path / "cogs"

    @property
    def footprints(self) -> Path:
        """The footprints file (GeoPackage, WGS 84: GDAL and every GIS on it read it)."""
        return self.path / "footprints.gpkg"

    @property
    def stac(self) -> Path:
        """The folder of the STAC Collection."""
        return self.path / "stac"

    @property
    def record(self) -> Path:
        """The record of the job's sources."""
        return self.path / "predict.json"

    def outputs(self) -> tuple[Path, ...]:
        """Everything a job writes, the record last."""
        return (self.maps, self.cogs, self.footprints, self.stac, self.archive, self.record)


@dataclass(frozen=True)
class Prediction:
    """What :func:`resflow.predict` made.

    Attributes
    ----------
    report
        The run report (also in ``maps/run_report.json``).
    folder, maps, cogs, footprints, stac
        The folder and what it holds: the output store, the COG folder, the footprints
        file (GeoParquet, WGS 84) and the STAC Collection's folder.
    archive
        The ingested archive where it is kept (``keep_archive``, or a run that left chips
        to ``resume``), else None.
    refused
        One ``{"source", "where", "problem", "fix"}`` per input that could not be ingested.
    """

    report: RunReport
    folder: Path
    maps: Path
    cogs: Path
    footprints: Path
    stac: Path
    archive: Path | None
    refused: list[dict[str, str]]


@dataclass(frozen=True)
class Job:
    """A predict job that passed its checks: its folder, what it does there, and whether
    it created the folder (which :func:`abandon` then removes whole)."""

    folder: PredictFolder
    state: State
    made_folder: bool


def source_names(sources: Iterable[storage.Location]) -> list[str]:
    """The sources as a record keeps them: local paths absolute, URLs as displayed.

    Examples
    --------
    >>> source_names(["s3://bucket/a.tif"])
    ['s3://bucket/a.tif']
    """
    names = []
    for source in sources:
        location = storage.normalise(source)
        names.append(str(location.absolute()) if isinstance(location, Path)
                     else storage.display(location))
    return names


def start(folder: PredictFolder, sources: Sequence[storage.Location], *, resume: bool,
          overwrite: bool) -> Job:
    """Check that a job may use ``folder`` and record its sources there, before any work.

    A new job needs a folder that is missing or empty, or, with ``overwrite``, an earlier
    predict folder, whose files are removed first. A resumed job needs the predict folder
    of the same sources.

    Raises
    ------
    OutputComplete
        A resumed job whose maps are complete: there is nothing to do.
    ResflowError
        naming the folder or its record, when the job may not write there.
    """
    sources = source_names(sources)
    if not sources:
        raise ConfigError("SRC", "no source was given", "name at least one raster, folder, "
                          "URL or STAC file")
    where = storage.display(folder.path)
    if folder.path.exists() and not folder.path.is_dir():
        raise InputError(where, "a file is in the way of the folder",
                         "choose another --out folder")
    occupied = folder.path.is_dir() and any(folder.path.iterdir())
    record = _read_record(folder) if occupied else None
    if occupied and record is None:
        raise InputError(where, "the folder holds files that are not a resflow predict "
                         "output, so resflow will not write into it or delete them",
                         "choose a new or empty --out folder")
    state: State = "new"
    if record is not None and resume and not overwrite:
        if record["sources"] != sources:
            raise InputError(str(folder.record), "the folder was started from other "
                             f"sources ({', '.join(record['sources'])})",
                             "resume with the same sources, or pass --overwrite to start over")
        _refuse_complete(folder)
        state = "resume"
    elif record is not None and not overwrite:
        raise InputError(where, "a predict output is already in this folder",
                         "pass --resume to finish it or --overwrite to replace it")
    elif record is not None:
        for path in folder.outputs():
            _remove(path)
    made_folder = not folder.path.exists()
    folder.path.mkdir(parents=True, exist_ok=True)
    if state == "new":
        storage.write_bytes(folder.record, json.dumps(
            {"kind": RECORD_KIND, "sources": sources}, indent=1).encode())
    return Job(folder, state, made_folder)


def prepare_archive(job: Job, sources: Sequence[storage.Location], config: IngestConfig,
                    *, rgb: Sequence[int] | None = None,
                    progress: bool = False) -> list[dict[str, str]]:
    """Ingest the job's sources into its archive (:func:`resflow.ingestion.ingest`), unless a
    resumed job's run has started: its archive is reused as it is, so the maps it finishes
    are of the imagery they began with.

    Returns
    -------
    list of dict
        The refused inputs, ``{"source", "where", "problem", "fix"}`` each.

    Raises
    ------
    InputError
        No source could be ingested (naming the first refused file), or a started run's
        archive is gone; a new job's folder is then removed (:func:`abandon`).
    """
    from resflow.ingestion import ingest

    try:
        if job.state == "resume" and storage.occupied(job.folder.maps):
            if not job.folder.archive.exists():
                raise InputError(str(job.folder.archive), "the archive of the unfinished "
                                 "run is gone", "pass --overwrite to start over")
            return []
        result = ingest(sources, job.folder.archive, config, rgb=rgb, progress=progress)
        if not result.ingested and not result.skipped:
            raise _nothing_ingested(result.refused)
    except ResflowError:
        abandon(job)
        raise
    return result.refused


def check_run(job: Job, settings: RunConfig) -> None:
    """The run's checks before any engine starts (:func:`resflow.preflight.check_run`); a
    refused new job leaves nothing it made (:func:`abandon`).

    Raises
    ------
    ResflowError
        As :func:`resflow.preflight.check_run`.
    """
    from resflow.preflight import check_run as check

    try:
        check(settings)
    except ResflowError:
        abandon(job)
        raise


def abandon(job: Job) -> None:
    """Remove what a new job made: the folder it created, else its record and archive.
    Nothing that was there before the job started, and nothing of a resumed job, is
    removed."""
    if job.state != "new":
        return
    if job.made_folder:
        shutil.rmtree(job.folder.path, ignore_errors=True)
    else:
        _remove(job.folder.archive)
        _remove(job.folder.record)


def _nothing_ingested(refused: Sequence[dict[str, str]]) -> InputError:
    """The error of a job none of whose sources could be ingested: the first refusal,
    naming its file."""
    if not refused:
        return InputError("SRC", "no raster was found in the sources",
                          "name raster files, folders of rasters, URLs or STAC files")
    first = refused[0]
    more = f" ({len(refused) - 1} more refused)" if len(refused) > 1 else ""
    return InputError(first["where"], f"{first['problem']}{more}", first["fix"])


def finish(job: Job, *, keep_archive: bool) -> Path | None:
    """After a run that mapped every chip: remove the archive unless it is to be kept.

    Returns
    -------
    Path or None
        The archive, where it is kept.
    """
    if keep_archive:
        return job.folder.archive if job.folder.archive.exists() else None
    _remove(job.folder.archive)
    return None


def folder_settings(folder: PredictFolder) -> dict[str, Any]:
    """The run settings that place a run's store and exports in ``folder``."""
    return {"archive": folder.archive, "out": folder.maps, "cog_dir": folder.cogs,
            "footprints": folder.footprints, "stac": True, "stac_dir": folder.stac}


def _read_record(folder: PredictFolder) -> dict[str, Any] | None:
    """The folder's record, or None where there is no valid one."""
    try:
        record = json.loads(folder.record.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != RECORD_KIND or \
            not isinstance(record.get("sources"), list):
        return None
    return record


def _refuse_complete(folder: PredictFolder) -> None:
    """Raise :class:`~resflow.store.targets.OutputComplete` where the folder's maps are
    complete."""
    from resflow.store.root import read_root_attrs
    from resflow.store.targets import OutputComplete

    attrs = read_root_attrs(folder.maps) if storage.occupied(folder.maps) else None
    if attrs and attrs.get("complete"):
        raise OutputComplete(storage.display(folder.path), "the maps are already complete, "
                             "so there is nothing to resume", "use --overwrite to recompute "
                             "them")


def _remove(path: Path) -> None:
    """Remove a file or folder of the job's, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
