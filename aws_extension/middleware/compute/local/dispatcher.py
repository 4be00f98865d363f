"""One dispatcher thread per instance: it takes its endpoint's queued jobs one at a time (round-robin across
their owners, oldest first within an owner: `JobQueue.claim_next`), and sends each to the worker's
`/invocations`, polling the worker's `/sdapi/v1/progress` meanwhile.

A worker that dies is restarted; its job is queued again (up to `job_attempts` runs), then failed with the
reason. A job past the invocation timeout fails and its worker is restarted (as SageMaker gives up on an
instance rather than queue the next job behind a hung one).

Once the middleware is stopping (`stopping`, set when its server is asked to exit, before it stops taking
requests) no job is claimed, and a job that fails meanwhile goes back to the queue: it most likely failed
because the server no longer takes its images, and it runs again after the restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import requests

from aws_extension.middleware.compute.base import ComputeEvents
from aws_extension.middleware.compute.local.processes import Instance
from aws_extension.middleware.errors import ServiceError
from aws_extension.middleware.records import InferenceJob
from aws_extension.middleware.services.queue import JobQueue
from aws_extension.settings import MiddlewareSettings
from aws_extension.vocabulary import JobStatus
from aws_extension.wire import InvocationAnswer, InvocationRequest, WireError

log = logging.getLogger(__name__)

PROGRESS_POLL_S = 0.5
IDLE_WAIT_S = 1.0


class WorkerLost(Exception):
    """The worker process died or stopped answering during a job."""


class InvocationTimedOut(Exception):
    """The job ran past the invocation timeout; the worker may still be busy with it."""


class Dispatcher:
    def __init__(self, queue: JobQueue, events: ComputeEvents, settings: MiddlewareSettings,
                 restart: Callable[[Instance, str], None], wake: Callable[[str], None],
                 stopping: threading.Event):
        self.queue = queue
        self.events = events
        self.settings = settings
        self.restart = restart  # start the instance's worker again (compute decides what a failure means)
        self.wake = wake  # wake an endpoint's dispatchers (a job was queued again)
        self.stopping = stopping  # the middleware is stopping: claim nothing more

    def run_forever(self, instance: Instance, wake: threading.Condition) -> None:
        while not instance.stopping.is_set():
            if self.stopping.is_set():
                with wake:
                    wake.wait(IDLE_WAIT_S)
                continue
            if not instance.alive():
                self.restart(instance, "the worker process exited while idle")
                continue
            job = self.queue.claim_next(instance.endpoint, instance.name)
            if job is None:
                with wake:
                    wake.wait(IDLE_WAIT_S)
                continue
            instance.current_job = job.id
            try:
                self._run_job(instance, job)
            except Exception:  # a bug here must not kill the dispatcher nor strand the job
                log.exception("dispatching job %s failed", job.id)
                self.events.job_finished(job.id, InvocationAnswer.failed(
                    job.id, "The job failed in the dispatcher; see the server log."))
            finally:
                instance.current_job = None
                instance.idle_since = time.monotonic()

    def _run_job(self, instance: Instance, job: InferenceJob) -> None:
        try:
            request = self.events.invocation_for(job)
        except ServiceError as exc:  # e.g. a model was disabled while the job waited
            self.events.job_finished(job.id, InvocationAnswer.failed(job.id, exc.message))
            return
        done = threading.Event()
        poller = threading.Thread(target=self._follow_progress, args=(instance, job.id, done), daemon=True)
        poller.start()
        try:
            answer = self._invoke(instance, request)
        except WorkerLost as exc:
            done.set()
            self._worker_lost(instance, job, str(exc))
            return
        except InvocationTimedOut as exc:
            done.set()
            self.events.job_finished(job.id, InvocationAnswer.failed(job.id, str(exc)))
            self.restart(instance, "a job ran past the invocation timeout")
            return
        finally:
            done.set()
            poller.join(5)
        if answer.status == JobStatus.FAILED and self.stopping.is_set() and self.queue.requeue(job, job.attempts - 1):
            log.info("job %s failed while the middleware stops (%s): queued again for the next start", job.id,
                     answer.error)
            return
        self.events.job_finished(job.id, answer)

    def _invoke(self, instance: Instance, request: InvocationRequest) -> InvocationAnswer:
        timeout = self.settings.invocation_timeout_s
        try:
            response = requests.post(instance.url + "/invocations", json=request.to_json(), timeout=(10, timeout))
        except requests.Timeout:
            raise InvocationTimedOut(f"The job ran longer than the invocation timeout ({timeout:.0f} s).") from None
        except requests.ConnectionError as exc:
            raise WorkerLost(f"the worker stopped answering ({type(exc).__name__})") from None
        try:
            return InvocationAnswer.from_json(response.json())
        except (ValueError, WireError):
            if not instance.alive():
                raise WorkerLost("the worker process exited during the job") from None
            return InvocationAnswer.failed(request.job_id,
                                           f"The worker answered HTTP {response.status_code} without a result.")

    def _worker_lost(self, instance: Instance, job: InferenceJob, reason: str) -> None:
        if instance.stopping.is_set():
            # Stopped on purpose (scale-in, deletion, shutdown): the run does not count; a deletion then
            # cancels what is left on the endpoint, a restart runs it again.
            self.queue.requeue(job, job.attempts - 1)
            self.wake(instance.endpoint)
            return
        code = instance.process.poll() if instance.process else None
        log.warning("worker %s lost during job %s (%s, exit code %s); restarting it", instance.name, job.id,
                    reason, code)
        if job.attempts < self.settings.job_attempts:
            self.queue.requeue(job, job.attempts)
            self.wake(instance.endpoint)
        else:
            self.events.job_finished(job.id, InvocationAnswer.failed(
                job.id, f"The worker crashed {job.attempts} times running this job ({reason}; exit code "
                        f"{code}). Last log lines: {instance.log_tail(5)[-500:]}"))
        self.restart(instance, reason)

    def _follow_progress(self, instance: Instance, job_id: str, done: threading.Event) -> None:
        last = -1.0
        while not done.wait(PROGRESS_POLL_S):
            try:
                state = requests.get(instance.url + "/sdapi/v1/progress", timeout=2).json()
            except (requests.RequestException, ValueError):
                continue
            if (state.get("state") or {}).get("job_id") != job_id:
                continue  # the worker is still finishing an interrupted job, or has not started ours
            fraction = float(state.get("progress") or 0.0)
            if fraction != last and not done.is_set():
                last = fraction
                self.queue.report_progress(job_id, fraction)
