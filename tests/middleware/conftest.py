from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import pytest

from aws_extension.client import MiddlewareClient
from tests.conftest import start_api

API_KEY = "test-key"


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], filler: int = 0,
                      metadata: dict[str, str] | None = None) -> bytes:
    """A valid safetensors file with zero-filled F32 tensors of the given names and shapes."""
    header, data, offset = ({"__metadata__": metadata} if metadata else {}), b"", 0
    for name, (dtype, shape) in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        data += bytes([filler]) * size
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def fake_lora(path: Path, padding_bytes: int = 0) -> Path:
    """A LoRA-shaped safetensors file of its own content (the catalogue is content-addressed: the same bytes
    twice are one checkpoint); `padding_bytes` makes it big enough for multipart tests."""
    floats = max(1, padding_bytes // 4)
    path.write_bytes(safetensors_bytes({"lora_unet_down_blocks_0_attn.lora_down.weight": ("F32", [floats]),
                                        "lora_unet_down_blocks_0_attn.alpha": ("F32", [1])}, filler=7,
                                       metadata={"made_for": uuid.uuid4().hex}))
    return path


@pytest.fixture(scope="session")
def middleware(backend, request, tmp_path_factory):
    """One middleware per backend for the session (`backend` is parametrised over local and aws)."""
    data_dir = tmp_path_factory.mktemp(f"mw-{backend}") / "data"
    server, _ = start_api(backend, request, data_dir, API_KEY, env={"SD_AWS_IMPORT_ALLOW_PRIVATE_ADDRESSES": "1"})
    yield server
    server.stop()


@pytest.fixture
def client(middleware) -> MiddlewareClient:
    return MiddlewareClient(middleware.url, API_KEY)


@pytest.fixture
def headers() -> dict[str, str]:
    return {"x-api-key": API_KEY, "Content-Type": "application/json", "Accept": "application/json"}
