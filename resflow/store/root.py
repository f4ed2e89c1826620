"""The root document of an output store: its attributes read cheaply, updated whole, and
the store's metadata written in bulk.

Workers open a store by its root attributes alone, so those are written before the
consolidated metadata of every group and only the head of ``zarr.json`` is read: a worker
of a country-wide run never parses the metadata of all its scenes. Updates rewrite the
document as one object, so a reader sees the old attributes or the new, never a mix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resflow import storage
from resflow.errors import ResflowError
from resflow.store.format import scene_documents

if TYPE_CHECKING:
    from resflow.archive_layout import SceneInfo

#: Scenes whose groups are built in memory and stored together while creating a store.
METADATA_BATCH = 256


def read_root(location: Path | str) -> dict[str, Any] | None:
    """The root ``zarr.json`` document of a store, or None if there is none (or not JSON)."""
    try:
        return json.loads(storage.read_bytes(storage.join(location, "zarr.json")))
    except (OSError, ValueError):
        return None


#: Bytes of the root document read first for its attributes (doubled until they are whole).
ATTRIBUTES_PREFIX = 1 << 20


def read_root_attrs(location: Path | str) -> dict[str, Any] | None:
    """Root attributes of a Zarr v3 store (a folder or a URL), or None if it is not one.

    resflow writes ``attributes`` before the consolidated metadata of every group, so
    only the head of the root document is read and parsed: a worker opening the store of a
    country-wide run never parses the metadata of all its scenes. A document laid out
    otherwise (rewritten by another tool) is parsed whole.
    """
    document = storage.join(location, "zarr.json")
    size = ATTRIBUTES_PREFIX
    while True:
        try:
            head = storage.read_prefix(document, size).decode("utf-8", errors="ignore")
        except OSError:
            return None
        attrs = _leading_attributes(head)
        if attrs is not None:
            return attrs
        if len(head) < size:  # the whole document is here: parse it as zarr would
            root = read_root(location)
            return None if root is None else root.get("attributes", {})
        size *= 2


def _leading_attributes(head: str) -> dict[str, Any] | None:
    """The root's ``attributes`` object if ``head`` holds all of it before anything else
    that could contain the same key (resflow's own layout), else None."""
    key = head.find('"attributes"')
    if key < 0 or '"consolidated_metadata"' in head[:key]:
        return None
    start = head.find(":", key) + 1
    while start < len(head) and head[start].isspace():
        start += 1
    try:
        value, _ = json.JSONDecoder().raw_decode(head, start)
    except ValueError:  # cut off: read more
        return None
    return value if isinstance(value, dict) else None


def update_root_attrs(location: Path | str, updates: dict[str, Any]) -> None:
    """Rewrite the root document with ``updates`` merged into its attributes, keeping its
    consolidated metadata: one whole-object write, so readers see the old or the new."""
    root = read_root(location)
    if root is None:
        raise ResflowError(storage.display(location), "the output's root zarr.json is gone",
                           "run again with --overwrite")
    root.setdefault("attributes", {}).update(json.loads(json.dumps(updates, default=str)))
    storage.write_bytes(storage.join(location, "zarr.json"), json.dumps(root).encode())


def _store_batch(location: Path | str, documents: dict[str, bytes]) -> None:
    """Write many small objects at once: concurrently to an object store (fsspec ``pipe``),
    by a thread pool to a local folder."""
    if isinstance(location, Path):
        def put(item: tuple[str, bytes]) -> None:
            target = location / item[0]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item[1])

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, documents.items()))
        return
    fs, root = storage.filesystem(location)
    fs.pipe({f"{root}/{key}": value for key, value in documents.items()})


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_hierarchy(location: Path | str, root_attrs: dict[str, Any],
                    scenes: Iterable[tuple[str, SceneInfo]], *, shard_chips: int,
                    threshold: float | None) -> int:
    """Create the store's metadata for every scene, in bulk.

    Each scene's documents come from a per-grid template
    (:func:`resflow.store.format.scene_documents`), and :data:`METADATA_BATCH` scenes at a
    time are stored with one concurrent write; the root document, with every group's
    metadata consolidated for readers, is written last, so a store that lacks it was never
    finished. Returns the number of objects written.
    """
    consolidated: dict[str, Any] = {}
    written = 0
    for batch in batches(scenes, METADATA_BATCH):
        documents: dict[str, Any] = {}
        for group, info in batch:
            documents.update(scene_documents(group, info, shard_chips, threshold))
        consolidated.update(documents)
        _store_batch(location, {f"{path}/zarr.json": json.dumps(document).encode()
                                for path, document in documents.items()})
        written += len(documents)
    document = {"zarr_format": 3, "node_type": "group", "attributes": root_attrs,
                "consolidated_metadata": {"kind": "inline", "must_understand": False,
                                          "metadata": consolidated}}
    storage.write_bytes(storage.join(location, "zarr.json"),
                        json.dumps(document, default=str).encode())
    return written + 1

