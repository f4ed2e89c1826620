"""A worker's open archives stay few: one version per location, the last few locations.

A worker of a long-lived cluster maps run after run, each from its archive into a new
output; it must not keep every store it ever opened, and an archive made anew at the same
place must be opened anew.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from resflow.inference import caches


def test_a_worker_keeps_the_latest_version_of_the_last_archives(tiny_archive: Path,
                                                                tmp_path: Path) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(tiny_archive, copy)
    first = caches.cached_archive(copy)
    assert caches.cached_archive(copy) is first
    stat = (copy / "zarr.json").stat()  # the archive made anew at the same place
    os.utime(copy / "zarr.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    again = caches.cached_archive(copy)
    assert again is not first
    assert [key for key in caches._ARCHIVES if key[0] == str(copy)] == [
        (str(copy), str((copy / "zarr.json").stat().st_mtime_ns))]
    others = [shutil.copytree(tiny_archive, tmp_path / f"run-{i}.zarr")
              for i in range(caches.OPEN_STORES + 2)]
    for other in others:
        caches.cached_archive(copy)  # in use all along, so never the one dropped
        caches.cached_archive(other)
    assert len(caches._ARCHIVES) == caches.OPEN_STORES
    assert caches.cached_archive(copy) is again
    assert str(others[0]) not in {key[0] for key in caches._ARCHIVES}
