"""One cloud generation through the client: check the endpoint, send the job, wait for it, fetch outputs.

Shared by the WebUI's cloud switch, the standalone txt2img/img2img tab and the Jobs tab.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from aws_extension.client import MiddlewareClient
from aws_extension.vocabulary import EndpointStatus, JobStatus


class CloudGenerationError(Exception):
    """A generation could not run on the cloud; the message is one sentence for the user."""


class CloudJobCancelled(CloudGenerationError):
    """The job was cancelled (the user interrupted it, or someone cancelled it through the API)."""


@dataclass
class JobOutput:
    job: dict
    images: list[Image.Image] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)  # the request as the worker ran it
    info: dict = field(default_factory=dict)  # A1111's info: infotexts, seed, all_seeds, all_subseeds, ...


def endpoint_names(client: MiddlewareClient) -> list[str]:
    """Names of the InService endpoints, newest first, without duplicates."""
    return list(dict.fromkeys(r["endpoint_name"] for r in client.list_endpoints()
                              if r.get("endpoint_status") == EndpointStatus.IN_SERVICE))


def require_in_service(client: MiddlewareClient, endpoint_name: str) -> None:
    records = [r for r in client.list_endpoints(endpoint_name=endpoint_name)
               if r.get("endpoint_status") != EndpointStatus.DELETED]
    if not records:
        raise CloudGenerationError(f"Endpoint {endpoint_name} does not exist: refresh the endpoint list.")
    status = records[0].get("endpoint_status")
    if status != EndpointStatus.IN_SERVICE:
        raise CloudGenerationError(f"Endpoint {endpoint_name} is {status}, not InService: wait until it is "
                                   "InService or choose another endpoint.")


def job_status_text(job: dict) -> str:
    status = job.get("status")
    if status == JobStatus.INPROGRESS and job.get("queue_position"):
        return f"queued (position {job['queue_position']})"
    if status == JobStatus.INPROGRESS:
        return f"running {round(100 * float(job.get('progress') or 0))}%"
    if status == JobStatus.FAILED:
        return f"failed: {job.get('error') or 'no reason given'}"
    return str(status)


def job_outputs(client: MiddlewareClient, job: dict) -> JobOutput:
    """The images (in order) and the parameter file of a finished job."""
    job_id = job["InferenceJobId"]
    images = []
    for url in client.inference_image_urls(job_id):
        image = Image.open(io.BytesIO(client.download(url)))
        image.load()
        images.append(image)
    params = json.loads(client.download(client.inference_param_url(job_id)))  # wire.ParamFile
    return JobOutput(job, images, params.get("parameters") or {}, json.loads(params.get("info") or "{}"))


def run_generation(client: MiddlewareClient, body: dict, on_update: Callable[[dict], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> JobOutput:
    """Send one /inference/v2 job and wait for exactly that job; a failed or cancelled job raises."""
    if body.get("sagemaker_endpoint_name"):
        require_in_service(client, body["sagemaker_endpoint_name"])
    job_id = client.create_inference(body)["inference_id"]
    job = client.wait_for_job(job_id, on_update=on_update, should_stop=should_stop)
    if job["status"] == JobStatus.FAILED:
        raise CloudGenerationError(f"The cloud job failed: {job.get('error') or 'the worker gave no reason'}")
    if job["status"] == JobStatus.CANCELLED:
        raise CloudJobCancelled("The cloud job was cancelled.")
    return job_outputs(client, job)


def png_base64(image: Image.Image) -> str:
    """An image as the base64 PNG text the A1111 API takes (init_images, mask, ControlNet images)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
