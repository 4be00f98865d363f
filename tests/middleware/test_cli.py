"""The client CLI (`sd-aws checkpoint ...`, `sd-aws dataset create`, `sd-aws train ...`) against a real
middleware."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from aws_extension.client import MiddlewareClient
from tests.helpers import REPO, FileServer
from tests.middleware.conftest import API_KEY, fake_lora, safetensors_bytes

MiB = 1024 * 1024


def sd_aws(middleware, *args: str, key: str = API_KEY, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "SD_AWS_API_URL": middleware.url, "SD_AWS_API_KEY": key, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "aws_extension", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO)


def test_checkpoint_upload_list_and_progress(middleware, tmp_path):
    path = fake_lora(tmp_path / "cli-lora.safetensors", padding_bytes=20 * MiB)
    result = sd_aws(middleware, "checkpoint", "upload", str(path), "--type", "Lora")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() in result.stdout and "Active" in result.stdout
    assert "upload" in result.stderr and "100%" in result.stderr  # the progress bar
    listed = sd_aws(middleware, "checkpoint", "list", "--type", "Lora")
    assert listed.returncode == 0 and "cli-lora.safetensors" in listed.stdout


def test_checkpoint_upload_errors_are_clear(middleware, tmp_path):
    missing = sd_aws(middleware, "checkpoint", "upload", str(tmp_path / "nope.safetensors"), "--type", "Lora")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(1000))
    refused = sd_aws(middleware, "checkpoint", "upload", str(junk), "--type", "VAE")
    assert refused.returncode == 1 and "not a valid safetensors file" in refused.stderr
    wrong_key = sd_aws(middleware, "checkpoint", "list", key="wrong")
    assert wrong_key.returncode == 1 and "API key is not valid" in wrong_key.stderr and "HTTP 403" in wrong_key.stderr


def test_checkpoint_import_follows_the_download(middleware):
    lora = safetensors_bytes({"lora_te_x.lora_up.weight": ("F32", [8, 8])})
    with FileServer({"/files/cli-import.safetensors": (200, {}, lora)}) as server:
        result = sd_aws(middleware, "checkpoint", "import", server.url + "/files/cli-import.safetensors",
                        "--type", "Lora")
    assert result.returncode == 0, result.stderr
    assert "cli-import.safetensors" in result.stdout and hashlib.sha256(lora).hexdigest() in result.stdout


def test_checkpoint_import_failure_exit_code(middleware):
    with FileServer({}) as server:
        result = sd_aws(middleware, "checkpoint", "import", server.url + "/gone.safetensors", "--type", "Lora")
    assert result.returncode == 1 and "404" in result.stderr


def test_dataset_create(middleware, tmp_path):
    files = []
    for i in range(2):
        files.append(tmp_path / f"pic{i}.png")
        files[-1].write_bytes(b"\x89PNG" + bytes([i]) * 100)
    result = sd_aws(middleware, "dataset", "create", "cli-ds", *map(str, files), "--description", "from cli")
    assert result.returncode == 0, result.stderr
    assert "cli-ds  Enabled" in result.stdout
    again = sd_aws(middleware, "dataset", "create", "cli-ds", *map(str, files))
    assert again.returncode == 1 and "already exists" in again.stderr


# -- sd-aws train ----------------------------------------------------------------------------------------------
TRAIN_FLAGS = ("--dataset", "cli-train", "--instance-prompt", "sks", "--resolution", "64", "--seed", "3")


@pytest.fixture(scope="module")
def training_base(middleware, learnable_checkpoint, tmp_path_factory, backend):
    """The learnable tiny model as an Active checkpoint and a dataset of two red images (local backend:
    the only one that trains)."""
    if backend != "local":
        pytest.skip("local backend only: the CLI is the same client on every backend (aws training: tests/training/test_sagemaker_training.py)")
    from PIL import Image

    tmp = tmp_path_factory.mktemp("cli-train")
    base = tmp / "cli-tiny.safetensors"
    base.write_bytes(learnable_checkpoint.read_bytes())
    client = MiddlewareClient(middleware.url, API_KEY)
    checkpoint = client.upload_checkpoint_files("Stable-diffusion", [base])
    images = []
    for i in range(2):
        images.append(tmp / f"red-{i}.png")
        Image.new("RGB", (64, 64), (220, 20, 20)).save(images[-1])
    client.create_dataset_from_files("cli-train", images)
    return checkpoint


@pytest.mark.local_only("the CLI is the same client on every backend (aws training: tests/training/test_sagemaker_training.py)")
def test_train_lora_waits_with_a_progress_bar_and_says_how_to_use_the_lora(middleware, training_base):
    result = sd_aws(middleware, "train", "lora", "--base", "cli-tiny", *TRAIN_FLAGS, "--steps", "3", "--rank", "2",
                    "--wait", timeout_s=600)
    assert result.returncode == 0, result.stderr
    assert "preparing the training base" in result.stderr and "3/3" in result.stderr and "loss" in result.stderr
    assert "Complete  Lora cli-train-lora.safetensors" in result.stdout
    assert "<lora:cli-train-lora:1>" in result.stdout
    client = MiddlewareClient(middleware.url, API_KEY)
    assert "cli-train-lora.safetensors" in client.lora_names()
    (job,) = [j for j in client.list_trainings(["Complete"]) if j["modelName"] == "cli-train-lora"]
    listed = sd_aws(middleware, "train", "list", "--status", "Complete")
    assert listed.returncode == 0 and job["id"] in listed.stdout and "3/3" in listed.stdout
    shown = sd_aws(middleware, "train", "show", job["id"])
    assert shown.returncode == 0 and json.loads(shown.stdout)["checkpoint_id"] == job["checkpoint_id"]


@pytest.mark.local_only("the CLI is the same client on every backend (aws training: tests/training/test_sagemaker_training.py)")
def test_ctrl_c_stops_the_job_which_resumes_and_the_base_is_reused(middleware, training_base):
    client = MiddlewareClient(middleware.url, API_KEY)
    env = {**os.environ, "SD_AWS_API_URL": middleware.url, "SD_AWS_API_KEY": API_KEY, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "aws_extension", "train", "dreambooth", "--base", training_base["id"],
               *TRAIN_FLAGS, "--steps", "2000", "--name", "cli-stopped", "--wait"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 300
        job = None
        while time.monotonic() < deadline and not (job and (job["step"] >= 1 or job["status"] != "Training")):
            time.sleep(0.5)
            listed = next((j for j in client.list_trainings() if j["modelName"] == "cli-stopped"), None)
            job = client.training_job(listed["id"]) if listed else None  # with its live step
        assert job and job["status"] == "Training" and job["step"] >= 1, job
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert f"resume it with `sd-aws train resume {job['id']} --wait`" in stderr
    stopped = client.training_job(job["id"])
    assert stopped["status"] == "Stopped" and 1 <= stopped["step"] < 2000
    models = [m for m in client.list_training_models() if m["checkpoint_id"] == training_base["id"]]
    assert len(models) == 1  # made by the first command, reused by this one (by id here)
    resumed = sd_aws(middleware, "train", "resume", job["id"])
    assert resumed.returncode == 0 and "resumed from its saved state" in resumed.stderr
    assert sd_aws(middleware, "train", "stop", job["id"]).returncode == 0


@pytest.mark.local_only("the CLI is the same client on every backend (aws training: tests/training/test_sagemaker_training.py)")
def test_train_errors_are_one_sentence_and_exit_1(middleware, training_base):
    unknown = sd_aws(middleware, "train", "lora", "--base", "no-such-model", *TRAIN_FLAGS)
    assert unknown.returncode == 1
    assert "No Active Stable-diffusion checkpoint is named 'no-such-model'" in unknown.stderr
    refused = sd_aws(middleware, "train", "lora", "--base", "cli-tiny.safetensors", "--dataset", "cli-train",
                     "--instance-prompt", "sks", "--resolution", "100")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]  # the API's sentence, as it is
    assert last.startswith("error: config_params.resolution: resolution must be a multiple of 64")
    assert last.endswith("(HTTP 400)")
