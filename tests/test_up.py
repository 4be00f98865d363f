"""The main command: `sd-aws up --demo` on a fresh data dir makes an image through the API, twice."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import requests
from PIL import Image

from tests.helpers import REPO, free_port


def _up(data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("SD_AWS_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "aws_extension", "up", "--demo", "--port", str(free_port()),
                           "--data-dir", str(data_dir)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=REPO)


def test_up_demo_from_scratch_then_again(tmp_path):
    data_dir = tmp_path / "home"
    first = _up(data_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "registered the tiny model tiny-sd.safetensors" in first.stdout
    key = (data_dir / "api_key").read_text().strip()
    assert f"API key: {key}" in first.stdout and "curl -s -X POST" in first.stdout
    path = Path(re.search(r"demo image: (\S+)", first.stdout).group(1))
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "PNG" and image.size == (64, 64)
    assert image.info["parameters"].startswith("a cute panda\n") and "Seed: 42" in image.info["parameters"]

    second = _up(data_dir)  # the model and the endpoint are reused; the same seed gives the same image
    assert second.returncode == 0, second.stdout + second.stderr
    assert "registered the tiny model" not in second.stdout and "deploying" not in second.stdout
    again = Path(re.search(r"demo image: (\S+)", second.stdout).group(1))
    assert again != path and Image.open(again).tobytes() == image.tobytes()


def test_up_says_when_it_is_ready(tmp_path):
    """`/healthz` answers as soon as the server runs; `ready` (and `/readyz`) only once the tiny model is in
    the catalogue and the endpoint is in service, so a client that starts on it never sees an empty stack."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "SD_AWS_API_KEY": "ready-key"}
    process = subprocess.Popen([sys.executable, "-m", "aws_extension", "up", "--port", str(port), "--data-dir",
                                str(tmp_path / "home")], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url, seen_waiting = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                health = requests.get(url + "/healthz", timeout=5).json()
            except requests.RequestException:
                time.sleep(0.1)
                continue
            if health["ready"]:
                break
            seen_waiting.append(health["waiting_for"])
            assert requests.get(url + "/readyz", timeout=5).status_code in (503, 200)
            time.sleep(0.1)
        else:
            raise AssertionError(f"sd-aws up never became ready: {seen_waiting[-1:]}")
        assert any("tiny model" in " ".join(w) for w in seen_waiting)  # it answered before it was ready
        assert requests.get(url + "/readyz", timeout=5).status_code == 200
        headers = {"x-api-key": "ready-key"}
        names = [n for c in requests.get(url + "/checkpoints", headers=headers, timeout=10).json()["checkpoints"]
                 for n in c["name"]]
        assert "tiny-sd.safetensors" in names
        endpoints = requests.get(url + "/endpoints", headers=headers, timeout=10).json()
        assert [e["endpoint_status"] for e in endpoints] == ["InService"]
    finally:
        process.terminate()
        process.wait(30)
