"""The main command: `sd-aws up --demo` on a fresh data dir makes an image through the API, twice."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

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
