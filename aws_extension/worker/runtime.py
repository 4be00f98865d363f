"""What one worker process holds: its models folder, its model cache, its engine and its one-job runner.

The engine is built in a background thread (importing torch and diffusers takes seconds); until it is
ready `/ping` answers 503 and jobs are refused with 503. Start-up also pays what a first job would: the
diffusers engine runs one small job on the worker's own checkpoint (the one selected at start, e.g. the
model SageMaker unpacked), which loads its pipeline and does what diffusers, torch and PIL do once per
process (the schedulers diffusers imports when a scheduler is built, torch's first run, PIL's plugins).
A checkpoint that cannot be loaded leaves the worker Failed with the reason, as an engine that cannot start.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aws_extension.engine.base import Engine, EngineError, GenerationResult, ModelSet
from aws_extension.settings import WorkerSettings
from aws_extension.vocabulary import CheckpointType, Task, model_stem, without_hash_suffix
from aws_extension.worker.errors import EngineNotReady, error_message
from aws_extension.worker.jobs import JobRunner
from aws_extension.worker.model_cache import ModelCache
from aws_extension.worker.models_dir import ModelsIndex

log = logging.getLogger(__name__)

# The job the diffusers engine runs on the worker's own checkpoint before the worker says it is healthy: the
# smallest one that goes through a whole job (prompt encoding, sampling, VAE decoding, the PNG).
WARM_UP_PAYLOAD: dict[str, Any] = {"prompt": "", "width": 64, "height": 64, "steps": 1, "sampler_name": "Euler a",
                                   "seed": 0, "batch_size": 1, "n_iter": 1}


def build_engine(engine_name: str, settings: WorkerSettings, webui_url: str | None,
                 webui_models_dir: Path | None) -> Engine:
    if engine_name == "diffusers":
        from aws_extension.engine.diffusers_engine import DiffusersEngine

        engine = DiffusersEngine(settings)
        log.info("The diffusers engine runs on %s", engine.placement)
        return engine
    if engine_name == "webui":
        from aws_extension.worker.webui_engine import WebUIEngine

        if not webui_url:
            raise ValueError("The webui engine needs the WebUI's URL (--webui-url)")
        engine = WebUIEngine(webui_url, webui_models_dir=webui_models_dir, timeout_s=settings.download_timeout_s)
        engine.wait_until_reachable()
        return engine
    raise ValueError(f"Unknown engine {engine_name!r}: use diffusers or webui")


class WorkerRuntime:
    def __init__(self, models_dir: Path, settings: WorkerSettings, engine_name: str = "diffusers",
                 webui_url: str | None = None, webui_models_dir: Path | None = None):
        self.settings = settings
        self.engine_name = engine_name
        self.models = ModelsIndex(models_dir)
        self.cache = ModelCache(settings.model_cache_dir or models_dir / ".cache",
                                settings.model_cache_budget_bytes, settings.download_timeout_s)
        self.jobs = JobRunner()
        self._webui_url = webui_url
        self._webui_models_dir = webui_models_dir
        self._engine: Engine | None = None
        self._engine_error: str | None = None
        self._stage = "starting"  # what start-up is doing (the health detail says it)
        self._warmed_checkpoint: str | None = None  # the checkpoint the start-up job ran on
        self.startup_s: dict[str, float] = {}  # seconds of each start-up step: engine, warm_up
        self._options_lock = threading.Lock()
        checkpoints = self.models.by_type(CheckpointType.STABLE_DIFFUSION)
        # As the WebUI does: the first checkpoint found is selected at start.
        self._options: dict[str, Any] = {"sd_model_checkpoint": next(iter(checkpoints), None)}

    # -- engine lifecycle ---------------------------------------------------------------------------

    def start_engine(self) -> threading.Thread:
        thread = threading.Thread(target=self._load_engine, name="engine-loader", daemon=True)
        thread.start()
        return thread

    def _load_engine(self) -> None:
        started = time.monotonic()
        self._stage = f"starting the {self.engine_name} engine"
        try:
            engine = build_engine(self.engine_name, self.settings, self._webui_url, self._webui_models_dir)
        except Exception as exc:  # noqa: BLE001 - any failure keeps /ping at 503 with the reason
            log.exception("The %s engine failed to start", self.engine_name)
            self._fail(f"The {self.engine_name} engine failed to start: {type(exc).__name__}: {exc}")
            return
        self.startup_s["engine"] = round(time.monotonic() - started, 3)
        if self.engine_name == "diffusers":  # a WebUI loads its own checkpoint when it starts
            try:
                self._warm_up(engine)
            except Exception as exc:  # noqa: BLE001 - the worker's own model is unusable: Failed, with why
                checkpoint = self.options().get("sd_model_checkpoint")
                log.exception("The start-up job on %s failed", checkpoint)
                self._fail(f"The worker's checkpoint {checkpoint} could not be loaded: {error_message(exc)}")
                return
        self._stage = "ready"
        self._engine = engine
        log.info("The %s engine is ready (start-up: %s)", self.engine_name, self.startup_s)

    def _warm_up(self, engine: Engine) -> None:
        """Run `WARM_UP_PAYLOAD` on the selected checkpoint (none: nothing to load)."""
        checkpoint = self.options().get("sd_model_checkpoint")
        if not checkpoint:
            return
        started = time.monotonic()
        self._stage = f"loading {checkpoint}"
        engine.generate(Task.TXT2IMG, WARM_UP_PAYLOAD, self.local_model_set(checkpoint))
        self._warmed_checkpoint = checkpoint
        self.startup_s["warm_up"] = round(time.monotonic() - started, 3)

    def _fail(self, reason: str) -> None:
        self._stage = "failed"
        self._engine_error = reason

    @property
    def ready(self) -> bool:
        return self._engine is not None

    @property
    def engine_error(self) -> str | None:
        return self._engine_error

    @property
    def status(self) -> str:
        if self._engine is not None:
            return "Healthy"
        return "Failed" if self._engine_error else "Starting"

    @property
    def stage(self) -> str:
        """What start-up is doing: starting the engine, loading the checkpoint, ready or failed."""
        return self._stage

    def health(self) -> dict[str, Any]:
        """Start-up as `GET /health` reports it: the status, the stage, the checkpoint the start-up job
        loaded (None: none was), the seconds each start-up step took, and the error of a failed start."""
        return {"status": self.status, "engine": self.engine_name, "stage": self.stage,
                "checkpoint_loaded": self._warmed_checkpoint, "startup_s": dict(self.startup_s),
                "error": self._engine_error}

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise EngineNotReady(self._engine_error or f"The {self.engine_name} engine is still starting")
        return self._engine

    # -- checkpoints and options --------------------------------------------------------------------

    def resolve_checkpoint(self, alias: str) -> str:
        """The name of the checkpoint `alias` means: a name, a title (`name [hash]`) or a stem."""
        checkpoints = self.models.by_type(CheckpointType.STABLE_DIFFUSION)
        alias = without_hash_suffix(alias)
        if alias in checkpoints:
            return alias
        for name in checkpoints:
            if model_stem(name) == alias:
                return name
        raise EngineError(f"Checkpoint {alias!r} is not among this worker's models", field="sd_model_checkpoint")

    def options(self) -> dict[str, Any]:
        with self._options_lock:
            return dict(self._options)

    def set_options(self, changes: dict[str, Any]) -> None:
        """Set WebUI options; `sd_model_checkpoint` must name a known checkpoint."""
        changes = dict(changes)
        if changes.get("sd_model_checkpoint") is not None:
            changes["sd_model_checkpoint"] = self.resolve_checkpoint(str(changes["sd_model_checkpoint"]))
        with self._options_lock:
            self._options.update(changes)

    def local_model_set(self, checkpoint_name: str | None) -> ModelSet:
        """The models of this worker's folder, with `checkpoint_name` (or the selected one) as checkpoint."""
        files = self.models.all()
        name = checkpoint_name or self.options().get("sd_model_checkpoint")
        if not name:
            raise EngineError(f"No checkpoint: this worker has none in {self.models.root / CheckpointType.STABLE_DIFFUSION}",
                              field="sd_model_checkpoint")
        name = self.resolve_checkpoint(name)
        return ModelSet(checkpoint=files[CheckpointType.STABLE_DIFFUSION][name], files=files)

    # -- jobs ---------------------------------------------------------------------------------------

    def generate(self, task: str, payload: dict[str, Any]) -> GenerationResult:
        """An `/sdapi/v1/txt2img|img2img` job on the local models, once no other job runs."""
        engine = self.engine
        override = (payload.get("override_settings") or {}).get("sd_model_checkpoint")
        models = self.local_model_set(override)
        return self.jobs.run(uuid.uuid4().hex, task,
                             lambda progress, cancel: engine.generate(task, payload, models, progress, cancel))
