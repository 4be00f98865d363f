"""Training on this machine: a process per job running `sd-aws sagemaker train`, the same entry point
SageMaker runs, under `<data dir>/trainings/<job id>/` (SageMaker's layout: `worker/sagemaker_train.py`).

At most `local_training_slots` processes run at once; the other jobs wait in a queue, oldest first. The
channels are linked in from the blob folder (copied where a link cannot be made). A process is started from
one long-lived thread with PR_SET_PDEATHSIG, so it dies with the middleware, and its environment has none of
the middleware's settings (its secrets among them), like the inference workers'. When a process ends, the
`TrainingReports` it was started with hears how (`run_ended`); `shutdown` stops every process (SIGTERM:
each saves its state) without reporting, so the jobs are still `Training` at the next start and resume.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aws_extension.child_processes import die_with_parent
from aws_extension.middleware.blobs.local import LocalBlobStore
from aws_extension.middleware.compute.base import (
    LOCAL_INSTANCE_TYPE,
    TrainingEnded,
    TrainingReports,
    TrainingRun,
)
from aws_extension.middleware.compute.local.processes import WorkerProcesses, local_gpus, worker_environment
from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.records import TrainingJob
from aws_extension.worker.sagemaker_train import (
    BASE_CHANNEL,
    CLASS_CHANNEL,
    INSTANCE_CHANNEL,
    TrainLayout,
    read_progress,
)

log = logging.getLogger(__name__)

STOP_WAIT_S = 60.0  # a trainer saves its state on SIGTERM; one that takes longer is killed


def death(returncode: int) -> str:
    """How a training process that left no result ended, in words."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the training process was killed ({name})"
    return f"the training process exited with status {returncode} without a result"


@dataclass
class _Running:
    run: TrainingRun
    process: subprocess.Popen
    gpu: str | None
    stop_requested: bool = False


class LocalTraining:
    """Training processes on this machine, `slots` at once, the rest queued (a `TrainingCompute`)."""

    restarts_with_middleware = True
    logs = "see the job's train.log in the data dir"

    def __init__(self, data_dir: Path, blobs: LocalBlobStore, slots: int, gpus_setting: str | None):
        self.folder = data_dir / "trainings"
        self.blobs = blobs
        self.slots = max(1, slots)
        self.gpus = local_gpus(gpus_setting)
        self._queue: deque[TrainingRun] = deque()
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training-spawner")
        self._reports: TrainingReports | None = None
        self._closing = False

    def root(self, job_id: str) -> Path:
        return self.folder / job_id

    def start(self, reports: TrainingReports) -> None:
        self._reports = reports

    @staticmethod
    def check_instance_type(instance_type: object, use_spot: object) -> str:
        if instance_type == LOCAL_INSTANCE_TYPE:
            if use_spot:
                raise InvalidRequest("training_params.use_spot is for SageMaker's spot instances; this middleware "
                                     "runs the local backend, which trains on this machine.")
            return instance_type
        if isinstance(instance_type, str) and instance_type.startswith("ml."):
            raise InvalidRequest(f"training_params.training_instance_type: {instance_type} is a SageMaker training "
                                 "instance, and this middleware runs the local backend, which trains on this "
                                 f"machine: use {LOCAL_INSTANCE_TYPE!r}.")
        raise InvalidRequest(f"training_params.training_instance_type {instance_type!r} is unknown; on the local "
                             f"backend use {LOCAL_INSTANCE_TYPE!r}.")

    @staticmethod
    def new_run_name(job_id: str) -> None:
        return None  # one process at a time per job: its reports need no name

    def reconcile(self, job: TrainingJob) -> None:
        """Nothing to do: every process reports its own end."""

    # -- the queue ------------------------------------------------------------------------------------
    def submit(self, run: TrainingRun) -> None:
        """Queue the job; it starts when a slot is free (at once if one is)."""
        with self._lock:
            if run.job_id in self._running or any(q.job_id == run.job_id for q in self._queue):
                return
            self._queue.append(run)
        self._fill_slots()

    def queue_position(self, job_id: str) -> int | None:
        """0-based place in the queue; None when the job is not waiting."""
        with self._lock:
            return next((i for i, q in enumerate(self._queue) if q.job_id == job_id), None)

    def is_running(self, job: TrainingJob) -> bool:
        with self._lock:
            return job.id in self._running

    def stop(self, job: TrainingJob) -> bool:
        """A user's Stop: a waiting job leaves the queue (True: it never ran now), a running one gets
        SIGTERM (it saves its state, exits, and is reported as it ends)."""
        with self._lock:
            for queued in list(self._queue):
                if queued.job_id == job.id:
                    self._queue.remove(queued)
                    return True
            running = self._running.get(job.id)
            if running is None:
                return True
            running.stop_requested = True
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGTERM)
        return False

    def progress(self, job: TrainingJob) -> dict[str, Any] | None:
        return read_progress(self.root(job.id))

    def sample_key(self, job: TrainingJob, name: str) -> str | None:
        """The sample, copied from the job's folder into the blobs (`train/<id>/samples/`) the first time."""
        key = f"train/{job.id}/samples/{name}"
        if not self.blobs.exists(key):
            source = TrainLayout(self.root(job.id)).samples / name
            if not source.is_file():
                return None
            with self.blobs.writer(key) as out:
                out.write(source.read_bytes())
        return key

    @contextmanager
    def open_model(self, job: TrainingJob, model: str) -> Iterator[tuple[str, BinaryIO]]:
        path = TrainLayout(self.root(job.id)).model_dir / model
        if not model or Path(model).name != model or not path.is_file():
            raise FileNotFoundError(f"the trainer reported {model!r}, which is not in its model folder")
        with path.open("rb") as stream:
            yield path.name, stream

    def _fill_slots(self) -> None:
        while True:
            with self._lock:
                if self._closing or len(self._running) >= self.slots or not self._queue:
                    return
                run = self._queue.popleft()
                gpus_taken = [r.gpu for r in self._running.values()]
                gpu = min(self.gpus, key=gpus_taken.count) if self.gpus else None
                # Held before the process exists, so a second _fill_slots cannot overfill the slots.
                self._running[run.job_id] = _Running(run=run, process=None, gpu=gpu)  # type: ignore[arg-type]
            try:
                process = self._spawn(run, gpu)
            except Exception as exc:  # noqa: BLE001 - the job must end with the reason, not hang
                log.exception("training %s could not start", run.job_id)
                with self._lock:
                    self._running.pop(run.job_id, None)
                self._report(run.job_id, TrainingEnded(None, failure=f"the training process could not start: {exc}"))
                continue
            with self._lock:
                self._running[run.job_id].process = process
            threading.Thread(target=self._watch, args=(run.job_id,), name=f"training-{run.job_id[:8]}",
                             daemon=True).start()

    # -- one process ----------------------------------------------------------------------------------
    def _spawn(self, run: TrainingRun, gpu: str | None) -> subprocess.Popen:
        root = self.root(run.job_id)
        self._lay_out(root, run)
        env = {**WorkerProcesses._thread_env(self.slots), **worker_environment(os.environ), "HF_HUB_OFFLINE": "1",
               "SD_AWS_SAGEMAKER_ROOT": str(root)}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        command = [sys.executable, "-m", "aws_extension", "sagemaker", "train"]
        with open(root / "train.log", "ab") as log_file:
            return self._spawner.submit(
                subprocess.Popen, command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=root,
                preexec_fn=die_with_parent).result()  # noqa: PLW1509 - prctl only, no locks taken

    def _lay_out(self, root: Path, run: TrainingRun) -> None:
        """SageMaker's input layout under `root`, again at every start (a resume keeps checkpoints/)."""
        layout = TrainLayout(root)
        layout.hyperparameters.parent.mkdir(parents=True, exist_ok=True)
        layout.hyperparameters.write_text(json.dumps(run.hyperparameters))
        for channel, files in ((BASE_CHANNEL, [run.base]), (INSTANCE_CHANNEL, run.instance),
                               (CLASS_CHANNEL, run.class_images)):
            folder = layout.channel(channel)
            shutil.rmtree(folder, ignore_errors=True)
            if not files:
                continue
            folder.mkdir(parents=True)
            for f in files:  # a filename may name a concept's folder: `<i>/<name>` (worker/sagemaker_train.py)
                (folder / f.filename).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(self.blobs.path(f.key), folder / f.filename)
        # A new run's output: the progress and failure of an earlier process must not be read as this one's.
        layout.failure.unlink(missing_ok=True)

    def _watch(self, job_id: str) -> None:
        with self._lock:
            running = self._running[job_id]
        returncode = running.process.wait()
        layout = TrainLayout(self.root(job_id))
        failure = layout.failure.read_text().strip() if layout.failure.exists() else None
        progress = read_progress(layout.root)
        completed = returncode == 0 and (progress or {}).get("status") == "Complete"
        ended = TrainingEnded(progress, completed=completed, model=(progress or {}).get("model") if completed else None,
                              failure=None if completed else failure,
                              stopped=not completed and not failure and running.stop_requested,
                              death=death(returncode))
        with self._lock:
            self._running.pop(job_id, None)
            closing = self._closing
        if not closing:
            self._report(job_id, ended)
            self._fill_slots()

    def _report(self, job_id: str, ended: TrainingEnded) -> None:
        if self._reports is None:
            return
        try:
            self._reports.run_ended(job_id, ended)
        except Exception:
            log.exception("training %s: recording how its process ended failed", job_id)

    def shutdown(self, wait_s: float = STOP_WAIT_S) -> None:
        """Stop every process (SIGTERM: each saves its state) without reporting: the jobs stay `Training`
        and resume at the next start."""
        with self._lock:
            self._closing = True
            self._queue.clear()
            processes = [r.process for r in self._running.values() if r.process is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            _wait_or_kill(process, wait_s)
        self._spawner.shutdown(wait=False)


def _wait_or_kill(process: subprocess.Popen, wait_s: float) -> None:
    try:
        process.wait(wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _link_or_copy(source: Path, target: Path, copy: Callable[[Path, Path], Any] = shutil.copyfile) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        copy(source, target)
