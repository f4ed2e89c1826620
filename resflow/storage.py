"""Where resflow's stores live: a local folder or an object-storage URL, behind one API.

An archive, a gallery or an output store is a *location*: a local path (``maps.zarr``,
``file:///data/maps.zarr``), kept as a :class:`~pathlib.Path`, or a URL fsspec understands
(``s3://bucket/maps.zarr``, ``gs://...`` with gcsfs installed), kept as a string.

Credentials are never part of resflow's settings: the storage library reads them on every
worker from the standard environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL``, ...), so they never travel with a task nor reach a log, a message or a
run report; :func:`display` strips any ``user:secret@`` a URL was given.

Object stores fail transiently (throttling, timeouts, dropped connections): the storage
library's silent retries are off (:data:`STORAGE_OPTIONS`) and resflow retries a whole read
or write itself, counting each retry for the run report (:mod:`resflow.retries`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BeforeValidator

Location = str | os.PathLike
"""A local path or a storage URL, as users give them."""

LocationField = Annotated[str, BeforeValidator(os.fspath)]
"""A location in a config model: kept as text, so ``s3://b/x`` never becomes the path
``s3:/b/x`` (paths are accepted and written out as text)."""


def _local_only(value: Any) -> Any:
    """``value`` unchanged unless it is a URL, which a local-only setting refuses."""
    if isinstance(value, str | os.PathLike) and is_url(os.fspath(value)):
        raise ValueError(f"'{os.fspath(value)}' is a URL, and this setting takes a folder or "
                         "file on local disk")
    return value


LocalPathField = Annotated[Path, BeforeValidator(_local_only)]
"""A config setting only local disk takes (COG folders, footprint files): a URL is refused
by name, where ``Path`` would fold ``s3://b/x`` into the relative path ``s3:/b/x``."""

#: fsspec options for S3: one try per request inside the storage library (resflow retries
#: and counts), and timeouts short enough that a stalled request becomes a retry.
STORAGE_OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"config_kwargs": {"retries": {"total_max_attempts": 1, "mode": "standard"},
                             "connect_timeout": 10, "read_timeout": 60}},
}


def is_url(location: Location) -> bool:
    """True for a remote URL (``s3://``, ``gs://``...); ``file://`` and paths are local.

    >>> is_url("s3://bucket/archive.zarr"), is_url("file:///tmp/a.zarr"), is_url("a.zarr")
    (True, False, False)
    """
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def normalise(location: Location) -> Path | str:
    """A local :class:`Path` (``file://`` URLs included) or a URL without a trailing slash.

    >>> normalise("file:///tmp/a.zarr"), normalise("s3://b/a.zarr/")
    (PosixPath('/tmp/a.zarr'), 's3://b/a.zarr')
    """
    text = os.fspath(location)
    if text.startswith("file://"):
        return Path(urlsplit(text).path)
    return text.rstrip("/") if is_url(text) else Path(text)


def join(location: Path | str, *parts: str) -> Path | str:
    """``location / part / ...`` for paths and URLs alike."""
    if isinstance(location, Path):
        return location.joinpath(*parts)
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])


def display(location: Location) -> str:
    """The location as messages show it: never with credentials embedded in a URL.

    >>> display("s3://KEY:SECRET@bucket/a.zarr")
    's3://bucket/a.zarr'
    """
    text = os.fspath(location)
    if not is_url(text):
        return text
    parts = urlsplit(text)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def refuse_credentials(location: Path | str) -> None:
    """Refuse a URL that embeds credentials (``s3://KEY:SECRET@bucket/...``).

    The storage libraries do not use them (they would take ``KEY:SECRET@bucket`` for the
    bucket, and put the secret in their own error messages): credentials come from the
    environment or a profile, never from a location.

    Raises
    ------
    ResflowError
        naming the URL without its credentials.

    >>> refuse_credentials("s3://bucket/a.zarr")
    >>> refuse_credentials("s3://KEY:SECRET@bucket/a.zarr")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    resflow.errors.ResflowError: s3://bucket/a.zarr: the URL holds credentials (user:secret@)...
    """
    if isinstance(location, Path) or "@" not in urlsplit(location).netloc:
        return
    from resflow.errors import ResflowError

    raise ResflowError(display(location), "the URL holds credentials (user:secret@), which "
                       "resflow never sends to a storage library nor records",
                       "drop them from the URL and give them through the environment "
                       "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")


def filesystem(location: Path | str) -> tuple[Any, str]:
    """The fsspec filesystem and in-filesystem path of a location.

    Raises
    ------
    ResflowError
        The URL's protocol needs a package that is not installed (``s3fs`` for ``s3://``).
    """
    import fsspec

    from resflow.errors import ResflowError

    if isinstance(location, Path):
        return fsspec.filesystem("file"), str(location)
    refuse_credentials(location)
    protocol = urlsplit(location).scheme
    try:
        fs, path = fsspec.core.url_to_fs(location, **STORAGE_OPTIONS.get(protocol, {}))
        if hasattr(fs, "retries"):
            fs.retries = 1  # s3fs's own retry loop: resflow retries, and counts
        return fs, path
    except ImportError as exc:
        raise ResflowError(display(location), f"reading {protocol}:// locations needs a "
                           f"package that is not installed ({exc})",
                           "pip install 'resflow[s3]' (s3fs) or gcsfs for gs://") from exc


def zarr_store(location: Path | str, *, read_only: bool = False) -> Any:
    """A zarr store for a location: ``LocalStore`` for paths, ``FsspecStore`` for URLs."""
    from zarr.storage import FsspecStore, LocalStore

    if isinstance(location, Path):
        return LocalStore(location, read_only=read_only)
    refuse_credentials(location)
    protocol = urlsplit(location).scheme
    options = STORAGE_OPTIONS.get(protocol, {})
    try:
        store = FsspecStore.from_url(location, storage_options=options, read_only=read_only)
    except ImportError as exc:
        from resflow.errors import ResflowError

        raise ResflowError(display(location), f"{protocol}:// locations need a package that "
                           f"is not installed ({exc})",
                           "pip install 'resflow[s3]' (s3fs) or gcsfs for gs://") from exc
    if hasattr(store.fs, "retries"):
        store.fs.retries = 1  # s3fs's own retry loop: resflow retries, and counts
    return store


def exists(location: Path | str) -> bool:
    """Whether anything (a file, an object or a prefix) is at the location."""
    if isinstance(location, Path):
        return location.exists()
    fs, path = filesystem(location)
    return bool(fs.exists(path))


def occupied(location: Path | str) -> bool:
    """A file, or a folder / prefix with something in it (an empty folder is reusable)."""
    if isinstance(location, Path):
        return location.is_file() or (location.is_dir() and any(location.iterdir()))
    fs, path = filesystem(location)
    return bool(fs.exists(path)) and (fs.isfile(path) or bool(fs.ls(path, detail=False)))


def version(location: Path | str) -> str:
    """A token that changes when the file or object is rewritten (mtime or ETag), so a
    process-level cache of an opened store notices a store made anew at the same place."""
    if isinstance(location, Path):
        return str(location.stat().st_mtime_ns)
    fs, path = filesystem(location)
    info = fs.info(path)
    return str(info.get("ETag") or info.get("LastModified") or info.get("mtime") or "")


def read_bytes(location: Path | str) -> bytes:
    """The whole object or file (``FileNotFoundError`` names the location if absent)."""
    if isinstance(location, Path):
        return location.read_bytes()
    fs, path = filesystem(location)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no object at {display(location)}") from None


def read_prefix(location: Path | str, size: int) -> bytes:
    """The first ``size`` bytes of a file or object (all of it if shorter)."""
    if isinstance(location, Path):
        with location.open("rb") as fh:
            return fh.read(size)
    fs, path = filesystem(location)
    try:
        return fs.cat_file(path, start=0, end=size)
    except FileNotFoundError:
        raise FileNotFoundError(f"no object at {display(location)}") from None


def write_bytes(location: Path | str, data: bytes) -> None:
    """Write a whole object; a local file goes to a temporary name first and is renamed, so
    a reader never sees half of it (an object store's PUT is all or nothing already)."""
    if isinstance(location, Path):
        partial = location.with_name(f".{location.name}.partial")
        partial.write_bytes(data)
        partial.replace(location)
        return
    fs, path = filesystem(location)
    fs.pipe_file(path, data)


def remove_tree(location: Path | str) -> None:
    """Delete a store (a folder, or every object under a prefix)."""
    if isinstance(location, Path):
        import shutil

        shutil.rmtree(location)
        return
    fs, path = filesystem(location)
    fs.rm(path, recursive=True)


def basename(location: Path | str) -> str:
    """The last component of a path or URL (``s3://b/x/scene.tif`` -> ``scene.tif``)."""
    return location.name if isinstance(location, Path) else \
        PurePosixPath(urlsplit(location).path).name


def parent_name(location: Path | str) -> str:
    """The name of the folder or prefix holding a path or URL."""
    return location.parent.name if isinstance(location, Path) else \
        PurePosixPath(urlsplit(location).path).parent.name


def size(location: Path | str) -> int:
    """Size in bytes of a file or object."""
    if isinstance(location, Path):
        return location.stat().st_size
    fs, path = filesystem(location)
    return int(fs.size(path))


def open_binary(location: Path | str) -> Any:
    """A binary file object for reading a file or object."""
    if isinstance(location, Path):
        return location.open("rb")
    fs, path = filesystem(location)
    return fs.open(path, "rb")


def find(location: str, suffixes: frozenset[str]) -> list[str] | None:
    """The URLs of objects under a prefix whose names end in one of ``suffixes`` (sorted),
    ``[location]`` for one object, or None if nothing is there."""
    fs, path = filesystem(location)
    if fs.isfile(path):
        return [location]
    if not fs.exists(path):
        return None
    return sorted(fs.unstrip_protocol(p) for p in fs.find(path)
                  if PurePosixPath(p).suffix.lower() in suffixes)


#: GDAL's HTTP limits for a URL: seconds to connect, seconds one request may take, and
#: retries (after 1 s, then doubling) of a request that timed out or got a 429 or a 5xx, as
#: the storage library's (:data:`STORAGE_OPTIONS`). Without them GDAL waits for a stalled
#: server forever. GDAL's variables of the same names in the environment take precedence.
GDAL_HTTP_LIMITS = {"GDAL_HTTP_CONNECTTIMEOUT": "10", "GDAL_HTTP_TIMEOUT": "60",
                    "GDAL_HTTP_MAX_RETRY": "2", "GDAL_HTTP_RETRY_DELAY": "1"}


def gdal_options(location: Path | str) -> dict[str, str]:
    """GDAL settings to read a URL through its own virtual file systems (``/vsis3/``...):
    :data:`GDAL_HTTP_LIMITS`, and from the same standard environment the storage library
    reads, an S3-compatible endpoint given as ``AWS_ENDPOINT_URL`` as GDAL's
    ``AWS_S3_ENDPOINT`` (GDAL reads the credentials and profile variables itself)."""
    if not is_url(location):
        return {}
    limits = {name: value for name, value in GDAL_HTTP_LIMITS.items() if name not in os.environ}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if urlsplit(os.fspath(location)).scheme != "s3" or not endpoint:
        return limits
    parts = urlsplit(endpoint)
    return {**limits, "AWS_S3_ENDPOINT": parts.netloc,
            "AWS_HTTPS": "YES" if parts.scheme == "https" else "NO", "AWS_VIRTUAL_HOSTING": "FALSE"}


def open_raster(location: Path | str, drivers: Sequence[str] = ()) -> Any:
    """A rasterio dataset for a file or a URL. GDAL reads a URL in place, range request by
    range request (``s3://`` as ``/vsis3/``), so a scene is never downloaded whole; call it
    inside :func:`raster_env` so GDAL sees the endpoint.

    ``drivers``: the only GDAL drivers allowed to open it, tried in turn (rasterio takes one
    at a time), so a file dressed as a raster never reaches the parser of another format;
    empty: any driver. The first driver's error is raised when none opens it.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    if not drivers:
        return rasterio.open(location)
    first: RasterioIOError | None = None
    for driver in drivers:
        try:
            return rasterio.open(location, driver=driver)
        except RasterioIOError as exc:
            first = first or exc
    raise first  # type: ignore[misc]  # drivers is not empty, so some driver failed


def raster_env(location: Path | str, **options: Any) -> Any:
    """A ``rasterio.Env`` with :func:`gdal_options` for ``location`` plus ``options``."""
    import rasterio

    return rasterio.Env(**gdal_options(location), **options)


def local_copy(location: Path | str, marker: str) -> Path:
    """A local folder holding what is under ``location``: the path itself, or for a URL a
    copy in this user's cache (``<tmp>/resflow-cache-<uid>``), fetched again whenever the
    object ``marker`` (a manifest) differs from the copy's. The copy is made under a
    temporary name and renamed, so a process never sees half of one.

    For small trees read by every worker (a model gallery): each process reads local files.
    The objects' keys come from whoever published them: every key is checked to stay
    inside the copy (:func:`resflow.paths.confined`) before anything is fetched, and the
    cache folder must be this user's alone (:func:`resflow.paths.private_folder`).

    Raises
    ------
    InputError
        An object key that would lead outside the copy (``gal/../../x``), naming the key.
    ResflowError
        The cache folder is a link, another user's, or writable by others.
    """
    import hashlib
    import shutil
    import tempfile

    from resflow.errors import InputError
    from resflow.paths import confined, private_folder

    if isinstance(location, Path):
        return location
    remote = read_bytes(join(location, marker))
    cache = private_folder(
        Path(tempfile.gettempdir()) / f"resflow-cache-{os.getuid()}", "the gallery cache folder",
        "remove it (resflow makes it anew, private to you), or set TMPDIR to a private folder")
    target = cache / hashlib.sha256(display(location).encode() + remote).hexdigest()[:24]
    if (target / marker).is_file() and (target / marker).read_bytes() == remote:
        return target
    fs, path = filesystem(location)
    prefix = path.rstrip("/") + "/"
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
    try:
        files = {}
        for key in fs.find(path):
            where = display(fs.unstrip_protocol(key))
            if not key.startswith(prefix):
                raise InputError(where, f"the object is not under {display(location)}",
                                 "remove the object from the folder, or copy the folder "
                                 "from a source you trust")
            files[key] = confined(staging, key[len(prefix):], what="the object key",
                                  where=where, error=InputError,
                                  fix="remove or rename the object: resflow never writes "
                                      "outside its cache; get the folder from a source you "
                                      "trust")
        for key, file in files.items():
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(fs.cat_file(key))
        try:
            staging.replace(target)
        except OSError:  # another process made the same copy first
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def local_or_none(location: Path | str) -> Path | None:
    """The local path, or None for a URL (for work that only a local folder allows)."""
    return location if isinstance(location, Path) else None
