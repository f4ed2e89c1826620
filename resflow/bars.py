"""A run's progress: chips mapped of chips planned, and the km^2 they cover.

On a terminal (or in a Jupyter kernel) that is a tqdm bar; anywhere else (stderr sent to a
file, a batch system's log) no bar is drawn, since its carriage returns make a log
unreadable: a plain ``resflow.progress`` log line is written each time another tenth of the
planned chips is done, and at the end. Engines say which partitions finished
(:meth:`resflow.executor.Executor.on_task_done`); this module turns partitions into chips
and ground area.

``tqdm.auto`` warns at import in a Jupyter kernel without ipywidgets, so a run with
progress off (``resflow.run`` by default) never imports it.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from resflow.planning import shard_size

if TYPE_CHECKING:
    from resflow.archive_layout import SceneInfo
    from resflow.planning import Partition

logger = logging.getLogger(__name__)

LOG_STEP = 0.1
"""Without a bar, a progress line each time this share of the planned chips is done."""


def draws_bars(stream: TextIO | None = None) -> bool:
    """Whether a bar on ``stream`` (default stderr) reaches a person: a terminal, or the
    output of a Jupyter kernel (which tqdm draws as a widget)."""
    stream = sys.stderr if stream is None else stream
    if getattr(stream, "isatty", lambda: False)():
        return True
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None)
    return get_ipython is not None and "IPKernelApp" in getattr(get_ipython(), "config", {})


def partition_km2(partition: Partition, scenes: Mapping[str, SceneInfo],
                  shard_chips: int) -> float:
    """Ground area of a partition's chips, km^2: each chip counts its scene's mean chip
    area (the scene's area over its chips), so a finished scene adds up to its area."""
    area = 0.0
    for segment in partition.segments:
        info = scenes[segment.scene]
        per_chip = info.km2 / (math.ceil(info.height / info.chip) *
                               math.ceil(info.width / info.chip))
        area += per_chip * sum(shard_size(info, shard, shard_chips)
                               for shard in range(segment.start, segment.stop))
    return area


class ChipProgress:
    """Chips done of ``total``, and km^2 mapped, as a bar or as log lines.

    Parameters
    ----------
    total
        Chips planned.
    enabled
        Show anything at all (nothing either where the ``resflow`` logger is set to keep
        only warnings).
    stream
        Where a bar goes (default stderr); a stream that is not a terminal gets log lines.

    :meth:`advance` may be called from any thread (engines report from pollers and pools).

    Examples
    --------
    >>> import io
    >>> with ChipProgress(40, stream=io.StringIO()) as progress:
    ...     progress.advance(12, 0.5)
    >>> progress.done, progress.km2
    (12, 0.5)
    """

    def __init__(self, total: int, *, enabled: bool = True, stream: TextIO | None = None
                 ) -> None:
        self.total = total
        self.done = 0
        self.km2 = 0.0
        self._lock = threading.Lock()
        self._logged_steps = 0
        self._logged_done = 0
        self._bar: Any = None
        self._lines = False
        # progress is information: a ``resflow`` logger set above INFO (``resflow -q``)
        # silences it, an unconfigured one (a notebook's) does not
        level = logging.getLogger("resflow").level
        enabled = enabled and not (level != logging.NOTSET and level > logging.INFO)
        if enabled and draws_bars(stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="resflow", unit="chip", file=stream)
        else:
            self._lines = enabled

    def advance(self, chips: int, km2: float) -> None:
        """``chips`` more chips are done, covering ``km2`` km^2."""
        with self._lock:
            self.done += chips
            self.km2 += km2
            if self._bar is not None:
                self._bar.set_postfix_str(f"{self.km2:.2f} km^2", refresh=False)
                self._bar.update(chips)
            elif self._lines:
                steps = int(self.done / max(1, self.total) / LOG_STEP + 1e-9)
                if steps > self._logged_steps:
                    self._logged_steps = steps
                    self._log()

    def _log(self) -> None:
        self._logged_done = self.done
        percent = 100.0 * self.done / max(1, self.total)
        logger.info("mapped %d/%d chips (%.0f%%), %.2f km^2", self.done, self.total, percent,
                    self.km2, extra={"chips_done": self.done, "chips_total": self.total,
                                     "km2": self.km2})

    def close(self) -> None:
        """Draw the bar's last count; without a bar, say the last count if unsaid."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif self._lines and self.done != self._logged_done:
                self._log()

    def __enter__(self) -> ChipProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunProgress(ChipProgress):
    """A :class:`ChipProgress` over a run's planned partitions: an engine's report that
    partition ``i`` finished (:meth:`partition_done`) counts its chips and km^2."""

    def __init__(self, partitions: Sequence[Partition], scenes: Mapping[str, SceneInfo],
                 shard_chips: int, *, enabled: bool = True, stream: TextIO | None = None
                 ) -> None:
        self._chips = [p.chips for p in partitions]
        self._km2 = [partition_km2(p, scenes, shard_chips) for p in partitions] \
            if enabled else [0.0] * len(partitions)
        self._seen: set[int] = set()
        super().__init__(sum(self._chips), enabled=enabled, stream=stream)

    def partition_done(self, index: int) -> None:
        """Planned partition ``index`` is written; a second report of it (a retried task)
        counts nothing."""
        with self._lock:
            if index in self._seen:
                return
            self._seen.add(index)
        self.advance(self._chips[index], self._km2[index])
