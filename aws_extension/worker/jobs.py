"""One job at a time on this worker (a GPU runs one), with its progress and its interrupt.

Callers of `run` wait their turn on a lock, in their own thread (the HTTP server keeps answering
`/ping` and `/progress` meanwhile). The running job reports each sampling step through the callback it
is given and stops at the next step once its cancel event is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from aws_extension.engine.base import Progress, ProgressCallback

T = TypeVar("T")


@dataclass
class RunningJob:
    job_id: str
    task: str
    started_monotonic: float = field(default_factory=time.monotonic)
    timestamp: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"))
    progress: Progress | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def report(self, progress: Progress) -> None:
        self.progress = progress


class JobRunner:
    def __init__(self) -> None:
        self._run_lock = threading.Lock()
        self._current: RunningJob | None = None

    @property
    def current(self) -> RunningJob | None:
        return self._current

    def run(self, job_id: str, task: str, work: Callable[[ProgressCallback, threading.Event], T]) -> T:
        """Run `work(progress_callback, cancel_event)` once no other job runs; returns what it returns."""
        with self._run_lock:
            job = RunningJob(job_id=job_id, task=task)
            self._current = job
            try:
                return work(job.report, job.cancel)
            finally:
                self._current = None

    def interrupt(self, job_id: str | None = None) -> bool:
        """Stop the running job (only if it is `job_id`, when given); False when there was none to stop."""
        job = self._current
        if job is None or (job_id is not None and job.job_id != job_id):
            return False
        job.cancel.set()
        return True

    def progress_report(self) -> dict[str, Any]:
        """The running job's progress in the shape of A1111's `/sdapi/v1/progress`."""
        job = self._current
        progress = job.progress if job else None
        fraction = progress.fraction if progress else 0.0
        eta = 0.0
        if job and fraction > 0:
            elapsed = time.monotonic() - job.started_monotonic
            eta = elapsed / fraction - elapsed
        return {
            "progress": fraction,
            "eta_relative": eta,
            "state": {
                "skipped": False,
                "interrupted": bool(job and job.cancel.is_set()),
                "stopping_generation": False,
                "job": job.task if job else "",
                "job_id": job.job_id if job else None,
                "job_count": progress.job_count if progress else (1 if job else 0),
                "job_timestamp": job.timestamp if job else "0",
                "job_no": progress.job_no if progress else 0,
                "sampling_step": progress.step if progress else 0,
                "sampling_steps": progress.total_steps if progress else 0,
            },
            "current_image": None,
            "textinfo": None,
        }
