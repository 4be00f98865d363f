"""Fixtures shared by every part's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# torch's OpenMP threads spin while idle: on a shared 2-core machine that makes every test process that
# runs the engine (and the workers they start) many times slower. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TINY_CHECKPOINT_NAME = "tiny-sd.safetensors"


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A folder laid out like the WebUI's models/: the tiny checkpoint and its extras (built once)."""
    from aws_extension.engine.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    write_tiny_model(root / "Stable-diffusion" / TINY_CHECKPOINT_NAME, extras_dir=root)
    return root


LEARNABLE_CHECKPOINT_NAME = "tiny-learnable.safetensors"


@pytest.fixture(scope="session")
def learnable_checkpoint(tmp_path_factory) -> Path:
    """The tiny model that can show learning (`make-tiny-model --learnable`), built once per session."""
    from aws_extension.engine.tiny import write_tiny_model

    path = tmp_path_factory.mktemp("learnable") / LEARNABLE_CHECKPOINT_NAME
    write_tiny_model(path, learnable=True)
    return path
