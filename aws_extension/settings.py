"""Every setting of the project, in one place.

Stdlib only (this module is imported inside the WebUI's Python too). Each setting is a dataclass field
whose metadata names its environment variable; values come from, in increasing priority: the default,
a JSON config file (`SD_AWS_CONFIG`, or `<data dir>/config.json`), the environment, explicit overrides
(command-line flags). Each part of the product has its own dataclass.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

MiB = 1024 * 1024
GiB = 1024 * MiB


def _env(name: str, default: Any, help: str) -> Any:
    return field(default=default, metadata={"env": name, "help": help})


def _default_data_dir() -> Path:
    return Path(os.environ.get("SD_AWS_HOME") or Path.home() / ".sd-aws")


@dataclass(frozen=True)
class MiddlewareSettings:
    data_dir: Path = field(default_factory=_default_data_dir, metadata={"env": "SD_AWS_HOME", "help": "where the store, blobs and secrets live"})
    host: str = _env("SD_AWS_HOST", "127.0.0.1", "address the middleware binds")
    port: int = _env("SD_AWS_PORT", 8080, "port the middleware binds")
    api_key: str | None = _env("SD_AWS_API_KEY", None, "API key; generated into the data dir when unset")
    public_url: str | None = _env("SD_AWS_PUBLIC_URL", None, "base URL clients reach the middleware at (signed URLs use it); default http://host:port")
    backend: str = _env("SD_AWS_BACKEND", "local", "local (SQLite, folder, worker processes) or aws")
    header_timeout_s: float = _env("SD_AWS_HEADER_TIMEOUT_S", 10.0, "a client must send a request's headers within this")
    max_body_bytes: int = _env("SD_AWS_MAX_BODY_BYTES", 32 * MiB, "largest JSON request body (413 beyond)")
    signed_url_ttl_s: int = _env("SD_AWS_SIGNED_URL_TTL_S", 3600, "lifetime of signed blob URLs")
    multipart_ttl_s: int = _env("SD_AWS_MULTIPART_TTL_S", 24 * 3600, "incomplete multipart uploads are removed after this")
    multipart_min_part_bytes: int = _env("SD_AWS_MULTIPART_MIN_PART_BYTES", 5 * MiB, "smallest part but the last (S3's rule)")
    multipart_max_parts: int = _env("SD_AWS_MULTIPART_MAX_PARTS", 10_000, "most parts of one upload (S3's rule)")
    multipart_max_part_bytes: int = _env("SD_AWS_MULTIPART_MAX_PART_BYTES", 5 * GiB, "largest part (S3's rule; 413 beyond)")
    completion_wait_s: float = _env("SD_AWS_COMPLETION_WAIT_S", 20.0,
                                    "PUT /checkpoint waits this long for a completion, which then goes on in the background")
    blob_max_put_bytes: int = _env("SD_AWS_BLOB_MAX_PUT_BYTES", 5 * GiB, "largest single PUT to a signed URL (S3's rule; 413 beyond)")
    sweep_interval_s: float = _env("SD_AWS_SWEEP_INTERVAL_S", 300.0, "how often expired uploads are cleaned up")
    import_allow_private_addresses: bool = _env(
        "SD_AWS_IMPORT_ALLOW_PRIVATE_ADDRESSES", False,
        "let URL imports reach loopback/private/link-local addresses (tests only)")
    import_max_bytes: int = _env("SD_AWS_IMPORT_MAX_BYTES", 50 * GiB, "largest file a URL import may download")
    import_attempts: int = _env("SD_AWS_IMPORT_ATTEMPTS", 3, "tries per file on transient errors")
    import_timeout_s: float = _env("SD_AWS_IMPORT_TIMEOUT_S", 60.0, "connect/read timeout of URL imports")
    max_instances_per_endpoint: int = _env("SD_AWS_MAX_INSTANCES_PER_ENDPOINT", 6, "most instances of one endpoint")
    max_endpoints: int = _env("SD_AWS_MAX_ENDPOINTS", 20, "most endpoints that exist at once (not deleted or failed)")
    max_files_per_checkpoint: int = _env("SD_AWS_MAX_FILES_PER_CHECKPOINT", 32, "most files of one checkpoint (upload or import)")
    max_dataset_files: int = _env("SD_AWS_MAX_DATASET_FILES", 10_000, "most files of one dataset")
    endpoint_start_timeout_s: float = _env("SD_AWS_ENDPOINT_START_TIMEOUT_S", 300.0,
                                           "an instance not healthy within this fails the deployment")
    invocation_timeout_s: float = _env("SD_AWS_INVOCATION_TIMEOUT_S", 3600.0, "a job running longer is failed (SageMaker's limit)")
    job_attempts: int = _env("SD_AWS_JOB_ATTEMPTS", 2, "tries of a job whose worker crashed (first run + retries)")
    scale_in_idle_s: float = _env("SD_AWS_SCALE_IN_IDLE_S", 600.0, "autoscaling: an endpoint idle this long loses an instance")
    worker_engine: str = _env("SD_AWS_WORKER_ENGINE", "diffusers", "engine of local workers: diffusers or webui")
    local_gpus: str | None = _env(
        "SD_AWS_LOCAL_GPUS", None,
        "CUDA GPUs (indices, comma-separated) local workers are spread over, one GPU each, the least used first; "
        "default: CUDA_VISIBLE_DEVICES if set, else every NVIDIA GPU of this machine; empty: none")
    webhook_allow_private_addresses: bool = _env(
        "SD_AWS_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", False, "let callback_url point at loopback/private addresses (tests only)")
    webhook_secret: str | None = _env("SD_AWS_WEBHOOK_SECRET", None, "HMAC key of webhook signatures; generated into the data dir when unset")
    webhook_attempts: int = _env("SD_AWS_WEBHOOK_ATTEMPTS", 4, "deliveries of one webhook before giving up")
    webhook_timeout_s: float = _env("SD_AWS_WEBHOOK_TIMEOUT_S", 10.0, "timeout of one webhook delivery")
    # The AWS backend (SD_AWS_BACKEND=aws). Credentials, region and emulator endpoints come from boto3's own
    # configuration (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL): nothing here names an emulator.
    stack_name: str = _env("SD_AWS_STACK_NAME", "sd-aws", "the stack whose resources the AWS backend uses (names derive from it)")
    worker_image: str | None = _env("SD_AWS_WORKER_IMAGE", None, "ECR URI of the worker image SageMaker endpoints run")
    # SageMaker endpoints (compute/sagemaker/endpoints.py)
    sagemaker_instance_types: str | None = _env(
        "SD_AWS_SAGEMAKER_INSTANCE_TYPES", None,
        "ml.* instance types POST /endpoints accepts (comma-separated), e.g. those your region offers and your quotas "
        "allow; default: every type of compute/sagemaker/instance_types.py")
    sagemaker_backlog_per_instance: float = _env(
        "SD_AWS_SAGEMAKER_BACKLOG_PER_INSTANCE", 2.0,
        "autoscaling: queued jobs per instance it aims at (target of ApproximateBacklogSizePerInstance)")
    sagemaker_scale_out_cooldown_s: int = _env(
        "SD_AWS_SAGEMAKER_SCALE_OUT_COOLDOWN_S", 300, "autoscaling: time after adding instances before adding more")
    # URL imports under AWS Lambda (services/model_import.py LambdaRunner).
    import_part_bytes: int = _env("SD_AWS_IMPORT_PART_BYTES", 64 * MiB,
                                  "part size of resumable imports under Lambda (held in memory while it uploads)")
    # SageMaker jobs (compute/sagemaker/compute.py, jobs.py).
    sagemaker_request_ttl_s: float = _env("SD_AWS_SAGEMAKER_REQUEST_TTL_S", 21600.0,
                                          "longest a job may wait in an endpoint's queue (RequestTTLSeconds: 60 s to 6 h)")
    sagemaker_notification_margin_s: float = _env(
        "SD_AWS_SAGEMAKER_NOTIFICATION_MARGIN_S", 300.0,
        "a job with no notification this long after its queue TTL and invocation timeout is failed")
    sagemaker_reap_interval_s: float = _env("SD_AWS_SAGEMAKER_REAP_INTERVAL_S", 60.0,
                                            "how often `serve --backend aws` looks for jobs whose notification never came")
    sagemaker_poll_wait_s: int = _env("SD_AWS_SAGEMAKER_POLL_WAIT_S", 5,
                                      "long-poll wait of the events queue (1 to 20 s; `stop` waits for it at most)")
    # Training on the local backend (compute/local/training.py)
    local_training_slots: int = _env("SD_AWS_LOCAL_TRAINING_SLOTS", 1,
                                     "training processes that run at once on this machine (the others wait in a queue)")
    # SageMaker training jobs (compute/sagemaker/training.py)
    sagemaker_training_max_runtime_s: int = _env(
        "SD_AWS_SAGEMAKER_TRAINING_MAX_RUNTIME_S", 86400,
        "longest a training run may train (StoppingCondition.MaxRuntimeInSeconds); a run stopped by it resumes once")
    sagemaker_training_max_wait_s: int = _env(
        "SD_AWS_SAGEMAKER_TRAINING_MAX_WAIT_S", 172800,
        "use_spot: longest a run may wait for and run on spot capacity (MaxWaitTimeInSeconds, at least the runtime)")
    sagemaker_training_volume_gib: int = _env("SD_AWS_SAGEMAKER_TRAINING_VOLUME_GIB", 50,
                                              "disk of a training instance (the base, the images, the state)")
    sagemaker_training_vanished_grace_s: float = _env(
        "SD_AWS_SAGEMAKER_TRAINING_VANISHED_GRACE_S", 120.0,
        "a run SageMaker does not know fails its job only once it is this old (it may still be being created)")
    # Training: the GPU memory check of POST /train (training_memory.py)
    local_training_gpu_memory_gib: float = _env(
        "SD_AWS_LOCAL_TRAINING_GPU_MEMORY_GIB", 0.0,
        "GPU memory (GiB) of this machine's training GPU: POST /train refuses settings that cannot fit it; "
        "0: not checked (training on the CPU, or a GPU you size yourself)")


@dataclass(frozen=True)
class WorkerSettings:
    device: str = _env("SD_AWS_DEVICE", "auto", "where the engine runs: auto (the first CUDA GPU if any, else cpu), cpu, cuda, cuda:N, mps")
    dtype: str = _env("SD_AWS_DTYPE", "auto", "model precision: auto (float16 on a GPU, float32 on the CPU), float32, float16, bfloat16")
    max_width: int = _env("SD_AWS_MAX_WIDTH", 2048, "largest width (and height) a job may ask for")
    max_height: int = _env("SD_AWS_MAX_HEIGHT", 2048, "largest height a job may ask for")
    max_steps: int = _env("SD_AWS_MAX_STEPS", 150, "most sampling steps a job may ask for")
    max_batch_size: int = _env("SD_AWS_MAX_BATCH_SIZE", 8, "most images per batch")
    max_n_iter: int = _env("SD_AWS_MAX_N_ITER", 100, "most batches per job")
    max_prompt_chars: int = _env("SD_AWS_MAX_PROMPT_CHARS", 8000, "longest prompt in characters")
    pipeline_memory_budget_bytes: int = _env("SD_AWS_PIPELINE_MEMORY_BUDGET_BYTES", 16 * GiB, "loaded pipelines kept in memory (LRU)")
    model_cache_dir: Path | None = _env("SD_AWS_MODEL_CACHE_DIR", None, "where fetched models are cached (default <models dir>/.cache)")
    model_cache_budget_bytes: int = _env("SD_AWS_MODEL_CACHE_BUDGET_BYTES", 100 * GiB, "size of the model cache before LRU eviction")
    download_timeout_s: float = _env("SD_AWS_DOWNLOAD_TIMEOUT_S", 60.0, "connect/read timeout when fetching models")
    sagemaker_root: Path = _env("SD_AWS_SAGEMAKER_ROOT", Path("/opt/ml"),
                                "SageMaker's container root (model/, input/, output/, checkpoints/); tests point it elsewhere")
    webui_models_dir: Path | None = _env(
        "SD_AWS_WEBUI_MODELS_DIR", None,
        "webui engine: the WebUI's models/ folder for a WebUI that does not answer /sdapi/v1/cmd-flags (A1111 "
        "does, and its own folders are used); unset with such a WebUI: it must have the models")
    # Progress and cancel through signed URLs (SageMaker asynchronous endpoints; worker/remote_control.py).
    remote_report_interval_s: float = _env("SD_AWS_REMOTE_REPORT_INTERVAL_S", 2.0,
                                           "how often a job PUTs its progress and reads its cancel URL")
    # The trainer's progress copy under checkpoints/ (SageMaker syncs it to S3; worker/sagemaker_train.py)
    training_progress_sync_s: float = _env("SD_AWS_TRAINING_PROGRESS_SYNC_S", 10.0,
                                           "how often a training run copies its progress for SageMaker to upload")


@dataclass(frozen=True)
class ClientSettings:
    api_url: str = _env("SD_AWS_API_URL", "http://127.0.0.1:8080", "middleware base URL")
    api_key: str | None = _env("SD_AWS_API_KEY", None, "middleware API key")
    timeout_s: float = _env("SD_AWS_CLIENT_TIMEOUT_S", 30.0, "timeout of one API call")


S = TypeVar("S")


def _convert(raw: Any, annotation: Any) -> Any:
    text = str(annotation)
    if raw is None:
        return None
    if "bool" in text:
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if "Path" in text:
        return Path(raw).expanduser()
    if text.startswith("int") or text == "<class 'int'>":
        return int(raw)
    if "float" in text:
        return float(raw)
    return str(raw)


def load(cls: type[S], environ: dict[str, str] | None = None, **overrides: Any) -> S:
    """Build settings `cls` from defaults, the config file, the environment and `overrides` (None = unset)."""
    environ = dict(os.environ if environ is None else environ)
    hints = get_type_hints(cls)
    config_path = environ.get("SD_AWS_CONFIG")
    if not config_path:
        data_dir = overrides.get("data_dir") or environ.get("SD_AWS_HOME") or Path.home() / ".sd-aws"
        config_path = str(Path(data_dir).expanduser() / "config.json")
    file_values: dict[str, Any] = {}
    if Path(config_path).is_file():
        file_values = json.loads(Path(config_path).read_text())
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        env_name = f.metadata.get("env")
        if overrides.get(f.name) is not None:
            raw = overrides[f.name]
        elif env_name and environ.get(env_name) not in (None, ""):
            raw = environ[env_name]
        elif f.name in file_values:
            raw = file_values[f.name]
        else:
            continue
        try:
            values[f.name] = _convert(raw, hints[f.name])
        except ValueError as exc:
            raise ValueError(f"Setting {env_name or f.name} has an invalid value {raw!r}: {exc}") from None
    return cls(**values)
