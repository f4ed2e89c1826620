"""What travels to the GPU host, split into parts that each fit one call.

Each call to the host carries the repository's own files plus some folders within
:data:`TRAVEL_LIMIT_MIB`, so the wheels and the archive are packed into parts (first fit
in decreasing size) and the ``wheels`` subcommand prints the carry plan: one call per
part, the check itself in the last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.gpu_check.wheels import (
    PREINSTALLED,
    download_wheels,
    uncovered_dependencies,
    unmet_requirements,
)

#: What travels to the GPU host in one go: the repository's files (tracked, and untracked
#: but not ignored) plus the carried folders, MiB.
TRAVEL_LIMIT_MIB = 64.0
#: Left free in each part for files that others add to the repository in the meantime, MiB.
MARGIN_MIB = 1.0
#: The archive among the items packed into parts (it travels as its own folder).
ARCHIVE_ITEM = "archive"


def folder_mib(path: Path) -> float:
    """Bytes of every file under ``path`` (0 when absent), MiB."""
    if not path.exists():
        return 0.0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def travelling_mib(root: Path = Path(".")) -> float:
    """What of the repository travels to the host whatever is carried: its tracked files
    and its untracked files that git does not ignore, MiB."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=root, capture_output=True,
                             check=True).stdout.decode()
    return sum((root / name).stat().st_size for name in listing.split("\0")
               if name and (root / name).is_file()) / 2**20


def pack(sizes: dict[str, float], capacity: float) -> list[list[str]]:
    """Items (name -> MiB) into parts of at most ``capacity`` MiB each, first fit in
    decreasing size: few parts, each filled before the next is opened.

    >>> pack({"a": 5, "b": 4, "c": 3, "d": 2}, capacity=7)
    [['a', 'd'], ['b', 'c']]

    Raises
    ------
    ValueError
        for an item larger than ``capacity``.
    """
    parts: list[list[str]] = []
    loads: list[float] = []
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
        if size > capacity:
            raise ValueError(f"{name} ({size:.1f} MiB) alone exceeds the {capacity:.1f} MiB "
                             "a part may carry")
        for index, load in enumerate(loads):
            if load + size <= capacity:
                parts[index].append(name)
                loads[index] += size
                break
        else:
            parts.append([name])
            loads.append(size)
    return parts


def wheels_command(args: argparse.Namespace) -> int:
    """``wheels``: download, check the closure, and split wheels and archive into parts that
    each travel with the repository within :data:`TRAVEL_LIMIT_MIB`; prints the carry plan.
    Non-zero when a requirement is unmet or a part cannot be made small enough."""
    from packaging.utils import parse_wheel_filename

    with tempfile.TemporaryDirectory(prefix="resflow-gpu-wheels-") as tmp:
        wheels = download_wheels(Path(tmp), args.python_version)
        problems = [f"unmet: {line}" for line in
                    unmet_requirements(wheels, PREINSTALLED, args.python_version)]
        problems += [f"resflow needs {line}, which gpu_check neither carries nor expects on "
                     "the host: add it to CARRIED, PREINSTALLED or LEFT_OUT in "
                     "benchmarks/gpu_check/wheels.py"
                     for line in uncovered_dependencies()]
        sizes = {wheel.name: wheel.stat().st_size / 2**20 for wheel in wheels}
        for name, size in sorted(sizes.items(), key=lambda item: -item[1]):
            print(f"{size:7.2f} MiB  {name}")
        if args.archive.exists():
            sizes[ARCHIVE_ITEM] = folder_mib(args.archive)
        else:
            problems.append(f"{args.archive} is missing: run `make gpu-archive` first")
        repository = travelling_mib()
        capacity = TRAVEL_LIMIT_MIB - repository - MARGIN_MIB
        try:
            parts = pack(sizes, capacity)
        except ValueError as err:
            parts = []
            problems.append(str(err))
        shutil.rmtree(args.out, ignore_errors=True)
        for number, names in enumerate(parts, start=1):
            folder = args.out / f"part{number}"
            folder.mkdir(parents=True)
            pins = []
            for name in names:
                if name != ARCHIVE_ITEM:
                    shutil.move(Path(tmp) / name, folder / name)
                    wheel_name, version, _, _ = parse_wheel_filename(name)
                    pins.append(f"{wheel_name}=={version}")
            (folder / "requirements.txt").write_text("".join(f"{p}\n" for p in sorted(pins)))
    print(f"wheels {sum(s for n, s in sizes.items() if n != ARCHIVE_ITEM):.1f} MiB, archive "
          f"{sizes.get(ARCHIVE_ITEM, 0.0):.1f} MiB; the repository's own files "
          f"{repository:.1f} MiB travel with each part (limit {TRAVEL_LIMIT_MIB:.0f} MiB, "
          f"{MARGIN_MIB:.0f} MiB kept free)")
    for number, names in enumerate(parts, start=1):
        carry = [str(args.out / f"part{number}")]
        if ARCHIVE_ITEM in names:
            carry.append(str(args.archive))
        load = sum(sizes[name] for name in names)
        last = number == len(parts)
        print(f"call {number} of {len(parts)}: carry {json.dumps(carry)} ({load:.1f} MiB, "
              f"{load + repository:.1f} MiB with the repository), run: bash "
              f"benchmarks/gpu_check.sh{'' if last else ' --install-only'}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0
