"""Per-process state of the workers: the gallery, the archive and the output store.

Tasks carry no models: each worker process loads the gallery once, keyed by its location
and manifest hash (a Dask ``WorkerPlugin`` runs :func:`preload_models` at worker start,
Spark's reused Python workers keep the cache across tasks), and opens the archive and the
output store once. The driver uses the same functions to verify the gallery before a run.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from resflow import storage
from resflow.allocator import steady_malloc
from resflow.archive import Archive
from resflow.errors import GalleryError
from resflow.gallery import DEFAULT_PATH, MANIFEST, Gallery
from resflow.store.writer import OutputStore

_LOCK = threading.Lock()
_GALLERIES: dict[tuple[str, str], Gallery] = {}
_ARCHIVES: OrderedDict[tuple[str, str], Archive] = OrderedDict()
_STORES: OrderedDict[tuple[str, str], OutputStore] = OrderedDict()

OPEN_STORES = 8
"""Archives, and output stores, a process keeps open: a worker of a long-lived cluster maps
one run after another, each into a new output, and would otherwise keep every one it ever
opened. Only the latest version of a location is kept (the store made anew replaces it)."""


def gallery_folder(location: Path | str | None) -> Path:
    """The gallery's local folder: the bundled default for None, a verified local copy for
    a URL (:func:`resflow.storage.local_copy`, keyed by its manifest)."""
    if location is None:
        return DEFAULT_PATH
    return storage.local_copy(storage.normalise(location), MANIFEST)


def gallery_key(location: Path | str | None) -> tuple[str, str]:
    """The cache key of a gallery: its resolved path and the sha256 of its manifest."""
    path = gallery_folder(location)
    try:
        digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        Gallery.load(path)  # raises the GalleryError that names the missing manifest
        raise
    return str(path.resolve()), digest


def load_gallery(location: Path | str | None, version: str = "") -> Gallery:
    """The gallery (a folder, a URL, or None for the bundled one), loaded and verified once
    per process; a retrained gallery (another manifest) loads anew.

    ``version`` is the sha256 of the manifest a run started with
    (:attr:`~resflow.inference.settings.GraphSettings.gallery_version`). A process that
    holds that version reads nothing, not even the manifest (a URL gallery costs no request
    per task); one that has to load the gallery checks it is still that version, so a
    gallery replaced during a run fails the tasks that would have mixed its models with the
    old ones.

    Raises
    ------
    GalleryError
        if the gallery is missing, does not verify, or is not ``version``.
    """
    if version:
        with _LOCK:
            held = _GALLERIES.get((str(location), version))
        if held is not None:
            return held
    folder, digest = gallery_key(location)
    if version and digest != version:
        raise GalleryError(
            storage.display(location) if location is not None else str(DEFAULT_PATH),
            f"the gallery changed during the run (its manifest's sha256 is now "
            f"{digest[:12]}, the run started with {version[:12]})",
            "let a run finish before replacing its gallery; run again with --resume to map "
            "the chips this one could not")
    key = (str(location), digest)
    with _LOCK:
        if key not in _GALLERIES:
            _GALLERIES[key] = Gallery.load(Path(folder))
        return _GALLERIES[key]


def preload_models(path: Path | str | None, version: str = "") -> None:
    """Build every model of the gallery in this process, before the first task needs it,
    and fix the process's malloc thresholds (:mod:`resflow.allocator`)."""
    steady_malloc()
    gallery = load_gallery(path, version)
    gallery.feature_extractor()
    gallery.hashing_head()
    for bucket in range(len(gallery.bucket_codes)):
        gallery.segmenter(bucket)


def _cached(cache: OrderedDict[tuple[str, str], Any], location: Path | str,
            open_store: Any) -> Any:
    """The store at ``location`` opened once per process, and again once it is made anew
    (a later run in the same process may overwrite an output, or re-ingest an archive);
    the :data:`OPEN_STORES` used last are kept. A task holding a store dropped here keeps
    using it."""
    key = (str(location), storage.version(storage.join(location, "zarr.json")))
    with _LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        for older in [k for k in cache if k[0] == key[0]]:
            del cache[older]
        cache[key] = open_store(location)
        while len(cache) > OPEN_STORES:
            cache.popitem(last=False)
        return cache[key]


def cached_archive(location: Path | str) -> Archive:
    """The archive at ``location``, opened once per process."""
    return _cached(_ARCHIVES, location, Archive.open)


def cached_store(location: Path | str) -> OutputStore:
    """The output store at ``location``, opened once per process."""
    return _cached(_STORES, location, OutputStore.open)
