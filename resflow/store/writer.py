"""The output store's writer: made once on the driver, opened cheaply on every worker.

:class:`OutputStore` creates a store's metadata in bulk, refuses what must not be
overwritten or resumed, writes whole shards (:mod:`resflow.store.shards`) and keeps the
ledger: ``chip_bucket`` is chunked by shard and a shard's block is written after its
pixels, so ``--resume`` re-runs exactly the shards that hold a chip still unwritten, and
resume state is one small object per shard. Workers open only the arrays they write; the
store marks itself complete as the last write of a run, so an interrupted output never
looks finished.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.core.sync import sync

from resflow import storage
from resflow.errors import ResflowError
from resflow.redaction import redact
from resflow.report import REPORT_NAME
from resflow.store import lock
from resflow.store.format import (
    FORMAT_VERSION,
    KIND,
    LEDGER,
    UNWRITTEN,
    checked_groups,
    group_names,
)
from resflow.store.root import batches, read_root_attrs, update_root_attrs, write_hierarchy
from resflow.store.shards import ShardWrite, Write, shard_writes, write_together
from resflow.store.targets import check_resumable, refuse_archive_path

if TYPE_CHECKING:
    from resflow.archive import Archive
    from resflow.chips import ChipRef


@dataclass
class OutputStore:
    """A resflow output store: create it once on the driver, open it cheaply on workers.

    Attributes
    ----------
    path
        The store: a local :class:`~pathlib.Path` or an object-storage URL.
    groups
        Archive scene name -> safe group name inside the store.
    shard_chips
        Edge of a shard in chips (the unit of writing and of resume state).
    """

    path: Path | str
    groups: dict[str, str]
    shard_chips: int = 1
    _arrays: dict[tuple[str, str], zarr.Array] = field(default_factory=dict, repr=False,
                                                      compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Ship only the location, the group map and the shard size; workers reopen arrays
        lazily."""
        return {"path": self.path, "groups": self.groups, "shard_chips": self.shard_chips}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.groups = state["path"], state["groups"]
        self.shard_chips, self._arrays = state["shard_chips"], {}

    @property
    def display(self) -> str:
        """The store's location as messages show it (never with credentials)."""
        return storage.display(self.path)

    @classmethod
    def create(cls, out_path: storage.Location, archive: Archive, *, overwrite: bool = False,
               resume: bool = False, run_config: dict[str, Any], shard_chips: int = 1,
               bucket_models: dict[int, str] | None = None,
               gallery_version: str = "") -> OutputStore:
        """Create the output store for every scene of ``archive`` (or reopen it to resume).

        Parameters
        ----------
        out_path
            Location of the new Zarr v3 store (a folder or an object-storage URL).
        archive
            The imagery archive; each scene gets a group on its exact grid, CRS and transform.
        overwrite
            Delete an existing resflow output at ``out_path`` first.
        resume
            Reopen an existing, incomplete output made from the same scenes and pixel
            settings (``gallery``, ``halo``, ``threshold``, ``min_building_m2``); shards in
            its ledger are skipped by the caller through :meth:`done_shards`.
        run_config
            The exact run configuration (JSON-ready), kept in the root attributes.
        shard_chips
            Shard edge in chips for a new store (a resumed one keeps its own).
        bucket_models
            Bucket number -> the model that serves it (``"mono"``, ``"bucket-1"``), kept in
            the root attributes so every chip's model can be told from ``chip_bucket``.
        gallery_version
            The sha256 of the gallery's manifest, kept in the root attributes: a resumed
            output must be finished with the same gallery, not only the same location.

        Raises
        ------
        OutputComplete
            ``resume`` over a complete output: there is nothing to do.
        ResflowError
            ``out_path`` exists and neither flag is given, it is not a resflow output (never
            deleted), it is the archive itself, or a resumed output does not match.
        resflow.store.lock.StoreLocked
            Another run writes the output (the store's writer lock,
            :mod:`resflow.store.lock`: a ``flock`` on local disk, a lease in object
            storage, held from here to :meth:`finalize` or :meth:`record_unfinished`).
        """
        out = storage.normalise(out_path)
        lock.acquire(out)  # held until finalize or record_unfinished (or exit)
        try:
            action = cls.check_target(out, archive, overwrite=overwrite, resume=resume,
                                      run_config=run_config, gallery_version=gallery_version)
            if action == "resume":
                return cls.open(out)
            if action == "overwrite":
                storage.remove_tree(out)
            return cls._new(out, archive, run_config, shard_chips, bucket_models or {},
                            gallery_version)
        except BaseException:
            lock.release(out)
            raise

    @classmethod
    def check_target(cls, out_path: storage.Location, archive: Archive, *,
                     overwrite: bool = False, resume: bool = False,
                     run_config: dict[str, Any], gallery_version: str = "") -> str:
        """Every refusal of :meth:`create`, without writing anything.

        ``resflow run`` calls it before starting an engine, so a run that would be refused
        is refused before any work and leaves no output behind.

        Returns
        -------
        str
            ``"new"`` (nothing there yet), ``"resume"`` (an unfinished output to finish) or
            ``"overwrite"`` (an existing resflow output to replace).

        Raises
        ------
        OutputComplete, ResflowError
            As :meth:`create`.
        """
        out = storage.normalise(out_path)
        refuse_archive_path(out, archive.path)
        lock.check_free(out)
        if not storage.occupied(out):
            return "new"
        attrs = read_root_attrs(out)
        where = storage.display(out)
        if attrs is None or attrs.get("resflow_kind") != KIND:
            raise ResflowError(where, "the location exists and is not a resflow output, so "
                               "resflow will not write into or delete it",
                               "choose another output location or remove it yourself")
        if attrs.get("format_version") != FORMAT_VERSION:
            if resume and not overwrite:
                raise ResflowError(where, f"the output has format {attrs.get('format_version')},"
                                   f" this resflow writes format {FORMAT_VERSION}",
                                   "pass --overwrite to recompute it")
        elif resume and not overwrite:
            check_resumable(cls.open(out), attrs, archive, run_config, gallery_version)
            return "resume"
        if not overwrite:
            state = "a complete" if attrs.get("complete") else "an unfinished"
            raise ResflowError(where, f"{state} resflow output already exists here",
                               "pass --resume to finish it or --overwrite to replace it")
        return "overwrite"

    @classmethod
    def _new(cls, out: Path | str, archive: Archive, run_config: dict[str, Any],
             shard_chips: int, bucket_models: dict[int, str],
             gallery_version: str) -> OutputStore:
        groups = group_names(archive.scenes)
        if isinstance(out, Path):
            for group in groups.values():
                if not (out / group).resolve().is_relative_to(out.resolve()):
                    raise ResflowError(group, "a scene group would leave the output directory",
                                       "rename the scene in the archive")
        attrs = {
            "resflow_kind": KIND, "format_version": FORMAT_VERSION, "complete": False,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "archive": storage.display(archive.path), "scenes": groups,
            "shard_chips": shard_chips,
            "bucket_models": {str(b): m for b, m in sorted(bucket_models.items())},
            "run_config": redact(run_config), "gallery_version": gallery_version,
            "archive_sha256": {name: info.sha256 for name, info in archive.scenes.items()},
        }
        write_hierarchy(out, attrs, ((groups[name], info) for name, info in
                                     archive.scenes.items()),
                        shard_chips=shard_chips, threshold=run_config.get("threshold"))
        return cls(out, groups, shard_chips)

    @classmethod
    def open(cls, out_path: storage.Location) -> OutputStore:
        """Open an existing output for writing chips: reads only the root attributes.

        Raises
        ------
        ResflowError
            ``out_path`` is not a resflow output store of this format.
        """
        out = storage.normalise(out_path)
        attrs = read_root_attrs(out)
        if attrs is None or attrs.get("resflow_kind") != KIND:
            raise ResflowError(storage.display(out), "not a resflow output store (no "
                               "resflow_kind='output' in zarr.json)",
                               "check the location, or run `resflow run` to make one")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise ResflowError(storage.display(out), f"output format "
                               f"{attrs.get('format_version')} is not this resflow's "
                               f"{FORMAT_VERSION}", "recompute it with `resflow run "
                               "--overwrite`")
        return cls(out, checked_groups(out, attrs.get("scenes")), int(attrs["shard_chips"]))

    def _group(self, scene: str) -> str:
        if scene not in self.groups:
            raise ResflowError(f"{self.display}: scene {scene!r}", "the scene has no group in "
                               "this output", f"use one of {sorted(self.groups)}")
        return self.groups[scene]

    def _zarr_store(self, *, read_only: bool) -> Any:
        return storage.zarr_store(self.path, read_only=read_only)

    def _open_all(self, arrays: Iterable[tuple[str, str]]) -> None:
        """Open the ``(scene, array)`` read-write handles not yet cached (a worker opens each
        array's metadata once), all together: one round trip through zarr's I/O loop instead
        of one per array, which is most of a small scene's cost."""
        missing = list(dict.fromkeys(key for key in arrays if key not in self._arrays))
        if not missing:
            return
        store = self._zarr_store(read_only=False)
        paths = [f"{self._group(scene)}/{name}" for scene, name in missing]

        async def open_all() -> list[Any]:
            return await asyncio.gather(*(
                zarr.api.asynchronous.open_array(store=store, path=path, mode="r+",
                                                 zarr_format=3) for path in paths))

        for key, opened in zip(missing, sync(open_all()), strict=True):
            self._arrays[key] = zarr.Array(opened)

    def read_array(self, scene: str, name: str) -> zarr.Array:
        """A read-only handle on one array (``probability``, ``mask``, ``chip_bucket``...)
        of a scene."""
        return zarr.open_array(self._zarr_store(read_only=True),
                               path=f"{self._group(scene)}/{name}", mode="r", zarr_format=3)

    def georeference(self, scene: str) -> tuple[str, tuple[float, ...]]:
        """The scene's CRS as WKT and its affine ``(a, b, c, d, e, f)`` (rasterio order)."""
        attrs = self.read_array(scene, "spatial_ref").attrs
        c, a, b, f, d, e = (float(v) for v in attrs["GeoTransform"].split())
        return str(attrs["crs_wkt"]), (a, b, c, d, e, f)

    def bucket_models(self) -> dict[int, str]:
        """Bucket number -> the model that served its chips (from the root attributes)."""
        attrs = read_root_attrs(self.path) or {}
        return {int(b): m for b, m in attrs.get("bucket_models", {}).items()}

    @property
    def complete(self) -> bool:
        """True once :meth:`finalize` has run."""
        return bool((read_root_attrs(self.path) or {}).get("complete"))

    def write_shard(self, scene: str, shard: int, refs: Sequence[ChipRef],
                    probabilities: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    buckets: Sequence[int], transform: tuple[float, ...] | None = None
                    ) -> None:
        """Write one whole shard (the fields of :class:`ShardWrite`), raising its error.

        Writing a shard twice writes identical bytes, so re-executed tasks are harmless.
        """
        errors = self.write_shards([ShardWrite(scene, shard, refs, probabilities, masks,
                                               buckets, transform)])
        if errors:
            raise errors[0]

    def write_shards(self, shards: Sequence[ShardWrite]) -> dict[int, Exception]:
        """Write whole shards, of any scenes: every shard's pixels (and the coordinates that
        come with a scene's first shard) in one round trip through zarr's I/O loop, then, in
        a second, the ledger blocks of the shards whose pixels were all written.

        A task writes its partition's shards this way, so a partition of many small scenes
        costs three round trips (arrays opened, pixels, ledgers), not three per scene.

        Returns
        -------
        dict
            Index into ``shards`` -> the error of each shard not written, whose ledger
            block is left untouched (its chips stay unwritten). Empty when all were.
        """
        errors: dict[int, Exception] = {}
        try:
            self._open_all((s.scene, name) for s in shards for name in s.arrays())
        except Exception as exc:  # nothing can be written without the arrays
            return dict.fromkeys(range(len(shards)), exc)
        pixels: list[tuple[int, Write]] = []
        ledgers: dict[int, Write] = {}
        for index, shard in enumerate(shards):
            try:
                writes, ledgers[index] = self._shard_writes(shard)
            except Exception as exc:  # a chip that does not fit its shard
                errors[index] = exc
                continue
            pixels.extend((index, write) for write in writes)
        for (index, _), error in zip(pixels, write_together([w for _, w in pixels]),
                                     strict=True):
            if error is not None:
                errors.setdefault(index, error)
        # last: a shard is done once its pixels are
        done = [index for index in ledgers if index not in errors]
        for index, error in zip(done, write_together([ledgers[i] for i in done]),
                                strict=True):
            if error is not None:
                errors[index] = error
        return errors

    def _shard_writes(self, write: ShardWrite) -> tuple[list[Write], Write]:
        """The pixel and ledger writes of one shard, from arrays already open."""
        arrays = [self._arrays[(write.scene, name)] for name in write.arrays()]
        return shard_writes(write, arrays, self.shard_chips, self.georeference, self.display)

    def ledger(self, scene: str) -> np.ndarray:
        """The scene's ``chip_bucket`` grid (see the module docstring for its values).

        A ledger object that cannot be decoded (a process killed while writing it) counts as
        not written, so ``--resume`` maps its shard again instead of failing.
        """
        array = self.read_array(scene, LEDGER)
        try:
            return np.asarray(array[...])
        except Exception:  # one torn object: read shard by shard, the torn one as unwritten
            ledger = np.full(array.shape, UNWRITTEN, np.int16)
            step = self.shard_chips
            for r0 in range(0, array.shape[0], step):
                for c0 in range(0, array.shape[1], step):
                    block = np.s_[r0:r0 + step, c0:c0 + step]
                    try:
                        ledger[block] = array[block]
                    except Exception:
                        continue
            return ledger

    def ledgers(self, batch: int = 256) -> dict[str, tuple[np.ndarray, tuple[int, int], int]]:
        """Every scene's ledger (:meth:`ledger`), grid shape ``(height, width)`` in pixels
        and chip edge, read ``batch`` scenes at a time in one round trip through zarr's I/O
        loop each: what finishing or describing a run of many small scenes reads."""
        store = self._zarr_store(read_only=True)

        async def read(scene: str) -> tuple[np.ndarray | None, tuple[int, int], int]:
            group = self._group(scene)
            ledger, probability = await asyncio.gather(*(
                zarr.api.asynchronous.open_array(store=store, path=f"{group}/{name}",
                                                 mode="r", zarr_format=3)
                for name in (LEDGER, "probability")))
            try:
                values = np.asarray(await ledger.getitem(...))
            except Exception:  # a torn object: :meth:`ledger` reads it shard by shard
                values = None
            height, width = probability.shape
            return values, (int(height), int(width)), int(probability.chunks[0])

        async def read_all(scenes: list[str]) -> list[Any]:
            return await asyncio.gather(*(read(scene) for scene in scenes))

        found = {}
        for scenes in batches(self.groups, batch):
            for scene, (values, shape, chip) in zip(scenes, sync(read_all(scenes)),
                                                    strict=True):
                found[scene] = (self.ledger(scene) if values is None else values, shape, chip)
        return found

    def done_shards(self, scene: str) -> set[int]:
        """Shards of ``scene`` whose every chip is written (mapped or skipped as empty)."""
        ledger = self.ledger(scene)
        done: set[int] = set()
        rows, cols = ledger.shape
        shard_cols = -(-cols // self.shard_chips)
        for sr in range(-(-rows // self.shard_chips)):
            for sc in range(shard_cols):
                block = ledger[sr * self.shard_chips:(sr + 1) * self.shard_chips,
                               sc * self.shard_chips:(sc + 1) * self.shard_chips]
                if (block != UNWRITTEN).all():
                    done.add(sr * shard_cols + sc)
        return done

    def done_chips(self) -> set[tuple[str, int, int]]:
        """Chips whose pixels are stored (or that hold no valid pixel), as
        ``(scene, row, col)``."""
        done: set[tuple[str, int, int]] = set()
        for scene, (ledger, _, _) in self.ledgers().items():
            rows, cols = np.nonzero(ledger != UNWRITTEN)
            done.update((scene, int(r), int(c)) for r, c in zip(rows, cols, strict=True))
        return done

    def finalize(self, report: dict[str, Any]) -> None:
        """Mark the store complete, after every chip is in the ledger.

        Writes ``report`` to ``OUT/run_report.json`` and as the root attribute ``run_report``,
        then sets ``complete: true``: the last write of a run, so an interrupted output never
        looks complete.

        Raises
        ------
        ResflowError
            Some chips are not in the ledger.
        """
        counts = [(int(np.count_nonzero(ledger != UNWRITTEN)), ledger.size)
                  for ledger, _, _ in self.ledgers().values()]
        done, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
        if done < total:
            raise ResflowError(self.display, f"{total - done} of {total} chips "
                               "are not written, so the output cannot be marked complete",
                               "run again with --resume to finish them")
        self._keep_report(report, complete=True)
        lock.release(self.path)

    def record_unfinished(self, report: dict[str, Any]) -> None:
        """Keep the report of a run whose failed chips left the ledger short.

        The report (with one error per failed chip) goes where :meth:`finalize` puts it, but
        the store stays incomplete: a map with holes must never look finished, and
        ``--resume`` retries exactly the shards the ledger lacks.
        """
        self._keep_report(report, complete=False)
        lock.release(self.path)

    def _keep_report(self, report: dict[str, Any], *, complete: bool) -> None:
        report = redact(report)
        text = json.dumps(report, indent=2, default=str) + "\n"
        storage.write_bytes(storage.join(self.path, REPORT_NAME), text.encode())
        update_root_attrs(self.path, {"run_report": json.loads(text), "complete": complete})

