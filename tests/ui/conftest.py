"""A real middleware (`sd-aws serve`) for the tab tests, and the tab's connection to it.

The tabs also run in venvs with the hosts' pins (.ci/ui.sh: A1111's gradio 3.41.2 with pydantic 1, Forge's
gradio 4.40.0), where the middleware may not import: SD_AWS_TEST_SERVER_PYTHON names the Python that runs `sd-aws` then (.ci/ui.sh sets it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from aws_extension.client import MiddlewareClient
from aws_extension.ui.connection import MemoryConnectionStore
from aws_extension.ui.inference import endpoint_names
from tests.helpers import REPO, SdAwsProcess, free_port, start_middleware

API_KEY = "ui-test-key"


def start_server(start, *args, **kwargs):
    """Call a tests.helpers starter with SD_AWS_TEST_SERVER_PYTHON as the interpreter of the subprocess."""
    with pytest.MonkeyPatch.context() as patch:
        if os.environ.get("SD_AWS_TEST_SERVER_PYTHON"):
            patch.setattr(sys, "executable", os.environ["SD_AWS_TEST_SERVER_PYTHON"])
        return start(*args, **kwargs)


@pytest.fixture(scope="session")
def middleware(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ui-mw") / "data"
    server = start_server(start_middleware, data_dir, API_KEY, env={"SD_AWS_IMPORT_ALLOW_PRIVATE_ADDRESSES": "1"})
    yield server
    server.stop()


@pytest.fixture
def store(middleware) -> MemoryConnectionStore:
    return MemoryConnectionStore(middleware.url, API_KEY)


class ProgressRecorder:
    """Stands in for gr.Progress when a test calls a handler directly."""

    def __init__(self):
        self.fractions: list[float] = []

    def __call__(self, fraction: float, desc: str | None = None) -> None:
        self.fractions.append(fraction)


STACK_KEY = "ui-stack-key"
STACK_ENDPOINT = "sd-aws-local"  # the endpoint `sd-aws up` deploys
TINY_CHECKPOINT = "tiny-sd.safetensors"  # the checkpoint `sd-aws up` registers


def server_python() -> str:
    return os.environ.get("SD_AWS_TEST_SERVER_PYTHON") or sys.executable


@dataclass
class Stack:
    server: SdAwsProcess
    client: MiddlewareClient
    models: Path  # laid out like the WebUI's models folder: the tiny checkpoint, LoRA, embedding, VAE, ControlNet

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """A real `sd-aws up` (middleware, the tiny model registered, a local endpoint InService)."""
    root = tmp_path_factory.mktemp("ui-stack")
    models = root / "models"
    subprocess.run([server_python(), "-m", "aws_extension", "make-tiny-model",
                    str(models / "Stable-diffusion" / TINY_CHECKPOINT), "--extras", str(models)],
                   check=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    port = free_port()
    server = SdAwsProcess(["up", "--port", str(port), "--data-dir", str(root / "data")], port,
                          env={"SD_AWS_API_KEY": STACK_KEY}, log_path=root / "up.log")
    start_server(server.start, timeout_s=120)
    client = MiddlewareClient(server.url, STACK_KEY, timeout_s=60)
    try:
        deadline = time.monotonic() + 300
        while STACK_ENDPOINT not in endpoint_names(client):
            assert time.monotonic() < deadline, f"sd-aws up deployed no endpoint: {server.log()}"
            time.sleep(0.5)
        yield Stack(server, client, models)
    finally:
        server.stop()
