"""One progress bar per Spark stage, fed by a thread polling ``SparkContext.statusTracker()``."""

from __future__ import annotations

import threading
from typing import Any

from pyspark import SparkContext

from resflow.bars import progress_bar


class StageProgress:
    """Context manager showing a bar per Spark stage of the jobs running inside it.

    Parameters
    ----------
    sc
        The running context.
    labels
        Names for a job's stages in order of their ids (Spark numbers a job's shuffle-map
        stages before its result stage); a job with another number of stages shows Spark's
        own stage names.
    enabled
        Draw nothing when ``False``.
    interval
        Seconds between polls of the status tracker.
    """

    def __init__(self, sc: SparkContext, labels: list[str], *, enabled: bool = True,
                 interval: float = 0.5) -> None:
        self.sc = sc
        self.labels = labels
        self.enabled = enabled
        self.interval = interval
        self._bars: dict[int, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="resflow-progress", daemon=True)
        self._jobs: set[int] = set()

    def _poll(self) -> None:
        tracker = self.sc.statusTracker()
        while not self._stop.wait(self.interval):
            self._update(tracker)
        self._update(tracker)

    def _update(self, tracker: Any) -> None:
        self._jobs.update(tracker.getActiveJobsIds())
        for job_id in sorted(self._jobs):
            job = tracker.getJobInfo(job_id)
            stage_ids = sorted(job.stageIds) if job is not None else []
            for index, stage_id in enumerate(stage_ids):
                info = tracker.getStageInfo(stage_id)
                if info is None or info.numTasks == 0:
                    continue  # not submitted yet, or skipped
                bar = self._bars.get(stage_id)
                if bar is None:
                    label = self.labels[index] if len(stage_ids) == len(self.labels) else info.name
                    bar = self._bars[stage_id] = progress_bar(total=info.numTasks, desc=label,
                                                              unit="task", leave=False)
                bar.n = info.numCompletedTasks
                bar.refresh()

    def __enter__(self) -> StageProgress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            for bar in self._bars.values():
                bar.n = bar.total
                bar.close()
