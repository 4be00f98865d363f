"""Local compute: an endpoint is a set of worker processes on this machine (see processes.py), each fed by
a dispatcher (dispatcher.py), scaled by the autoscaler (autoscaler.py).

This module keeps the endpoints and their instances: bringing them up, restarting a lost instance (an
instance that cannot start leaves its endpoint; an endpoint without autoscaling that loses its last one
fails), scaling, deletion and shutdown.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field

import requests

from aws_extension.middleware.compute.base import ComputeEvents, EndpointChange
from aws_extension.middleware.compute.local.autoscaler import Autoscaler
from aws_extension.middleware.compute.local.dispatcher import Dispatcher
from aws_extension.middleware.compute.local.processes import Instance, WorkerProcesses
from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.records import Endpoint, InferenceJob
from aws_extension.middleware.services.queue import JobQueue
from aws_extension.settings import MiddlewareSettings
from aws_extension.vocabulary import EndpointStatus

log = logging.getLogger(__name__)

# Instance types offered: `local`, and SageMaker's GPU types (run as local processes too, so requests written
# for SageMaker work here).
INSTANCE_TYPES = ("local", "ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g4dn.4xlarge", "ml.g4dn.8xlarge",
                  "ml.g4dn.12xlarge", "ml.g4dn.16xlarge", "ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.4xlarge",
                  "ml.g5.8xlarge", "ml.g5.12xlarge", "ml.g5.16xlarge", "ml.g5.24xlarge", "ml.g5.48xlarge")


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
    restarts_with_middleware = True  # the workers are child processes of the middleware

    def __init__(self, queue: JobQueue, settings: MiddlewareSettings):
        self.queue = queue
        queue.round_robin = True  # its dispatchers take the jobs of each endpoint round-robin across owners
        self.settings = settings
        self.root = settings.data_dir / "endpoints"
        self.processes = WorkerProcesses(settings)
        self.events: ComputeEvents | None = None
        self._dispatcher: Dispatcher | None = None
        self._endpoints: dict[str, LocalEndpoint] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._autoscaler = Autoscaler(self, queue, settings.scale_in_idle_s)

    def start(self, events: ComputeEvents) -> None:
        self.events = events
        self._dispatcher = Dispatcher(self.queue, events, self.settings, self.restart, self._wake, self._stopping)
        self._autoscaler.start()

    # -- endpoints ---------------------------------------------------------------------------------------
    def deploy(self, endpoint: Endpoint) -> None:
        threading.Thread(target=self._bring_up, args=(endpoint, endpoint.initial_instance_count),
                         name=f"deploy-{endpoint.endpoint_name}", daemon=True).start()

    def restore(self, endpoint: Endpoint) -> None:
        count = endpoint.current_instance_count
        if endpoint.autoscaling:
            count = max(endpoint.min_instance_number, min(count, 1))
        threading.Thread(target=self._bring_up, args=(endpoint, count),
                         name=f"restore-{endpoint.endpoint_name}", daemon=True).start()

    def _bring_up(self, endpoint: Endpoint, count: int) -> None:
        name = endpoint.endpoint_name
        local = LocalEndpoint(name=name, autoscaling=endpoint.autoscaling, min_instances=endpoint.min_instance_number,
                              max_instances=endpoint.max_instance_number or count)
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
            self._stop_all(instances, interrupt_jobs=False)
            return
        failed = [i for i in instances if i.process is None]
        if failed:
            self._stop_all(instances, interrupt_jobs=False)
            with self._lock:
                self._endpoints.pop(name, None)
            reason = f"instance {failed[0].index} did not become healthy: {failed[0].log_tail() or 'no output'}"
            self.events.endpoint_changed(name, EndpointChange(EndpointStatus.FAILED, error=reason))
            return
        with self._lock:
            if local.deleted:
                return
            local.instances.extend(instances)
            for instance in instances:
                self._start_dispatcher(local, instance)
        self.events.endpoint_changed(name, EndpointChange(EndpointStatus.IN_SERVICE, instance_count=count))

    def _new_instance(self, local: LocalEndpoint) -> Instance:
        with self._lock:
            index = local.next_index
            local.next_index += 1
            instance = Instance(endpoint=local.name, index=index, folder=self.root / local.name / f"instance-{index}")
            local.starting.append(instance)
        (instance.folder / "models").mkdir(parents=True, exist_ok=True)
        return instance

    def _start_process(self, instance: Instance) -> bool:
        with self._lock:  # chosen and taken under one lock: instances starting together get different GPUs
            instance.gpu = self.processes.pick_gpu([other.gpu for each in self._endpoints.values()
                                                    for other in (*each.instances, *each.starting)
                                                    if other is not instance])
        return self.processes.start(instance, sharing=self.workers_at_once())

    def workers_at_once(self) -> int:
        """How many local workers can run at once (the cores are split over them): every endpoint's maximum,
        of every endpoint. Workers already running keep the threads they started with."""
        with self._lock:
            return max(1, sum(local.max_instances for local in self._endpoints.values()))

    def _stop_all(self, instances: list[Instance], interrupt_jobs: bool) -> None:
        for instance in instances:
            instance.stopping.set()
            if interrupt_jobs and instance.current_job:
                self._interrupt_worker(instance, instance.current_job)
            self.processes.kill(instance)

    def delete(self, endpoint_name: str) -> None:
        with self._lock:
            local = self._endpoints.pop(endpoint_name, None)
            if local:
                local.deleted = True
        if local is not None:
            self._stop_all([*local.instances, *local.starting], interrupt_jobs=True)
            self._wake(local)
            for instance in local.instances:
                if instance.thread and instance.thread is not threading.current_thread():
                    instance.thread.join(30)
        shutil.rmtree(self.root / endpoint_name, ignore_errors=True)

    def begin_stopping(self) -> None:
        """The middleware is about to stop taking requests (the workers' image uploads among them): claim no
        more jobs, and queue again those that fail from now on (see dispatcher.py). `stop` follows."""
        self._stopping.set()

    def stop(self) -> None:
        """Stop every worker; running jobs go back to the queue (they run again after a restart)."""
        self.begin_stopping()
        self._autoscaler.stop()
        with self._lock:
            endpoints = list(self._endpoints.values())
            self._endpoints.clear()
        for local in endpoints:
            self._stop_all([*local.instances, *local.starting], interrupt_jobs=False)
            self._wake(local)
        self.processes.shutdown()

    def check_instance_type(self, instance_type: object) -> None:
        if instance_type not in INSTANCE_TYPES:
            raise InvalidRequest(f"instance_type {instance_type!r} is not offered; use one of {', '.join(INSTANCE_TYPES)}.")

    def instance_count(self, endpoint_name: str) -> int:
        with self._lock:
            local = self._endpoints.get(endpoint_name)
            return len(local.instances) if local else 0

    # -- jobs --------------------------------------------------------------------------------------------
    def submit(self, job: InferenceJob) -> None:
        self._wake(job.endpoint)

    def _wake(self, endpoint: str | LocalEndpoint) -> None:
        with self._lock:
            local = self._endpoints.get(endpoint) if isinstance(endpoint, str) else endpoint
        if local:
            with local.wake:
                local.wake.notify_all()

    def interrupt(self, job: InferenceJob) -> None:
        with self._lock:
            instances = [i for e in self._endpoints.values() for i in e.instances if i.current_job == job.id]
        for instance in instances:
            threading.Thread(target=self._interrupt_worker, args=(instance, job.id), daemon=True,
                             name=f"interrupt-{job.id[:8]}").start()

    def observe(self, job: InferenceJob) -> InferenceJob:
        return job  # the dispatcher reports progress as the job runs

    @staticmethod
    def _interrupt_worker(instance: Instance, job_id: str) -> None:
        try:
            requests.post(f"{instance.url}/sdapi/v1/interrupt", params={"job_id": job_id}, timeout=5)
        except requests.RequestException:
            log.warning("could not reach %s to interrupt job %s", instance.url, job_id)

    def _start_dispatcher(self, local: LocalEndpoint, instance: Instance) -> None:
        instance.thread = threading.Thread(target=self._dispatcher.run_forever, args=(instance, local.wake),
                                           name=f"dispatch-{instance.name}", daemon=True)
        instance.thread.start()

    def restart(self, instance: Instance, reason: str) -> None:
        """Start the instance's worker again; an instance that cannot start leaves the endpoint."""
        log.warning("restarting worker %s: %s", instance.name, reason)
        self.processes.kill(instance)
        with self._lock:
            local = self._endpoints.get(instance.endpoint)
        if local and self._start_process(instance):
            return
        log.error("worker %s could not be restarted: %s", instance.name, instance.log_tail())
        instance.stopping.set()
        with self._lock:
            if local is None or instance not in local.instances:
                return
            local.instances.remove(instance)
            count = len(local.instances)
            out_of_service = count == 0 and not local.autoscaling  # nothing would ever start one again
            if out_of_service:
                self._endpoints.pop(instance.endpoint, None)
        if out_of_service:  # its folder (with the workers' logs) stays until the endpoint is deleted
            self.events.endpoint_changed(instance.endpoint, EndpointChange(
                EndpointStatus.FAILED, instance_count=0,
                error=f"its last instance could not be restarted ({reason}): {instance.log_tail(5) or 'no output'}"))
            return
        self.events.endpoint_changed(instance.endpoint, EndpointChange(instance_count=count))

    # -- scaling (decided by the autoscaler) ----------------------------------------------------------------
    def autoscaled_endpoints(self) -> list[LocalEndpoint]:
        with self._lock:
            return [e for e in self._endpoints.values() if e.autoscaling and not e.deleted]

    def instances_of(self, local: LocalEndpoint) -> list[Instance]:
        with self._lock:
            return list(local.instances)

    def scale_out(self, local: LocalEndpoint) -> None:
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
                self.processes.kill(instance)
                return
            local.instances.append(instance)
            count = len(local.instances)
            self._start_dispatcher(local, instance)
        self.events.endpoint_changed(local.name, EndpointChange(instance_count=count))

    def scale_in(self, local: LocalEndpoint, instance: Instance) -> None:
        log.info("autoscaling %s: stopping idle instance %d", local.name, instance.index)
        with self._lock:
            if instance not in local.instances or instance.current_job:
                return
            local.instances.remove(instance)
            count = len(local.instances)
        instance.stopping.set()
        self._wake(local)
        if instance.thread:  # a job claimed just before the stop finishes first
            instance.thread.join(self.settings.invocation_timeout_s)
        self.processes.kill(instance)
        shutil.rmtree(instance.folder, ignore_errors=True)
        self.events.endpoint_changed(local.name, EndpointChange(instance_count=count))
