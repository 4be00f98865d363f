"""`POST /invocations`: one job, everything it needs in the request (SageMaker's container contract).

The middleware's local dispatcher and SageMaker's async endpoints send exactly this; the answer is what
SageMaker writes to the job's output (or failure) location, so it stays small. The shapes are the
dataclasses of `aws_extension.wire` (`InvocationRequest`, `InvocationAnswer`); this is the contract in words.

Request (JSON object, `wire.InvocationRequest`)::

    {
      "task": "txt2img" | "img2img" | "merge-checkpoint",
      "job_id": "<str>",                      # optional (one is made up when absent); echoed back.
                                              # POST /sdapi/v1/interrupt?job_id=<id> stops it, running or
                                              # still fetching its models
      "models": [                             # optional: the files the job may use, fetched into the cache
        {"type": "Stable-diffusion" | "Lora" | "embeddings" | "hypernetworks" | "ControlNet" | "VAE",
         "name": "file.safetensors",          # as the WebUI shows it (a relative path, no `..`); LoRAs and
                                              # embeddings are found by stem (<lora:file:0.8>)
         "sha256": "<64 hex>",                # the file is verified against it, and cached by it
         "url": "<http(s) GET URL>"}          # e.g. an S3 presigned URL or the middleware's signed /blobs URL
      ],
      "params": {<A1111 /sdapi/v1/txt2img|img2img payload>}   # or
      "params_url": "<http(s) GET URL of that JSON>",         # fetched by the worker
      "output": {                                  # optional
        "image_urls": ["<http(s) PUT URL>", ...],  # the PNGs are PUT there in order, as many as were
                                                   # produced up to its length; absent or empty: they come
                                                   # back base64 in the answer
        "model_url": "<http(s) PUT URL>"           # merge-checkpoint only, required: receives the merged file
      },
      "progress_url": "<http(s) PUT URL>",    # optional: the job's wire.JobProgress is PUT there as it runs
      "cancel_url": "<http(s) GET URL>"       # optional: read while it runs; 200 stops the job, 404 goes on
    }                                         # (see worker/remote_control.py)

Fields the worker does not know are ignored. The worker writes no `<id>_param.json`: the middleware writes it
(`wire.ParamFile`) from the answer's `parameters` and `info`.

txt2img/img2img: the checkpoint is the "Stable-diffusion" entry of `models` (the one named by
`params.override_settings.sd_model_checkpoint` when there are several); without one, the worker's own
checkpoint of that name, else its selected checkpoint. Models of `models` come first; the worker's own models
folder is also visible.

merge-checkpoint: `params` = {"primary_model_name", "secondary_model_name", "tertiary_model_name"
(required by "Add difference"), "interp_method": "Weighted sum" | "Add difference" | "No interpolation"
(default "Weighted sum"), "multiplier": float (default 0.3), "save_as_half": bool (default false)}, each name
naming an entry of `models`. The merged safetensors file is PUT to `output.model_url`.

Downloaded models are checked before they are cached (`worker.models_dir.model_file_problem`): a file that is
not a model, or not of its `type`, fails the job (400). Uploads are plain HTTP PUTs of the bytes (Content-Type
image/png or application/octet-stream); any non-2xx answer fails the job.

Answer (JSON object, `wire.InvocationAnswer`; never null, never a stack trace). Every field is present, but
`job_id`, `error`, `sha256` and `size` only when they have a value::

    {"status": "succeed" | "failed" | "cancelled",
     "job_id": "<str>",                   # absent only when the request was refused before its job_id was read
     "error": "<one sentence>",           # failed / cancelled: why
     "images": [<base64 PNG>, ...],       # empty when output.image_urls were given (and for a merge)
     "image_count": <images produced>,
     "info": "<A1111 info as a JSON string>",   # "{}" for a merge or a failure
     "parameters": {...},                 # A1111's `parameters`: the request as the engine understood it
     "timings": {"load_s", "run_s", "upload_s"},   # load_s: fetching the models into the cache;
                                                   # run_s: the engine (pipeline load included)
     "sha256": "<64 hex>", "size": <bytes>}        # merge-checkpoint: the uploaded merged file

HTTP status (`worker.errors`): 200 succeed; 400 a bad request, a model refused, or a job the engine refuses;
409 cancelled ("The job was interrupted."); 502 a model download, the params_url fetch, an upload or the
forwarded-to WebUI failed; 503 the engine is not ready; 500 a bug ("Internal error: ...").
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from aws_extension.engine.base import Interrupted, ModelSet
from aws_extension.model_files import file_sha256
from aws_extension.vocabulary import CheckpointType, JobStatus, MergeMethod, Task
from aws_extension.wire import InvocationAnswer, InvocationRequest, ModelRef, Timings
from aws_extension.worker.errors import InvocationError, error_message, http_status
from aws_extension.worker.model_cache import check_model_name
from aws_extension.worker.models_dir import model_file_problem
from aws_extension.worker.remote_control import remote_control
from aws_extension.worker.runtime import WorkerRuntime


@dataclass(frozen=True)
class Job:
    """An invocation ready to run: its request, its job id, and its parameters (`params_url` fetched)."""

    request: InvocationRequest
    job_id: str
    params: dict[str, Any]

    @property
    def models(self) -> list[ModelRef]:
        return self.request.models


class _Clock:
    """The answer's timings: `load_s` until `loaded()`, `run_s` until `ran()`, then `upload_s`."""

    def __init__(self) -> None:
        self._marks = [time.monotonic()]

    def loaded(self) -> None:
        self._marks.append(time.monotonic())

    def ran(self) -> None:
        self._marks.append(time.monotonic())

    def timings(self) -> Timings:
        start, loaded, ran = self._marks
        return Timings(load_s=round(loaded - start, 3), run_s=round(ran - loaded, 3),
                       upload_s=round(time.monotonic() - ran, 3))


def decode_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvocationError(f"The request body is not JSON: {exc}") from None


def _fetch_params(url: str, timeout_s: float) -> dict[str, Any]:
    host = urlsplit(url).netloc
    try:
        response = requests.get(url, timeout=timeout_s)
    except requests.RequestException as exc:
        raise InvocationError(f"Fetching params_url from {host} failed: {type(exc).__name__}", 502) from exc
    if response.status_code != 200:
        raise InvocationError(f"Fetching params_url from {host} failed with HTTP {response.status_code}")
    try:
        params = response.json()
    except ValueError:
        raise InvocationError("params_url does not hold JSON") from None
    if not isinstance(params, dict):
        raise InvocationError("The JSON at params_url must be a JSON object")
    return params


def prepare_job(request: InvocationRequest, job_id: str, timeout_s: float) -> Job:
    """The job of `request`: its model names checked, its `params_url` fetched."""
    for ref in request.models:
        check_model_name(ref.name)
    params = request.params if request.params is not None else _fetch_params(str(request.params_url), timeout_s)
    return Job(request=request, job_id=job_id, params=params)


def _upload(url: str, data: Any, content_type: str, what: str, timeout_s: float) -> None:
    host = urlsplit(url).netloc
    try:
        response = requests.put(url, data=data, headers={"Content-Type": content_type}, timeout=timeout_s)
    except requests.RequestException as exc:
        raise InvocationError(f"Uploading {what} to {host} failed: {type(exc).__name__}", 502) from exc
    if not 200 <= response.status_code < 300:
        raise InvocationError(f"Uploading {what} to {host} failed with HTTP {response.status_code}", 502)


def _fetch(runtime: WorkerRuntime, ref: ModelRef) -> Path:
    return runtime.cache.fetch(ref.sha256, ref.name, ref.url,
                               check=lambda path: model_file_problem(path, ref.name, ref.type))


def _fetch_models(runtime: WorkerRuntime, job: Job) -> dict[str, dict[str, Path]]:
    """Every model the job may use by type and name: this worker's folder, then the fetched ones."""
    files = runtime.models.all()
    for ref in job.models:
        files.setdefault(ref.type, {})[ref.name] = _fetch(runtime, ref)
    return files


def _job_checkpoint(runtime: WorkerRuntime, job: Job, files: dict[str, dict[str, Path]]) -> Path:
    fetched = [ref.name for ref in job.models if ref.type == CheckpointType.STABLE_DIFFUSION]
    wanted = (job.params.get("override_settings") or {}).get("sd_model_checkpoint")
    if wanted in fetched:
        return files[CheckpointType.STABLE_DIFFUSION][wanted]
    if fetched:
        return files[CheckpointType.STABLE_DIFFUSION][fetched[0]]
    return runtime.local_model_set(wanted).checkpoint


def _run_generation(runtime: WorkerRuntime, job: Job) -> InvocationAnswer:
    clock = _Clock()
    engine = runtime.engine
    task = job.request.task
    with runtime.cache.pinned(ref.sha256 for ref in job.models):
        files = _fetch_models(runtime, job)
        models = ModelSet(checkpoint=_job_checkpoint(runtime, job, files), files=files)
        clock.loaded()
        result = runtime.jobs.run(
            job.job_id, task, lambda progress, cancel: engine.generate(task, job.params, models, progress, cancel))
    clock.ran()
    image_urls = job.request.output.image_urls
    for i, (url, png) in enumerate(zip(image_urls, result.images, strict=False)):
        _upload(url, png, "image/png", f"image {i + 1}", runtime.settings.download_timeout_s)
    return InvocationAnswer(
        status=JobStatus.SUCCEED.value, job_id=job.job_id,
        images=[] if image_urls else [base64.b64encode(png).decode() for png in result.images],
        image_count=len(result.images), info=json.dumps(result.info), parameters=result.parameters,
        timings=clock.timings())


@dataclass(frozen=True)
class _MergeRequest:
    method: MergeMethod
    multiplier: float
    save_as_half: bool
    model_url: str

    @classmethod
    def of(cls, job: Job) -> _MergeRequest:
        params = job.params
        method = params.get("interp_method", MergeMethod.WEIGHTED_SUM.value)
        if method not in MergeMethod.values():
            raise InvocationError(
                f"params.interp_method {method!r} is not one of {', '.join(MergeMethod.values())}")
        if not job.request.output.model_url:
            raise InvocationError("merge-checkpoint needs output.model_url to upload the merged model to")
        try:
            multiplier = float(params.get("multiplier", 0.3))
        except (TypeError, ValueError):
            raise InvocationError("params.multiplier must be a number") from None
        return cls(method=MergeMethod(method), multiplier=multiplier,
                   save_as_half=bool(params.get("save_as_half", False)), model_url=job.request.output.model_url)


def _merge_path(params: dict[str, Any], key: str, files: dict[str, Path], required: bool) -> Path | None:
    name = params.get(key)
    if name in (None, "") and not required:
        return None
    if name not in files:
        raise InvocationError(f"params.{key} {name!r} names none of the job's models")
    return files[name]


def _run_merge(runtime: WorkerRuntime, job: Job) -> InvocationAnswer:
    merge = _MergeRequest.of(job)
    engine = runtime.engine
    clock = _Clock()
    with runtime.cache.pinned(ref.sha256 for ref in job.models):
        by_name = {ref.name: _fetch(runtime, ref) for ref in job.models}
        primary = _merge_path(job.params, "primary_model_name", by_name, required=True)
        secondary = _merge_path(job.params, "secondary_model_name", by_name, required=True)
        tertiary = _merge_path(job.params, "tertiary_model_name", by_name,
                               required=merge.method == MergeMethod.ADD_DIFFERENCE)
        clock.loaded()
        out = runtime.cache.scratch_path(f"{job.job_id}-merged.safetensors")
        try:
            runtime.jobs.run(job.job_id, job.request.task, lambda progress, cancel: engine.merge(
                primary, secondary, tertiary, merge.method, merge.multiplier, merge.save_as_half, out, progress))
            clock.ran()
            sha256, size = file_sha256(out), out.stat().st_size
            with out.open("rb") as f:
                _upload(merge.model_url, f, "application/octet-stream", "the merged model",
                        runtime.settings.download_timeout_s)
        finally:
            out.unlink(missing_ok=True)
    return InvocationAnswer(status=JobStatus.SUCCEED.value, job_id=job.job_id, sha256=sha256, size=size,
                            timings=clock.timings())


def _failure(exc: Exception, job_id: str | None) -> InvocationAnswer:
    status = JobStatus.CANCELLED if isinstance(exc, Interrupted) else JobStatus.FAILED
    return InvocationAnswer(status=status.value, job_id=job_id, error=error_message(exc))


def execute_invocation(runtime: WorkerRuntime, body: bytes) -> tuple[int, dict[str, Any]]:
    """Run the job of `body`; returns the HTTP status and the JSON answer of the contract above."""
    job_id: str | None = None
    try:
        raw = decode_body(body)
        if isinstance(raw, dict) and isinstance(raw.get("job_id"), str):
            job_id = raw["job_id"]  # echoed even when the rest of the request is refused
        request = InvocationRequest.from_json(raw)
        job_id = request.job_id or uuid.uuid4().hex
        with runtime.jobs.announced(job_id), remote_control(runtime.jobs, job_id, request,
                                                            runtime.settings.remote_report_interval_s,
                                                            runtime.settings.download_timeout_s):
            job = prepare_job(request, job_id, runtime.settings.download_timeout_s)
            run = _run_merge if request.task == Task.MERGE_CHECKPOINT else _run_generation
            return 200, run(runtime, job).to_json()
    except Exception as exc:  # noqa: BLE001 - every failure is an answer of the contract (worker.errors)
        return http_status(exc), _failure(exc, job_id).to_json()
