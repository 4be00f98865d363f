"""A real `sd-aws worker` process (diffusers engine, tiny model): /ping, /sdapi/v1, /invocations."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import webuiapi
from PIL import Image

from aws_extension.wire import InvocationAnswer
from tests.worker.helpers import FileServer, WorkerProcess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a", "seed": 7, "cfg_scale": 5}
# Enough sampling steps that the job is still running when the test interrupts it.
LONG = {**SMALL, "steps": 150, "n_iter": 20}


@pytest.fixture(scope="module")
def models_dir(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny models folder, so this module's worker may add files and a cache to it."""
    copy = tmp_path_factory.mktemp("worker-api") / "models"
    shutil.copytree(tiny_models_dir, copy)
    return copy


@pytest.fixture(scope="module")
def worker(models_dir: Path) -> Iterator[tuple[WorkerProcess, list[int]]]:
    process = WorkerProcess(models_dir, models_dir.parent / "worker.log")
    try:
        statuses = process.ping_statuses_until_healthy()
        yield process, statuses
    finally:
        process.stop()


@pytest.fixture
def url(worker: tuple[WorkerProcess, list[int]]) -> str:
    return worker[0].url


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_entry(file_server: FileServer, model_type: str, name: str, data: bytes,
                sha256: str | None = None) -> dict[str, str]:
    url = file_server.serve(f"/models/{sha256_of(data)}/{name}", data)
    return {"type": model_type, "name": name, "sha256": sha256 or sha256_of(data), "url": url}


def decode_png(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    assert data.startswith(PNG_MAGIC)
    return Image.open(io.BytesIO(data))


def assert_healthy_and_generating(url: str) -> None:
    """After a refused job the worker still answers /ping and still runs the next job."""
    assert requests.get(f"{url}/ping", timeout=5).json() == {"status": "Healthy"}
    answer = requests.post(f"{url}/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat"}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["images"]) == 1


def test_ping_answers_503_while_starting_then_200(worker: tuple[WorkerProcess, list[int]]):
    process, statuses = worker
    assert statuses[0] == 503 and statuses[-1] == 200
    assert requests.get(f"{process.url}/ping", timeout=5).json() == {"status": "Healthy"}


def test_model_lists_and_options(url: str, models_dir: Path):
    models = requests.get(f"{url}/sdapi/v1/sd-models", timeout=10).json()
    assert [m["title"] for m in models] == ["tiny-sd.safetensors"]
    assert models[0]["model_name"] == "tiny-sd"
    assert [lora["name"] for lora in requests.get(f"{url}/sdapi/v1/loras", timeout=10).json()] == ["tiny-lora"]
    assert list(requests.get(f"{url}/sdapi/v1/embeddings", timeout=10).json()["loaded"]) == ["tiny-emb"]
    samplers = [s["name"] for s in requests.get(f"{url}/sdapi/v1/samplers", timeout=10).json()]
    assert "Euler a" in samplers and "DPM++ 2M Karras" in samplers
    # The first checkpoint found is selected at start, as the WebUI does.
    assert requests.get(f"{url}/sdapi/v1/options", timeout=10).json()["sd_model_checkpoint"] == "tiny-sd.safetensors"

    shutil.copyfile(models_dir / "Stable-diffusion" / "tiny-sd.safetensors",
                    models_dir / "Stable-diffusion" / "another.safetensors")
    titles = [m["title"] for m in requests.get(f"{url}/sdapi/v1/sd-models", timeout=10).json()]
    assert "another.safetensors" not in titles  # not before the refresh, as in the WebUI
    assert requests.post(f"{url}/sdapi/v1/refresh-checkpoints", timeout=10).status_code == 200
    titles = [m["title"] for m in requests.get(f"{url}/sdapi/v1/sd-models", timeout=10).json()]
    assert titles == ["another.safetensors", "tiny-sd.safetensors"]

    assert requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "another"}, timeout=10).ok
    assert requests.get(f"{url}/sdapi/v1/options", timeout=10).json()["sd_model_checkpoint"] == "another.safetensors"
    refused = requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "missing.ckpt"}, timeout=10)
    assert refused.status_code == 400 and "missing.ckpt" in refused.json()["detail"]
    assert requests.post(f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd.safetensors [0123abcd]"},
                         timeout=10).ok


def test_txt2img_and_img2img_through_sdapi(url: str):
    answer = requests.post(f"{url}/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat <lora:tiny-lora:0.5>"},
                           timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    image = decode_png(body["images"][0])
    assert image.size == (64, 64)
    assert json.loads(body["info"])["seed"] == 7
    again = requests.post(f"{url}/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat <lora:tiny-lora:0.5>"},
                          timeout=120).json()
    assert again["images"] == body["images"]  # same seed, same image

    answer = requests.post(f"{url}/sdapi/v1/img2img", json={**SMALL, "prompt": "a dog", "denoising_strength": 0.6,
                                                            "init_images": [body["images"][0]]}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert decode_png(answer.json()["images"][0]).size == (64, 64)


def test_webuiapi_client_generates_through_the_worker(worker: tuple[WorkerProcess, list[int]]):
    api = webuiapi.WebUIApi(host="127.0.0.1", port=worker[0].port)
    result = api.txt2img(prompt="a lighthouse", negative_prompt="blurry", width=64, height=64, steps=2,
                         seed=11, cfg_scale=6, sampler_name="Euler a",
                         # webuiapi's default is A1111's internal name "automatic", which the engine
                         # does not accept yet (reported); the label is what the WebUI's own UI sends.
                         scheduler="Automatic")
    assert result.image.size == (64, 64)
    assert result.info["seed"] == 11
    assert "a lighthouse" in result.info["infotexts"][0]
    assert "tiny-sd.safetensors" in [m["title"] for m in api.get_sd_models()]


def test_bad_sdapi_input_gives_clear_errors_and_the_worker_stays_healthy(url: str):
    answer = requests.post(f"{url}/sdapi/v1/img2img", json={**SMALL, "prompt": "x", "init_images": ["not base64!!"]},
                           timeout=60)
    assert answer.status_code == 400
    assert "init_images" in answer.json()["detail"]
    answer = requests.post(f"{url}/sdapi/v1/txt2img", json={**SMALL, "prompt": "x <lora:no-such-lora:1>"},
                           timeout=60)
    assert answer.status_code == 400
    assert "no-such-lora" in answer.json()["detail"]
    assert_healthy_and_generating(url)


def wait_for_sampling(url: str) -> dict[str, Any]:
    """The first /progress report that shows sampling steps done."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        report = requests.get(f"{url}/sdapi/v1/progress", timeout=5).json()
        if report["state"]["sampling_step"] > 0:
            return report
        time.sleep(0.05)
    raise AssertionError("the job reported no sampling step")


def run_in_thread(call: Any) -> tuple[threading.Thread, list[requests.Response]]:
    answers: list[requests.Response] = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    return thread, answers


def test_progress_and_interrupt_through_sdapi(url: str):
    thread, answers = run_in_thread(
        lambda: requests.post(f"{url}/sdapi/v1/txt2img", json={**LONG, "prompt": "slow"}, timeout=300))
    report = wait_for_sampling(url)
    assert 0 < report["progress"] < 1 and report["eta_relative"] > 0
    assert report["state"]["sampling_steps"] > report["state"]["sampling_step"]
    assert requests.get(f"{url}/ping", timeout=2).status_code == 200  # answers while the job runs
    assert requests.post(f"{url}/sdapi/v1/interrupt", timeout=5).json() == {"interrupted": True}
    thread.join(timeout=120)
    assert answers[0].status_code == 409
    assert requests.get(f"{url}/sdapi/v1/progress", timeout=5).json()["state"]["job"] == ""
    assert_healthy_and_generating(url)


def test_invocation_txt2img_uploads_pngs_and_reuses_the_cached_model(url: str, tiny_models_dir: Path,
                                                                     file_server: FileServer):
    checkpoint = (tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors").read_bytes()
    lora = (tiny_models_dir / "Lora" / "tiny-lora.safetensors").read_bytes()
    models = [model_entry(file_server, "Stable-diffusion", "fetched-sd.safetensors", checkpoint),
              model_entry(file_server, "Lora", "fetched-lora.safetensors", lora)]
    params_url = file_server.serve("/jobs/j1/params.json", json.dumps(
        {**SMALL, "batch_size": 2, "prompt": "a cat <lora:fetched-lora:0.7>"}).encode())
    request = {
        "task": "txt2img", "job_id": "j1", "models": models, "params_url": params_url,
        "output": {"image_urls": [f"{file_server.url}/out/j1/{i}.png" for i in range(2)]},
    }
    answer = requests.post(f"{url}/invocations", json=request, timeout=300)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "succeed" and body["job_id"] == "j1"
    assert body["images"] == [] and body["image_count"] == 2
    assert set(body["timings"]) == {"load_s", "run_s", "upload_s"}
    for i in range(2):
        png = file_server.uploads[f"/out/j1/{i}.png"]
        assert Image.open(io.BytesIO(png)).size == (64, 64) and png.startswith(PNG_MAGIC)
    # Only the PNGs are uploaded: the middleware writes <id>_param.json from the answer's parameters and info.
    assert sorted(p for p in file_server.uploads if p.startswith("/out/j1/")) == ["/out/j1/0.png", "/out/j1/1.png"]
    parsed = InvocationAnswer.from_json(body)
    assert json.loads(parsed.info)["seed"] == 7 and "fetched-sd" in json.loads(parsed.info)["infotexts"][0]
    assert parsed.parameters["prompt"] == "a cat <lora:fetched-lora:0.7>" and parsed.parameters["batch_size"] == 2

    # The same models again: served from the cache, not downloaded again; images come back inline.
    request = {"task": "txt2img", "job_id": "j2", "models": models, "params": {**SMALL, "prompt": "a cat"}}
    answer = requests.post(f"{url}/invocations", json=request, timeout=300)
    assert answer.status_code == 200, answer.text
    assert decode_png(answer.json()["images"][0]).size == (64, 64)
    assert [file_server.gets[urlpath(m["url"], file_server)] for m in models] == [1, 1]


def urlpath(url: str, file_server: FileServer) -> str:
    return url.removeprefix(file_server.url)


def test_invocation_img2img_with_inline_images(url: str):
    txt = requests.post(f"{url}/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat"}, timeout=120).json()
    request = {"task": "img2img", "params": {**SMALL, "prompt": "a cat", "init_images": txt["images"],
                                            "denoising_strength": 0.5}}
    answer = requests.post(f"{url}/invocations", json=request, timeout=300)
    assert answer.status_code == 200, answer.text
    assert decode_png(answer.json()["images"][0]).size == (64, 64)
    assert answer.json()["job_id"]  # generated when the request has none


def test_invocation_bad_input_gives_clear_errors_and_the_worker_stays_healthy(url: str, tiny_models_dir: Path,
                                                                               file_server: FileServer):
    checkpoint = (tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors").read_bytes()
    lora = (tiny_models_dir / "Lora" / "tiny-lora.safetensors").read_bytes()
    params = {**SMALL, "prompt": "a cat"}

    def invoke(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        answer = requests.post(f"{url}/invocations", json={"job_id": "bad", "params": params, **request},
                               timeout=120)
        return answer.status_code, answer.json()

    wrong_hash = model_entry(file_server, "Stable-diffusion", "wrong.safetensors", checkpoint, sha256="ab" * 32)
    missing = {"type": "Stable-diffusion", "name": "gone.safetensors", "sha256": "cd" * 32,
               "url": f"{file_server.url}/no/such/file"}
    html = b"<html><body>Access denied</body></html>"
    cases = [
        ({"task": "txt2img", "models": [wrong_hash]}, 400, "sha256"),
        ({"task": "txt2img", "models": [missing]}, 400, "HTTP 404"),
        ({"task": "txt2img", "models": [model_entry(file_server, "Stable-diffusion", "page.safetensors", html)]},
         400, "not a valid safetensors file"),
        ({"task": "txt2img", "models": [model_entry(file_server, "Stable-diffusion", "lora.safetensors", lora)]},
         400, "it is a lora"),  # refused by the worker when downloaded, by the engine when cached
        ({"task": "upscale"}, 400, "Unknown task 'upscale'"),
        ({"task": "img2img", "params": {**params, "init_images": ["%%%not-base64"]}}, 400, "init_images"),
        ({"task": "txt2img", "params": {**params, "prompt": "<lora:not-provided:1>"}}, 400, "not-provided"),
        ({"task": "txt2img", "params": None, "params_url": "ftp://x/params.json"}, 400, "params_url"),
    ]
    for request, status, reason in cases:
        got_status, body = invoke(request)
        assert (got_status, body["status"], body["job_id"]) == (status, "failed", "bad"), (request, body)
        assert reason in body["error"], (request, body)
    answer = requests.post(f"{url}/invocations", data=b"{not json", timeout=10)
    assert answer.status_code == 400 and "not JSON" in answer.json()["error"]
    good = model_entry(file_server, "Stable-diffusion", "good.safetensors", checkpoint)
    assert invoke({"task": "txt2img", "models": [good]})[0] == 200
    assert_healthy_and_generating(url)


def test_invocation_interrupt_by_job_id(url: str):
    thread, answers = run_in_thread(lambda: requests.post(
        f"{url}/invocations", json={"task": "txt2img", "job_id": "long-1", "params": {**LONG, "prompt": "slow"}},
        timeout=300))
    report = wait_for_sampling(url)
    assert report["state"]["job_id"] == "long-1"
    assert requests.post(f"{url}/sdapi/v1/interrupt", params={"job_id": "other"}, timeout=5).json() == {
        "interrupted": False}
    assert requests.post(f"{url}/sdapi/v1/interrupt", params={"job_id": "long-1"}, timeout=5).json() == {
        "interrupted": True}
    thread.join(timeout=120)
    assert answers[0].status_code == 409
    body = answers[0].json()
    assert (body["status"], body["job_id"], body["error"]) == ("cancelled", "long-1", "The job was interrupted.")
    assert (body["images"], body["image_count"], "sha256" in body) == ([], 0, False)
    assert_healthy_and_generating(url)


def test_invocation_merge_checkpoint_uploads_a_loadable_model(url: str, tiny_models_dir: Path,
                                                              file_server: FileServer, tmp_path: Path):
    from safetensors.numpy import load_file, save_file

    primary_path = tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors"
    primary_tensors = load_file(primary_path)
    doubled = {k: v * 2 if v.dtype.kind == "f" else v for k, v in primary_tensors.items()}
    save_file(doubled, tmp_path / "doubled.safetensors", metadata={"sd_aws_arch": "sd1-tiny"})
    models = [model_entry(file_server, "Stable-diffusion", "a.safetensors", primary_path.read_bytes()),
              model_entry(file_server, "Stable-diffusion", "b.safetensors",
                          (tmp_path / "doubled.safetensors").read_bytes())]
    request = {"task": "merge-checkpoint", "job_id": "m1", "models": models,
               "params": {"primary_model_name": "a.safetensors", "secondary_model_name": "b.safetensors",
                          "interp_method": "Weighted sum", "multiplier": 0.5, "save_as_half": False},
               "output": {"model_url": f"{file_server.url}/out/m1/merged.safetensors"}}
    answer = requests.post(f"{url}/invocations", json=request, timeout=300)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    merged_bytes = file_server.uploads["/out/m1/merged.safetensors"]
    assert body["status"] == "succeed" and body["size"] == len(merged_bytes)
    assert body["sha256"] == sha256_of(merged_bytes)
    (tmp_path / "merged.safetensors").write_bytes(merged_bytes)
    merged = load_file(tmp_path / "merged.safetensors")
    key = next(k for k, v in primary_tensors.items() if v.dtype.kind == "f" and v.size > 1)
    assert (abs(merged[key] - 1.5 * primary_tensors[key]) < 1e-5).all()

    # The merged model loads and generates.
    use = {"task": "txt2img", "models": [model_entry(file_server, "Stable-diffusion", "merged.safetensors",
                                                     merged_bytes)], "params": {**SMALL, "prompt": "a cat"}}
    answer = requests.post(f"{url}/invocations", json=use, timeout=300)
    assert answer.status_code == 200, answer.text

    missing_third = {**request, "params": {**request["params"], "interp_method": "Add difference"}}
    answer = requests.post(f"{url}/invocations", json=missing_third, timeout=60)
    assert answer.status_code == 400 and "tertiary_model_name" in answer.json()["error"]


def test_invocation_interrupted_while_its_model_downloads(url: str, tiny_models_dir: Path, file_server: FileServer):
    vae = (tiny_models_dir / "VAE" / "tiny-vae.safetensors").read_bytes()
    model = model_entry(file_server, "VAE", "slow-vae.safetensors", vae)
    file_server.get_delay_s = 1.0
    try:
        thread, answers = run_in_thread(lambda: requests.post(f"{url}/invocations", json={
            "task": "txt2img", "job_id": "early", "models": [model], "params": {**SMALL, "prompt": "x"}}, timeout=120))
        while not file_server.gets[urlpath(model["url"], file_server)]:
            time.sleep(0.02)
        assert requests.post(f"{url}/sdapi/v1/interrupt", params={"job_id": "early"}, timeout=5).json() == {
            "interrupted": True}
        thread.join(timeout=120)
    finally:
        file_server.get_delay_s = 0.0
    assert answers[0].status_code == 409 and answers[0].json()["status"] == "cancelled"
    assert requests.post(f"{url}/sdapi/v1/interrupt", params={"job_id": "early"}, timeout=5).json() == {
        "interrupted": False}
    assert_healthy_and_generating(url)


def test_a_worker_asked_for_a_missing_gpu_fails_its_ping_with_the_reason(models_dir: Path, tmp_path: Path):
    process = WorkerProcess(models_dir, tmp_path / "worker.log", env={"SD_AWS_DEVICE": "cuda"})
    try:
        process.first_ping_status()
        deadline = time.monotonic() + 120
        answer = requests.get(f"{process.url}/ping", timeout=5)
        while answer.json()["status"] == "Starting" and time.monotonic() < deadline:
            time.sleep(0.2)
            answer = requests.get(f"{process.url}/ping", timeout=5)
        assert answer.status_code == 503
        assert answer.json() == {"status": "Failed", "error": "The diffusers engine failed to start: EngineError: "
                                 "SD_AWS_DEVICE='cuda', but torch sees no CUDA GPU here"}
    finally:
        process.stop()
