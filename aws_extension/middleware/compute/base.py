"""The compute port: runs endpoints (sets of workers) and the jobs queued on them.

The services own the records; compute brings endpoints up and down and runs jobs, and reports back
through the callbacks it is bound to (`ComputeCallbacks`). Job records carry the queue fields compute
uses: `queue_state` ("queued" → "running" → None), `worker`, `attempts`, `dispatched_at`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ComputeCallbacks:
    # The /invocations request for a job (signed URLs made at dispatch time, so they are fresh).
    prepare_invocation: Callable[[dict[str, Any]], dict[str, Any]]
    # A job ended: ok, with the worker's answer (or {"status": "failed"|"cancelled", "error": ...}).
    complete_job: Callable[[str, dict[str, Any]], None]
    # An endpoint changed: InService (with its instance count), Failed (with the reason) or a new count.
    endpoint_changed: Callable[[str, dict[str, Any]], None]


class Compute(Protocol):
    def bind(self, callbacks: ComputeCallbacks) -> None: ...

    def deploy(self, endpoint: dict[str, Any]) -> None:
        """Bring an endpoint up in the background; reports InService or Failed through the callbacks."""

    def restore(self, endpoint: dict[str, Any]) -> None:
        """Bring back an endpoint that was InService before the middleware restarted."""

    def delete(self, endpoint_name: str) -> None:
        """Stop every instance of the endpoint (running jobs are interrupted)."""

    def job_queued(self, endpoint_name: str) -> None:
        """A job was queued on the endpoint: wake its dispatchers (and scale it up from zero)."""

    def interrupt(self, job_id: str) -> bool:
        """Stop a running job at its next step; False if it is not running here."""

    def instance_count(self, endpoint_name: str) -> int:
        """Instances running now (for picking the least-loaded endpoint)."""

    def stop(self) -> None: ...
