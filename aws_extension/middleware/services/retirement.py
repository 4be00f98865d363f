"""Endpoints leaving service, and what that means for their jobs.

Deleting an endpoint (`DELETE /endpoints`) makes it `Deleting` and cancels its waiting jobs (its running
ones become `cancelling`) in the request; stopping its workers, which can take seconds, happens in the
background, then it is `Deleted` and the jobs its workers had are `cancelled`. An endpoint that fails on
its own (compute reports Failed) fails its jobs. Each endpoint of a deletion is deleted independently:
one failure does not stop the others.
"""

from __future__ import annotations

import threading

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
            self.jobs.stop_endpoint_jobs(name, self._reason(record))
            threading.Thread(target=self._finish, args=(record,), name=f"delete-{name}", daemon=True).start()
            results[name] = DELETED
        if all(r != DELETED and "does not exist" in r for r in results.values()):
            raise UnknownRecord(f"none of the endpoints {list(results)} exist.")
        return results

    @staticmethod
    def _reason(record: Endpoint) -> str:
        return f"The endpoint {record.endpoint_name} was deleted."

    def _finish(self, record: Endpoint) -> None:
        """Stop the workers (interrupting the running jobs); then the endpoint is Deleted and nothing of it runs."""
        self.endpoints.finish_delete(record)
        self.jobs.end_endpoint_jobs(record.endpoint_name, JobStatus.CANCELLED, self._reason(record))

    def endpoint_failed(self, name: str, reason: str) -> None:
        """The endpoint left service without being deleted: its waiting and running jobs fail."""
        self.jobs.end_endpoint_jobs(name, JobStatus.FAILED, f"The endpoint {name} failed: {reason}")

    def restore(self) -> None:
        """After a restart of local compute: bring its endpoints back and finish the deletions a previous run
        left half done."""
        for record in self.endpoints.restore():
            self._retire(record)

    def finish_pending(self) -> None:
        """Finish every deletion still `Deleting`: on SageMaker, after a restart, and on the Lambda's schedule
        (a deletion's background thread does not outlive the invocation that started it). Finishing one twice
        is harmless: compute's delete is idempotent and the record ends Deleted either way."""
        for record in self.endpoints.deleting():
            self._retire(record)

    def _retire(self, record: Endpoint) -> None:
        self.jobs.stop_endpoint_jobs(record.endpoint_name, self._reason(record))
        self._finish(record)
