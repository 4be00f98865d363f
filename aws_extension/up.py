"""`sd-aws up`: the whole stack on this machine in one command.

Starts the middleware; on first run registers the tiny model as a checkpoint (so a fresh machine can
generate without any download) and deploys one local endpoint — both through the public API, like any
client; then prints the URL, the API key and a ready-to-paste curl. `--demo` also runs one txt2img job
through the API, writes the PNG and stops the stack (a smoke test of everything).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import requests
import uvicorn

from aws_extension.client import ApiError, MiddlewareClient
from aws_extension.middleware.app import Readiness
from aws_extension.middleware.server import run_middleware
from aws_extension.settings import MiddlewareSettings, load
from aws_extension.vocabulary import CheckpointStatus, CheckpointType, EndpointStatus, JobStatus, Task

TINY_MODEL = "tiny-sd.safetensors"
LOCAL_ENDPOINT = "sd-aws-local"
DEMO_PROMPT = "a cute panda"


def _wait_until_up(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise ApiError(0, f"the middleware did not answer at {url} within {timeout_s:.0f} s")


def ensure_tiny_model(client: MiddlewareClient, data_dir: Path) -> None:
    active = client.list_checkpoints([CheckpointType.STABLE_DIFFUSION], [CheckpointStatus.ACTIVE])
    if TINY_MODEL in [n for c in active for n in c["name"]]:
        return
    from aws_extension.engine.tiny import write_tiny_model  # torch: only on the first run

    path = data_dir / "tiny" / TINY_MODEL
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tiny_model(path)
    record = client.upload_checkpoint_files(CheckpointType.STABLE_DIFFUSION, [path],
                                            {"message": "tiny test model (sd-aws up)"})
    print(f"registered the tiny model {TINY_MODEL} (checkpoint {record['id']})", flush=True)


def ensure_endpoint(client: MiddlewareClient) -> str:
    """The name of an InService endpoint, deploying one first if there is none."""
    endpoints = [e for e in client.list_endpoints()
                 if e["endpoint_status"] in (EndpointStatus.IN_SERVICE, EndpointStatus.CREATING)]
    if not endpoints:
        print(f"deploying the local endpoint {LOCAL_ENDPOINT} ...", flush=True)
        endpoints = [client.deploy_endpoint("local", 1, endpoint_name=LOCAL_ENDPOINT)]
    record = client.wait_for_endpoint(endpoints[0]["EndpointDeploymentJobId"], timeout_s=600)
    if record["endpoint_status"] != EndpointStatus.IN_SERVICE:
        raise ApiError(0, f"endpoint {record['endpoint_name']} is {record['endpoint_status']}: {record['error']}")
    return record["endpoint_name"]


def demo_body(endpoint: str) -> dict:
    return {"task_type": Task.TXT2IMG.value, "models": {CheckpointType.STABLE_DIFFUSION.value: [TINY_MODEL]},
            "sagemaker_endpoint_name": endpoint, "prompt": DEMO_PROMPT, "width": 64, "height": 64, "steps": 8, "seed": 42}


def run_demo(client: MiddlewareClient, endpoint: str, out_dir: Path) -> Path:
    job = client.create_inference(demo_body(endpoint))
    final = client.wait_for_job(job["inference_id"], timeout_s=600)
    if final["status"] != JobStatus.SUCCEED:
        raise ApiError(0, f"the demo job {final['InferenceJobId']} {final['status']}: {final['error']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{job['inference_id']}.png"
    path.write_bytes(client.download(client.inference_image_urls(job["inference_id"])[0]))
    return path


def print_usage(url: str, api_key: str, endpoint: str) -> None:
    body = json.dumps({**demo_body(endpoint), "steps": 20})
    print(f"\nsd-aws is up: {url}  (API docs: {url}/docs)\nAPI key: {api_key}\nendpoint: {endpoint}\n"
          f"try:\n  curl -s -X POST {url}/inference/v2 -H 'x-api-key: {api_key}' "
          f"-H 'Content-Type: application/json' -d {shlex.quote(body)}\n", flush=True)


def up(host: str | None = None, port: int | None = None, data_dir: Path | None = None, demo: bool = False) -> int:
    settings = load(MiddlewareSettings, host=host, port=port, data_dir=data_dir)
    url = settings.public_url or f"http://{settings.host}:{settings.port}"
    outcome = {"code": 0}
    model_ready, endpoint_ready = f"the tiny model {TINY_MODEL} in the catalogue", "an endpoint in service"
    readiness = Readiness([model_ready, endpoint_ready])

    def bootstrap(server: uvicorn.Server, api_key: str) -> None:
        try:
            _wait_until_up(url)
            client = MiddlewareClient(url, api_key, timeout_s=120)
            ensure_tiny_model(client, settings.data_dir)
            readiness.done(model_ready)
            endpoint = ensure_endpoint(client)
            readiness.done(endpoint_ready)
            print_usage(url, api_key, endpoint)
            if demo:
                path = run_demo(client, endpoint, settings.data_dir / "demo")
                print(f"demo image: {path}", flush=True)
        except ApiError as exc:
            print(f"sd-aws up failed: {exc}", file=sys.stderr, flush=True)
            outcome["code"] = 1
            server.should_exit = True
            return
        if demo:
            server.should_exit = True

    code = run_middleware(settings, announce_key=False, on_started=bootstrap, readiness=readiness)
    return outcome["code"] or code
