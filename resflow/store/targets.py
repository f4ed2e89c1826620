"""Where a run may write: every refusal of a new or resumed output store, before any work.

A run is refused before it starts an engine, so a refused run leaves nothing behind: an
output inside its own archive, a resumed output that is already complete, or one started
from other scenes, grids, pixel settings or another version of its gallery (one map must
never mix two runs' settings or models).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from resflow import storage
from resflow.errors import ResflowError
from resflow.redaction import redact
from resflow.store.format import PIXEL_SETTINGS, PIXEL_SETTINGS_BEFORE

if TYPE_CHECKING:
    from resflow.archive import Archive
    from resflow.store.writer import OutputStore


class OutputComplete(ResflowError):
    """``--resume`` over an output that is already complete: there is nothing to do."""


def refuse_archive_path(out: Path | str, archive_path: Path | str) -> None:
    """Refuse an output location that is, or contains, the input archive."""
    if isinstance(out, Path) and isinstance(archive_path, Path):
        out_r, arch_r = out.resolve(), archive_path.resolve()
        inside = arch_r == out_r or arch_r.is_relative_to(out_r)
    else:
        out_s, arch_s = str(out).rstrip("/"), str(archive_path).rstrip("/")
        inside = arch_s == out_s or arch_s.startswith(out_s + "/")
    if inside:
        raise ResflowError(storage.display(out), "the output location is the input "
                           "archive or contains it", "choose an output outside the archive")


def check_resumable(store: OutputStore, attrs: dict[str, Any], archive: Archive,
                    run_config: dict[str, Any], gallery_version: str) -> None:
    """Refuse to resume ``store`` (root attributes ``attrs``) unless it is unfinished and
    was started from the same scenes, source images (each scene's sha256 at ingest, kept
    as ``archive_sha256``), grids, pixel settings and gallery version."""
    if attrs.get("complete"):
        raise OutputComplete(store.display, "the output is already complete, so there is "
                             "nothing to resume", "use --overwrite to recompute it, or "
                             f"`resflow info {store.display}` to see it")
    if set(store.groups) != set(archive.scenes):
        raise ResflowError(store.display, "the output was made from other scenes than "
                           "this archive holds", "resume with the original archive or "
                           "pass --overwrite")
    sources = attrs.get("archive_sha256", {})
    for name, info in archive.scenes.items():
        if name in sources and sources[name] != info.sha256:
            raise ResflowError(f"{store.display}/{store.groups[name]}", "the output was "
                               f"started from another source for scene {name!r} (sha256 "
                               f"{str(sources[name])[:12]}, this archive's is "
                               f"{info.sha256[:12]}), and one map must not mix two images",
                               "resume with the archive it was started from, or pass "
                               "--overwrite")
        probability = store.read_array(name, "probability")
        if probability.shape != (info.height, info.width) or \
                probability.chunks != (info.chip, info.chip):
            raise ResflowError(f"{store.display}/{store.groups[name]}", "the scene grid "
                               "differs from the archive's", "pass --overwrite to "
                               "recompute it")
    previous = PIXEL_SETTINGS_BEFORE | attrs.get("run_config", {})
    run_config = redact(run_config)  # as it was stored: secrets masked
    for key in PIXEL_SETTINGS:
        if key in previous and key in run_config and previous[key] != run_config[key]:
            raise ResflowError(f"{store.display}: run_config.{key}", f"the output was "
                               f"started with {key}={previous[key]!r}, not "
                               f"{run_config[key]!r}", f"resume with {key}="
                               f"{previous[key]!r} or pass --overwrite")
    started = attrs.get("gallery_version", "")
    if started and gallery_version and started != gallery_version:
        raise ResflowError(f"{store.display}: gallery_version", "the output was started "
                           f"with another version of its gallery (manifest sha256 "
                           f"{started[:12]}, now {gallery_version[:12]}), and one map "
                           "must not mix two galleries' models", "resume with the "
                           "gallery it was started with, or pass --overwrite")

