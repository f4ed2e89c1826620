"""The archive the check carries: ingested here, found again on the GPU host.

Ingest needs rasterio, which the host lacks, so ``archive`` ingests the dihedral mosaic of
the bundled SpaceNet Atlanta tile (as ``resflow bench`` uses) before it travels, and the
check finds the one ``*.zarr`` in the carried folder. On the host, :func:`replicate` copies
its scenes under new names into an archive of thousands of chips: a few MiB travel, a
run long enough to time the engines at the GPU's pace is mapped.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

from benchmarks.gpu_check.pack import folder_mib


def archive_command(args: argparse.Namespace) -> int:
    """``archive``: ingest the x``factor`` Atlanta mosaic into ``out`` (replacing the archive
    there) and report its chips and size."""
    from benchmarks.engine_study.scaling import scaled_archive
    from resflow.archive import Archive

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.zarr"):
        shutil.rmtree(old)
    with tempfile.TemporaryDirectory(prefix="resflow-gpu-archive-") as tmp:
        made = scaled_archive(args.factor, Path(tmp), chip=args.chip)
        archive = Path(shutil.move(made, args.out / made.name))
    refs = Archive.open(archive).chips()
    print(f"{archive}: {len(refs)} chips of {args.chip} px, "
          f"{sum(r.km2 for r in refs):.3f} km^2, {folder_mib(archive):.1f} MiB")
    return 0


def find_archive(path: Path) -> Path:
    """``path`` if it is an archive, else the one ``*.zarr`` inside it.

    Raises
    ------
    FileNotFoundError
        naming the make target that prepares it, when there is none or more than one.
    """
    if path.suffix == ".zarr":
        return path
    found = sorted(path.glob("*.zarr"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{path} holds {len(found)} archives (*.zarr), not one: run `make gpu-archive` "
            "here and carry the folder, or give --archive the .zarr itself")
    return found[0]


def replicate(archive: Path, chips: int, dest: Path) -> Path:
    """A copy of ``archive`` at ``dest`` whose scenes are repeated, each copy a scene of its
    own (``<name>-r<k>``, the same pixels and grid), until it holds at least ``chips``
    chips; files only, so it needs neither rasterio nor a re-ingest."""
    from resflow.archive import Archive
    from resflow.archive_layout import SCENES

    source = Archive.open(archive)
    copies = max(1, math.ceil(chips / len(source.chips())))
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(archive, dest)
    for name in source.scenes:
        for k in range(1, copies):
            scene = shutil.copytree(dest / SCENES / name, dest / SCENES / f"{name}-r{k}")
            metadata = json.loads((scene / "zarr.json").read_text())
            metadata["attributes"]["name"] = scene.name
            (scene / "zarr.json").write_text(json.dumps(metadata))
    return dest
