"""`sd-aws sagemaker train` (the image's `train` executable) run as SageMaker runs it, on a temp root:
hyperparameters and channels in, the model, progress and failure out; SIGKILL after a saved state, then a
rerun, ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from aws_extension.training import parse_training_config
from aws_extension.worker.sagemaker_train import TrainLayout, read_progress

REPO = Path(__file__).resolve().parents[2]
RED = (220, 20, 20)


def _config(**overrides):
    params = {"concepts_list": [{"instance_prompt": "sks"}], "resolution": 64, "max_train_steps": 12,
              "lora_learning_rate": 1e-3, "lora_unet_rank": 4, "seed": 5, "model_name": "sks-lora", **overrides}
    return parse_training_config("Lora", params)


def _layout(root: Path, base: Path | None, hyperparameters: dict | None, images: int = 3) -> TrainLayout:
    layout = TrainLayout(root)
    if hyperparameters is not None:
        layout.hyperparameters.parent.mkdir(parents=True)
        layout.hyperparameters.write_text(json.dumps(hyperparameters))
    if base is not None:
        layout.channel("base").mkdir(parents=True)
        shutil.copyfile(base, layout.channel("base") / base.name)
    if images:
        layout.channel("instance").mkdir(parents=True)
        for i in range(images):
            Image.new("RGB", (64, 64) if i % 2 == 0 else (128, 64), RED).save(layout.channel("instance") / f"{i}.png")
    return layout


def _start(root: Path) -> subprocess.Popen:
    env = {**os.environ, "SD_AWS_SAGEMAKER_ROOT": str(root), "SD_AWS_DEVICE": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "aws_extension", "sagemaker", "train"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _run(root: Path) -> tuple[int, str]:
    process = _start(root)
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr.decode(errors="replace")


def test_a_job_writes_its_model_and_progress(tmp_path, learnable_checkpoint):
    layout = _layout(tmp_path, learnable_checkpoint, _config(save_preview_every=6).to_hyperparameters())
    code, stderr = _run(tmp_path)
    assert code == 0, stderr
    assert not layout.failure.exists()
    progress = read_progress(tmp_path)
    assert progress["status"] == "Complete" and progress["model"] == "sks-lora.safetensors"
    assert (progress["step"], progress["total_steps"]) == (12, 12) and progress["loss"] > 0
    assert progress["samples"] == ["step-000006-0.png", "step-000012-0.png"]
    assert (layout.samples / "step-000012-0.png").is_file()
    keys = load_file(layout.model_dir / "sks-lora.safetensors").keys()
    assert keys and all(k.startswith("lora_unet_") for k in keys)


def test_sigkill_after_a_saved_state_then_a_rerun_gives_the_weights_of_an_uninterrupted_run(
        tmp_path, learnable_checkpoint):
    hyperparameters = _config(max_train_steps=40, save_state_every=8).to_hyperparameters()
    whole = _layout(tmp_path / "whole", learnable_checkpoint, hyperparameters)
    code, stderr = _run(whole.root)
    assert code == 0, stderr

    killed = _layout(tmp_path / "killed", learnable_checkpoint, hyperparameters)
    process = _start(killed.root)
    deadline = time.monotonic() + 300
    while not (killed.checkpoints / "latest.json").is_file():  # a state saved (step 8, 16, ...)
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    process.stderr.close()
    saved = json.loads((killed.checkpoints / "latest.json").read_text())["step"]
    assert 8 <= saved < 40 and not (killed.model_dir / "sks-lora.safetensors").exists()
    code, stderr = _run(killed.root)
    assert code == 0, stderr
    resumed, uninterrupted = (load_file(layout.model_dir / "sks-lora.safetensors") for layout in (killed, whole))
    assert resumed.keys() == uninterrupted.keys()
    for key, tensor in uninterrupted.items():  # bit-exact on the CPU
        assert resumed[key].equal(tensor), key


def _failure(root: Path) -> str:
    code, _ = _run(root)
    assert code == 1
    text = TrainLayout(root).failure.read_text()
    assert read_progress(root)["status"] == "Fail" and read_progress(root)["error"] == text.strip()
    return text


def test_a_missing_channel_is_a_failure_naming_it(tmp_path, learnable_checkpoint):
    _layout(tmp_path / "nobase", None, _config().to_hyperparameters())
    assert "'base'" in _failure(tmp_path / "nobase")
    _layout(tmp_path / "noimages", learnable_checkpoint, _config().to_hyperparameters(), images=0)
    assert "'instance'" in _failure(tmp_path / "noimages")


def test_a_missing_or_bad_hyperparameter_is_a_failure_naming_it(tmp_path, learnable_checkpoint):
    _layout(tmp_path / "none", learnable_checkpoint, None)
    assert "hyperparameters" in _failure(tmp_path / "none")
    _layout(tmp_path / "bad", learnable_checkpoint, _config().to_hyperparameters() | {"resolution": "100"})
    assert "resolution" in _failure(tmp_path / "bad")


@pytest.mark.parametrize(("name", "content", "says"), [
    ("notes.pdf", b"%PDF-1.4", "notes.pdf is not an image"),
    ("broken.png", b"\x89PNG\r\n\x1a\n garbage", "broken.png is not a readable image"),
])
def test_a_bad_image_is_a_failure_naming_it(tmp_path, learnable_checkpoint, name, content, says):
    layout = _layout(tmp_path, learnable_checkpoint, _config().to_hyperparameters())
    (layout.channel("instance") / name).write_bytes(content)
    assert says in _failure(tmp_path)


def test_the_train_executable_calls_the_entry_point_in_both_images():
    """`docker run IMAGE train` runs deploy/train: it must call `sd-aws sagemaker train`, be executable, and be
    copied to /usr/local/bin/train by both Dockerfiles."""
    import re
    import shlex

    from aws_extension.cli import build_parser

    script = REPO / "deploy" / "train"
    command = shlex.split(re.search(r"^exec (sd-aws .*)$", script.read_text(), re.MULTILINE).group(1))
    assert command[:3] == ["sd-aws", "sagemaker", "train"]
    args = build_parser().parse_args([a for a in command[1:] if a != "$@"])
    assert (args.command, args.action) == ("sagemaker", "train")
    assert script.stat().st_mode & 0o111
    for dockerfile in ("worker.Dockerfile", "webui.Dockerfile"):
        assert "COPY deploy/train /usr/local/bin/train" in (REPO / "deploy" / dockerfile).read_text(), dockerfile
