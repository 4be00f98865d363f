"""SageMaker's training container contract: `sd-aws sagemaker train` (the image's `train` executable).

SageMaker runs `docker run IMAGE train`. Under the root (`SD_AWS_SAGEMAKER_ROOT`, default `/opt/ml`):
- in: `input/config/hyperparameters.json` (every value a string: `TrainingConfig.to_hyperparameters()`),
  and the channels `input/data/base/` (the base checkpoint: one model file), `input/data/instance/` (the
  images, each with an optional `<stem>.txt` caption) and, optional, `input/data/class/` (class images);
  a job of several concepts (`TrainingConfig.trained_concepts`: the `is_valid` ones of `concepts_list`) has
  concept i's files in `instance/<i>/` and `class/<i>/` (i = 0, 1, ... in that order; a concept without class
  images has no `class/<i>/`), a job of one concept has them in `instance/` and `class/` themselves
  (`engine/train/data.py` `concept_folder`). Whoever lays out the channels (the local backend's links, the
  SageMaker backend's S3 prefixes) writes this layout; the middleware resolves each concept's dataset
  (its `dataset_name` in the hyperparameters' `concepts_list`);
- out: the trained model in `model/` (`<model_name>.safetensors`: a kohya LoRA or an A1111 checkpoint;
  SageMaker uploads it as model.tar.gz), the samples in `output/data/samples/`, and `output/progress.json`
  (rewritten atomically after each step: status, step, total_steps, loss, steps_per_s, eta_s, samples,
  model, error) for the local backend, which runs this same entry point as a process per job;
- resume: `checkpoints/` (synced to S3 by SageMaker's CheckpointConfig) holds the saved state and the
  generated class images; a run that finds this job's state there goes on from it;
- the progress for SageMaker: `checkpoints/progress/` holds a copy of progress.json (at most every
  `training_progress_sync_s`, and at every new sample and at the end) and of the samples, which SageMaker's
  checkpoint sync puts in S3, where the middleware reads them (it cannot reach the instance);
- failure: a one-paragraph reason in `output/failure` (SageMaker shows it as the job's FailureReason) and
  exit status 1. SIGTERM (StopTrainingJob, or the local backend's Stop) saves the state and exits 0 with the
  status `Stopped`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_extension.settings import WorkerSettings, load
from aws_extension.training import TrainingConfig, TrainingConfigError
from aws_extension.vocabulary import MODEL_SUFFIXES

log = logging.getLogger(__name__)

BASE_CHANNEL, INSTANCE_CHANNEL, CLASS_CHANNEL = "base", "instance", "class"
PROGRESS_FILE = "progress.json"
SYNCED_PROGRESS_DIR = "progress"  # under checkpoints/
FAILURE_FILE = "failure"
STATUS_TRAINING, STATUS_FAILED = "Training", "Fail"


class TrainJobError(Exception):
    """A reason the job cannot run, written to output/failure."""


@dataclass(frozen=True)
class TrainLayout:
    """The paths of SageMaker's training contract under one root."""

    root: Path

    @property
    def hyperparameters(self) -> Path:
        return self.root / "input" / "config" / "hyperparameters.json"

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def samples(self) -> Path:
        return self.output / "data" / "samples"

    @property
    def progress(self) -> Path:
        return self.output / PROGRESS_FILE

    @property
    def failure(self) -> Path:
        return self.output / FAILURE_FILE

    @property
    def synced_progress(self) -> Path:
        return self.checkpoints / SYNCED_PROGRESS_DIR / PROGRESS_FILE

    @property
    def synced_samples(self) -> Path:
        return self.checkpoints / SYNCED_PROGRESS_DIR / "samples"


def read_progress(root: Path) -> dict[str, Any] | None:
    """The job's latest progress record (for the local backend), or None before the first."""
    path = TrainLayout(root).progress
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class _ProgressFile:
    def __init__(self, layout: TrainLayout, sync_interval_s: float):
        self.layout = layout
        self.sync_interval_s = sync_interval_s  # each copy is an S3 upload on SageMaker
        self.record: dict[str, Any] = {"status": STATUS_TRAINING, "step": 0, "total_steps": 0, "loss": None,
                                       "steps_per_s": None, "eta_s": None, "samples": [], "model": None,
                                       "error": None}
        self._synced_at: float | None = None

    def write(self, final: bool = False, **changes: Any) -> None:
        new_samples = changes.get("samples", self.record["samples"]) != self.record["samples"]
        self.record.update(changes, updated_at=time.time())
        text = json.dumps(self.record)
        _write_atomically(self.layout.progress, text)
        if final or new_samples or self._synced_at is None \
                or time.monotonic() - self._synced_at >= self.sync_interval_s:
            self._sync(text)

    def _sync(self, text: str) -> None:
        """The copy under checkpoints/ (samples first, so the progress never names one not there)."""
        self.layout.synced_samples.mkdir(parents=True, exist_ok=True)
        for name in self.record["samples"]:
            target = self.layout.synced_samples / name
            if not target.exists():
                shutil.copyfile(self.layout.samples / name, target)
        _write_atomically(self.layout.synced_progress, text)
        self._synced_at = time.monotonic()


def _read_config(layout: TrainLayout) -> TrainingConfig:
    try:
        hyperparameters = json.loads(layout.hyperparameters.read_text())
    except FileNotFoundError:
        raise TrainJobError(f"There are no hyperparameters: {layout.hyperparameters} is missing.") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainJobError(f"The hyperparameters file is not JSON: {exc}.") from None
    try:
        return TrainingConfig.from_hyperparameters(hyperparameters)
    except TrainingConfigError as exc:
        raise TrainJobError(f"Bad hyperparameter {exc.field}: {exc}.") from None


def _base_file(layout: TrainLayout) -> Path:
    channel = layout.channel(BASE_CHANNEL)
    if not channel.is_dir():
        raise TrainJobError(f"The input channel '{BASE_CHANNEL}' (the base checkpoint) is missing: "
                            f"expected {channel}.")
    files = sorted(p for p in channel.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise TrainJobError(f"The input channel '{BASE_CHANNEL}' must hold exactly one model file "
                            f"({', '.join(MODEL_SUFFIXES)}); it holds {found}.")
    return files[0]


def _instance_dir(layout: TrainLayout) -> Path:
    channel = layout.channel(INSTANCE_CHANNEL)
    if not channel.is_dir():
        raise TrainJobError(f"The input channel '{INSTANCE_CHANNEL}' (the training images) is missing: "
                            f"expected {channel}.")
    return channel


def run_training_job(root: Path, device: str = "auto", progress_sync_s: float = 10.0) -> int:
    """Run the job laid out under `root`; the exit status (0: Complete or Stopped, 1: failed)."""
    layout = TrainLayout(root)
    layout.output.mkdir(parents=True, exist_ok=True)
    layout.failure.unlink(missing_ok=True)
    progress_file = _ProgressFile(layout, progress_sync_s)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        config = _read_config(layout)
        base, instance_dir = _base_file(layout), _instance_dir(layout)
        class_dir = layout.channel(CLASS_CHANNEL)
        from aws_extension.engine.train import TrainingError, TrainInputs, TrainProgress, train

        def report(p: TrainProgress) -> None:
            eta = (p.total_steps - p.step) / p.steps_per_s if p.steps_per_s else None
            progress_file.write(step=p.step, total_steps=p.total_steps, loss=p.loss,
                                steps_per_s=round(p.steps_per_s, 3), eta_s=round(eta, 1) if eta is not None else None,
                                samples=sorted(s.name for s in layout.samples.glob("*.png")))

        progress_file.write()
        inputs = TrainInputs(base=base, instance_dir=instance_dir, out_dir=layout.model_dir,
                             state_dir=layout.checkpoints, class_dir=class_dir if class_dir.is_dir() else None,
                             class_cache_dir=layout.checkpoints / "class-images", samples_dir=layout.samples)
        try:
            result = train(config, inputs, progress=report, stop=stop, device=device)
        except TrainingError as exc:
            raise TrainJobError(str(exc)) from None
        progress_file.write(final=True, status=result.status, step=result.step, total_steps=result.total_steps,
                            model=result.model.name if result.model else None,
                            samples=sorted(s.name for s in layout.samples.glob("*.png")))
        return 0
    except TrainJobError as exc:
        return _fail(layout, progress_file, str(exc))
    except Exception as exc:  # noqa: BLE001 - any crash must still leave its reason for the user
        log.exception("training failed")
        return _fail(layout, progress_file, f"The trainer failed: {type(exc).__name__}: {exc}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _fail(layout: TrainLayout, progress_file: _ProgressFile, reason: str) -> int:
    paragraph = " ".join(reason.split())
    layout.failure.write_text(paragraph + "\n")
    progress_file.write(final=True, status=STATUS_FAILED, error=paragraph)
    log.error("%s", paragraph)
    return 1


def train_main() -> int:
    """`sd-aws sagemaker train`: the job under the settings' SageMaker root."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load(WorkerSettings)
    return run_training_job(settings.sagemaker_root, device=settings.device,
                            progress_sync_s=settings.training_progress_sync_s)
