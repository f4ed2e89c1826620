"""Repeated measurements reduced to a median and its spread.

Benchmarks on a shared machine are noisy, so every rate is measured several times and
reported as the median with min/max and the interquartile range; the single values are
kept too, so a reader can see an outlier rather than trust a summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, quartiles, relative spread and the values themselves.

    ``spread`` is ``(max - min) / median``: 0.1 means the repetitions lie within 10% of
    each other.

    Examples
    --------
    >>> summarise([1.0, 3.0, 2.0])["median"], summarise([1.0, 3.0, 2.0])["spread"]
    (2.0, 1.0)
    """
    if not values:
        raise ValueError("summarise needs at least one value")
    data = np.asarray(values, dtype=float)
    median = float(np.median(data))
    q1, q3 = (float(q) for q in np.percentile(data, [25, 75]))
    return {
        "median": median,
        "min": float(data.min()),
        "max": float(data.max()),
        "q1": q1,
        "q3": q3,
        "spread": float((data.max() - data.min()) / median) if median else 0.0,
        "n": len(data),
        "values": [float(v) for v in data],
    }
