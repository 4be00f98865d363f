"""What compute reports, routed to the services (the `ComputeEvents` of compute/base.py)."""

from __future__ import annotations

from aws_extension.middleware.compute.base import EndpointChange
from aws_extension.middleware.records import InferenceJob
from aws_extension.middleware.services.endpoints import EndpointService
from aws_extension.middleware.services.jobs import JobService
from aws_extension.middleware.services.retirement import EndpointRetirement
from aws_extension.wire import InvocationAnswer, InvocationRequest


class ComputeReports:
    def __init__(self, jobs: JobService, endpoints: EndpointService, retirement: EndpointRetirement):
        self.jobs = jobs
        self.endpoints = endpoints
        self.retirement = retirement

    def invocation_for(self, job: InferenceJob, url_lifetime_s: int | None = None) -> InvocationRequest:
        return self.jobs.results.invocation_for(job, url_lifetime_s)

    def job_finished(self, job_id: str, answer: InvocationAnswer) -> None:
        self.jobs.complete(job_id, answer)

    def endpoint_changed(self, endpoint_name: str, change: EndpointChange) -> None:
        if self.endpoints.apply_change(endpoint_name, change):
            self.retirement.endpoint_failed(endpoint_name, change.error or "the endpoint failed")
