"""The shapes that travel between the middleware and a worker, written once (standard library only).

`InvocationRequest` is the body of `POST /invocations` (what the local dispatcher sends, and the request
object the AWS backend puts in S3 for an asynchronous endpoint); `InvocationAnswer` is what the worker
answers (what SageMaker writes to the output or failure location); `ParamFile` is `<id>_param.json`, which
the middleware writes from the answer. `from_json` checks a shape and raises `WireError` naming the field;
`to_json` gives the JSON object. The contract in words is in `worker/invocations.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aws_extension.vocabulary import MODEL_TYPES, JobStatus, Task


class WireError(ValueError):
    """A request or answer that does not have its shape; the message names the field."""


def _url(value: Any, what: str) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("http", "https"):
        raise WireError(f"{what} must be an http or https URL")
    return value


def _optional_url(value: Any, what: str) -> str | None:
    return None if value in (None, "") else _url(value, what)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a JSON object")
    return value


@dataclass(frozen=True)
class ModelRef:
    """A model file a job may use: fetched from `url` into the worker's cache, verified by `sha256`."""

    type: str  # one of MODEL_TYPES
    name: str  # the file name as the WebUI shows it
    sha256: str
    url: str

    @classmethod
    def from_json(cls, entry: Any, where: str) -> ModelRef:
        entry = _object(entry, where)
        if entry.get("type") not in MODEL_TYPES:
            raise WireError(f"{where}.type {entry.get('type')!r} is not one of {', '.join(MODEL_TYPES)}")
        for key in ("name", "sha256"):
            if not isinstance(entry.get(key), str):
                raise WireError(f"{where}.{key} must be a string")
        return cls(type=entry["type"], name=entry["name"], sha256=entry["sha256"].lower(),
                   url=_url(entry.get("url"), f"{where}.url"))


@dataclass(frozen=True)
class InvocationOutput:
    """Where the worker puts what it makes."""

    image_urls: list[str] = field(default_factory=list)  # PUT URLs for the PNGs, in order; empty: base64 answer
    model_url: str | None = None  # merge-checkpoint: PUT URL for the merged file

    @classmethod
    def from_json(cls, value: Any) -> InvocationOutput:
        output = _object(value or {}, "output")
        image_urls = output.get("image_urls") or []
        if not isinstance(image_urls, list):
            raise WireError("output.image_urls must be a list of URLs")
        return cls(image_urls=[_url(u, f"output.image_urls[{i}]") for i, u in enumerate(image_urls)],
                   model_url=_optional_url(output.get("model_url"), "output.model_url"))


@dataclass(frozen=True)
class InvocationRequest:
    task: str  # a Task
    job_id: str | None
    models: list[ModelRef]
    params: dict[str, Any] | None = None  # the A1111 payload (or merge parameters) ...
    params_url: str | None = None  # ... or a GET URL of that JSON
    output: InvocationOutput = field(default_factory=InvocationOutput)
    # Backends that cannot reach the worker while it runs (SageMaker asynchronous endpoints) give these:
    # the worker PUTs its `JobProgress` to `progress_url` as it goes, and stops once `cancel_url` answers 200
    # (404: go on).
    progress_url: str | None = None
    cancel_url: str | None = None

    @classmethod
    def from_json(cls, request: Any) -> InvocationRequest:
        request = _object(request, "The request body")
        if request.get("task") not in Task.values():
            raise WireError(f"Unknown task {request.get('task')!r}: use one of {', '.join(Task.values())}")
        job_id = request.get("job_id")
        if job_id is not None and not isinstance(job_id, str):
            raise WireError("job_id must be a string")
        models = request.get("models") or []
        if not isinstance(models, list):
            raise WireError("models must be a list of {type, name, sha256, url}")
        params = request.get("params")
        if params is not None:
            params = _object(params, "params")
        params_url = _optional_url(request.get("params_url"), "params_url")
        if params is None and params_url is None:
            raise WireError("params (or params_url) is required")
        return cls(task=request["task"], job_id=job_id,
                   models=[ModelRef.from_json(m, f"models[{i}]") for i, m in enumerate(models)],
                   params=params, params_url=params_url, output=InvocationOutput.from_json(request.get("output")),
                   progress_url=_optional_url(request.get("progress_url"), "progress_url"),
                   cancel_url=_optional_url(request.get("cancel_url"), "cancel_url"))

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        return {key: value for key, value in body.items() if value is not None}


@dataclass(frozen=True)
class Timings:
    load_s: float = 0.0  # fetching the models into the cache
    run_s: float = 0.0  # the engine (pipeline load included)
    upload_s: float = 0.0


@dataclass(frozen=True)
class InvocationAnswer:
    """The worker's answer. `succeed`: `image_count` images were uploaded (or are in `images` as base64), with
    A1111's `info` (a JSON string) and `parameters`; a merge answers the merged file's `sha256` and `size`.
    `failed` / `cancelled`: `error` says why."""

    status: str  # JobStatus.SUCCEED | FAILED | CANCELLED
    job_id: str | None = None
    error: str | None = None
    images: list[str] = field(default_factory=list)
    image_count: int = 0
    info: str = "{}"
    parameters: dict[str, Any] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    sha256: str | None = None
    size: int | None = None

    @classmethod
    def failed(cls, job_id: str | None, error: str) -> InvocationAnswer:
        return cls(status=JobStatus.FAILED.value, job_id=job_id, error=error)

    @classmethod
    def from_json(cls, answer: Any) -> InvocationAnswer:
        """Read an answer; fields this version does not know are ignored, a wrong shape is a WireError."""
        answer = _object(answer, "The worker's answer")
        status = answer.get("status")
        if status not in (JobStatus.SUCCEED, JobStatus.FAILED, JobStatus.CANCELLED):
            raise WireError(f"The worker's answer has no valid status ({status!r})")
        timings = _object(answer.get("timings") or {}, "timings")
        count = answer.get("image_count") or 0
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise WireError("image_count must be a whole number")
        return cls(status=status, job_id=answer.get("job_id"), error=_text_or_none(answer.get("error")),
                   images=list(answer.get("images") or []), image_count=count,
                   info=answer["info"] if isinstance(answer.get("info"), str) else "{}",
                   parameters=answer["parameters"] if isinstance(answer.get("parameters"), dict) else {},
                   timings=Timings(**{k: float(v) for k, v in timings.items()
                                      if k in Timings.__dataclass_fields__ and isinstance(v, (int, float))}),
                   sha256=_text_or_none(answer.get("sha256")),
                   size=answer.get("size") if isinstance(answer.get("size"), int) else None)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def summary(self) -> dict[str, Any]:
        """The answer without its images, as kept on the job record."""
        return {key: value for key, value in self.to_json().items() if key != "images"}


@dataclass(frozen=True)
class JobProgress:
    """What a worker PUTs to a job's `progress_url` while it runs: sampling steps done of `total` (0 of 0
    while it fetches its models), when it `started` and when it wrote this (`updated`; Unix seconds)."""

    job_id: str
    step: int
    total: int
    started: float
    updated: float
    worker: str  # the host running it

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    @classmethod
    def from_json(cls, value: Any) -> JobProgress:
        value = _object(value, "progress")
        numbers = {}
        for key in ("step", "total", "started", "updated"):
            number = value.get(key)
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
                raise WireError(f"progress.{key} must be a number of at least 0")
            numbers[key] = number
        if not isinstance(value.get("job_id"), str):
            raise WireError("progress.job_id must be a string")
        return cls(job_id=value["job_id"], step=int(numbers["step"]), total=int(numbers["total"]),
                   started=float(numbers["started"]), updated=float(numbers["updated"]),
                   worker=str(value.get("worker") or ""))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class ParamFile:
    """`<id>_param.json`: the request as the engine understood it and A1111's info JSON string."""

    parameters: dict[str, Any]
    info: str
    endpoint_name: str
    inference_id: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
