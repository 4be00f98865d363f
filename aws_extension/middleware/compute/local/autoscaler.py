"""Autoscaling of local endpoints, as SageMaker asynchronous endpoints scale: one more instance while jobs
wait (up to the maximum), one fewer after an idle time (down to the minimum, which may be 0). An endpoint
at zero gets an instance when a job arrives (at the next tick).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from aws_extension.middleware.services.queue import JobQueue

if TYPE_CHECKING:
    from aws_extension.middleware.compute.local.compute import LocalCompute, LocalEndpoint

log = logging.getLogger(__name__)

AUTOSCALE_TICK_S = 0.5


class Autoscaler:
    def __init__(self, compute: LocalCompute, queue: JobQueue, scale_in_idle_s: float):
        self.compute = compute
        self.queue = queue
        self.scale_in_idle_s = scale_in_idle_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run_forever, name="autoscaler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run_forever(self) -> None:
        while not self._stopping.wait(AUTOSCALE_TICK_S):
            for local in self.compute.autoscaled_endpoints():
                try:
                    self.scale(local)
                except Exception:
                    log.exception("autoscaling %s failed", local.name)

    def scale(self, local: LocalEndpoint) -> None:
        backlog = self.queue.backlog(local.name)
        instances = self.compute.instances_of(local)
        idle = [i for i in instances if i.current_job is None]
        if backlog > len(idle) and len(instances) < local.max_instances:
            self.compute.scale_out(local)
        elif backlog == 0 and len(instances) > local.min_instances and idle:
            quietest = min(idle, key=lambda i: i.idle_since)
            if time.monotonic() - quietest.idle_since >= self.scale_in_idle_s:
                self.compute.scale_in(local, quietest)
