"""One job at a time on this worker (a GPU runs one), with its progress and its interrupt.

Callers of `run` wait their turn on a lock, in their own thread (the HTTP server keeps answering
`/ping` and `/progress` meanwhile). The running job reports each sampling step through the callback it
is given and stops at the next step once its cancel event is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

from aws_extension.engine.base import Interrupted, Progress, ProgressCallback

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
        # Jobs accepted but not yet running (fetching models, or waiting their turn), and those of them
        # interrupted already: they stop as soon as their turn comes.
        self._state_lock = threading.Lock()
        self._announced: set[str] = set()
        self._cancelled_before_start: set[str] = set()

    @property
    def current(self) -> RunningJob | None:
        return self._current

    def run(self, job_id: str, task: str, work: Callable[[ProgressCallback, threading.Event], T]) -> T:
        """Run `work(progress_callback, cancel_event)` once no other job runs; returns what it returns."""
        with self._run_lock:
            with self._state_lock:
                if job_id in self._cancelled_before_start:
                    raise Interrupted()
            job = RunningJob(job_id=job_id, task=task)
            self._current = job
            try:
                return work(job.report, job.cancel)
            finally:
                self._current = None

    @contextmanager
    def announced(self, job_id: str) -> Iterator[None]:
        """Make `job_id` interruptible by id from now on, before it runs (while its models download)."""
        with self._state_lock:
            self._announced.add(job_id)
        try:
            yield
        finally:
            with self._state_lock:
                self._announced.discard(job_id)
                self._cancelled_before_start.discard(job_id)

    def interrupt(self, job_id: str | None = None) -> bool:
        """Stop the running job, or only job `job_id` (running or announced); False when none was stopped."""
        job = self._current
        if job is not None and job_id in (None, job.job_id):
            job.cancel.set()
            return True
        with self._state_lock:
            if job_id in self._announced:
                self._cancelled_before_start.add(job_id)
                return True
        return False

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
