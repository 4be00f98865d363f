"""Local compute: an endpoint is a set of `sd-aws worker` processes on this machine.

Each instance is one worker process on a free loopback port with its own folder in the data dir (its
models folder, model cache and log) and one dispatcher thread that takes that endpoint's queued jobs
from the store, oldest first, one at a time, and sends each to the worker's `/invocations`, polling the
worker's `/sdapi/v1/progress` meanwhile. A worker that dies is restarted; its job is queued again (up to
`job_attempts` runs), then failed with the reason. Autoscaling follows SageMaker async endpoints: one more
instance while jobs wait (up to the maximum), one fewer after an idle time (down to the minimum, which may
be 0), and an endpoint at zero starts an instance when a job arrives.

Worker processes are started from one long-lived thread with PR_SET_PDEATHSIG, so they die with the
middleware (the signal fires when the thread that forked exits; a pool thread lives as long as we do).
On a machine with GPUs each worker sees one (CUDA_VISIBLE_DEVICES), the one with the fewest workers.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from aws_extension.middleware.compute.base import ComputeCallbacks
from aws_extension.middleware.errors import ServiceError
from aws_extension.middleware.store.base import Store
from aws_extension.settings import MiddlewareSettings

log = logging.getLogger(__name__)

JOBS_TABLE = "inference_jobs"
PROGRESS_POLL_S = 0.5
IDLE_WAIT_S = 1.0
AUTOSCALE_TICK_S = 0.5
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # no one is left to take its results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_gpus(setting: str | None, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs local workers may use: the setting, else CUDA_VISIBLE_DEVICES, else every NVIDIA GPU the
    driver lists (without importing torch: the middleware never does)."""
    if setting is None:
        setting = environ.get("CUDA_VISIBLE_DEVICES")
    if setting is None:
        driver = Path("/proc/driver/nvidia/gpus")
        return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []
    return [gpu.strip() for gpu in setting.split(",") if gpu.strip()]


class WorkerLost(Exception):
    """The worker process died or stopped answering during a job."""


class InvocationTimedOut(Exception):
    """The job ran past the invocation timeout; the worker may still be busy with it."""


@dataclass
class Instance:
    """One worker process and the dispatcher thread that feeds it."""

    endpoint: str
    index: int
    folder: Path
    port: int = 0
    process: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    current_job: str | None = None
    idle_since: float = field(default_factory=time.monotonic)
    gpu: str | None = None  # what CUDA_VISIBLE_DEVICES its process got

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 15) -> str:
        path = self.folder / "worker.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class LocalEndpoint:
    name: str
    min_instances: int
    max_instances: int
    autoscaling: bool
    instances: list[Instance] = field(default_factory=list)  # in service
    starting: list[Instance] = field(default_factory=list)  # not healthy yet (a deletion stops these too)
    wake: threading.Condition = field(default_factory=threading.Condition)
    deleted: bool = False
    next_index: int = 0


class LocalCompute:
    def __init__(self, store: Store, settings: MiddlewareSettings):
        self.store = store
        self.settings = settings
        self.root = settings.data_dir / "endpoints"
        self.callbacks: ComputeCallbacks | None = None
        self._endpoints: dict[str, LocalEndpoint] = {}
        self._gpus = local_gpus(settings.local_gpus)
        self._lock = threading.RLock()
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")
        self._stopping = threading.Event()
        self._autoscaler = threading.Thread(target=self._autoscale_forever, name="autoscaler", daemon=True)
        self._autoscaler.start()

    def bind(self, callbacks: ComputeCallbacks) -> None:
        self.callbacks = callbacks

    # -- endpoints ---------------------------------------------------------------------------------------
    def deploy(self, endpoint: dict[str, Any]) -> None:
        threading.Thread(target=self._bring_up, args=(endpoint, endpoint["initial_instance_count"]),
                         name=f"deploy-{endpoint['endpoint_name']}", daemon=True).start()

    def restore(self, endpoint: dict[str, Any]) -> None:
        count = endpoint.get("current_instance_count", endpoint["initial_instance_count"])
        if endpoint.get("autoscaling"):
            count = max(endpoint.get("min_instance_number") or 0, min(count, 1))
        threading.Thread(target=self._bring_up, args=(endpoint, count),
                         name=f"restore-{endpoint['endpoint_name']}", daemon=True).start()

    def _bring_up(self, endpoint: dict[str, Any], count: int) -> None:
        name = endpoint["endpoint_name"]
        local = LocalEndpoint(name=name, autoscaling=bool(endpoint.get("autoscaling")),
                              min_instances=endpoint.get("min_instance_number") or 0,
                              max_instances=endpoint.get("max_instance_number") or count)
        with self._lock:
            self._endpoints[name] = local
        instances = [self._new_instance(local) for _ in range(count)]
        starters = [threading.Thread(target=self._start_process, args=(i,)) for i in instances]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join()
        with self._lock:
            local.starting = [i for i in local.starting if i not in instances]
            deleted = local.deleted
        # Deleted or shut down while coming up: delete()/stop() stopped these, or they came up just before.
        # Nothing to report: the record is Deleted, or stays as it is for the next start.
        if deleted or self._stopping.is_set():
            for instance in instances:
                self._stop_instance(instance, interrupt_job=False)
            return
        failed = [i for i in instances if i.process is None]
        if failed:
            for instance in instances:
                self._stop_instance(instance, interrupt_job=False)
            with self._lock:
                self._endpoints.pop(name, None)
            reason = f"instance {failed[0].index} did not become healthy: {failed[0].log_tail() or 'no output'}"
            self.callbacks.endpoint_changed(name, {"endpoint_status": "Failed", "error": reason})
            return
        with self._lock:
            if local.deleted:
                return
            local.instances.extend(instances)
            for instance in instances:
                self._start_dispatcher(local, instance)
        self.callbacks.endpoint_changed(name, {"endpoint_status": "InService", "current_instance_count": count})

    def _new_instance(self, local: LocalEndpoint) -> Instance:
        with self._lock:
            index = local.next_index
            local.next_index += 1
        folder = self.root / local.name / f"instance-{index}"
        (folder / "models").mkdir(parents=True, exist_ok=True)
        instance = Instance(endpoint=local.name, index=index, folder=folder)
        with self._lock:
            local.starting.append(instance)
        return instance

    def _start_process(self, instance: Instance) -> bool:
        """Start (or restart) the worker process and wait for /ping; on failure `process` is None."""
        instance.port = _free_port()
        command = [sys.executable, "-m", "aws_extension", "worker", "--port", str(instance.port),
                   "--models-dir", str(instance.folder / "models"), "--engine", self.settings.worker_engine]
        env = {**self._thread_env(instance.endpoint), **os.environ, "HF_HUB_OFFLINE": "1",
               "SD_AWS_MODEL_CACHE_DIR": str(instance.folder / "cache")}
        self._claim_gpu(instance)
        if instance.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = instance.gpu
        with open(instance.folder / "worker.log", "ab") as log_file:
            instance.process = self._spawner.submit(
                subprocess.Popen, command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent).result()  # noqa: PLW1509 - prctl only, no locks taken
        deadline = time.monotonic() + self.settings.endpoint_start_timeout_s
        while time.monotonic() < deadline and not instance.stopping.is_set():
            if instance.process.poll() is not None:
                break
            try:
                if requests.get(instance.url + "/ping", timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self._kill(instance)
        instance.process = None
        return False

    def _thread_env(self, endpoint_name: str) -> dict[str, str]:
        """CPU threads per worker, unless the environment sets them: the cores shared by the endpoint's
        instances, and OpenMP threads that sleep when idle. torch's default (every core each, spinning)
        makes workers on a shared CPU many times slower and 2 workers slower than 1 (benchmarks/README.md)."""
        with self._lock:
            local = self._endpoints.get(endpoint_name)
            instances = max(1, local.max_instances if local else 1)
        threads = str(max(1, (os.cpu_count() or 1) // instances))
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}

    def _claim_gpu(self, instance: Instance) -> None:
        """Give `instance` the GPU that the fewest other instances (in service or starting) have; none on a
        machine without GPUs."""
        if not self._gpus:
            return
        with self._lock:
            taken = [other.gpu for local in self._endpoints.values()
                     for other in (*local.instances, *local.starting) if other is not instance]
            instance.gpu = min(self._gpus, key=taken.count)

    def _kill(self, instance: Instance) -> None:
        process = instance.process
        if process and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _stop_instance(self, instance: Instance, interrupt_job: bool) -> None:
        instance.stopping.set()
        if interrupt_job and instance.current_job:
            self._interrupt_worker(instance, instance.current_job)
        self._kill(instance)

    def delete(self, endpoint_name: str) -> None:
        with self._lock:
            local = self._endpoints.pop(endpoint_name, None)
        if local is None:  # never came up, or failed: only its folder is left
            shutil.rmtree(self.root / endpoint_name, ignore_errors=True)
            return
        with self._lock:
            local.deleted = True
            starting = list(local.starting)
        for instance in [*local.instances, *starting]:
            self._stop_instance(instance, interrupt_job=True)
        with local.wake:
            local.wake.notify_all()
        for instance in local.instances:
            if instance.thread and instance.thread is not threading.current_thread():
                instance.thread.join(30)
        shutil.rmtree(self.root / endpoint_name, ignore_errors=True)

    def stop(self) -> None:
        """Stop every worker; running jobs go back to the queue (they run again after a restart)."""
        self._stopping.set()
        for name in list(self._endpoints):
            with self._lock:
                local = self._endpoints.pop(name, None)
            if local:
                for instance in [*local.instances, *local.starting]:
                    self._stop_instance(instance, interrupt_job=False)
                with local.wake:
                    local.wake.notify_all()
        self._spawner.shutdown(wait=False)

    def instance_count(self, endpoint_name: str) -> int:
        with self._lock:
            local = self._endpoints.get(endpoint_name)
            return len(local.instances) if local else 0

    # -- jobs --------------------------------------------------------------------------------------------
    def job_queued(self, endpoint_name: str) -> None:
        with self._lock:
            local = self._endpoints.get(endpoint_name)
        if local:
            with local.wake:
                local.wake.notify_all()

    def interrupt(self, job_id: str) -> bool:
        with self._lock:
            instances = [i for e in self._endpoints.values() for i in e.instances if i.current_job == job_id]
        for instance in instances:
            self._interrupt_worker(instance, job_id)
        return bool(instances)

    def _interrupt_worker(self, instance: Instance, job_id: str) -> None:
        try:
            requests.post(f"{instance.url}/sdapi/v1/interrupt", params={"job_id": job_id}, timeout=5)
        except requests.RequestException:
            log.warning("could not reach %s to interrupt job %s", instance.url, job_id)

    def _start_dispatcher(self, local: LocalEndpoint, instance: Instance) -> None:
        instance.thread = threading.Thread(target=self._dispatch_forever, args=(local, instance),
                                           name=f"dispatch-{local.name}-{instance.index}", daemon=True)
        instance.thread.start()

    def _claim_next_job(self, endpoint_name: str, instance: Instance) -> dict[str, Any] | None:
        """Mark the endpoint's oldest queued job as running on `instance` (a conditional update; another
        dispatcher may win a job, then the next one is tried)."""
        while True:
            waiting = self.store.list(JOBS_TABLE, filters={"name": [endpoint_name], "queue_state": ["queued"]},
                                      limit=8, oldest_first=True).records
            if not waiting:
                return None
            for job in waiting:
                claimed = self.store.update(JOBS_TABLE, job["id"], {
                    "queue_state": "running", "worker": f"{endpoint_name}/{instance.index}",
                    "dispatched_at": time.time(), "attempts": job.get("attempts", 0) + 1},
                    expect={"queue_state": "queued", "status": "inprogress"})
                if claimed:
                    return claimed

    def _dispatch_forever(self, local: LocalEndpoint, instance: Instance) -> None:
        while not instance.stopping.is_set():
            if instance.process is None or instance.process.poll() is not None:
                self._restart(instance, "the worker process exited while idle")
                continue
            job = self._claim_next_job(local.name, instance)
            if job is None:
                with local.wake:
                    local.wake.wait(IDLE_WAIT_S)
                continue
            instance.current_job = job["id"]
            try:
                self._run_job(instance, job)
            except Exception:  # a bug here must not kill the dispatcher nor strand the job
                log.exception("dispatching job %s failed", job["id"])
                self.callbacks.complete_job(job["id"], {"status": "failed",
                                                        "error": "The job failed in the dispatcher; see the server log."})
            finally:
                instance.current_job = None
                instance.idle_since = time.monotonic()

    def _run_job(self, instance: Instance, job: dict[str, Any]) -> None:
        try:
            payload = self.callbacks.prepare_invocation(job)
        except ServiceError as exc:  # e.g. a model was disabled while the job waited
            self.callbacks.complete_job(job["id"], {"status": "failed", "error": exc.message})
            return
        done = threading.Event()
        poller = threading.Thread(target=self._follow_progress, args=(instance, job["id"], done), daemon=True)
        poller.start()
        try:
            answer = self._invoke(instance, payload)
        except WorkerLost as exc:
            done.set()
            self._worker_lost(instance, job, str(exc))
            return
        except InvocationTimedOut as exc:
            done.set()
            self.callbacks.complete_job(job["id"], {"status": "failed", "error": str(exc)})
            # Like SageMaker, give up on the instance rather than queue the next job behind a hung one.
            self._restart(instance, "a job ran past the invocation timeout")
            return
        finally:
            done.set()
            poller.join(5)
        self.callbacks.complete_job(job["id"], answer)

    def _invoke(self, instance: Instance, payload: dict[str, Any]) -> dict[str, Any]:
        timeout = self.settings.invocation_timeout_s
        try:
            response = requests.post(instance.url + "/invocations", json=payload, timeout=(10, timeout))
        except requests.Timeout:
            raise InvocationTimedOut(f"The job ran longer than the invocation timeout ({timeout:.0f} s).") from None
        except requests.ConnectionError as exc:
            raise WorkerLost(f"the worker stopped answering ({type(exc).__name__})") from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or "status" not in answer:
            if instance.process is None or instance.process.poll() is not None:
                raise WorkerLost("the worker process exited during the job")
            return {"status": "failed", "error": f"The worker answered HTTP {response.status_code} without a result."}
        return answer

    def _requeue(self, job: dict[str, Any], attempts: int) -> None:
        self.store.update(JOBS_TABLE, job["id"], {"queue_state": "queued", "worker": None, "progress": 0.0,
                                                  "attempts": attempts},
                          expect={"queue_state": "running", "status": "inprogress"})
        self.job_queued(job["name"])

    def _worker_lost(self, instance: Instance, job: dict[str, Any], reason: str) -> None:
        if instance.stopping.is_set():
            # Stopped on purpose (scale-in, deletion, shutdown): the run does not count; a deletion then
            # cancels what is left on the endpoint, a restart runs it again.
            self._requeue(job, job.get("attempts", 1) - 1)
            return
        code = instance.process.poll() if instance.process else None
        log.warning("worker %s/%d lost during job %s (%s, exit code %s); restarting it",
                    instance.endpoint, instance.index, job["id"], reason, code)
        tail = instance.log_tail(5)
        if job.get("attempts", 1) < self.settings.job_attempts:
            self._requeue(job, job.get("attempts", 1))
        else:
            self.callbacks.complete_job(job["id"], {
                "status": "failed", "error": f"The worker crashed {job.get('attempts', 1)} times running this job "
                                             f"({reason}; exit code {code}). Last log lines: {tail[-500:]}"})
        self._restart(instance, reason)

    def _restart(self, instance: Instance, reason: str) -> None:
        """Start the instance's worker again; an instance that cannot start leaves the endpoint."""
        log.warning("restarting worker %s/%d: %s", instance.endpoint, instance.index, reason)
        self._kill(instance)
        if not self._start_process(instance):
            log.error("worker %s/%d could not be restarted: %s", instance.endpoint, instance.index, instance.log_tail())
            instance.stopping.set()
            with self._lock:
                local = self._endpoints.get(instance.endpoint)
                if local and instance in local.instances:
                    local.instances.remove(instance)
                    count = len(local.instances)
                else:
                    return
                out_of_service = count == 0 and not local.autoscaling  # nothing would ever start one again
                if out_of_service:
                    self._endpoints.pop(instance.endpoint, None)
            if out_of_service:  # its folder (with the workers' logs) stays until the endpoint is deleted
                self.callbacks.endpoint_changed(instance.endpoint, {
                    "endpoint_status": "Failed", "current_instance_count": 0,
                    "error": f"its last instance could not be restarted ({reason}): {instance.log_tail(5) or 'no output'}"})
                return
            self.callbacks.endpoint_changed(instance.endpoint, {"current_instance_count": count})

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
                self.store.update(JOBS_TABLE, job_id, {"progress": round(fraction, 4)},
                                  expect={"queue_state": "running", "status": "inprogress"})

    # -- autoscaling ---------------------------------------------------------------------------------------
    def _autoscale_forever(self) -> None:
        while not self._stopping.wait(AUTOSCALE_TICK_S):
            with self._lock:
                endpoints = [e for e in self._endpoints.values() if e.autoscaling and not e.deleted]
            for local in endpoints:
                try:
                    self._autoscale(local)
                except Exception:
                    log.exception("autoscaling %s failed", local.name)

    def _autoscale(self, local: LocalEndpoint) -> None:
        backlog = self.store.count(JOBS_TABLE, filters={"name": [local.name], "queue_state": ["queued"]})
        with self._lock:
            instances = list(local.instances)
        idle = [i for i in instances if i.current_job is None]
        if backlog > len(idle) and len(instances) < local.max_instances:
            self._scale_out(local)
        elif backlog == 0 and len(instances) > local.min_instances and idle:
            quietest = min(idle, key=lambda i: i.idle_since)
            if time.monotonic() - quietest.idle_since >= self.settings.scale_in_idle_s:
                self._scale_in(local, quietest)

    def _scale_out(self, local: LocalEndpoint) -> None:
        instance = self._new_instance(local)
        log.info("autoscaling %s: starting instance %d", local.name, instance.index)
        started = self._start_process(instance)
        with self._lock:
            local.starting.remove(instance)
        if not started:
            log.error("autoscaling %s: instance did not start: %s", local.name, instance.log_tail())
            return
        with self._lock:
            if local.deleted:
                self._kill(instance)
                return
            local.instances.append(instance)
            count = len(local.instances)
            self._start_dispatcher(local, instance)
        self.callbacks.endpoint_changed(local.name, {"current_instance_count": count})

    def _scale_in(self, local: LocalEndpoint, instance: Instance) -> None:
        log.info("autoscaling %s: stopping idle instance %d", local.name, instance.index)
        with self._lock:
            if instance not in local.instances or instance.current_job:
                return
            local.instances.remove(instance)
            count = len(local.instances)
        instance.stopping.set()
        with local.wake:
            local.wake.notify_all()
        if instance.thread:  # a job claimed just before the stop finishes first
            instance.thread.join(self.settings.invocation_timeout_s)
        self._kill(instance)
        shutil.rmtree(instance.folder, ignore_errors=True)
        self.callbacks.endpoint_changed(local.name, {"current_instance_count": count})

