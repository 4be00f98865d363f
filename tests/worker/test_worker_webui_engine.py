"""The webui engine: worker #2 (`--engine webui`) forwards to a WebUI stand-in with A1111's folders, flags and
lists (tests.worker.helpers.A1111StandIn), which generates with worker #1 (diffusers)."""

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

from tests.worker.helpers import A1111StandIn, FileServer, WorkerProcess, free_port

SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a", "seed": 21, "cfg_scale": 5}


@pytest.fixture(scope="module")
def workers(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[A1111StandIn,
                                                                                                  WorkerProcess]]:
    root = tmp_path_factory.mktemp("webui-engine")
    # The "WebUI" (A1111's layout and lists, generating with a real worker) has the checkpoint only, and its
    # embeddings in a folder of its own (--embeddings-dir); the rest reaches it through worker #2's placement.
    webui_root = root / "webui"
    forwarder_models = root / "forwarder-models"
    (forwarder_models / "Stable-diffusion").mkdir(parents=True)
    shutil.copyfile(tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors",
                    forwarder_models / "Stable-diffusion" / "tiny-sd.safetensors")
    webui_port = free_port()
    forwarder = WorkerProcess(forwarder_models, root / "forwarder.log", "--engine", "webui",
                              "--webui-url", f"http://127.0.0.1:{webui_port}",
                              env={"SD_AWS_WEBUI_MODELS_DIR": str(webui_root / "models")})
    backend: WorkerProcess | None = None
    webui: A1111StandIn | None = None
    try:
        # The forwarder is up before its WebUI exists: it must say 503 until the WebUI takes jobs.
        assert forwarder.first_ping_status() == 503
        (webui_root / "models" / "Stable-diffusion").mkdir(parents=True)
        shutil.copyfile(tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors",
                        webui_root / "models" / "Stable-diffusion" / "tiny-sd.safetensors")
        backend_port = free_port()
        webui = A1111StandIn(webui_root, f"http://127.0.0.1:{backend_port}", webui_port,
                             flags={"embeddings_dir": str(webui_root / "my-embeddings")})
        backend = WorkerProcess(webui.backend_models_dir(), root / "webui.log", port=backend_port)
        backend.ping_statuses_until_healthy()
        forwarder.ping_statuses_until_healthy()
        yield webui, forwarder
    finally:
        forwarder.stop()
        if backend is not None:
            backend.stop()
        if webui is not None:
            webui.close()


def test_sdapi_jobs_through_the_forwarder_equal_the_webui_own(workers: tuple[A1111StandIn, WorkerProcess]):
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
        workers: tuple[A1111StandIn, WorkerProcess], tiny_models_dir: Path, file_server: FileServer):
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


def test_progress_and_interrupt_are_forwarded(workers: tuple[A1111StandIn, WorkerProcess]):
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


def _model(file_server: FileServer, model_type: str, name: str, data: bytes) -> dict[str, str]:
    return {"type": model_type, "name": name, "sha256": hashlib.sha256(data).hexdigest(),
            "url": file_server.serve(f"/webui/{model_type}/{name}", data)}


def test_embeddings_go_where_the_webui_looks_and_one_it_skips_fails_the_job(
        workers: tuple[A1111StandIn, WorkerProcess], tiny_models_dir: Path, file_server: FileServer):
    webui, forwarder = workers
    checkpoint = (tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors").read_bytes()
    embedding = (tiny_models_dir / "embeddings" / "tiny-emb.safetensors").read_bytes()
    models = [_model(file_server, "Stable-diffusion", "tiny-sd.safetensors", checkpoint),
              _model(file_server, "embeddings", "placed-emb.safetensors", embedding)]
    params = {**SMALL, "prompt": "a red house placed-emb"}
    without = requests.post(f"{webui.url}/sdapi/v1/txt2img", json=params, timeout=120).json()["images"]
    answer = requests.post(f"{forwarder.url}/invocations",
                           json={"task": "txt2img", "job_id": "e1", "models": models, "params": params}, timeout=300)
    assert answer.status_code == 200, answer.text
    # In the WebUI's --embeddings-dir (not in models/embeddings), listed as loaded, and used by the job.
    assert (webui.root / "my-embeddings" / "placed-emb.safetensors").read_bytes() == embedding
    assert not (webui.root / "models" / "embeddings").exists()
    listed = requests.get(f"{webui.url}/sdapi/v1/embeddings", timeout=10).json()
    assert "placed-emb" in listed["loaded"] and listed["skipped"] == {}
    assert answer.json()["images"] == requests.post(f"{webui.url}/sdapi/v1/txt2img", json=params,
                                                    timeout=120).json()["images"] != without

    # An SD 1.5 embedding (768 wide) on the tiny model: A1111 skips it, so the job fails saying so.
    import torch
    from safetensors.torch import save

    wide = save({"emb_params": torch.ones(1, 768)})
    answer = requests.post(f"{forwarder.url}/invocations", json={
        "task": "txt2img", "job_id": "e2", "params": {**SMALL, "prompt": "a wide-emb house"},
        "models": [models[0], _model(file_server, "embeddings", "wide-emb.safetensors", wide)]}, timeout=120)
    assert answer.status_code == 400, answer.text
    assert "skipped embedding wide-emb.safetensors" in answer.json()["error"]
    assert "wide-emb" in requests.get(f"{webui.url}/sdapi/v1/embeddings", timeout=10).json()["skipped"]
    assert requests.get(f"{forwarder.url}/ping", timeout=5).status_code == 200


def test_webui_folders_follow_a1111_flags_and_defaults():
    from aws_extension.worker.webui_engine import webui_folders

    defaults = webui_folders({"data_dir": "/w", "models_dir": None, "ckpt_dir": None, "vae_dir": None,
                              "embeddings_dir": "/w/embeddings", "hypernetwork_dir": "/w/models/hypernetworks",
                              "lora_dir": "/w/models/Lora", "controlnet_dir": None})
    assert {t: str(p) for t, p in defaults.items()} == {
        "Stable-diffusion": "/w/models/Stable-diffusion", "Lora": "/w/models/Lora", "embeddings": "/w/embeddings",
        "hypernetworks": "/w/models/hypernetworks", "ControlNet": "/w/models/ControlNet", "VAE": "/w/models/VAE"}
    moved = webui_folders({"data_dir": "/w", "models_dir": "/m", "ckpt_dir": "/ckpt", "controlnet_dir": "/cn"})
    assert (str(moved["Stable-diffusion"]), str(moved["VAE"]), str(moved["ControlNet"]), str(moved["embeddings"])) == (
        "/ckpt", "/m/VAE", "/cn", "/w/embeddings")


def test_a_file_the_webui_does_not_list_fails_the_job_with_the_reason(
        workers: tuple[A1111StandIn, WorkerProcess], tiny_models_dir: Path, file_server: FileServer):
    # A1111 has no API route to rescan hypernetworks: one placed while it runs stays unknown to it.
    webui, forwarder = workers
    checkpoint = (tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors").read_bytes()
    hypernetwork = (tiny_models_dir / "Lora" / "tiny-lora.safetensors").read_bytes()  # any readable file
    answer = requests.post(f"{forwarder.url}/invocations", json={
        "task": "txt2img", "job_id": "h1", "params": {**SMALL, "prompt": "a house <hypernet:late-hn:1>"},
        "models": [_model(file_server, "Stable-diffusion", "tiny-sd.safetensors", checkpoint),
                   _model(file_server, "hypernetworks", "late-hn.safetensors", hypernetwork)]}, timeout=120)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "does not list hypernetworks/late-hn.safetensors" in error and "my-embeddings" not in error
    assert (webui.root / "models" / "hypernetworks" / "late-hn.safetensors").exists()  # placed where it looks


def test_a_field_the_webui_api_lacks_is_refused_before_the_webui_runs(workers: tuple[A1111StandIn, WorkerProcess]):
    _, forwarder = workers
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(png, format="PNG")
    image = base64.b64encode(png.getvalue()).decode()
    params = {**SMALL, "init_images": [image], "mask": image, "latent_mask": image}
    answer = requests.post(f"{forwarder.url}/invocations",
                           json={"task": "img2img", "job_id": "w-latent", "models": [], "params": params}, timeout=120)
    assert answer.status_code == 400 and "latent_mask" in answer.json()["error"], answer.text
    assert "built-in engine" in answer.json()["error"]
