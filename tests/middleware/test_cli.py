"""The client CLI (`sd-aws checkpoint ...`, `sd-aws dataset create`) against a real middleware."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from tests.helpers import REPO, FileServer
from tests.middleware.conftest import API_KEY, fake_lora, safetensors_bytes

MiB = 1024 * 1024


def sd_aws(middleware, *args: str, key: str = API_KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "SD_AWS_API_URL": middleware.url, "SD_AWS_API_KEY": key, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "aws_extension", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)


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
