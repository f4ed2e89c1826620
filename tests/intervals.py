"""Counting how many recorded [start, end) intervals overlap at once (GPU sharing tests)."""

from __future__ import annotations


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at the same moment.

    >>> peak_overlap([(0, 2), (1, 3), (2, 4)])
    2
    """
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak
