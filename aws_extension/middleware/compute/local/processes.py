"""Worker processes on this machine: one `sd-aws worker` per instance, on a free loopback port.

Each instance has its own folder in the data dir (its models folder, model cache and log). Processes are
started from one long-lived thread with PR_SET_PDEATHSIG, so they die with the middleware (the signal
fires when the thread that forked exits; a pool thread lives as long as we do). On a machine with GPUs
each worker sees one (CUDA_VISIBLE_DEVICES). A worker runs user-supplied models and parameters, so its
environment carries none of the middleware's secrets.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from aws_extension.child_processes import die_with_parent
from aws_extension.settings import MiddlewareSettings, WorkerSettings

# The middleware's settings that are not the worker's (its keys and secrets among them) stay out of the
# workers' environment.
_MIDDLEWARE_ONLY_ENV = ({f.metadata["env"] for f in dataclasses.fields(MiddlewareSettings)}
                        - {f.metadata["env"] for f in dataclasses.fields(WorkerSettings)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _usable_cores() -> int:
    """The cores this process may run on (its affinity, as torch counts them), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def local_gpus(setting: str | None, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The GPUs local workers may use: the setting, else CUDA_VISIBLE_DEVICES, else every NVIDIA GPU the
    driver lists (without importing torch: the middleware never does)."""
    if setting is None:
        setting = environ.get("CUDA_VISIBLE_DEVICES")
    if setting is None:
        driver = Path("/proc/driver/nvidia/gpus")
        return [str(i) for i in range(len(list(driver.iterdir())))] if driver.is_dir() else []
    return [gpu.strip() for gpu in setting.split(",") if gpu.strip()]


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a worker gets: this process's, without the middleware's own settings."""
    return {name: value for name, value in environ.items() if name not in _MIDDLEWARE_ONLY_ENV}


@dataclass
class Instance:
    """One worker process and the dispatcher thread that feeds it."""

    endpoint: str
    index: int
    folder: Path
    port: int = 0
    process: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    current_job: str | None = None
    idle_since: float = field(default_factory=time.monotonic)
    gpu: str | None = None  # what CUDA_VISIBLE_DEVICES its process got

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"{self.endpoint}/{self.index}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        path = self.folder / "worker.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:])


class WorkerProcesses:
    """Starts, health-checks and stops worker processes."""

    def __init__(self, settings: MiddlewareSettings):
        self.settings = settings
        self.gpus = local_gpus(settings.local_gpus)
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawner")

    def pick_gpu(self, gpus_taken: list[str | None]) -> str | None:
        """The GPU the fewest other instances have (None on a machine without GPUs)."""
        return min(self.gpus, key=gpus_taken.count) if self.gpus else None

    def start(self, instance: Instance, sharing: int) -> bool:
        """Start (or restart) the instance's worker on its GPU and wait for /ping; on failure `process` is
        None. `sharing`: how many workers share this machine's cores."""
        instance.port = _free_port()
        command = [sys.executable, "-m", "aws_extension", "worker", "--port", str(instance.port),
                   "--models-dir", str(instance.folder / "models"), "--engine", self.settings.worker_engine]
        env = {**self._thread_env(sharing), **worker_environment(os.environ), "HF_HUB_OFFLINE": "1",
               "SD_AWS_MODEL_CACHE_DIR": str(instance.folder / "cache")}
        if instance.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = instance.gpu
        with open(instance.folder / "worker.log", "ab") as log_file:
            instance.process = self._spawner.submit(
                subprocess.Popen, command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent).result()  # noqa: PLW1509 - prctl only, no locks taken
        if self._wait_healthy(instance):
            return True
        self.kill(instance)
        instance.process = None
        return False

    def _wait_healthy(self, instance: Instance) -> bool:
        deadline = time.monotonic() + self.settings.endpoint_start_timeout_s
        while time.monotonic() < deadline and not instance.stopping.is_set() and instance.alive():
            try:
                if requests.get(instance.url + "/ping", timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.2)
        return False

    @staticmethod
    def _thread_env(sharing: int, cores: int | None = None) -> dict[str, str]:
        """CPU threads of a worker that shares this machine's `cores` with `sharing - 1` other workers and
        the middleware, unless the environment sets them (it wins, see `start`).

        One worker: every core but one (at least one), waiting as torch does by default (spinning briefly):
        the spare core keeps the middleware and its clients from descheduling a spinning thread, which made
        torch's defaults (every core) up to 20x slower here, and passive waiting (a wake-up per op) ~1.5x.
        Several: the cores split between them, OpenMP threads that sleep when idle. Measured in
        benchmarks/README.md, "Local workers' threads"."""
        cores = cores or _usable_cores()
        if sharing <= 1:
            threads = str(max(1, cores - 1))
            return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        threads = str(max(1, cores // sharing))
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}

    @staticmethod
    def kill(instance: Instance) -> None:
        process = instance.process
        if process and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def shutdown(self) -> None:
        self._spawner.shutdown(wait=False)
