"""Start-up of `sd-aws sagemaker serve`: `/ping` is 503 until the engine is built and the worker's own model is
loaded (its start-up job ran), then 200; a model that cannot be loaded leaves it Failed with the reason."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import requests

from tests.conftest import TINY_CHECKPOINT_NAME
from tests.worker.helpers import WORKER_START_TIMEOUT_S, WorkerProcess

SERVE = ("sagemaker", "serve", "--host", "127.0.0.1")


def _serve_with_model(tmp_path: Path, model: Path) -> WorkerProcess:
    """`sagemaker serve` with `model` where SageMaker unpacks the ModelDataUrl (`<root>/model`)."""
    root = tmp_path / "opt-ml"
    (root / "model").mkdir(parents=True)
    shutil.copy(model, root / "model" / "model.safetensors")
    return WorkerProcess(None, tmp_path / "serve.log", command=SERVE, env={
        "SD_AWS_SAGEMAKER_ROOT": str(root), "SD_AWS_MODEL_CACHE_DIR": str(tmp_path / "volume")})


def _pings_until_settled(worker: WorkerProcess) -> list[tuple[int, dict, dict]]:
    """(/ping status, /ping body, /health body) from the first answer until /ping is 200 or the worker Failed;
    /health is read right after each /ping (start-up only moves forward, so it is never behind)."""
    seen: list[tuple[int, dict, dict]] = []
    worker.first_ping_status()
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        ping = requests.get(f"{worker.url}/ping", timeout=5)
        health = requests.get(f"{worker.url}/health", timeout=5)
        assert health.status_code == 200  # liveness: always answered
        seen.append((ping.status_code, ping.json(), health.json()))
        if ping.status_code == 200 or ping.json()["status"] == "Failed":
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not settled after {WORKER_START_TIMEOUT_S} s: {seen[-1:]}\n{worker.log()}")


def test_ping_is_503_until_the_engine_is_built_and_the_own_model_is_loaded(tmp_path, tiny_models_dir):
    worker = _serve_with_model(tmp_path, tiny_models_dir / "Stable-diffusion" / TINY_CHECKPOINT_NAME)
    try:
        seen = _pings_until_settled(worker)
        *starting, (status, ping, health) = seen
        assert starting, "the first /ping came after start-up was over"
        stages = {"starting the diffusers engine", "loading model.safetensors"}
        for code, body, detail in starting:
            assert code == 503 and body["status"] == "Starting" and body["stage"] in stages
            if detail["status"] == "Starting":  # else it became healthy between the two requests
                assert detail["stage"] in stages and detail["checkpoint_loaded"] is None
        assert status == 200 and ping == {"status": "Healthy"}
        # Healthy only once the start-up job ran on the model SageMaker unpacked (its pipeline is loaded).
        assert health["status"] == "Healthy" and health["stage"] == "ready"
        assert health["checkpoint_loaded"] == "model.safetensors" and health["error"] is None
        assert set(health["startup_s"]) == {"engine", "warm_up"}
        answer = requests.post(f"{worker.url}/invocations", timeout=120, json={
            "task": "txt2img", "job_id": "first", "models": [],
            "params": {"prompt": "a boat", "width": 64, "height": 64, "steps": 2}})
        assert answer.status_code == 200 and answer.json()["status"] == "succeed", answer.text
    finally:
        worker.stop()


def test_a_model_that_cannot_be_loaded_leaves_the_worker_failed_with_the_reason(tmp_path, tiny_models_dir):
    # A LoRA where the checkpoint should be: the engine refuses it when the start-up job loads it.
    worker = _serve_with_model(tmp_path, next((tiny_models_dir / "Lora").iterdir()))
    try:
        *_, (status, ping, health) = _pings_until_settled(worker)
        assert status == 503 and ping["status"] == "Failed"
        assert ping["error"].startswith("The worker's checkpoint model.safetensors could not be loaded: ")
        assert "not a Stable Diffusion checkpoint" in ping["error"]
        assert health["status"] == "Failed" and health["stage"] == "failed" and health["error"] == ping["error"]
        assert health["checkpoint_loaded"] is None
        refused = requests.post(f"{worker.url}/invocations", timeout=30, json={
            "task": "txt2img", "job_id": "refused", "models": [], "params": {"prompt": "x"}})
        assert refused.status_code == 503 and "could not be loaded" in refused.json()["error"]
    finally:
        worker.stop()
