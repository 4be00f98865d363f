"""Progress and cancel for a job whose middleware cannot reach this worker (SageMaker asynchronous endpoints).

A request with `progress_url` / `cancel_url` (`wire.InvocationRequest`) gets one watcher thread while the job
is announced: every `remote_report_interval_s` it PUTs the job's `wire.JobProgress` when it changed (the first
one at once, step 0 of 0, so the middleware knows the job started) and GETs the cancel URL: 200 interrupts the
job (fetching its models or between sampling steps), 404 means go on, and any other answer is logged and
tried again at the next tick. The engine never waits on these requests.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from aws_extension.wire import InvocationRequest, JobProgress
from aws_extension.worker.jobs import JobRunner

log = logging.getLogger(__name__)


class _Watcher:
    def __init__(self, jobs: JobRunner, job_id: str, request: InvocationRequest, timeout_s: float):
        self.jobs = jobs
        self.job_id = job_id
        self.progress_url = request.progress_url
        self.cancel_url = request.cancel_url
        self.timeout_s = timeout_s
        self.started = time.time()
        self.worker = socket.gethostname()
        self._reported: tuple[int, int] | None = None
        self._cancelled = False

    def tick(self) -> None:
        if self.cancel_url and not self._cancelled and self._cancel_asked():
            self._cancelled = self.jobs.interrupt(self.job_id)
        if self.progress_url:
            self._report()

    def _cancel_asked(self) -> bool:
        try:
            response = requests.get(self.cancel_url, timeout=self.timeout_s)
        except requests.RequestException as exc:
            log.warning("job %s: reading the cancel URL failed (%s); trying again", self.job_id, type(exc).__name__)
            return False
        if response.status_code not in (200, 404):
            log.warning("job %s: the cancel URL answered HTTP %d; trying again", self.job_id, response.status_code)
        return response.status_code == 200

    def _report(self) -> None:
        current = self.jobs.current
        progress = current.progress if current is not None and current.job_id == self.job_id else None
        steps = (progress.step, progress.total_steps) if progress else (0, 0)
        if steps == self._reported:
            return
        body = JobProgress(job_id=self.job_id, step=steps[0], total=steps[1], started=self.started,
                           updated=time.time(), worker=self.worker)
        try:
            response = requests.put(self.progress_url, data=json.dumps(body.to_json()),
                                    headers={"Content-Type": "application/json"}, timeout=self.timeout_s)
        except requests.RequestException as exc:
            log.warning("job %s: reporting progress failed (%s)", self.job_id, type(exc).__name__)
            return
        if 200 <= response.status_code < 300:
            self._reported = steps
        else:
            log.warning("job %s: the progress URL answered HTTP %d", self.job_id, response.status_code)


@contextmanager
def remote_control(jobs: JobRunner, job_id: str, request: InvocationRequest, interval_s: float,
                   timeout_s: float) -> Iterator[None]:
    """Report `job_id`'s progress and watch for its cancel while the block runs (nothing without the URLs)."""
    if not request.progress_url and not request.cancel_url:
        yield
        return
    watcher = _Watcher(jobs, job_id, request, timeout_s)
    done = threading.Event()

    def watch() -> None:
        while True:
            try:
                watcher.tick()
            except Exception:  # noqa: BLE001 - the job goes on whatever happens to its reports
                log.exception("job %s: the progress watcher failed", job_id)
            if done.wait(interval_s):
                return

    thread = threading.Thread(target=watch, name=f"remote-control-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout_s)
