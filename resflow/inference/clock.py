"""Task seconds per stage, measured where the work happens and shared among its chips."""

from __future__ import annotations

import time


class Clock:
    """Adds elapsed seconds per stage key: ``with clock("read"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, key: str) -> _Timer:
        return _Timer(self, key)

    def share(self, n: int, base: dict[str, float] | None = None) -> dict[str, float]:
        """Each of ``n`` chips' equal share of the measured seconds, added to ``base``."""
        out = dict(base or {})
        for key, value in self.seconds.items():
            out[key] = out.get(key, 0.0) + value / max(n, 1)
        return out


class _Timer:
    def __init__(self, clock: Clock, key: str) -> None:
        self.clock, self.key = clock, key

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.clock.seconds[self.key] = self.clock.seconds.get(self.key, 0.0) + elapsed
