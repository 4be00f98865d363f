"""The webui engine: worker #2 (`--engine webui`) forwards to worker #1 (diffusers), which speaks the WebUI API."""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.worker.helpers import FileServer, WorkerProcess, free_port

SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a", "seed": 21, "cfg_scale": 5}


@pytest.fixture(scope="module")
def workers(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess,
                                                                                                  WorkerProcess]]:
    root = tmp_path_factory.mktemp("webui-engine")
    # The "WebUI" (worker #1) has the checkpoint only; the LoRA reaches it through worker #2's placement.
    webui_models = root / "webui-models"
    (webui_models / "Stable-diffusion").mkdir(parents=True)
    shutil.copyfile(tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors",
                    webui_models / "Stable-diffusion" / "tiny-sd.safetensors")
    forwarder_models = root / "forwarder-models"
    (forwarder_models / "Stable-diffusion").mkdir(parents=True)
    shutil.copyfile(tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors",
                    forwarder_models / "Stable-diffusion" / "tiny-sd.safetensors")
    webui_port = free_port()
    forwarder = WorkerProcess(forwarder_models, root / "forwarder.log", "--engine", "webui",
                              "--webui-url", f"http://127.0.0.1:{webui_port}",
                              env={"SD_AWS_WEBUI_MODELS_DIR": str(webui_models)})
    webui: WorkerProcess | None = None
    try:
        # The forwarder is up before its WebUI exists: it must say 503 until the WebUI takes jobs.
        assert forwarder.first_ping_status() == 503
        webui = WorkerProcess(webui_models, root / "webui.log", port=webui_port)
        webui.ping_statuses_until_healthy()
        forwarder.ping_statuses_until_healthy()
        yield webui, forwarder
    finally:
        forwarder.stop()
        if webui is not None:
            webui.stop()


def test_sdapi_jobs_through_the_forwarder_equal_the_webui_own(workers: tuple[WorkerProcess, WorkerProcess]):
    webui, forwarder = workers
    payload = {**SMALL, "prompt": "a red house"}
    forwarded = requests.post(f"{forwarder.url}/sdapi/v1/txt2img", json=payload, timeout=120)
    assert forwarded.status_code == 200, forwarded.text
    direct = requests.post(f"{webui.url}/sdapi/v1/txt2img", json=payload, timeout=120).json()
    assert forwarded.json()["images"] == direct["images"]
    assert Image.open(io.BytesIO(base64.b64decode(direct["images"][0]))).size == (64, 64)
    img2img = {**payload, "init_images": direct["images"], "denoising_strength": 0.5}
    forwarded = requests.post(f"{forwarder.url}/sdapi/v1/img2img", json=img2img, timeout=120)
    assert forwarded.status_code == 200, forwarded.text
    assert forwarded.json()["images"] == requests.post(f"{webui.url}/sdapi/v1/img2img", json=img2img,
                                                       timeout=120).json()["images"]
    assert [s["name"] for s in requests.get(f"{forwarder.url}/sdapi/v1/samplers", timeout=10).json()] == [
        s["name"] for s in requests.get(f"{webui.url}/sdapi/v1/samplers", timeout=10).json()]


def test_invocation_places_models_in_the_webui_and_selects_the_checkpoint(
        workers: tuple[WorkerProcess, WorkerProcess], tiny_models_dir: Path, file_server: FileServer):
    webui, forwarder = workers
    checkpoint = (tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors").read_bytes()
    lora = (tiny_models_dir / "Lora" / "tiny-lora.safetensors").read_bytes()
    models = []
    for model_type, name, data in (("Stable-diffusion", "placed-sd.safetensors", checkpoint),
                                   ("Lora", "placed-lora.safetensors", lora)):
        sha256 = hashlib.sha256(data).hexdigest()
        models.append({"type": model_type, "name": name, "sha256": sha256,
                       "url": file_server.serve(f"/webui/{name}", data)})
    params = {**SMALL, "prompt": "a red house <lora:placed-lora:0.8>"}
    answer = requests.post(f"{forwarder.url}/invocations",
                           json={"task": "txt2img", "job_id": "w1", "models": models, "params": params}, timeout=300)
    assert answer.status_code == 200, answer.text
    assert requests.get(f"{webui.url}/sdapi/v1/options", timeout=10).json()["sd_model_checkpoint"] == (
        "placed-sd.safetensors")
    assert "placed-lora" in [lora["name"] for lora in requests.get(f"{webui.url}/sdapi/v1/loras", timeout=10).json()]
    direct = requests.post(f"{webui.url}/sdapi/v1/txt2img", json=params, timeout=120).json()
    assert answer.json()["images"] == direct["images"]

    # A LoRA neither side has: the WebUI's refusal comes back as a clear error, and both stay healthy.
    answer = requests.post(f"{forwarder.url}/invocations", json={
        "task": "txt2img", "job_id": "w2", "models": models[:1],
        "params": {**SMALL, "prompt": "<lora:nowhere:1>"}}, timeout=120)
    assert answer.status_code == 400 and "nowhere" in answer.json()["error"]
    assert requests.get(f"{forwarder.url}/ping", timeout=5).status_code == 200


def test_progress_and_interrupt_are_forwarded(workers: tuple[WorkerProcess, WorkerProcess]):
    _, forwarder = workers
    answers: list[requests.Response] = []
    job = threading.Thread(target=lambda: answers.append(requests.post(
        f"{forwarder.url}/sdapi/v1/txt2img", json={**SMALL, "steps": 150, "n_iter": 20, "prompt": "slow"},
        timeout=300)))
    job.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = requests.get(f"{forwarder.url}/sdapi/v1/progress", timeout=5).json()["state"]
        if state["sampling_step"] > 0:
            break
        time.sleep(0.1)
    assert 0 < state["sampling_step"] < state["sampling_steps"]
    assert requests.post(f"{forwarder.url}/sdapi/v1/interrupt", timeout=5).json() == {"interrupted": True}
    job.join(timeout=120)
    assert answers[0].status_code == 409
    assert requests.post(f"{forwarder.url}/sdapi/v1/txt2img", json={**SMALL, "prompt": "after"},
                         timeout=120).status_code == 200
