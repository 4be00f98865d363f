"""Inference through the public API on a real local endpoint (2 worker processes, the tiny model)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.helpers import REPO, free_port
from tests.inference.conftest import (
    API_KEY,
    LONG_JOB,
    SEED_BODY,
    SEED_ENDPOINT,
    SEED_MODEL,
    STACK_GPUS,
    wait_for_endpoint_status,
    wait_until_running,
    worker_gpus,
    worker_pids,
    worker_running,
)

HEADERS = {"x-api-key": API_KEY}


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def _succeed(stack, body: dict) -> dict:
    answer = stack.client.create_inference(body)
    job = stack.client.wait_for_job(answer["inference_id"], timeout_s=300)
    assert job["status"] == "succeed", job
    return job


def test_seed_example_body_end_to_end(stack):
    response = requests.post(f"{stack.url}/inference/v2", json=SEED_BODY, headers=HEADERS, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["status"] == "inprogress" and answer["endpoint_name"] == SEED_ENDPOINT
    assert set(answer) == {"inference_id", "status", "endpoint_name", "output_path"}
    job = stack.client.wait_for_job(answer["inference_id"], timeout_s=300)
    assert job["status"] == "succeed", job
    assert job["progress"] == 1.0 and job["image_names"] == ["image_0.png"] and job["completeTime"]
    assert set(job["timings"]) >= {"queued_s", "load_s", "run_s", "upload_s"}
    urls = requests.get(f"{stack.url}/inference/get-inference-job-image-output",
                        params={"jobID": answer["inference_id"]}, headers=HEADERS, timeout=10).json()
    assert len(urls) == 1
    image = _png(requests.get(urls[0], timeout=30).content)
    assert image.size == (512, 512)  # the seed's defaults
    infotext = image.info["parameters"]
    assert infotext.startswith("a cute panda\n") and "Steps: 28" in infotext and "Sampler: Euler a" in infotext
    param_url = requests.get(f"{stack.url}/inference/get-inference-job-param-output",
                             params={"jobID": answer["inference_id"]}, headers=HEADERS, timeout=10).json()
    params = requests.get(param_url[0], timeout=10).json()
    assert params["inference_id"] == answer["inference_id"] and params["endpoint_name"] == SEED_ENDPOINT
    info = json.loads(params["info"])
    assert info["infotexts"][0] == infotext and info["all_seeds"] == [info["seed"]]
    assert params["parameters"]["prompt"] == "a cute panda"


def test_img2img_with_uploaded_parameters(stack):
    init = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init, format="PNG")
    body = {"task_type": "img2img", "models": {"Stable-diffusion": [SEED_MODEL]}, "run": False,
            "sagemaker_endpoint_name": SEED_ENDPOINT, "prompt": "placeholder"}
    created = stack.client.create_inference(body)
    assert created["status"] == "created" and created["api_params_upload_url"]
    assert stack.client.inference_job(created["inference_id"])["status"] == "created"
    params = {"prompt": "a red square, oil painting", "init_images": [base64.b64encode(init.getvalue()).decode()],
              "denoising_strength": 0.6, "width": 64, "height": 64, "steps": 4, "seed": 7}
    assert requests.put(created["api_params_upload_url"], data=json.dumps(params), timeout=10).status_code == 200
    started = requests.put(f"{stack.url}/inference/v2/{created['inference_id']}/run", headers=HEADERS, timeout=10)
    assert started.status_code == 200 and started.json()["status"] == "inprogress"
    again = requests.put(f"{stack.url}/inference/v2/{created['inference_id']}/run", headers=HEADERS, timeout=10)
    assert again.status_code == 409 and "only a created job can be run" in again.json()["error"]
    job = stack.client.wait_for_job(created["inference_id"], timeout_s=300)
    assert job["status"] == "succeed", job
    image = _png(stack.client.download(stack.client.inference_image_urls(created["inference_id"])[0]))
    assert image.size == (64, 64) and "a red square, oil painting" in image.info["parameters"]
    assert "Denoising strength: 0.6" in image.info["parameters"]


def test_lora_embedding_and_vae_from_the_catalogue(stack):
    base = {"task_type": "txt2img", "models": {"Stable-diffusion": [SEED_MODEL]}, "width": 64, "height": 64,
            "steps": 3, "seed": 11, "prompt": "a cat"}
    plain = _succeed(stack, base)
    with_lora = _succeed(stack, {**base, "prompt": "a cat <lora:tiny-lora:1>"})
    pixels = [stack.client.download(stack.client.inference_image_urls(j["InferenceJobId"])[0]) for j in (plain, with_lora)]
    assert _png(pixels[0]).tobytes() != _png(pixels[1]).tobytes()
    assert "tiny-lora" in _png(pixels[1]).info["parameters"]
    with_emb_vae = _succeed(stack, {**base, "prompt": "a cat, tiny-emb", "override_settings": {"sd_vae": "tiny-vae.safetensors"}})
    raw = json.loads(with_emb_vae["sagemakerRaw"])
    assert raw["status"] == "succeed"
    assert "VAE: tiny-vae" in _png(stack.client.download(
        stack.client.inference_image_urls(with_emb_vae["InferenceJobId"])[0])).info["parameters"]


def test_twenty_concurrent_jobs_finish_exactly_once(stack):
    body = {"task_type": "txt2img", "models": {"Stable-diffusion": [SEED_MODEL]}, "width": 64, "height": 64, "steps": 2}
    # both workers busy first, so the twenty wait in the queue however fast they are sent (then freed)
    busy = [stack.client.create_inference({**LONG_JOB, "seed": s})["inference_id"] for s in range(2)]
    for job_id in busy:
        wait_until_running(stack.client, job_id)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: stack.client.create_inference({**body, "prompt": f"job {i}", "seed": i}),
                                range(20)))
    ids = [a["inference_id"] for a in answers]
    assert len(set(ids)) == 20
    seen_queued = any(stack.client.inference_job(i)["queue_position"] for i in ids)
    for job_id in busy:
        stack.client.cancel_inference(job_id)
    jobs = [stack.client.wait_for_job(i, timeout_s=600) for i in ids]
    assert [j["status"] for j in jobs] == ["succeed"] * 20
    assert all(j["attempts"] == 1 for j in jobs)
    for index, job in enumerate(jobs):
        image = _png(stack.client.download(stack.client.inference_image_urls(job["InferenceJobId"])[0]))
        assert image.info["parameters"].startswith(f"job {index}\n")
    assert seen_queued, "with 20 jobs on 2 workers some must have waited in the queue"
    listed = stack.client.list_inference_jobs(limit=1000)
    assert sum(1 for j in listed if j["InferenceJobId"] in ids) == 20
    pages, last_key = [], None  # paging: each page starts after the last id of the previous one
    while True:
        page = stack.client.list_inference_jobs(status="succeed", task_type="txt2img", endpoint=SEED_ENDPOINT,
                                                limit=7, last_key=last_key)
        pages.extend(j["InferenceJobId"] for j in page)
        if len(page) < 7:
            break
        last_key = page[-1]["InferenceJobId"]
    assert len(pages) == len(set(pages)) and set(ids) <= set(pages)
    assert pages == [j["InferenceJobId"] for j in listed if j["status"] == "succeed" and j["taskType"] == "txt2img"]


def test_cancel_queued_and_running_jobs(stack):
    running = [stack.client.create_inference({**LONG_JOB, "seed": s}) for s in range(2)]
    queued = stack.client.create_inference({**LONG_JOB, "seed": 3})
    for job in running:
        wait_until_running(stack.client, job["inference_id"])
    assert stack.client.inference_job(queued["inference_id"])["queue_position"] == 0
    listed = {j["InferenceJobId"]: j["queue_position"] for j in stack.client.list_inference_jobs(limit=10)}
    assert listed[queued["inference_id"]] == 0 and listed[running[0]["inference_id"]] is None
    # a merge cancelled while it waits: its checkpoint will never arrive, so it fails (not Initialed for ever)
    merge = stack.client.run_model_merge({"primary_model_name": SEED_MODEL, "secondary_model_name": SEED_MODEL,
                                          "custom_name": "never-merged"})
    assert stack.client.cancel_inference(merge["inference_id"])["status"] == "cancelled"
    merged = next(c for c in stack.client.list_checkpoints(["Stable-diffusion"]) if c["id"] == merge["checkpoint_id"])
    assert merged["status"] == "Failed"
    unfinished = requests.get(f"{stack.url}/inference/get-inference-job-image-output",
                              params={"jobID": queued["inference_id"]}, headers=HEADERS, timeout=10)
    assert unfinished.status_code == 409 and "inprogress" in unfinished.json()["error"]
    cancelled = stack.client.cancel_inference(queued["inference_id"])
    assert cancelled["status"] == "cancelled"
    for job in running:  # a running job answers at once, cancelling until its worker stops
        asked = time.monotonic()
        result = stack.client.cancel_inference(job["inference_id"])
        assert result["status"] == "cancelling" and time.monotonic() - asked < 1.0, result
        twice = requests.put(f"{stack.url}/inference/v2/{job['inference_id']}/cancel", headers=HEADERS, timeout=10)
        assert twice.status_code == 409 and "already being cancelled" in twice.json()["error"]
    for job in running:
        assert _wait_for_end(stack, job["inference_id"])["status"] == "cancelled"
    again = requests.put(f"{stack.url}/inference/v2/{queued['inference_id']}/cancel", headers=HEADERS, timeout=10)
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    output = requests.get(f"{stack.url}/inference/get-inference-job-image-output",
                          params={"jobID": queued["inference_id"]}, headers=HEADERS, timeout=10)
    assert output.status_code == 409 and "cancelled" in output.json()["error"]
    # The workers are free again.
    _succeed(stack, {**LONG_JOB, "width": 64, "height": 64, "steps": 2})


class _Receiver:
    """A webhook receiver on 127.0.0.1 that records each delivery."""

    def __init__(self):
        self.deliveries: list[tuple[dict, bytes]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()
                receiver.arrived.set()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_webhook_is_signed_and_refused_callbacks_are_recorded(stack):
    receiver = _Receiver()
    try:
        body = {"task_type": "txt2img", "models": {"Stable-diffusion": [SEED_MODEL]}, "width": 64, "height": 64,
                "steps": 2, "prompt": "hook", "callback_url": receiver.url}
        job = _succeed(stack, body)
        assert receiver.arrived.wait(30)
        headers, raw = receiver.deliveries[0]
        secret = stack.webhook_secret()
        assert headers["X-Signature"] == "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
        assert headers["X-Event"] == "inference.succeed"
        assert json.loads(raw)["InferenceJobId"] == job["InferenceJobId"]
    finally:
        receiver.httpd.shutdown()

    closed = f"http://127.0.0.1:{free_port()}/nobody-listens"
    answer = stack.client.create_inference({**body, "callback_url": closed})
    job = stack.client.wait_for_job(answer["inference_id"], timeout_s=300)
    assert job["status"] == "succeed"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        callback = stack.client.inference_job(answer["inference_id"])["callback"]
        if callback and len(callback["attempts"]) >= 4:
            break
        time.sleep(0.5)
    assert callback["delivered"] is False and len(callback["attempts"]) == 4
    assert all("could not deliver" in a["error"] for a in callback["attempts"])


def test_model_merge_becomes_an_active_checkpoint(stack):
    answer = stack.client.run_model_merge({"primary_model_name": SEED_MODEL, "secondary_model_name": SEED_MODEL,
                                           "interp_method": "Weighted sum", "multiplier": 0.5,
                                           "custom_name": "merged-tiny"})
    assert answer["primary_model_name"] == SEED_MODEL and answer["inference_id"]
    job = stack.client.wait_for_job(answer["inference_id"], timeout_s=300)
    assert job["status"] == "succeed", job
    merged = next(c for c in stack.client.list_checkpoints(["Stable-diffusion"]) if c["id"] == answer["checkpoint_id"])
    assert merged["status"] == "Active" and merged["name"] == ["merged-tiny.safetensors"]
    _succeed(stack, {"task_type": "txt2img", "models": {"Stable-diffusion": ["merged-tiny.safetensors"]},
                     "width": 64, "height": 64, "steps": 2, "prompt": "from the merge"})


OFFERED = "<an offered instance type>"


@pytest.mark.parametrize("body, status, words", [
    ({"instance_type": OFFERED, "initial_instance_count": 0}, 400, "from 1 to 6"),
    ({"instance_type": OFFERED, "initial_instance_count": 7}, 400, "from 1 to 6"),
    ({"instance_type": OFFERED, "initial_instance_count": "abc"}, 400, "whole number"),
    ({"instance_type": "ml.p99.huge", "initial_instance_count": 1}, 400, "not offered"),
    ({"instance_type": OFFERED, "initial_instance_count": 1, "endpoint_name": "bad name!"}, 400, "endpoint name"),
    ({"instance_type": OFFERED, "initial_instance_count": 1, "endpoint_name": SEED_ENDPOINT}, 409, "already exists"),
    ({"delete_endpoint_list": ["x"]}, 422, "use DELETE /endpoints"),
    ({"instance_type": OFFERED, "initial_instance_count": 1, "colour": "red"}, 422, "colour"),
])
def test_bad_endpoint_requests(stack, body, status, words):
    if body.get("instance_type") == OFFERED:  # a type this backend offers
        body = {**body, "instance_type": stack.instance_type}
    response = requests.post(f"{stack.url}/endpoints", json=body, headers=HEADERS, timeout=10)
    assert response.status_code == status, response.text
    assert words in response.json()["error"] and response.json()["statusCode"] == status


def _wait_for_end(stack, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = stack.client.inference_job(job_id)
        if job["status"] in ("succeed", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {job}")


BAD_PARAMETERS = [  # (parameters, field named in the error)
    ({"steps": 0}, "steps"),
    ({"sampler_name": "Nope"}, "sampler_name"),
    ({"batch_size": "two"}, "batch_size"),
    ({"batch_size": 10**9}, "batch_size"),
    ({"n_iter": 10**9}, "n_iter"),
    ({"width": 10**6}, "width"),
    ({"cfg_scale": "high"}, "cfg_scale"),
    ({"seed": "abc"}, "seed"),
    ({"prompt": 5}, "prompt"),
    ({"override_settings": "x"}, "override_settings"),
    ({"alwayson_scripts": {"controlnet": {"args": 5}}}, "alwayson_scripts.controlnet"),
    ({"denoising_strength": 2}, "denoising_strength"),
    ({"scheduler": "Sometimes"}, "scheduler"),
    ({"enable_hr": True, "hr_upscaler": "Magic"}, "hr_upscaler"),
]


@pytest.mark.parametrize(("params", "field"), BAD_PARAMETERS, ids=[f for _, f in BAD_PARAMETERS])
def test_bad_parameters_are_refused_at_the_door(stack, params, field):
    before = len(stack.client.list_inference_jobs(limit=1000))
    body = {"task_type": "txt2img", "models": {"Stable-diffusion": [SEED_MODEL]}, "prompt": "x", **params}
    response = requests.post(f"{stack.url}/inference/v2", json=body, headers=HEADERS, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith(field), response.text
    assert len(stack.client.list_inference_jobs(limit=1000)) == before  # no job record was made


@pytest.mark.local_only("the middleware starts the workers only on the local backend (SageMaker runs the image)")
def test_workers_get_no_secrets(stack):
    """Workers run user-supplied models and parameters: the middleware's key and secrets stay out of their
    environment (the stack's middleware has SD_AWS_API_KEY in its own)."""
    pids = worker_pids(stack.data_dir, SEED_ENDPOINT)
    assert pids
    for pid in pids:
        names = {item.split(b"=", 1)[0] for item in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")}
        assert not names & {b"SD_AWS_API_KEY", b"SD_AWS_WEBHOOK_SECRET", b"SD_AWS_HOME"}, names
        assert b"SD_AWS_MODEL_CACHE_DIR" in names and b"HF_HUB_OFFLINE" in names


def test_racing_cancels_have_one_winner(stack):
    jobs = [stack.client.create_inference({**LONG_JOB, "seed": s, "n_iter": 2}) for s in range(3)]  # the third waits
    waiting = jobs[2]["inference_id"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: requests.put(f"{stack.url}/inference/v2/{waiting}/cancel", headers=HEADERS,
                                                       timeout=30).status_code, range(8)))
    assert sorted(answers) == [200] + [409] * 7, answers
    for job in jobs[:2]:
        stack.client.cancel_inference(job["inference_id"])
    for job in jobs:
        assert _wait_for_end(stack, job["inference_id"])["status"] == "cancelled"


def test_bad_inference_requests(stack):
    base = {"task_type": "txt2img", "models": {"Stable-diffusion": [SEED_MODEL]}, "prompt": "x"}
    cases = [
        ({**base, "sagemaker_endpoint_name": "no-such-endpoint"}, 404, "does not exist"),
        ({**base, "models": {"Stable-diffusion": ["missing.safetensors"]}}, 400, "not an Active checkpoint"),
        ({**base, "models": {"Stable-diffusion": [SEED_MODEL, SEED_MODEL]}}, 400, "exactly one Stable-diffusion"),
        ({**base, "models": {"Lora": ["tiny-lora.safetensors"]}}, 400, "exactly one Stable-diffusion"),
        ({**base, "task_type": "upscale"}, 400, "task_type 'upscale' is not supported"),
        ({**base, "prompt": "<lora:not-uploaded:1>"}, 400, "'not-uploaded' is not an Active checkpoint"),
        ({**base, "callback_url": "file:///etc/passwd"}, 400, "callback_url"),
        ({**base, "models": {"Stable-diffusion": [{"name": "x", "sha256": "0" * 64}]}}, 400, "with sha256"),
        ({**base, "sagemaker_endpoint_name": ["a"]}, 400, "sagemaker_endpoint_name"),
        ({**base, "callback_url": ["http://x"]}, 400, "callback_url"),
        ({**base, "run": "no"}, 400, "run must be true or false"),
        ({**base, "models": {"Stable-diffusion": [5]}}, 400, "each entry must be a file name"),
    ]
    before = len(stack.client.list_inference_jobs(limit=1000))
    for body, status, words in cases:
        response = requests.post(f"{stack.url}/inference/v2", json=body, headers=HEADERS, timeout=10)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["error"], (body, response.text)
    assert len(stack.client.list_inference_jobs(limit=1000)) == before  # no half-made job
    unknown = "00000000-0000-4000-8000-000000000000"
    for path in ("get-inference-job", "get-inference-job-image-output", "get-inference-job-param-output"):
        assert requests.get(f"{stack.url}/inference/{path}", params={"jobID": unknown}, headers=HEADERS,
                            timeout=10).status_code == 404
    assert requests.put(f"{stack.url}/inference/v2/{unknown}/cancel", headers=HEADERS, timeout=10).status_code == 404
    train = requests.put(f"{stack.url}/inference/v2/{unknown}/run", json={"train_type": "Lora"}, headers=HEADERS, timeout=10)
    assert train.status_code == 422 and "POST /train" in train.json()["error"]
    assert train.json()["detail"][0]["loc"] == ["body", "train_type"]
    merge = {"primary_model_name": SEED_MODEL, "secondary_model_name": SEED_MODEL}
    for body, field in (({**merge, "nonsense": 1}, "nonsense"), ({"secondary_model_name": SEED_MODEL}, "primary_model_name")):
        refused = requests.post(f"{stack.url}/inference/run-model-merge", json=body, headers=HEADERS, timeout=10)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", field], refused.text
    missing = requests.delete(f"{stack.url}/endpoints", json={"delete_endpoint_list": ["ghost"]}, headers=HEADERS, timeout=10)
    assert missing.status_code == 404
    empty = requests.delete(f"{stack.url}/endpoints", json={"delete_endpoint_list": []}, headers=HEADERS, timeout=10)
    assert empty.status_code == 400 and "empty" in empty.json()["error"]


def test_endpoints_are_listed_a_page_at_a_time(stack, monkeypatch):
    whole = [e["EndpointDeploymentJobId"] for e in stack.client.list_endpoints()]
    assert whole, "the stack deployed its endpoint"
    seen, params = [], {"limit": 1}
    while True:  # as list-inference-jobs: after the last id; a short page is the last
        page = requests.get(f"{stack.url}/endpoints", params=params, headers=HEADERS, timeout=10).json()
        seen += [e["EndpointDeploymentJobId"] for e in page]
        if len(page) < 1:
            break
        params["last_key"] = page[-1]["EndpointDeploymentJobId"]
    assert seen == whole
    monkeypatch.setattr("aws_extension.client.api.LIST_PAGE_MAX", 1)  # the client follows the pages
    assert [e["EndpointDeploymentJobId"] for e in stack.client.list_endpoints()] == whole
    named = stack.client.list_endpoints(endpoint_name=SEED_ENDPOINT)
    assert named and {e["endpoint_name"] for e in named} == {SEED_ENDPOINT}
    assert all(e["status"] == "success" for e in stack.client.list_endpoints(status="success"))
    bad = requests.get(f"{stack.url}/endpoints", params={"last_key": "nope"}, headers=HEADERS, timeout=10)
    assert bad.status_code == 400 and "last_key" in bad.json()["error"]


def test_deleting_an_endpoint_while_it_is_created_ends_its_deployment(stack):
    job = stack.client.deploy_endpoint(stack.instance_type, 1, endpoint_name="short-lived")
    assert stack.client.delete_endpoints(["short-lived"])["results"] == {"short-lived": "deleted"}
    wait_for_endpoint_status(stack.client, "short-lived", "Deleted")
    record = stack.client.endpoint_deployment_job(job["EndpointDeploymentJobId"])
    assert (record["status"], record["endpoint_status"]) == ("failed", "Deleted")
    assert record["error"] == "The endpoint was deleted before it came into service."
    time.sleep(2)  # its start-up, cut short, must not bring it back
    assert stack.client.endpoint_deployment_job(job["EndpointDeploymentJobId"])["endpoint_status"] == "Deleted"
    if stack.backend == "local":
        assert worker_pids(stack.data_dir, "short-lived") == {}


def test_sha256_resolution_and_disabled_models(stack):
    checkpoint = next(c for c in stack.client.list_checkpoints(["Stable-diffusion"]) if c["name"] == [SEED_MODEL])
    by_hash = {"task_type": "txt2img", "width": 64, "height": 64, "steps": 2, "prompt": "by hash",
               "models": {"Stable-diffusion": [{"name": "whatever-local-name.safetensors", "sha256": checkpoint["sha256"]}]}}
    _succeed(stack, by_hash)
    lora = next(c for c in stack.client.list_checkpoints(["Lora"]) if c["name"] == ["tiny-lora.safetensors"])
    stack.client.set_checkpoint_status(lora["id"], "Disabled")
    try:
        response = requests.post(f"{stack.url}/inference/v2", headers=HEADERS, timeout=10, json={
            **by_hash, "models": {"Stable-diffusion": [SEED_MODEL], "Lora": ["tiny-lora.safetensors"]}})
        assert response.status_code == 400 and "tiny-lora.safetensors" in response.json()["error"]
    finally:
        stack.client.set_checkpoint_status(lora["id"], "Active")


def test_cli_endpoint_txt2img_and_jobs(stack, tmp_path):
    env = {**os.environ, "SD_AWS_API_URL": stack.url, "SD_AWS_API_KEY": API_KEY, "PYTHONPATH": str(REPO)}

    def sd_aws(*args):
        return subprocess.run([sys.executable, "-m", "aws_extension", *args], env=env, capture_output=True,
                              text=True, timeout=300, cwd=REPO)

    listed = sd_aws("endpoint", "list")
    assert listed.returncode == 0 and SEED_ENDPOINT in listed.stdout and "InService" in listed.stdout
    made = sd_aws("txt2img", "a lighthouse", "--endpoint", SEED_ENDPOINT, "--model", SEED_MODEL, "--width", "64",
                  "--height", "64", "--steps", "3", "--out", str(tmp_path))
    assert made.returncode == 0, made.stderr
    png = tmp_path / made.stdout.strip().splitlines()[0].rsplit("/", 1)[-1]
    assert _png(png.read_bytes()).info["parameters"].startswith("a lighthouse")
    assert "generate" in made.stderr and "100%" in made.stderr
    job_id = png.name.rsplit("-", 1)[0]
    shown = sd_aws("job", "show", job_id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "succeed"
    assert job_id in sd_aws("job", "list").stdout
    cancel = sd_aws("job", "cancel", job_id)
    assert cancel.returncode == 1 and "already succeed" in cancel.stderr


@pytest.mark.local_only("it kills a worker process of the middleware; SageMaker replaces its own instances")
def test_killed_worker_job_is_retried_and_endpoint_heals(stack):
    """Last in this module: it kills a worker of the shared endpoint."""
    assert worker_gpus(stack.data_dir, SEED_ENDPOINT) == list(STACK_GPUS)  # one GPU each
    job = stack.client.create_inference({**LONG_JOB, "width": 256, "height": 256, "steps": 60, "seed": 5})
    wait_until_running(stack.client, job["inference_id"])
    os.kill(worker_running(stack.data_dir, SEED_ENDPOINT, job["inference_id"]), signal.SIGKILL)
    final = stack.client.wait_for_job(job["inference_id"], timeout_s=600)
    assert final["status"] == "succeed" and final["attempts"] == 2, final
    deadline = time.monotonic() + 120
    while len(worker_pids(stack.data_dir, SEED_ENDPOINT)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(worker_pids(stack.data_dir, SEED_ENDPOINT)) == 2
    endpoint = stack.client.list_endpoints(endpoint_name=SEED_ENDPOINT)[0]
    assert endpoint["endpoint_status"] == "InService" and endpoint["current_instance_count"] == 2
    assert worker_gpus(stack.data_dir, SEED_ENDPOINT) == list(STACK_GPUS)  # the restart took the freed GPU
    # Both instances take jobs again (one of them is the restarted process).
    jobs = [stack.client.create_inference({**LONG_JOB, "width": 64, "height": 64, "steps": 2, "seed": s})
            for s in range(4)]
    assert all(stack.client.wait_for_job(j["inference_id"], 300)["status"] == "succeed" for j in jobs)
