"""The archive the check carries: ingested here, found again on the GPU host.

Ingest needs rasterio, which the host lacks, so ``archive`` ingests the dihedral mosaic of
the bundled SpaceNet Atlanta tile (as ``resflow bench`` uses) before it travels, and the
check finds the one ``*.zarr`` in the carried folder.
"""

from __future__ import annotations

import argparse
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
