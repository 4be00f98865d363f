"""Fixtures shared by every part's tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TINY_CHECKPOINT_NAME = "tiny-sd.safetensors"


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A folder laid out like the WebUI's models/: the tiny checkpoint and its extras (built once)."""
    from aws_extension.engine.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("models")
    (root / "Stable-diffusion").mkdir()
    write_tiny_model(root / "Stable-diffusion" / TINY_CHECKPOINT_NAME, extras_dir=root)
    return root
