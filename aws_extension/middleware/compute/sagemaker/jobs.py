"""Running a job on a SageMaker asynchronous endpoint: the request object in S3, InvokeEndpointAsync.

The request object (`results.invocation_key`) is the worker's whole `/invocations` body
(`wire.InvocationRequest`) plus `progress_url` (a signed PUT of `results.progress_key`) and `cancel_url`
(a signed GET of `results.cancel_key`), since the middleware cannot reach a SageMaker instance. Every URL
in it lives long enough for the job to wait in SageMaker's queue (`RequestTTLSeconds`) and then run
(`InvocationTimeoutSeconds`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from aws_extension.middleware.aws_resources import StackResources
from aws_extension.middleware.blobs.base import MAX_URL_LIFETIME_S, BlobStore
from aws_extension.middleware.compute.base import ComputeEvents
from aws_extension.middleware.records import InferenceJob
from aws_extension.middleware.services.results import cancel_key, invocation_key, progress_key
from aws_extension.settings import MiddlewareSettings

log = logging.getLogger(__name__)

# InvokeEndpointAsync's bounds (SageMaker's API reference).
MAX_INVOCATION_TIMEOUT_S = 3600
MIN_REQUEST_TTL_S, MAX_REQUEST_TTL_S = 60, 21600


class AsyncInvocations:
    def __init__(self, blobs: BlobStore, runtime: Any, resources: StackResources, settings: MiddlewareSettings):
        self.blobs = blobs
        self.runtime = runtime  # a boto3 sagemaker-runtime client
        self.resources = resources
        self.invocation_timeout_s = max(1, min(MAX_INVOCATION_TIMEOUT_S, math.ceil(settings.invocation_timeout_s)))
        self.request_ttl_s = max(MIN_REQUEST_TTL_S, min(MAX_REQUEST_TTL_S, math.ceil(settings.sagemaker_request_ttl_s)))
        margin = settings.sagemaker_notification_margin_s
        self.url_lifetime_s = min(MAX_URL_LIFETIME_S, math.ceil(self.request_ttl_s + self.invocation_timeout_s + margin))

    def submit(self, events: ComputeEvents, job: InferenceJob) -> str | None:
        """Write the job's request object and invoke its endpoint; the reason when that failed (the job
        cannot run), else None."""
        request = replace(events.invocation_for(job, self.url_lifetime_s),
                          progress_url=self.blobs.signed_url(progress_key(job.id), "PUT", self.url_lifetime_s),
                          cancel_url=self.blobs.signed_url(cancel_key(job.id), "GET", self.url_lifetime_s))
        key = invocation_key(job.id)
        with self.blobs.writer(key) as out:
            out.write(json.dumps(request.to_json()).encode())
        try:
            self.runtime.invoke_endpoint_async(
                EndpointName=self.resources.sagemaker_name(job.endpoint), InputLocation=self.blobs.uri(key),
                InferenceId=job.id, ContentType="application/json", Accept="application/json",
                InvocationTimeoutSeconds=self.invocation_timeout_s, RequestTTLSeconds=self.request_ttl_s)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            log.warning("InvokeEndpointAsync of job %s failed: %s", job.id, error)
            return f"SageMaker refused the job: {error.get('Code', 'error')}: {error.get('Message', exc)}"
        except BotoCoreError as exc:
            log.warning("InvokeEndpointAsync of job %s failed: %s", job.id, exc)
            return f"Calling SageMaker to run the job failed: {exc}"
        return None

    def ask_to_cancel(self, job_id: str) -> None:
        """The worker reads this object between steps (and before it starts) and stops."""
        with self.blobs.writer(cancel_key(job_id)) as out:
            out.write(b'{"cancel": true}')
