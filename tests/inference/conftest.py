"""A real stack for inference tests: middleware, the tiny models in the catalogue, an endpoint; on each backend
(local: worker processes of the middleware; aws: moto + SageMaker emulated by real workers, tests/aws_stack.py)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from aws_extension.client import MiddlewareClient
from tests.conftest import start_api
from tests.helpers import SdAwsProcess, process_pids, start_middleware

API_KEY = "inference-key"
# The seed's own example names, so its example body runs unchanged.
SEED_MODEL = "v1-5-pruned-emaonly.safetensors"
SEED_ENDPOINT = "infer-endpoint-cb821ea"
SEED_BODY = {"task_type": "txt2img", "models": {"Stable-diffusion": [SEED_MODEL]},
             "sagemaker_endpoint_name": SEED_ENDPOINT, "prompt": "a cute panda", "denoising_strength": 0.75}
TEST_ENV = {"SD_AWS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "1", "SD_AWS_IMPORT_ALLOW_PRIVATE_ADDRESSES": "1"}


@dataclass
class Stack:
    server: SdAwsProcess
    client: MiddlewareClient
    data_dir: Path
    models: Path
    backend: str = "local"
    resources: object | None = None  # aws: the stack's StackResources
    cloud: object | None = None  # aws: the session's emulated SageMaker (tests/aws_stack.AsyncInference)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def instance_type(self) -> str:
        return "local" if self.backend == "local" else "ml.g5.xlarge"

    def webhook_secret(self) -> bytes:
        if self.backend == "aws":
            from tests.aws_stack import stack_secret

            return stack_secret(self.cloud, self.resources.webhook_secret).encode()
        return (self.data_dir / "webhook_secret").read_text().strip().encode()

    def deploy(self, name: str, count: int = 1, **autoscaling) -> dict:
        return deploy(self.client, name, count, instance_type=self.instance_type, **autoscaling)


def register_tiny_models(client: MiddlewareClient, models_dir: Path, tmp: Path, checkpoint_name: str = SEED_MODEL) -> None:
    checkpoint = tmp / checkpoint_name
    shutil.copy(models_dir / "Stable-diffusion" / "tiny-sd.safetensors", checkpoint)
    client.upload_checkpoint_files("Stable-diffusion", [checkpoint])
    for model_type in ("Lora", "embeddings", "VAE", "ControlNet"):
        client.upload_checkpoint_files(model_type, sorted((models_dir / model_type).iterdir()))


def deploy(client: MiddlewareClient, name: str, count: int = 1, instance_type: str = "local", **autoscaling) -> dict:
    job = client.deploy_endpoint(instance_type, count, endpoint_name=name, **autoscaling)
    record = client.wait_for_endpoint(job["EndpointDeploymentJobId"], timeout_s=300)
    assert record["endpoint_status"] == "InService", record
    return record


def start_stack(tmp: Path, tiny_models_dir: Path, env: dict[str, str] | None = None) -> Stack:
    data_dir = tmp / "data"
    server = start_middleware(data_dir, API_KEY, env={**TEST_ENV, **(env or {})})
    client = MiddlewareClient(server.url, API_KEY, timeout_s=60)
    register_tiny_models(client, tiny_models_dir, tmp)
    return Stack(server, client, data_dir, tiny_models_dir)


# The shared stack's middleware spreads its workers over these "GPUs": on a machine without any, a worker
# only gets CUDA_VISIBLE_DEVICES set (and runs on the CPU), which is what the spreading tests look at.
STACK_GPUS = ("3", "5")


@pytest.fixture(scope="module")
def stack(backend, request, tmp_path_factory, tiny_models_dir):
    """One middleware with the seed's endpoint on 2 instances, shared by a module's tests (on each backend)."""
    tmp = tmp_path_factory.mktemp(f"stack-{backend}")
    server, resources = start_api(backend, request, tmp / "data", API_KEY,
                                  env={**TEST_ENV, "SD_AWS_LOCAL_GPUS": ",".join(STACK_GPUS)})
    built = Stack(server, MiddlewareClient(server.url, API_KEY, timeout_s=60), tmp / "data", tiny_models_dir,
                  backend=backend, resources=resources,
                  cloud=request.getfixturevalue("aws_cloud") if backend == "aws" else None)
    try:
        register_tiny_models(built.client, tiny_models_dir, tmp)
        built.deploy(SEED_ENDPOINT, count=2)
        yield built
    finally:
        built.server.stop()


def wait_for_endpoint_status(client: MiddlewareClient, name: str, status: str, timeout_s: float = 60) -> dict:
    """Poll the endpoint's newest deployment record until its endpoint_status is `status` (deletion finishes
    in the background)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = client.list_endpoints(endpoint_name=name)[0]
        if record["endpoint_status"] == status:
            return record
        time.sleep(0.1)
    raise AssertionError(f"endpoint {name} is {record['endpoint_status']}, not {status}")


def wait_until_running(client: MiddlewareClient, job_id: str, timeout_s: float = 120) -> dict:
    """Poll until the job has made progress on a worker."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.inference_job(job_id)
        if job["status"] != "inprogress" or (job["progress"] or 0) > 0:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never started running")


def worker_pids(data_dir: Path, endpoint: str) -> dict[int, int]:
    """PID → port of the endpoint's worker processes (found by their models folder on the command line)."""
    pids = {}
    for pid in process_pids(str(data_dir / "endpoints" / endpoint)):
        try:
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # it exited meanwhile
        pids[pid] = int(cmdline.split("--port ", 1)[1].split()[0])
    return pids


def worker_gpus(data_dir: Path, endpoint: str) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each of the endpoint's worker processes, sorted (None: not set)."""
    gpus = []
    for pid in worker_pids(data_dir, endpoint):
        environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        values = [item.split(b"=", 1)[1].decode() for item in environ if item.startswith(b"CUDA_VISIBLE_DEVICES=")]
        gpus.append(values[0] if values else None)
    return sorted(gpus, key=str)


def worker_running(data_dir: Path, endpoint: str, job_id: str) -> int:
    """The PID of the worker running `job_id` (asked through each worker's /sdapi/v1/progress)."""
    for pid, port in worker_pids(data_dir, endpoint).items():
        state = requests.get(f"http://127.0.0.1:{port}/sdapi/v1/progress", timeout=5).json()["state"]
        if state.get("job_id") == job_id:
            return pid
    raise AssertionError(f"no worker of {endpoint} is running job {job_id}")


LONG_JOB = {"task_type": "txt2img", "models": {"Stable-diffusion": [SEED_MODEL]}, "prompt": "a long job",
            "width": 512, "height": 512, "steps": 150}
