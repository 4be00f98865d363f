"""`sd-aws sagemaker serve`: the image's `serve` entry point under SageMaker's contract, root in a temp dir."""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys
import time

import requests
from PIL import Image

from aws_extension.worker.sagemaker import DEFAULT_PORT, largest_volume, models_dir_for, serve_port
from tests.conftest import TINY_CHECKPOINT_NAME
from tests.helpers import process_pids
from tests.worker.helpers import WorkerProcess, free_port

SERVE = ("sagemaker", "serve", "--host", "127.0.0.1")


def test_serve_runs_the_model_sagemaker_unpacked_and_answers_async_request_objects(tmp_path, tiny_models_dir,
                                                                                   file_server):
    root = tmp_path / "opt-ml"
    (root / "model").mkdir(parents=True)
    shutil.copy(tiny_models_dir / "Stable-diffusion" / TINY_CHECKPOINT_NAME, root / "model" / "model.safetensors")
    worker = WorkerProcess(None, tmp_path / "serve.log", command=SERVE, env={
        "SD_AWS_SAGEMAKER_ROOT": str(root), "SD_AWS_MODEL_CACHE_DIR": str(tmp_path / "volume")})
    url = worker.url
    try:
        statuses = worker.ping_statuses_until_healthy()
        assert statuses[0] == 503 and statuses[-1] == 200  # answers at once, healthy only when it can work
        # The request object the AWS backend writes for an asynchronous endpoint: everything inline, no
        # model named (the endpoint's own model), images PUT to presigned URLs.
        request = {"task": "txt2img", "job_id": "async-1", "models": [],
                   "params": {"prompt": "a panda", "width": 64, "height": 64, "steps": 3, "seed": 7, "batch_size": 2},
                   "output": {"image_urls": [f"{file_server.url}/out/async-1/image_{i}.png" for i in range(2)]}}
        answer = requests.post(url + "/invocations", json=request, timeout=300)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "succeed" and body["image_count"] == 2 and body["images"] == []
        assert len(answer.content) < 4096  # small: SageMaker writes it to the output location
        for i in range(2):
            image = Image.open(io.BytesIO(file_server.uploads[f"/out/async-1/image_{i}.png"]))
            assert image.size == (64, 64) and "Model: model" in image.info["parameters"]
        assert (tmp_path / "volume" / "models" / "Stable-diffusion" / "model.safetensors").is_symlink()
        # A bad request: a small JSON error with the reason (SageMaker writes it to the failure location).
        bad = requests.post(url + "/invocations", json={"task": "txt2img", "params": {"steps": 0}}, timeout=60)
        assert bad.status_code == 400 and bad.json()["status"] == "failed" and "steps" in bad.json()["error"]
        assert len(bad.content) < 1024
    finally:
        worker.stop()


def test_the_port_sagemaker_asks_for(monkeypatch):
    monkeypatch.delenv("SAGEMAKER_BIND_TO_PORT", raising=False)
    assert serve_port(None) == DEFAULT_PORT == 8080 and serve_port(9000) == 9000
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9123")
    assert serve_port(None) == 9123 and serve_port(9000) == 9000  # --port (tests) over SageMaker's variable


def test_the_model_folder_and_the_cache_volume(tmp_path):
    typed = tmp_path / "typed"
    (typed / "Lora").mkdir(parents=True)
    assert models_dir_for(typed, tmp_path / "scratch") == typed  # laid out like models/: used as it is
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.safetensors").write_bytes(b"x")
    (flat / "notes.txt").write_text("not a model")
    models = models_dir_for(flat, tmp_path / "scratch")
    assert sorted(p.name for p in (models / "Stable-diffusion").iterdir()) == ["a.safetensors"]
    assert models_dir_for(tmp_path / "missing", tmp_path / "scratch2").is_dir()  # no model: an empty folder
    assert largest_volume([tmp_path / "nowhere", tmp_path]) == tmp_path
    assert not any(p for p in (tmp_path / "scratch2" / "models" / "Stable-diffusion").iterdir())


def test_the_webui_flavour_runs_both_processes_and_ping_follows_both(tmp_path, tiny_models_dir):
    """The image that runs a real WebUI behind the worker, with a stand-in WebUI (a diffusers worker, which
    speaks the WebUI's API): /ping is healthy only when both run, and when one ends the other does."""
    webui_models = tmp_path / "webui-models"  # the WebUI starts without models: the worker links the job's in
    (webui_models / "Stable-diffusion").mkdir(parents=True)
    (tmp_path / "opt-ml" / "model").mkdir(parents=True)
    shutil.copy(tiny_models_dir / "Stable-diffusion" / TINY_CHECKPOINT_NAME, tmp_path / "opt-ml" / "model")
    webui_port = free_port()
    webui_command = f"{sys.executable} -m aws_extension worker --port {webui_port} --models-dir {webui_models}"
    worker = WorkerProcess(None, tmp_path / "serve.log", "--engine", "webui", "--webui-url",
                           f"http://127.0.0.1:{webui_port}", "--webui-models-dir", str(webui_models),
                           "--webui-command", webui_command, command=SERVE,
                           env={"SD_AWS_SAGEMAKER_ROOT": str(tmp_path / "opt-ml"),
                                "SD_AWS_MODEL_CACHE_DIR": str(tmp_path / "volume")})
    url, process = worker.url, worker.process
    try:
        assert worker.ping_statuses_until_healthy()[-1] == 200
        assert requests.get(f"http://127.0.0.1:{webui_port}/ping", timeout=5).status_code == 200
        made = requests.post(url + "/sdapi/v1/txt2img", timeout=120,
                             json={"prompt": "a house", "width": 64, "height": 64, "steps": 2, "seed": 3})
        assert made.status_code == 200 and len(made.json()["images"]) == 1
        webui_pid = next(p for p in process_pids(str(webui_models)) if p != process.pid)
        os.kill(webui_pid, signal.SIGKILL)  # the WebUI dies: the worker stops with it
        assert process.wait(60) == 1
        try:
            requests.get(url + "/ping", timeout=2)
            raise AssertionError("/ping still answers with the WebUI gone")
        except requests.ConnectionError:
            pass
    finally:
        worker.stop()
    assert [p for p in process_pids(str(webui_models)) if p != process.pid] == []


def test_the_webui_dies_with_a_killed_worker(tmp_path):
    marker = str(tmp_path / "stand-in-webui")
    worker = WorkerProcess(None, tmp_path / "serve.log", "--engine", "webui", "--webui-url", "http://127.0.0.1:9",
                           "--webui-command", f"{sys.executable} -c 'import time; time.sleep(300)' {marker}",
                           command=SERVE, env={"SD_AWS_SAGEMAKER_ROOT": str(tmp_path / "opt-ml"),
                                               "SD_AWS_MODEL_CACHE_DIR": str(tmp_path / "volume")})

    def webuis() -> list[int]:  # the child, not the worker (whose command line names it too)
        return [pid for pid in process_pids(marker, word="sleep") if pid != worker.process.pid]

    try:
        deadline = time.monotonic() + 60
        while not webuis() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert webuis(), worker.log()
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait(10)
        deadline = time.monotonic() + 10
        while webuis() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not webuis()  # no WebUI left behind
    finally:
        worker.stop()
