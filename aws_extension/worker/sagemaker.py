"""SageMaker's inference container contract: `sd-aws sagemaker serve` (the image's `serve` executable).

SageMaker runs `docker run IMAGE serve`: the container listens on port 8080 (or `SAGEMAKER_BIND_TO_PORT`),
answers `GET /ping` with 200 once it can take a job, and `POST /invocations` (the worker's contract, see
`invocations.py`; an asynchronous endpoint posts the bytes of the request object the AWS backend wrote).
The model's `ModelDataUrl` is unpacked into `<root>/model` before start (root: `SD_AWS_SAGEMAKER_ROOT`,
default `/opt/ml`): a checkpoint there is the worker's own model, used by jobs that name none — laid out like
the WebUI's `models/` (type folders), or model files at its top, which are taken as Stable-diffusion
checkpoints. The model cache goes on the instance's largest writable volume.

The "same WebUI on GPU" image runs a real A1111 WebUI behind the worker: `--webui-command` starts it (API
only, on 127.0.0.1) as a child process, and the worker forwards to it (`--engine webui`). `/ping` is 200
only when both are up: the worker waits for the WebUI's API before it is healthy, and when either process
ends the other is stopped, so the container stops and SageMaker replaces it.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from aws_extension.child_processes import die_with_parent
from aws_extension.settings import WorkerSettings, load
from aws_extension.vocabulary import MODEL_SUFFIXES, MODEL_TYPES, CheckpointType

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
# Filesystems that hold files on a disk (tmpfs is memory; the others are kernel interfaces).
_DISK_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "overlay", "zfs", "nfs", "nfs4", "fuse.lxcfs")


def serve_port(explicit: int | None) -> int:
    return explicit or int(os.environ.get("SAGEMAKER_BIND_TO_PORT") or DEFAULT_PORT)


def _mount_points() -> list[Path]:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    return [Path(fields[1]) for fields in (line.split() for line in lines)
            if len(fields) > 3 and fields[2] in _DISK_FILESYSTEMS and "ro" not in fields[3].split(",")]


def largest_volume(candidates: list[Path]) -> Path:
    """The writable folder, among `candidates`, on the filesystem with the most free space."""
    writable = [c for c in candidates if c.is_dir() and os.access(c, os.W_OK)]
    if not writable:
        raise RuntimeError(f"none of {[str(c) for c in candidates]} is a writable folder for the model cache")
    return max(writable, key=lambda c: shutil.disk_usage(c).free)


def models_dir_for(model_dir: Path, scratch: Path) -> Path:
    """The worker's models folder from SageMaker's model folder: itself when it has type folders, else a
    folder in `scratch` where its top-level model files are linked as Stable-diffusion checkpoints."""
    if any((model_dir / t).is_dir() for t in MODEL_TYPES):
        return model_dir
    models = scratch / "models"
    checkpoints = models / CheckpointType.STABLE_DIFFUSION
    shutil.rmtree(models, ignore_errors=True)
    checkpoints.mkdir(parents=True)
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES) \
        if model_dir.is_dir() else []
    for path in files:
        (checkpoints / path.name).symlink_to(path.resolve())
    return models


class _WebUIProcess:
    """The WebUI as a child process: when it ends on its own, the worker is stopped too (its SIGTERM handler
    shuts the server down), so the container ends."""

    def __init__(self, command: str):
        self.process = subprocess.Popen(shlex.split(command), preexec_fn=die_with_parent)  # noqa: S603, PLW1509 - the image's own command; prctl only
        self.stopping = threading.Event()
        self.died = threading.Event()
        threading.Thread(target=self._watch, name="webui-watch", daemon=True).start()

    def _watch(self) -> None:
        self.process.wait()
        if not self.stopping.is_set():
            log.error("the WebUI exited with %s; stopping the worker", self.process.returncode)
            self.died.set()
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        self.stopping.set()
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def serve(host: str, port: int | None, engine: str, webui_url: str | None, webui_models_dir: Path | None,
          webui_command: str | None = None) -> int:
    from aws_extension.worker.server import serve as serve_worker

    settings = load(WorkerSettings)
    root = settings.sagemaker_root
    cache_volume = settings.model_cache_dir or largest_volume(
        [*_mount_points(), root, Path(tempfile.gettempdir())]) / "sd-aws-model-cache"
    cache_volume.mkdir(parents=True, exist_ok=True)
    models = models_dir_for(root / "model", cache_volume)
    webui = _WebUIProcess(webui_command) if webui_command else None
    try:
        code = serve_worker(host, serve_port(port), models, engine=engine, webui_url=webui_url,
                            webui_models_dir=webui_models_dir, model_cache_dir=cache_volume / "cache")
    finally:
        if webui:
            webui.stop()
    return 1 if webui and webui.died.is_set() else code
