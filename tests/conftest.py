"""Fixtures shared by every part's tests.

The API tests run on both backends: the `backend` fixture is parametrised over `local` and `aws`, and the
stacks the API tests use (`middleware`, the inference `stack`) are built on it. A test that cannot apply to
the aws backend says why with `@pytest.mark.local_only("reason")` (it is skipped there with the reason).
The aws backend runs on one moto server for the session (`aws_cloud`, see tests/aws_stack.py); each stack
has its own name, so its resources are its own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# torch's OpenMP threads spin while idle: on a shared 2-core machine that makes every test process that
# runs the engine (and the workers they start) many times slower. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TINY_CHECKPOINT_NAME = "tiny-sd.safetensors"
BACKENDS = ("local", "aws")
INSTANCES = 2  # the emulated SageMaker's instances (worker processes), as many as the local stack's workers


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "local_only(reason): the test cannot apply to the aws backend")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        marker = item.get_closest_marker("local_only")
        callspec = getattr(item, "callspec", None)
        if marker and callspec and callspec.params.get("backend") == "aws":
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "local backend only")
            item.add_marker(pytest.mark.skip(reason=f"local backend only: {reason}"))


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
    """The tiny model that can show learning (`make-tiny-model --learnable`), built once per run: its build
    takes a minute, so parallel workers (pytest-xdist) share one, built by the first under a file lock in the
    run's shared temporary folder. Tests only read it."""
    from filelock import FileLock

    from aws_extension.engine.tiny import write_tiny_model

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder of every worker's basetemp
    path = shared / "learnable" / LEARNABLE_CHECKPOINT_NAME
    with FileLock(str(shared / "learnable.lock")):
        if not path.is_file():  # built in a folder of its own, then moved: never seen half-written
            building = shared / "learnable.building"
            building.mkdir(exist_ok=True)
            write_tiny_model(building / LEARNABLE_CHECKPOINT_NAME, learnable=True)
            building.rename(path.parent)
    return path


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """The session's one moto server on 127.0.0.1 (real HTTP: presigned URLs, other processes); its URL.
    Tests on it use stack names of their own and never reset it (`aws_cloud`'s stacks live on it)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def aws_cloud(moto_server, tmp_path_factory) -> Iterator:
    """SageMaker's asynchronous inference on the session's moto server, run by real `sd-aws worker`
    processes (see tests/aws_stack.py)."""
    from tests.aws_stack import AsyncInference
    from tests.helpers import SdAwsProcess, free_port

    fake = AsyncInference(moto_server)
    fake.install()
    workers = []
    for index in range(INSTANCES):
        root = tmp_path_factory.mktemp(f"sagemaker-instance-{index}")
        (root / "models").mkdir()
        port = free_port()
        workers.append(SdAwsProcess(["worker", "--port", str(port), "--models-dir", str(root / "models")], port,
                                    ready_path="/ping", log_path=root / "worker.log",
                                    env={"SD_AWS_REMOTE_REPORT_INTERVAL_S": "0.3",
                                         "SD_AWS_MODEL_CACHE_DIR": str(root / "cache")}))
    try:
        with ThreadPoolExecutor(INSTANCES) as pool:  # they load the engine side by side
            list(pool.map(lambda worker: worker.start(timeout_s=300), workers))
        fake.serve([worker.url for worker in workers])
        yield fake
    finally:
        for worker in workers:
            worker.stop()
        fake.uninstall()


def start_api(backend: str, request, data_dir: Path, api_key: str, env: dict[str, str] | None = None):
    """`sd-aws serve` on `backend`: local on `data_dir`, or aws on a new stack of the session's moto server.
    Returns the server (an `SdAwsProcess`) and, on aws, the stack's `StackResources` (else None)."""
    from tests.helpers import start_middleware

    if backend == "aws":
        from tests.aws_stack import start_aws_middleware

        return start_aws_middleware(request.getfixturevalue("aws_cloud"), data_dir, api_key, env)
    return start_middleware(data_dir, api_key, env=env), None
