"""A real middleware (`sd-aws serve`) for the tab tests, and the tab's connection to it.

The tabs also run in a second venv with A1111's pins (gradio 3.41.2, pydantic 1), where the middleware
cannot be imported: SD_AWS_TEST_SERVER_PYTHON names the Python that runs `sd-aws` then (.ci/ui.sh sets it).
"""

from __future__ import annotations

import os
import sys

import pytest

from aws_extension.ui.connection import MemoryConnectionStore
from tests.helpers import start_middleware

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
