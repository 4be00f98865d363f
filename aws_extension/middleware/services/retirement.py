"""Endpoints leaving service, and what that means for their jobs.

Deleting an endpoint (`DELETE /endpoints`) cancels its waiting jobs, stops its workers and cancels the jobs
they were running; an endpoint that fails on its own (compute reports Failed) fails its jobs. Each endpoint
of a deletion is deleted independently: one failure does not stop the others.
"""

from __future__ import annotations

from aws_extension.middleware.errors import InvalidRequest, UnknownRecord, WrongState
from aws_extension.middleware.records import Endpoint
from aws_extension.middleware.services.endpoints import EndpointService
from aws_extension.middleware.services.jobs import JobService
from aws_extension.vocabulary import JobStatus

DELETED = "deleted"


class EndpointRetirement:
    def __init__(self, endpoints: EndpointService, jobs: JobService):
        self.endpoints = endpoints
        self.jobs = jobs

    def delete(self, names: list[str]) -> dict[str, str]:
        """Delete each endpoint; returns name → "deleted" or the reason it was not."""
        if not names:
            raise InvalidRequest("delete_endpoint_list is empty: name the endpoints to delete.")
        results: dict[str, str] = {}
        for name in dict.fromkeys(names):
            try:
                record = self.endpoints.begin_delete(name)
            except (UnknownRecord, WrongState) as exc:
                results[name] = exc.message
                continue
            self._retire(record)
            results[name] = DELETED
        if all(r != DELETED and "does not exist" in r for r in results.values()):
            raise UnknownRecord(f"none of the endpoints {list(results)} exist.")
        return results

    def _retire(self, record: Endpoint) -> None:
        reason = f"The endpoint {record.endpoint_name} was deleted."
        self.jobs.stop_endpoint_jobs(record.endpoint_name, reason)
        self.endpoints.finish_delete(record)  # stops the workers, interrupting the running jobs
        self.jobs.end_endpoint_jobs(record.endpoint_name, JobStatus.CANCELLED, reason)

    def endpoint_failed(self, name: str, reason: str) -> None:
        """The endpoint left service without being deleted: its waiting and running jobs fail."""
        self.jobs.end_endpoint_jobs(name, JobStatus.FAILED, f"The endpoint {name} failed: {reason}")

    def restore(self) -> None:
        """After a restart: finish the deletions a previous run left half done."""
        for record in self.endpoints.restore():
            self._retire(record)
