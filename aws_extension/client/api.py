"""A `requests`-only client of the middleware: one method per route of API.md.

Used by the CLI, the gradio tabs and the WebUI extension, so it imports nothing but the standard
library and `requests` (it runs inside the WebUI's own Python).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import requests

from aws_extension.model_files import file_sha256
from aws_extension.vocabulary import (
    CheckpointStatus,
    CheckpointType,
    DatasetStatus,
    EndpointStatus,
    JobStatus,
    TrainingModelStatus,
    TrainingStatus,
)

MiB = 1024 * 1024
LIST_PAGE_MAX = 1000  # the most records a list route answers at once (API.md: `?limit=` at most 1000)
DEFAULT_PART_SIZE = 16 * MiB  # S3's minimum part is 5 MiB; bigger parts mean fewer round trips


def _quoted(part: str) -> str:
    """One path segment, quoted (a name cannot reach another route)."""
    return requests.utils.quote(part, safe="")


class ApiError(Exception):
    """The middleware answered an error (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message


ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)


class MiddlewareClient:
    def __init__(self, api_url: str, api_key: str | None, timeout_s: float = 30.0,
                 session: requests.Session | None = None):
        if not api_url:
            raise ApiError(0, "No API URL is set: enter the middleware's URL (e.g. http://127.0.0.1:8080).")
        self.api_url = api_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    # -- plumbing --------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None, params: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        try:
            response = self.session.request(method, self.api_url + path, json=json, params=params,
                                            headers=headers, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ApiError(0, f"Cannot reach the middleware at {self.api_url}: {type(exc).__name__}.") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except ValueError:
                message = response.text[:300] or response.reason
            raise ApiError(response.status_code, message)
        return response.json()

    # -- connection --------------------------------------------------------------------------------------
    def healthz(self) -> dict:
        return self.request("GET", "/healthz")

    def test_connection(self) -> dict:
        return self.request("GET", "/inference/test-connection")

    def whoami(self) -> dict:
        """Who the key is: `{"message", "username", "roles", "permissions"}` (test-connection's answer)."""
        return self.test_connection()

    # -- users, keys, roles, the audit trail -------------------------------------------------------------
    @staticmethod
    def _expiry(expires_in_days: float | None, expires_at: str | None) -> dict:
        return {k: v for k, v in (("expires_in_days", expires_in_days), ("expires_at", expires_at)) if v is not None}

    def create_user(self, username: str, roles: list[str], expires_in_days: float | None = None,
                    expires_at: str | None = None) -> dict:
        """POST /users: the user and its first key (`api_key`, shown this once; `key_id`)."""
        return self.request("POST", "/users", json={"username": username, "roles": roles,
                                                    **self._expiry(expires_in_days, expires_at)})

    def list_users(self, limit: int = 100, last_key: str | None = None) -> dict:
        """One page: `{"users": [...], "last_key"}` (pass `last_key` for the next page)."""
        params = {"limit": limit, **({"last_key": last_key} if last_key else {})}
        return self.request("GET", "/users", params=params)

    def set_user_roles(self, username: str, roles: list[str]) -> dict:
        return self.request("PUT", f"/users/{_quoted(username)}", json={"roles": roles})["user"]

    def delete_user(self, username: str) -> dict:
        return self.request("DELETE", f"/users/{_quoted(username)}")["user"]

    def create_key(self, username: str, expires_in_days: float | None = None, expires_at: str | None = None) -> dict:
        """POST /users/{name}/keys: `{"api_key" (shown this once), "key_id", "expires", ...}`."""
        return self.request("POST", f"/users/{_quoted(username)}/keys",
                            json=self._expiry(expires_in_days, expires_at))

    def list_keys(self, username: str) -> list[dict]:
        return self.request("GET", f"/users/{_quoted(username)}/keys")["keys"]

    def revoke_key(self, username: str, key_id: str) -> dict:
        return self.request("DELETE", f"/users/{_quoted(username)}/keys/{_quoted(key_id)}")["key"]

    def create_role(self, role_name: str, permissions: list[str], max_queued_jobs: int | None = None,
                    max_concurrent_trainings: int | None = None) -> dict:
        body: dict[str, Any] = {"role_name": role_name, "permissions": permissions}
        for key, value in (("max_queued_jobs", max_queued_jobs), ("max_concurrent_trainings", max_concurrent_trainings)):
            if value is not None:
                body[key] = value
        return self.request("POST", "/roles", json=body)["role"]

    def list_roles(self) -> list[dict]:
        return self.request("GET", "/roles")["roles"]

    def delete_role(self, role_name: str) -> dict:
        return self.request("DELETE", f"/roles/{_quoted(role_name)}")

    def audit_trail(self, limit: int = 100, last_key: str | None = None, actor: str | None = None,
                    since: str | float | None = None) -> dict:
        """One page of the audit trail, newest first: `{"entries": [...], "last_key"}`."""
        params = {k: v for k, v in (("limit", limit), ("last_key", last_key), ("actor", actor), ("since", since))
                  if v is not None}
        return self.request("GET", "/audit", params=params)

    # -- checkpoints -------------------------------------------------------------------------------------
    def create_checkpoint(self, checkpoint_type: str, filenames: list[tuple[str, int]],
                          params: dict | None = None, sha256s: dict[str, str] | None = None) -> dict:
        """POST /checkpoint; with `sha256s` (file name → sha256) the middleware answers an Active checkpoint of
        that content (`existing`) instead of upload URLs, when it has one."""
        body = {"checkpoint_type": checkpoint_type, "params": params or {},
                "filenames": [{"filename": n, "parts_number": p, **({"sha256": sha256s[n]} if sha256s else {})}
                              for n, p in filenames]}
        return self.request("POST", "/checkpoint", json=body)

    def complete_checkpoint(self, checkpoint_id: str, multi_parts_tags: dict[str, list[dict]]) -> dict:
        return self.request("PUT", "/checkpoint", json={"checkpoint_id": checkpoint_id, "status": CheckpointStatus.ACTIVE.value,
                                                        "multi_parts_tags": multi_parts_tags})

    def set_checkpoint_status(self, checkpoint_id: str, status: str) -> dict:
        return self.request("PUT", "/checkpoint", json={"checkpoint_id": checkpoint_id, "status": status})

    def _all_pages(self, path: str, params: dict[str, Any], field: str) -> list[dict]:
        """Every record of a list route that answers `{field: [...], "last_key": ...}`, page after page."""
        records: list[dict] = []
        last_key = None
        while True:
            answer = self.request("GET", path, params={**params, "limit": LIST_PAGE_MAX,
                                                       **({"last_key": last_key} if last_key else {})})
            records += answer[field]
            last_key = answer.get("last_key")
            if not last_key:
                return records

    def list_checkpoints(self, types: list[str] | None = None, status: list[str] | None = None) -> list[dict]:
        """Every checkpoint of these types and statuses (all pages), newest first."""
        params = {"types": ",".join(types or []), "status": ",".join(status or [])}
        return self._all_pages("/checkpoints", {k: v for k, v in params.items() if v}, "checkpoints")

    def get_checkpoint(self, checkpoint_id: str) -> dict:
        return self.request("GET", f"/checkpoint/{checkpoint_id}")["checkpoint"]

    def import_checkpoint(self, checkpoint_type: str, urls: list[str], params: dict | None = None) -> dict:
        return self.request("POST", "/upload_checkpoint",
                            json={"checkpointType": checkpoint_type, "modelUrl": urls, "params": params or {}})

    def embedding_names(self) -> list[str]:
        return self.request("GET", "/inference/get-texual-inversion-list")

    def lora_names(self) -> list[str]:
        return self.request("GET", "/inference/get-lora-list")

    def hypernetwork_names(self) -> list[str]:
        return self.request("GET", "/inference/get-hypernetwork-list")

    def controlnet_names(self) -> list[str]:
        return self.request("GET", "/inference/get-controlnet-model-list")

    def presigned_upload_url(self, key: str) -> str:
        return self.request("GET", "/inference/generate-s3-presigned-url-for-uploading", params={"key": key})

    # -- datasets ------------------------------------------------------------------------------------------
    def create_dataset(self, name: str, content: list[dict], params: dict | None = None) -> dict:
        return self.request("POST", "/dataset", json={"dataset_name": name, "content": content, "params": params or {}})

    def set_dataset_status(self, name: str, status: str) -> dict:
        return self.request("PUT", "/dataset", json={"dataset_name": name, "status": status})

    def list_datasets(self, status: list[str] | None = None) -> list[dict]:
        """Every dataset (all pages), newest first."""
        return self._all_pages("/datasets", {"dataset_status": ",".join(status)} if status else {}, "datasets")

    def dataset_files(self, name: str) -> list[dict]:
        return self.request("GET", f"/dataset/{requests.utils.quote(name, safe='')}/data")["data"]

    # -- endpoints -------------------------------------------------------------------------------------------
    def deploy_endpoint(self, instance_type: str = "local", initial_instance_count: int = 1,
                        endpoint_name: str | None = None, autoscaling_enabled: bool = False,
                        min_instance_number: int | None = None, max_instance_number: int | None = None) -> dict:
        body: dict[str, Any] = {"instance_type": instance_type, "initial_instance_count": initial_instance_count,
                                "autoscaling_enabled": autoscaling_enabled}
        for key, value in (("endpoint_name", endpoint_name), ("min_instance_number", min_instance_number),
                           ("max_instance_number", max_instance_number)):
            if value is not None:
                body[key] = value
        return self.request("POST", "/endpoints", json=body)

    def list_endpoints(self, status: str | None = None, endpoint_name: str | None = None) -> list[dict]:
        """Every endpoint deployment job (all pages: a full page is followed by the next, after its last id)."""
        params: dict[str, Any] = {k: v for k, v in (("status", status), ("endpoint_name", endpoint_name)) if v}
        records: list[dict] = []
        while True:
            page = self.request("GET", "/endpoints", params={**params, "limit": LIST_PAGE_MAX})
            records += page
            if len(page) < LIST_PAGE_MAX:
                return records
            params["last_key"] = page[-1]["EndpointDeploymentJobId"]

    def endpoint_deployment_job(self, job_id: str) -> dict:
        return self.request("GET", "/inference/get-endpoint-deployment-job", params={"jobID": job_id})

    def delete_endpoints(self, names: list[str]) -> dict:
        return self.request("DELETE", "/endpoints", json={"delete_endpoint_list": names})

    def wait_for_endpoint(self, job_id: str, timeout_s: float = 600, poll_s: float = 1.0) -> dict:
        """Poll a deployment until it leaves `Creating`; returns its record."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.endpoint_deployment_job(job_id)
            if record["endpoint_status"] != EndpointStatus.CREATING:
                return record
            if time.monotonic() > deadline:
                raise ApiError(0, f"endpoint {record['endpoint_name']} is still Creating after {timeout_s} s.")
            time.sleep(poll_s)

    # -- inference -------------------------------------------------------------------------------------------
    def create_inference(self, body: dict) -> dict:
        """POST /inference/v2: `body` holds task_type, models, the endpoint and the A1111 parameters."""
        return self.request("POST", "/inference/v2", json=body)

    def run_inference(self, job_id: str) -> dict:
        return self.request("PUT", f"/inference/v2/{job_id}/run")

    def cancel_inference(self, job_id: str) -> dict:
        return self.request("PUT", f"/inference/v2/{job_id}/cancel")

    def inference_job(self, job_id: str) -> dict:
        return self.request("GET", "/inference/get-inference-job", params={"jobID": job_id})

    def list_inference_jobs(self, status: str | None = None, task_type: str | None = None,
                            endpoint: str | None = None, limit: int = 100, last_key: str | None = None) -> list[dict]:
        params = {"status": status, "task_type": task_type, "endpoint": endpoint, "limit": limit,
                  "last_key": last_key}
        return self.request("GET", "/inference/list-inference-jobs",
                            params={k: v for k, v in params.items() if v is not None})

    def inference_image_urls(self, job_id: str) -> list[str]:
        return self.request("GET", "/inference/get-inference-job-image-output", params={"jobID": job_id})

    def inference_param_url(self, job_id: str) -> str:
        return self.request("GET", "/inference/get-inference-job-param-output", params={"jobID": job_id})[0]

    def run_model_merge(self, body: dict) -> dict:
        return self.request("POST", "/inference/run-model-merge", json=body)

    def wait_for_job(self, job_id: str, timeout_s: float = 3600, poll_s: float = 0.5,
                     on_update: Callable[[dict], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> dict:
        """Poll an inference job until it ends; `should_stop()` true → the job is cancelled."""
        deadline = time.monotonic() + timeout_s
        cancelled = False
        while True:
            job = self.inference_job(job_id)
            if on_update:
                on_update(job)
            if JobStatus(job["status"]).is_terminal:
                return job
            if should_stop and should_stop() and not cancelled:
                try:
                    self.cancel_inference(job_id)
                except ApiError as exc:
                    if exc.status != 409:  # 409: it ended meanwhile; the next poll shows how
                        raise
                cancelled = True
            if time.monotonic() > deadline:
                raise ApiError(0, f"job {job_id} has not finished after {timeout_s} s.")
            time.sleep(poll_s)

    # -- training ------------------------------------------------------------------------------------------
    def create_training_model(self, checkpoint_id: str, name: str | None = None, params: dict | None = None) -> dict:
        """POST /model from an Active Stable-diffusion checkpoint; the model record (`Initialed`)."""
        body = {"model_type": CheckpointType.STABLE_DIFFUSION.value, "checkpoint_id": checkpoint_id,
                "params": params or {}}
        if name:
            body["name"] = name
        return self.request("POST", "/model", json=body)["job"]

    def prepare_training_model(self, model_id: str) -> dict:
        """PUT /model Creating: the preparation runs in the background (Complete or Fail)."""
        return self.request("PUT", "/model", json={"model_id": model_id,
                                                   "status": TrainingModelStatus.CREATING.value})["job"]

    def list_training_models(self, status: list[str] | None = None) -> list[dict]:
        """Every training base of the key (all pages), newest first."""
        return self._all_pages("/models", {"status": ",".join(status)} if status else {}, "models")

    def wait_for_training_model(self, model_id: str, timeout_s: float = 3600, poll_s: float = 1.0) -> dict:
        """Poll until the model is Complete; ApiError with its reason when it failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = next((m for m in self.list_training_models() if m["id"] == model_id), None)
            if record is None:
                raise ApiError(404, f"training model {model_id} is not listed.")
            if record["status"] == TrainingModelStatus.COMPLETE:
                return record
            if record["status"] == TrainingModelStatus.FAIL:
                raise ApiError(400, record.get("error") or f"training model {model_id} failed.")
            if time.monotonic() > deadline:
                raise ApiError(0, f"training model {model_id} is still {record['status']} after {timeout_s} s.")
            time.sleep(poll_s)

    def create_training(self, train_type: str, model_id: str, training_params: dict, config_params: dict) -> dict:
        """POST /train: the job (`Initial`); `PUT /train` Training starts it (`start_training`)."""
        body = {"train_type": train_type, "model_id": model_id,
                "params": {"training_params": training_params, "config_params": config_params}}
        return self.request("POST", "/train", json=body)["job"]

    def start_training(self, train_job_id: str) -> dict:
        """Start a job, or resume a Stopped one."""
        return self.request("PUT", "/train", json={"train_job_id": train_job_id,
                                                   "status": TrainingStatus.TRAINING.value})["job"]

    def stop_training(self, train_job_id: str) -> dict:
        """Stop a job, keeping its saved state (Stopped; `start_training` resumes it)."""
        return self.request("PUT", "/train", json={"train_job_id": train_job_id,
                                                   "status": TrainingStatus.STOPPED.value})["job"]

    def training_job(self, train_job_id: str) -> dict:
        """One job with its live progress (step, total_steps, loss, steps_per_s, eta_s) and sample URLs."""
        return self.request("GET", f"/train/{train_job_id}")["job"]

    def list_trainings(self, status: list[str] | None = None, types: list[str] | None = None) -> list[dict]:
        """Every training job of the key (all pages), newest first."""
        params = {k: ",".join(v) for k, v in {"status": status, "types": types}.items() if v}
        return self._all_pages("/trains", params, "trainJobs")

    def wait_for_training(self, train_job_id: str, timeout_s: float = 24 * 3600, poll_s: float = 2.0,
                          on_update: Callable[[dict], None] | None = None) -> dict:
        """Poll a training job until it is Complete, Fail or Stopped; its last record."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.training_job(train_job_id)
            if on_update:
                on_update(job)
            if job["status"] in (TrainingStatus.COMPLETE, TrainingStatus.FAIL, TrainingStatus.STOPPED):
                return job
            if time.monotonic() > deadline:
                raise ApiError(0, f"training job {train_job_id} has not finished after {timeout_s} s.")
            time.sleep(poll_s)

    def download(self, url: str) -> bytes:
        """GET a signed URL (an image or parameter output)."""
        try:
            response = self.session.get(url, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ApiError(0, f"Cannot download {url.split('?', 1)[0]}: {type(exc).__name__}.") from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_text(response))
        return response.content

    # -- uploads -------------------------------------------------------------------------------------------
    def put_file(self, url: str, path: Path, retries: int = 3) -> str:
        """PUT a whole file to a signed URL; returns the ETag."""
        return _put_with_retries(self.session, url, path, 0, path.stat().st_size, retries, self.timeout_s)

    def upload_checkpoint_files(self, checkpoint_type: str, paths: list[Path], params: dict | None = None,
                                part_size: int = DEFAULT_PART_SIZE, workers: int = 4, retries: int = 3,
                                progress: ProgressCallback | None = None) -> dict:
        """Upload model files as one checkpoint: parts in parallel, with retries; then complete it. The files
        are hashed first: content the catalogue has already is not uploaded again (its checkpoint is returned)."""
        sizes = {p.name: p.stat().st_size for p in paths}
        counts = {name: max(1, math.ceil(size / part_size)) for name, size in sizes.items()}
        created = self.create_checkpoint(checkpoint_type, list(counts.items()), params,
                                         sha256s={p.name: file_sha256(p) for p in paths})
        if created.get("existing"):
            return created["checkpoint"]
        total, done = sum(sizes.values()), 0
        jobs = [(path, n, url) for path in paths for n, url in enumerate(created["s3PresignUrl"][path.name], 1)]
        tags: dict[str, list[dict]] = {p.name: [] for p in paths}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {}
            for path, number, url in jobs:
                start = (number - 1) * part_size
                length = min(part_size, sizes[path.name] - start)
                futures[pool.submit(_put_with_retries, self.session, url, path, start, length, retries,
                                    self.timeout_s)] = (path.name, number, length)
            for future in as_completed(futures):
                name, number, length = futures[future]
                tags[name].append({"ETag": future.result(), "PartNumber": number})
                done += length
                if progress:
                    progress(done, total)
        for parts in tags.values():
            parts.sort(key=lambda t: t["PartNumber"])
        completed = self.complete_checkpoint(created["checkpoint"]["id"], tags)["checkpoint"]
        return self.wait_for_completion(completed) if completed.get("completing") else completed

    def wait_for_completion(self, checkpoint: dict, timeout_s: float = 3600, poll_s: float = 1.0) -> dict:
        """Poll a checkpoint whose completion goes on in the background (large files) until it ends; its
        listed record, or ApiError with the reason when it did not become Active (a part to upload again, or
        not a model file)."""
        deadline = time.monotonic() + timeout_s
        while checkpoint.get("completing"):
            if time.monotonic() > deadline:
                raise ApiError(0, f"checkpoint {checkpoint['id']} is still being completed after {timeout_s} s.")
            time.sleep(poll_s)
            checkpoint = self.get_checkpoint(checkpoint["id"])
        if checkpoint["status"] != CheckpointStatus.ACTIVE:
            raise ApiError(400, checkpoint.get("error") or "the upload was not completed; upload it again.")
        return checkpoint

    def wait_for_checkpoint(self, checkpoint_id: str, timeout_s: float = 3600, poll_s: float = 1.0,
                            on_update: Callable[[dict], None] | None = None) -> dict:
        """Poll until the checkpoint leaves `Initialed` (URL imports); returns its listed record."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.get_checkpoint(checkpoint_id)
            if on_update:
                on_update(record)
            if record["status"] != CheckpointStatus.INITIALED:
                return record
            if time.monotonic() > deadline:
                raise ApiError(0, f"checkpoint {checkpoint_id} is still Initialed after {timeout_s} s.")
            time.sleep(poll_s)

    def create_dataset_from_files(self, name: str, paths: list[Path], description: str = "",
                                  progress: ProgressCallback | None = None) -> dict:
        """Create a dataset, upload every file, then enable it."""
        content = [{"filename": p.name, "name": p.name, "type": _file_type(p)} for p in paths]
        urls = self.create_dataset(name, content, {"description": description} if description else {})["s3PresignUrl"]
        total, done = sum(p.stat().st_size for p in paths), 0
        for path in paths:
            self.put_file(urls[path.name], path)
            done += path.stat().st_size
            if progress:
                progress(done, total)
        return self.set_dataset_status(name, DatasetStatus.ENABLED.value)


def _file_type(path: Path) -> str:
    return path.suffix.lstrip(".").lower() or "file"


class _FileSlice:
    """A read-only window on a file, so a part is streamed from disk, not loaded into memory."""

    def __init__(self, path: Path, start: int, length: int):
        self._file = open(path, "rb")  # noqa: SIM115 - closed by _put_with_retries
        self._file.seek(start)
        self._left = length
        self.len = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size is None or size < 0 else min(size, self._left)
        data = self._file.read(size)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()


def _put_with_retries(session: requests.Session, url: str, path: Path, start: int, length: int,
                      retries: int, timeout_s: float) -> str:
    for attempt in range(1, retries + 1):
        body = _FileSlice(path, start, length)
        try:
            response = session.put(url, data=body, headers={"Content-Length": str(length)}, timeout=timeout_s)
            if response.status_code < 400:
                return response.headers["ETag"]
            retryable = response.status_code >= 500 or response.status_code == 429
            message = _error_text(response)
        except requests.RequestException as exc:
            retryable, message = True, f"{type(exc).__name__}"
        finally:
            body.close()
        if not retryable or attempt == retries:
            raise ApiError(0 if retryable else response.status_code,
                           f"Uploading {path.name} bytes {start}..{start + length} failed: {message}")
        time.sleep(min(10.0, 0.5 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


def _error_text(response: requests.Response) -> str:
    try:
        return response.json().get("error") or response.reason
    except ValueError:
        return response.text[:200] or response.reason


def default_api_key(data_dir: Path | None = None) -> str | None:
    """SD_AWS_API_KEY, else the key a local `sd-aws serve` generated in its data dir."""
    if os.environ.get("SD_AWS_API_KEY"):
        return os.environ["SD_AWS_API_KEY"]
    key_file = Path(data_dir or os.environ.get("SD_AWS_HOME") or Path.home() / ".sd-aws") / "api_key"
    return key_file.read_text().strip() if key_file.is_file() else None
