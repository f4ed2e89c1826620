"""Proving that tasks in different processes were inside a section at the same moment.

A task calls :func:`meet` while it holds what is being shared (a GPU, a ticket): it marks
itself inside a *room* (a folder every process on the host sees), watches who else is
inside, and stays until it has met ``want`` others or ``patience`` runs out. Two tasks *met*
when one of them saw the other's mark while both were inside, so each meeting is a proof
that the two overlapped, with no clock and no fixed sleep: a task that finds its peers leaves
at once, and only a check that nobody else comes in (a bound) waits out its patience.

Tasks that all pairwise met were all inside together (intervals on a line that meet pairwise
share a point), so :func:`peak_together`, the largest such group, is how many held the
section at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path


def meet(room: Path | str, name: str, want: int, patience: float, *, side: str = "",
         any_side: bool = False, total: int | None = None, poll: float = 0.005) -> set[str]:
    """Enter ``room`` as ``name`` and stay until ``want`` other tasks of the same ``side``
    (the device held, say; of any side with ``any_side``) are known to have been inside with
    this one, or ``patience`` seconds have passed, or all ``total`` tasks of the room have
    entered (whoever is inside then is seen, and nobody else comes); leave and return the
    tasks met, of any side.

    A task is known in the room as ``side@name``: names are unique within a side.
    """
    room = Path(room)
    room.mkdir(parents=True, exist_ok=True)
    me = f"{side}@{name}"
    (room / f"{me}.in").touch()
    seen: set[str] = set()
    deadline = time.monotonic() + patience
    try:
        while True:
            everyone_came = total is not None and len(list(room.glob("*.in"))) >= total
            entered = {p.name[:-3] for p in room.glob("*.in")}
            left = {p.name[:-4] for p in room.glob("*.out")}  # listed after: still inside
            inside = entered - left - {me}
            if not inside <= seen:
                seen |= inside
                _write(room / f"{me}.seen", seen)
            met = seen | {p.name[:-5] for p in room.glob("*.seen")
                          if me in p.read_text().split()}
            counted = met if any_side else {m for m in met if m.startswith(f"{side}@")}
            if len(counted) >= want or everyone_came or time.monotonic() > deadline:
                return met
            time.sleep(poll)
    finally:
        (room / f"{me}.out").touch()


def _write(path: Path, names: Iterable[str]) -> None:
    """Replace ``path`` whole, so readers never see half a list."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(" ".join(sorted(names)))
    os.replace(tmp, path)


def meetings(room: Path | str) -> dict[str, set[str]]:
    """Who met whom in ``room`` (both ways), for every task that entered it."""
    room = Path(room)
    met: dict[str, set[str]] = {p.name[:-3]: set() for p in room.glob("*.in")}
    for path in room.glob("*.seen"):
        name = path.name[:-5]
        for other in path.read_text().split():
            met[name].add(other)
            met[other].add(name)
    return met


def on_side(met: Mapping[str, set[str]], name: str) -> list[str]:
    """The tasks of ``met`` on side ``name``."""
    return [task for task in met if task.split("@")[0] == name]


def peak_together(met: Mapping[str, set[str]], among: Iterable[str] | None = None) -> int:
    """The most tasks (of ``among``, default all) that all met each other: how many were
    inside at once.

    >>> peak_together({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}})
    2
    >>> peak_together({"a": {"b", "c"}, "b": {"a", "c"}, "c": {"a", "b"}})
    3
    """
    names = set(met if among is None else among)

    def grow(group: set[str], candidates: set[str]) -> int:
        best = len(group)
        for name in sorted(candidates):
            best = max(best, grow(group | {name}, {c for c in candidates & met[name]
                                                   if c > name}))
        return best

    return grow(set(), names)
