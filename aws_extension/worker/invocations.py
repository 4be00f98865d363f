"""`POST /invocations`: one job, everything it needs in the request (SageMaker's container contract).

The middleware's local dispatcher and SageMaker's async endpoints send exactly this; the answer is what
SageMaker writes to the job's output (or failure) location, so it stays small.

Request (JSON object)::

    {
      "task": "txt2img" | "img2img" | "merge-checkpoint",
      "job_id": "<str>",                      # optional; echoed back. POST /sdapi/v1/interrupt?job_id=<id>
                                              # stops it, running or still fetching its models
      "models": [                             # the files the job may use, fetched into the model cache
        {"type": "Stable-diffusion" | "Lora" | "embeddings" | "hypernetworks" | "ControlNet" | "VAE",
         "name": "file.safetensors",          # as the WebUI shows it; LoRAs are found by stem (<lora:file:0.8>)
         "sha256": "<64 hex>",                # the file is verified against it, and cached by it
         "url": "<http(s) GET URL>"}          # e.g. an S3 presigned URL or the middleware's signed /blobs URL
      ],
      "params": {<A1111 /sdapi/v1/txt2img|img2img payload>}   # or
      "params_url": "<http(s) GET URL of that JSON>",
      "output": {
        "image_urls": ["<http(s) PUT URL>", ...],  # optional: the PNGs are PUT there in order, as many as
                                                   # were produced up to its length; absent: they come back
                                                   # base64 in the answer
        "param_url": "<http(s) PUT URL>",          # optional: receives <id>_param.json (see below)
        "model_url": "<http(s) PUT URL>"           # merge-checkpoint only, required: receives the merged file
      }
    }

txt2img/img2img: the checkpoint is the "Stable-diffusion" entry of `models` (the one named by
`params.override_settings.sd_model_checkpoint` when there are several); without one, the worker's own
selected checkpoint. Models of `models` come first; the worker's own models folder is also visible.

merge-checkpoint: `params` = {"primary_model_name", "secondary_model_name", "tertiary_model_name"
(required by "Add difference"), "interp_method": "Weighted sum" | "Add difference" | "No interpolation",
"multiplier": float (default 0.3), "save_as_half": bool (default false)}, each name naming an entry of
`models`. The merged safetensors file is PUT to `output.model_url`.

Uploads are plain HTTP PUTs of the bytes (Content-Type image/png, application/json or
application/octet-stream); any non-2xx answer fails the job.

`<id>_param.json` (PUT to `output.param_url`): {"job_id", "task", "parameters": {...}, "info": {...}}
(A1111's `parameters`, and its `info` decoded).

Answers (JSON object, never null, never a stack trace):

    200 {"status": "succeed", "job_id", "images": [<base64 PNG>, ...] (empty when image_urls were given),
         "image_count": <images produced>, "info": "<A1111 info as a JSON string>", "parameters": {...},
         "timings": {"load_s", "run_s", "upload_s"}}
         # load_s: fetching the models into the cache; run_s: the engine (pipeline load included)
    200 {"status": "succeed", "job_id", "sha256", "size", "timings"}                  # merge-checkpoint
    4xx {"status": "failed", "job_id", "error": "<one sentence>"}   # bad request or model refused (400)
    409 {"status": "cancelled", "job_id", "error": "The job was interrupted."}
    5xx {"status": "failed", "job_id", "error": "<one sentence>"}   # 502: a model download, an upload or
                                                                    # the forwarded-to WebUI failed;
                                                                    # 503: engine not ready; 500: a bug
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from aws_extension.engine.base import MODEL_TYPES, EngineError, Interrupted, ModelSet
from aws_extension.worker.model_cache import ModelFetchError, check_model_name
from aws_extension.worker.models_dir import model_file_problem
from aws_extension.worker.runtime import CHECKPOINT_TYPE, EngineNotReady, WorkerRuntime
from aws_extension.worker.webui_engine import WebUIError

log = logging.getLogger(__name__)

GENERATION_TASKS = ("txt2img", "img2img")
MERGE_TASK = "merge-checkpoint"
TASKS = (*GENERATION_TASKS, MERGE_TASK)
MERGE_METHODS = ("Weighted sum", "Add difference", "No interpolation")


class InvocationError(Exception):
    """The request itself is wrong (400) or a transfer it names failed (`status`)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ModelRef:
    type: str
    name: str
    sha256: str
    url: str


@dataclass
class Invocation:
    task: str
    job_id: str
    models: list[ModelRef]
    params: dict[str, Any]
    image_urls: list[str] = field(default_factory=list)
    param_url: str | None = None
    model_url: str | None = None


def _require_url(value: Any, what: str) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise InvocationError(f"{what} must be an http or https URL")
    return value


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvocationError(f"The request body is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise InvocationError("The request body must be a JSON object")
    return request


def parse_invocation(request: dict[str, Any], job_id: str, timeout_s: float) -> Invocation:
    """The job of `request`, with `params_url` already fetched; InvocationError names what is wrong."""
    task = request.get("task")
    if task not in TASKS:
        raise InvocationError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}")
    models = []
    for i, entry in enumerate(request.get("models") or []):
        if not isinstance(entry, dict):
            raise InvocationError(f"models[{i}] must be an object with type, name, sha256 and url")
        if entry.get("type") not in MODEL_TYPES:
            raise InvocationError(f"models[{i}].type {entry.get('type')!r} is not one of {', '.join(MODEL_TYPES)}")
        for key in ("name", "sha256"):
            if not isinstance(entry.get(key), str):
                raise InvocationError(f"models[{i}].{key} must be a string")
        models.append(ModelRef(type=entry["type"], name=check_model_name(entry["name"]),
                               sha256=entry["sha256"].lower(),
                               url=_require_url(entry.get("url"), f"models[{i}].url")))
    params = request.get("params")
    if params is None and request.get("params_url") is not None:
        params = _fetch_params(_require_url(request["params_url"], "params_url"), timeout_s)
    if not isinstance(params, dict):
        raise InvocationError("params (or the JSON at params_url) must be a JSON object")
    output = request.get("output") or {}
    if not isinstance(output, dict):
        raise InvocationError("output must be an object")
    image_urls = output.get("image_urls") or []
    if not isinstance(image_urls, list):
        raise InvocationError("output.image_urls must be a list of URLs")
    return Invocation(
        task=task, job_id=job_id, models=models, params=params,
        image_urls=[_require_url(u, f"output.image_urls[{i}]") for i, u in enumerate(image_urls)],
        param_url=_require_url(output["param_url"], "output.param_url") if output.get("param_url") else None,
        model_url=_require_url(output["model_url"], "output.model_url") if output.get("model_url") else None,
    )


def _fetch_params(url: str, timeout_s: float) -> Any:
    host = urlsplit(url).netloc
    try:
        response = requests.get(url, timeout=timeout_s)
    except requests.RequestException as exc:
        raise InvocationError(f"Fetching params_url from {host} failed: {type(exc).__name__}", 502) from exc
    if response.status_code != 200:
        raise InvocationError(f"Fetching params_url from {host} failed with HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise InvocationError("params_url does not hold JSON") from None


def _upload(url: str, data: Any, content_type: str, what: str, timeout_s: float) -> None:
    host = urlsplit(url).netloc
    try:
        response = requests.put(url, data=data, headers={"Content-Type": content_type}, timeout=timeout_s)
    except requests.RequestException as exc:
        raise InvocationError(f"Uploading {what} to {host} failed: {type(exc).__name__}", 502) from exc
    if not 200 <= response.status_code < 300:
        raise InvocationError(f"Uploading {what} to {host} failed with HTTP {response.status_code}", 502)


def _fetch_models(runtime: WorkerRuntime, invocation: Invocation) -> dict[str, dict[str, Path]]:
    """Every model the job may use by type and name: this worker's folder, then the fetched ones."""
    files = runtime.models.all()
    for ref in invocation.models:
        path = runtime.cache.fetch(ref.sha256, ref.name, ref.url,
                                   check=lambda p, ref=ref: model_file_problem(p, ref.name, ref.type))
        files.setdefault(ref.type, {})[ref.name] = path
    return files


def _job_checkpoint(runtime: WorkerRuntime, invocation: Invocation, files: dict[str, dict[str, Path]]) -> Path:
    fetched = [ref.name for ref in invocation.models if ref.type == CHECKPOINT_TYPE]
    wanted = (invocation.params.get("override_settings") or {}).get("sd_model_checkpoint")
    if wanted in fetched:
        return files[CHECKPOINT_TYPE][wanted]
    if fetched:
        return files[CHECKPOINT_TYPE][fetched[0]]
    return runtime.local_model_set(wanted).checkpoint


def _run_generation(runtime: WorkerRuntime, invocation: Invocation) -> dict[str, Any]:
    timeout_s = runtime.settings.download_timeout_s
    started = time.monotonic()
    engine = runtime.engine
    with runtime.cache.pinned(ref.sha256 for ref in invocation.models):
        files = _fetch_models(runtime, invocation)
        models = ModelSet(checkpoint=_job_checkpoint(runtime, invocation, files), files=files)
        fetched = time.monotonic()
        result = runtime.jobs.run(
            invocation.job_id, invocation.task,
            lambda progress, cancel: engine.generate(invocation.task, invocation.params, models, progress, cancel))
    ran = time.monotonic()
    for i, (url, png) in enumerate(zip(invocation.image_urls, result.images, strict=False)):
        _upload(url, png, "image/png", f"image {i + 1}", timeout_s)
    if invocation.param_url:
        param_file = {"job_id": invocation.job_id, "task": invocation.task,
                      "parameters": result.parameters, "info": result.info}
        _upload(invocation.param_url, json.dumps(param_file).encode(), "application/json", "the param file",
                timeout_s)
    uploaded = time.monotonic()
    return {
        "status": "succeed",
        "job_id": invocation.job_id,
        "images": [] if invocation.image_urls else [base64.b64encode(png).decode() for png in result.images],
        "image_count": len(result.images),
        "info": json.dumps(result.info),
        "parameters": result.parameters,
        "timings": {"load_s": round(fetched - started, 3), "run_s": round(ran - fetched, 3),
                    "upload_s": round(uploaded - ran, 3)},
    }


def _merge_path(params: dict[str, Any], key: str, files: dict[str, Path], required: bool) -> Path | None:
    name = params.get(key)
    if name in (None, "") and not required:
        return None
    if name not in files:
        raise InvocationError(f"params.{key} {name!r} names none of the job's models")
    return files[name]


def _run_merge(runtime: WorkerRuntime, invocation: Invocation) -> dict[str, Any]:
    params = invocation.params
    method = params.get("interp_method", "Weighted sum")
    if method not in MERGE_METHODS:
        raise InvocationError(f"params.interp_method {method!r} is not one of {', '.join(MERGE_METHODS)}")
    if not invocation.model_url:
        raise InvocationError("merge-checkpoint needs output.model_url to upload the merged model to")
    try:
        multiplier = float(params.get("multiplier", 0.3))
    except (TypeError, ValueError):
        raise InvocationError("params.multiplier must be a number") from None
    engine = runtime.engine
    started = time.monotonic()
    with runtime.cache.pinned(ref.sha256 for ref in invocation.models):
        by_name = {ref.name: runtime.cache.fetch(ref.sha256, ref.name, ref.url,
                                                 check=lambda p, ref=ref: model_file_problem(p, ref.name, ref.type))
                   for ref in invocation.models}
        primary = _merge_path(params, "primary_model_name", by_name, required=True)
        secondary = _merge_path(params, "secondary_model_name", by_name, required=True)
        tertiary = _merge_path(params, "tertiary_model_name", by_name, required=method == "Add difference")
        fetched = time.monotonic()
        out = runtime.cache.scratch_path(f"{invocation.job_id}-merged.safetensors")
        try:
            runtime.jobs.run(invocation.job_id, invocation.task, lambda progress, cancel: engine.merge(
                primary, secondary, tertiary, method, multiplier, bool(params.get("save_as_half", False)), out,
                progress))
            ran = time.monotonic()
            digest = hashlib.sha256()
            with out.open("rb") as f:
                for chunk in iter(lambda: f.read(1024 * 1024), b""):
                    digest.update(chunk)
            size = out.stat().st_size
            with out.open("rb") as f:
                _upload(invocation.model_url, f, "application/octet-stream", "the merged model",
                        runtime.settings.download_timeout_s)
        finally:
            out.unlink(missing_ok=True)
    uploaded = time.monotonic()
    return {"status": "succeed", "job_id": invocation.job_id, "sha256": digest.hexdigest(), "size": size,
            "timings": {"load_s": round(fetched - started, 3), "run_s": round(ran - fetched, 3),
                        "upload_s": round(uploaded - ran, 3)}}


def _failed(job_id: str | None, message: str) -> dict[str, Any]:
    return {"status": "failed", "job_id": job_id, "error": message}


def execute_invocation(runtime: WorkerRuntime, body: bytes) -> tuple[int, dict[str, Any]]:
    """Run the job of `body`; returns the HTTP status and the JSON answer of the contract above."""
    job_id: str | None = None
    try:
        request = decode_body(body)
        job_id = request.get("job_id") or uuid.uuid4().hex
        if not isinstance(job_id, str):
            job_id = None
            raise InvocationError("job_id must be a string")
        with runtime.jobs.announced(job_id):
            invocation = parse_invocation(request, job_id, runtime.settings.download_timeout_s)
            if invocation.task == MERGE_TASK:
                return 200, _run_merge(runtime, invocation)
            return 200, _run_generation(runtime, invocation)
    except (InvocationError, ModelFetchError) as exc:
        return exc.status, _failed(job_id, str(exc))
    except EngineError as exc:
        return 400, _failed(job_id, str(exc))
    except Interrupted:
        return 409, {"status": "cancelled", "job_id": job_id, "error": "The job was interrupted."}
    except EngineNotReady as exc:
        return 503, _failed(job_id, str(exc))
    except WebUIError as exc:
        return 502, _failed(job_id, str(exc))
    except Exception as exc:  # noqa: BLE001 - the answer must say something, the log keeps the trace
        log.exception("Job %s failed", job_id)
        return 500, _failed(job_id, f"Internal error: {type(exc).__name__}: {exc}")
