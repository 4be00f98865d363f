"""An engine that forwards jobs to a running A1111 WebUI through its `/sdapi/v1` API.

For each job: the job's model files are linked (or copied, across file systems) into the WebUI's model
folders, the WebUI is told to rescan, the checkpoint is selected through `POST /sdapi/v1/options`, the
WebUI's own lists are checked to name every placed file (an embedding it skipped, or a file in a folder it
does not scan, fails the job with the reason instead of running without it), and the payload goes to
`/sdapi/v1/txt2img|img2img`. The folders are the WebUI's own, from `GET /sdapi/v1/cmd-flags` (A1111's
defaults: `<data_dir>/embeddings`, `<models>/Stable-diffusion|Lora|VAE|hypernetworks|ControlNet`, each
overridden by its flag); they are paths on the WebUI's machine, so the worker must see its file system at the
same paths. A WebUI that does not answer cmd-flags (an sd-aws worker) gets `webui_models_dir/<type>`, when
given; else nothing is placed. (An sd-aws worker answers cmd-flags with its own folders.) Progress comes from the
WebUI's `/sdapi/v1/progress`, polled while the job runs; cancelling calls `/sdapi/v1/interrupt`.
The WebUI must run with its API enabled (`--api`, or `--nowebui`).

Placing replaces a WebUI file of the same name (the job's sha256 decides the content). Every file of the
job's ModelSet is placed, the worker's own models folder included: point `--models-dir` at the WebUI's
models folder (nothing to place then but fetched models) or keep it small. A placed file is a hard link to
the cache's copy, so its space is freed only once both are gone.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from aws_extension.engine.base import (
    EngineError,
    GenerationResult,
    Interrupted,
    ModelSet,
    Progress,
    ProgressCallback,
)
from aws_extension.payload import NOT_IN_A1111_API
from aws_extension.vocabulary import GENERATION_TASKS, CheckpointType

log = logging.getLogger(__name__)

# model type -> (the cmd-flags entry naming its folder, its folder under the models path when the flag is unset);
# the worker's own cmd-flags answers with these entries too (worker.app)
FOLDER_FLAGS = {
    CheckpointType.STABLE_DIFFUSION: ("ckpt_dir", "Stable-diffusion"),
    CheckpointType.LORA: ("lora_dir", "Lora"),
    CheckpointType.EMBEDDINGS: ("embeddings_dir", None),  # A1111: <data_dir>/embeddings
    CheckpointType.HYPERNETWORKS: ("hypernetwork_dir", "hypernetworks"),
    CheckpointType.CONTROLNET: ("controlnet_dir", "ControlNet"),  # sd-webui-controlnet's flag
    CheckpointType.VAE: ("vae_dir", "VAE"),
}
# model type -> (the route that rescans it, the route listing what the WebUI has, the path's key there).
# A1111 has no hypernetwork rescan route; ControlNet models are listed by the extension by name only.
_LISTINGS = {
    CheckpointType.STABLE_DIFFUSION: ("refresh-checkpoints", "sd-models", "filename"),
    CheckpointType.LORA: ("refresh-loras", "loras", "path"),
    CheckpointType.VAE: ("refresh-vae", "sd-vae", "filename"),
    CheckpointType.HYPERNETWORKS: (None, "hypernetworks", "path"),
}


def webui_folders(flags: dict[str, Any]) -> dict[str, Path]:
    """The WebUI's folder of each model type, from its `GET /sdapi/v1/cmd-flags` answer (A1111 v1.10)."""
    data_dir = Path(flags.get("data_dir") or ".")
    models_path = Path(flags.get("models_dir") or data_dir / "models")
    folders = {}
    for model_type, (flag, default) in FOLDER_FLAGS.items():
        if flags.get(flag):
            folders[model_type] = Path(flags[flag])
        else:
            folders[model_type] = models_path / default if default else data_dir / "embeddings"
    return folders


class WebUIError(RuntimeError):
    """The WebUI failed (unreachable, or an internal error); not the job's fault."""


class WebUIEngine:
    def __init__(self, webui_url: str, webui_models_dir: Path | None = None, timeout_s: float = 60.0,
                 poll_interval_s: float = 0.25):
        self.api = webui_url.rstrip("/") + "/sdapi/v1"
        self.webui_models_dir = webui_models_dir
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._session = requests.Session()

    def wait_until_reachable(self, deadline_s: float | None = None) -> None:
        """Block until the WebUI can take jobs (it may still be starting); forever when no deadline.

        `samplers` is the probe: the WebUI serves it once its API is up, an sd-aws worker once its engine is.
        """
        started = time.monotonic()
        while True:
            try:
                if self._session.get(f"{self.api}/samplers", timeout=self.timeout_s).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if deadline_s is not None and time.monotonic() - started > deadline_s:
                raise WebUIError(f"The WebUI at {self.api} did not answer within {deadline_s:.0f} s")
            time.sleep(1.0)

    def samplers(self) -> list[str]:
        return [s["name"] for s in self._call("GET", "samplers")]

    def generate(self, task: str, payload: dict[str, Any], models: ModelSet,
                 progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None) -> GenerationResult:
        if task not in GENERATION_TASKS:
            raise EngineError(f"The WebUI engine cannot run task {task!r}", field="task")
        for name in NOT_IN_A1111_API:
            if payload.get(name) is not None:
                raise EngineError(f"The WebUI engine cannot take {name}: the WebUI's API has no such field "
                                  "(use an endpoint with the built-in engine for this job)", field=name)
        cancel = cancel or threading.Event()
        placed = self._place_models(models)
        checkpoint = self._checkpoint_name(models)
        if self._call("GET", "options").get("sd_model_checkpoint") != checkpoint:
            # The WebUI loads the checkpoint before answering: as long as a generation may take.
            self._call("POST", "options", {"sd_model_checkpoint": checkpoint}, generation=True)
        self._check_seen(placed)  # after the checkpoint load: A1111 reloads its embeddings for the model
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="webui-job") as pool:
            answer = pool.submit(self._call, "POST", task, payload, generation=True)
            interrupted = False
            while not answer.done():
                if cancel.is_set() and not interrupted:
                    self._call("POST", "interrupt")
                    interrupted = True
                if progress is not None:
                    self._report_progress(progress)
                time.sleep(self.poll_interval_s)
            result = answer.result()
        if cancel.is_set():
            raise Interrupted()
        try:
            images = [base64.b64decode(image, validate=True) for image in result.get("images") or []]
        except binascii.Error as exc:
            raise WebUIError(f"The WebUI answered an image that is not base64: {exc}") from exc
        info = result.get("info") or "{}"
        return GenerationResult(images=images, parameters=result.get("parameters") or {},
                                info=json.loads(info) if isinstance(info, str) else info)

    def merge(self, primary: Path, secondary: Path, tertiary: Path | None, method: str, multiplier: float,
              save_as_half: bool, out: Path, progress: ProgressCallback | None = None) -> None:
        raise EngineError("The WebUI engine cannot merge checkpoints (the WebUI API has no merge route); "
                          "send merge-checkpoint jobs to a diffusers worker", field="task")

    # -- helpers ------------------------------------------------------------------------------------

    def _call(self, method: str, route: str, body: Any = None, *, generation: bool = False) -> Any:
        """One API call; a generation (or a checkpoint load) waits as long as the WebUI works on it."""
        try:
            response = self._session.request(method, f"{self.api}/{route}", json=body,
                                             timeout=None if generation else self.timeout_s)
        except requests.RequestException as exc:
            raise WebUIError(f"The WebUI did not answer {route}: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise WebUIError(f"The WebUI failed on {route}: HTTP {response.status_code} {_detail(response)}")
        if response.status_code == 409:  # an sd-aws worker answers an interrupted job so
            raise Interrupted()
        if response.status_code >= 400:
            raise EngineError(f"The WebUI refused {route}: {_detail(response)}")
        return response.json() if response.content else None

    def _report_progress(self, progress: ProgressCallback) -> None:
        try:
            state = self._call("GET", "progress?skip_current_image=true")["state"]
        except (WebUIError, KeyError, TypeError):
            return  # progress is best effort; the job's own answer decides
        if state.get("sampling_steps"):
            progress(Progress(step=int(state.get("sampling_step") or 0), total_steps=int(state["sampling_steps"]),
                              job_no=int(state.get("job_no") or 0), job_count=int(state.get("job_count") or 1)))

    def _checkpoint_name(self, models: ModelSet) -> str:
        for name, path in models.files.get(CheckpointType.STABLE_DIFFUSION, {}).items():
            if path == models.checkpoint:
                return name
        return models.checkpoint.name

    def _folders(self) -> dict[str, Path] | None:
        """The WebUI's model folders (asked each job: a restarted WebUI may have other flags), or None."""
        try:
            flags = self._call("GET", "cmd-flags")
        except EngineError:  # no such route: not an A1111 WebUI
            flags = None
        if isinstance(flags, dict) and flags.get("data_dir"):
            return webui_folders(flags)
        if self.webui_models_dir is not None:
            return {model_type: self.webui_models_dir / model_type for model_type in FOLDER_FLAGS}
        return None

    def _place_models(self, models: ModelSet) -> dict[str, dict[str, Path]]:
        """Link each of the job's files into the WebUI's folder under its name, then have it rescan what
        changed. Returns where each file is, by type, then by name (empty when the folders are unknown)."""
        folders = self._folders() if any(models.files.values()) else None
        if folders is None:
            return {}
        where: dict[str, dict[str, Path]] = {}
        changed: set[str] = set()
        for model_type, files in models.files.items():
            for name, source in files.items():
                target = folders.get(model_type, folders[CheckpointType.STABLE_DIFFUSION].parent / model_type) / name
                where.setdefault(model_type, {})[name] = target
                if _place(source, target):
                    changed.add(model_type)
                    log.info("Placed %s/%s in the WebUI's folder %s", model_type, name, target.parent)
        for model_type in changed:
            route = "refresh-embeddings" if model_type == CheckpointType.EMBEDDINGS else (
                _LISTINGS.get(model_type, (None,))[0])
            if route is not None:
                try:
                    self._call("POST", route)
                except EngineError:
                    log.info("The WebUI has no %s route; skipped", route)
        return where

    def _check_seen(self, placed: dict[str, dict[str, Path]]) -> None:
        """Fail the job, naming the file and why, when the WebUI does not list a file placed for it."""
        for model_type, files in placed.items():
            if model_type == CheckpointType.EMBEDDINGS:
                self._check_embeddings(files)
            elif model_type in _LISTINGS:
                _, route, key = _LISTINGS[model_type]
                listed = [str(entry.get(key) or "") for entry in self._call("GET", route) or []]
                for name, target in files.items():
                    if not any(_same_file(path, target) for path in listed):
                        raise EngineError(f"The WebUI does not list {model_type}/{name} (placed as {target}; "
                                          f"GET /sdapi/v1/{route} does not name it): it does not scan that folder",
                                          field="models")

    def _check_embeddings(self, files: dict[str, Path]) -> None:
        answer = self._call("GET", "embeddings") or {}
        loaded, skipped = answer.get("loaded") or {}, answer.get("skipped") or {}
        for name, target in files.items():
            stem = Path(name).stem  # A1111 names an embedding by its file's stem
            if stem in loaded:
                continue
            if stem in skipped:
                shape = skipped[stem].get("shape") if isinstance(skipped[stem], dict) else None
                raise EngineError(f"The WebUI skipped embedding {name}: its vectors (size {shape}) do not fit the "
                                  "loaded checkpoint", field="models")
            raise EngineError(f"The WebUI does not list embedding {name} (placed as {target}): it does not "
                              "scan that folder, or cannot read the file", field="models")


def _place(source: Path, target: Path) -> bool:
    """Link (or copy) `source` to `target` atomically; False when `target` already is that file."""
    if target.exists() and target.samefile(source):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.placing")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
    except OSError:  # another file system: copy instead
        shutil.copyfile(source, staging)
    staging.replace(target)  # atomic: the WebUI never sees half a file
    return True


def _same_file(listed: str, target: Path) -> bool:
    if not listed:
        return False
    try:
        return os.path.samefile(listed, target)
    except OSError:  # not visible from here
        return os.path.normpath(listed) == os.path.normpath(target)


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("errors") or body.get("error") or body)[:300]
    return str(body)[:300]
