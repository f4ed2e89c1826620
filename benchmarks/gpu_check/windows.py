"""Which preloaded prediction windows a step of the check runs over.

Windows are what the graph predicts, so they are never cut: a step asking for ``n`` chips
gets whole windows holding at least that many, repeated where a sweep needs more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the check imports torch and resflow only once it runs
    from benchmarks.engine_study.limit import Preloaded


def _windows_for(data: Preloaded, n: int, repeat: bool) -> list[int]:
    """Indices of ``data``'s windows, in order (round again where ``repeat``), until they
    hold at least ``n`` chips; at least one window."""
    index: list[int] = []
    held = 0
    while (not index or held < n) and (repeat or len(index) < len(data.windows)):
        i = len(index) % len(data.windows)
        index.append(i)
        held += len(data.chips[i])
    return index


def first_chips(data: Preloaded, n: int) -> Preloaded:
    """The first windows of ``data`` holding at least ``n`` chips (all, where they hold
    fewer; always one): windows are what the graph predicts, so they are not cut."""
    return data.subset(_windows_for(data, n, repeat=False))


def repeated_chips(data: Preloaded, n: int) -> Preloaded:
    """``data``'s windows repeated (in order) until they hold at least ``n`` chips;
    ``n == 0`` keeps them once."""
    if n <= 0:
        return data
    return data.subset(_windows_for(data, n, repeat=True))
