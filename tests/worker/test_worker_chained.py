"""A webui-engine worker chained to a diffusers worker (no `SD_AWS_WEBUI_MODELS_DIR`): the forwarder learns the
backend's folders from its `GET /sdapi/v1/cmd-flags`, as from A1111's, and places each job's models there."""

from __future__ import annotations

import hashlib
from pathlib import Path

import requests

from aws_extension.vocabulary import MODEL_TYPES
from aws_extension.worker.webui_engine import webui_folders
from tests.conftest import TINY_CHECKPOINT_NAME
from tests.worker.helpers import FileServer, WorkerProcess

SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a", "seed": 5}


def test_a_forwarder_places_models_in_the_folders_a_diffusers_worker_answers_in_cmd_flags(
        tmp_path: Path, tiny_models_dir: Path, file_server: FileServer, monkeypatch):
    monkeypatch.delenv("SD_AWS_WEBUI_MODELS_DIR", raising=False)
    backend_models = tmp_path / "backend-models"  # no model at start: the job's come through the forwarder
    backend = WorkerProcess(backend_models, tmp_path / "backend.log")
    forwarder: WorkerProcess | None = None
    try:
        backend.ping_statuses_until_healthy()
        flags = requests.get(f"{backend.url}/sdapi/v1/cmd-flags", timeout=10).json()
        assert flags["models_dir"] == str(backend_models.resolve()) and flags["ckpt_dir"].endswith("Stable-diffusion")
        folders = webui_folders(flags)
        assert set(folders) == set(MODEL_TYPES)
        assert all(folders[t] == backend_models.resolve() / t for t in MODEL_TYPES)  # where the backend scans

        forwarder = WorkerProcess(tmp_path / "forwarder-models", tmp_path / "forwarder.log", "--engine", "webui",
                                  "--webui-url", backend.url)
        forwarder.ping_statuses_until_healthy()
        models = []
        for model_type, source in (("Stable-diffusion", tiny_models_dir / "Stable-diffusion" / TINY_CHECKPOINT_NAME),
                                   ("Lora", tiny_models_dir / "Lora" / "tiny-lora.safetensors")):
            data = source.read_bytes()
            models.append({"type": model_type, "name": f"chained-{source.name}",
                           "sha256": hashlib.sha256(data).hexdigest(),
                           "url": file_server.serve(f"/chained/{source.name}", data)})
        params = {**SMALL, "prompt": "a tower <lora:chained-tiny-lora:0.7>"}
        answer = requests.post(f"{forwarder.url}/invocations", timeout=300,
                               json={"task": "txt2img", "job_id": "chained", "models": models, "params": params})
        assert answer.status_code == 200 and answer.json()["status"] == "succeed", answer.text
        assert (backend_models / "Stable-diffusion" / f"chained-{TINY_CHECKPOINT_NAME}").is_file()
        assert (backend_models / "Lora" / "chained-tiny-lora.safetensors").is_file()
        assert "chained-tiny-lora" in [lora["name"] for lora in
                                       requests.get(f"{backend.url}/sdapi/v1/loras", timeout=10).json()]
        assert requests.get(f"{backend.url}/sdapi/v1/options", timeout=10).json()["sd_model_checkpoint"] == (
            f"chained-{TINY_CHECKPOINT_NAME}")
    finally:
        if forwarder is not None:
            forwarder.stop()
        backend.stop()
