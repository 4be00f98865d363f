"""Inference jobs: validation, model resolution, the durable queue's records, completion, outputs.

A job (table `inference_jobs`: `status` = the job's status, `kind` = its task, `name` = its endpoint)
goes `created` → `inprogress` → `succeed` | `failed` | `cancelled`. While `inprogress` compute moves its
`queue_state` from `queued` to `running`. Its request, result PNGs and `<id>_param.json` live in blobs
under `out/<id>/`. `complete()` is the one completion path, whoever runs the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import PurePosixPath
from typing import Any

from aws_extension.middleware.blobs.base import BlobStore
from aws_extension.middleware.compute.base import Compute
from aws_extension.middleware.errors import BadRequest, Conflict, NotFound
from aws_extension.middleware.services import checkpoints as ckpt
from aws_extension.middleware.services.checkpoints import CheckpointService
from aws_extension.middleware.services.endpoints import EndpointService
from aws_extension.middleware.services.records import check_filename, new_id, now, time_text
from aws_extension.middleware.services.webhooks import WebhookSender
from aws_extension.middleware.store.base import Store, list_all
from aws_extension.model_types import MODEL_TYPES

log = logging.getLogger(__name__)

TABLE = "inference_jobs"
CREATED, INPROGRESS, SUCCEED, FAILED, CANCELLED = "created", "inprogress", "succeed", "failed", "cancelled"
TERMINAL = (SUCCEED, FAILED, CANCELLED)
GENERATION_TASKS = ("txt2img", "img2img")
MERGE_TASK = "merge-checkpoint"
MERGE_METHODS = ("Weighted sum", "Add difference", "No interpolation")
# Body fields that route the job; everything else is an A1111 parameter passed to the engine.
ROUTING_FIELDS = ("task_type", "models", "sagemaker_endpoint_name", "callback_url", "run")
_EXTRA_NETWORK = re.compile(r"<(?:lora|lyco):([^:>]+)(?::[^>]*)?>")
_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]+\]$")
CANCEL_WAIT_S = 10.0


def stem(name: str) -> str:
    return PurePosixPath(name).stem if "." in name else name


def public_job(record: dict[str, Any], queue_position: int | None = None) -> dict[str, Any]:
    return {"InferenceJobId": record["id"], "status": record["status"], "taskType": record["kind"],
            "startTime": record["startTime"], "completeTime": record.get("completeTime"),
            "endpoint_name": record["name"], "image_names": record.get("image_names", []),
            "inference_info_name": f"{record['id']}_param.json", "sagemakerRaw": record.get("sagemakerRaw"),
            "error": record.get("error"), "progress": record.get("progress", 0.0),
            "queue_position": queue_position, "timings": record.get("timings", {}),
            "output_path": record["output_path"], "attempts": record.get("attempts", 0),
            "checkpoint_id": record.get("merge", {}).get("checkpoint_id"), "callback": record.get("callback")}


class InferenceService:
    def __init__(self, store: Store, blobs: BlobStore, compute: Compute, checkpoints: CheckpointService,
                 endpoints: EndpointService, webhooks: WebhookSender):
        self.store = store
        self.blobs = blobs
        self.compute = compute
        self.checkpoints = checkpoints
        self.endpoints = endpoints
        self.webhooks = webhooks

    # -- model resolution ----------------------------------------------------------------------------------
    def _active_files(self, model_type: str) -> list[dict[str, Any]]:
        return [{**f, "type": model_type} for record in self.checkpoints.list([ckpt.ACTIVE], [model_type])
                for f in record["files"]]

    def _resolve(self, model_type: str, entry: Any, files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """A catalogue file for a name (file name or stem) or {"name", "sha256"}; BadRequest if none."""
        files = self._active_files(model_type) if files is None else files
        name, sha256 = (entry.get("name"), entry.get("sha256")) if isinstance(entry, dict) else (entry, None)
        if sha256:
            found = next((f for f in files if f["sha256"] == str(sha256).lower()), None)
        else:
            name = _TITLE_HASH.sub("", str(name or ""))
            found = next((f for f in files if f["filename"] == name), None) or \
                next((f for f in files if stem(f["filename"]) == stem(name)), None)
        if found is None:
            what = f"with sha256 {sha256}" if sha256 else repr(name)
            raise BadRequest(f"{model_type} model {what} is not an Active checkpoint; upload it "
                             f"(sd-aws checkpoint upload FILE --type {model_type}) or import it by URL first.")
        return {"type": model_type, "name": found["filename"], "sha256": found["sha256"], "key": found["key"]}

    def resolve_models(self, models: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        if not isinstance(models, dict):
            raise BadRequest('models must be an object like {"Stable-diffusion": ["model.safetensors"]}.')
        unknown = [t for t in models if t not in MODEL_TYPES]
        if unknown:
            raise BadRequest(f"models has unknown types {unknown}; use {', '.join(MODEL_TYPES)}.")
        checkpoints = models.get("Stable-diffusion") or []
        if not isinstance(checkpoints, list) or len(checkpoints) != 1:
            raise BadRequest("models must name exactly one Stable-diffusion checkpoint, "
                             f"not {len(checkpoints) if isinstance(checkpoints, list) else checkpoints!r}.")
        resolved: list[dict[str, Any]] = []
        problems: list[str] = []

        def add(model_type: str, entry: Any, files: list[dict[str, Any]] | None = None) -> None:
            try:
                found = self._resolve(model_type, entry, files)
            except BadRequest as exc:
                problems.append(exc.message)
                return
            if not any(r["key"] == found["key"] for r in resolved):
                resolved.append(found)

        for model_type, entries in models.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                add(model_type, entry)
        prompts = " ".join(str(params.get(k) or "") for k in ("prompt", "negative_prompt", "hr_prompt",
                                                                "hr_negative_prompt"))
        loras = self._active_files("Lora")
        for name in _EXTRA_NETWORK.findall(prompts):
            add("Lora", name.strip(), loras)
        words = set(re.findall(r"[\w.-]+", prompts))
        for embedding in self._active_files("embeddings"):
            if stem(embedding["filename"]) in words:
                add("embeddings", embedding["filename"])
        vae = (params.get("override_settings") or {}).get("sd_vae")
        if vae and vae not in ("Automatic", "None"):
            add("VAE", vae)
        units = ((params.get("alwayson_scripts") or {}).get("controlnet") or {}).get("args") or []
        for unit in units:
            if isinstance(unit, dict) and unit.get("enabled", True) and unit.get("model") not in (None, "", "None"):
                add("ControlNet", unit["model"])
        if problems:
            raise BadRequest(" ".join(problems))
        return resolved

    # -- creating and starting jobs -------------------------------------------------------------------------
    def _pick_endpoint(self, name: str | None) -> str:
        if name:
            return self.endpoints.in_service(name)["endpoint_name"]
        names = self.endpoints.in_service_names()
        if not names:
            raise Conflict("No endpoint is InService; deploy one with POST /endpoints (or name one in "
                           "sagemaker_endpoint_name).")
        load = {n: 0 for n in names}
        for job in list_all(self.store, TABLE, {"status": [INPROGRESS], "name": names}):
            load[job["name"]] += 1
        return min(names, key=lambda n: load[n] / max(1, self.compute.instance_count(n)))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        task = body.get("task_type")
        if task not in GENERATION_TASKS:
            raise BadRequest(f"task_type {task!r} is not supported; use txt2img or img2img "
                             "(merges: POST /inference/run-model-merge).")
        if "train_type" in body:
            raise BadRequest("This is the inference route; training jobs go to POST /train.")
        params = {k: v for k, v in body.items() if k not in ROUTING_FIELDS}
        models = self.resolve_models(body.get("models"), params)
        endpoint = self._pick_endpoint(body.get("sagemaker_endpoint_name"))
        callback_url = body.get("callback_url")
        if callback_url:
            self.webhooks.check_url(str(callback_url))
        run = body.get("run", True) is not False
        # the request's own `models`, to resolve again with parameters uploaded before `run`
        job = self._new_job(task, endpoint, models, callback_url, requested_models=body.get("models"))
        with self.blobs.writer(job["params_key"]) as out:
            out.write(json.dumps(params).encode())
        if not run:
            job["status"] = CREATED
            job["params_upload_key"] = f"out/{job['id']}/api_params.json"
        self.store.create(TABLE, job)
        if run:
            self.compute.job_queued(endpoint)
        return self.start_answer(job)

    def _new_job(self, task: str, endpoint: str, models: list[dict[str, Any]], callback_url: str | None,
                 **extra: Any) -> dict[str, Any]:
        job_id, created = new_id(), now()
        return {"id": job_id, "status": INPROGRESS, "kind": task, "name": endpoint, "created": created,
                "startTime": time_text(created), "models": models, "queue_state": "queued", "attempts": 0,
                "progress": 0.0, "params_key": f"out/{job_id}/{job_id}_request.json",
                "output_path": self.blobs.uri(f"out/{job_id}/result"), "callback_url": callback_url, **extra}

    def start_answer(self, job: dict[str, Any]) -> dict[str, Any]:
        answer = {"inference_id": job["id"], "status": job["status"], "endpoint_name": job["name"],
                  "output_path": job["output_path"]}
        if job["status"] == CREATED:
            answer["api_params_upload_url"] = self.blobs.signed_url(job["params_upload_key"], "PUT")
        return answer

    def run(self, job_id: str) -> dict[str, Any]:
        """Start a `created` job, with the parameters uploaded to its upload URL if any."""
        job = self.get_record(job_id)
        if job["status"] != CREATED:
            raise Conflict(f"job {job_id} is {job['status']}; only a created job can be run.")
        if self.blobs.exists(job["params_upload_key"]):
            uploaded = self.blobs.read(job["params_upload_key"])
            try:
                params = json.loads(uploaded)
                if not isinstance(params, dict):
                    raise ValueError("not an object")
            except ValueError:
                raise BadRequest(f"the parameters uploaded for job {job_id} are not a JSON object.") from None
            params = {k: v for k, v in params.items() if k not in ROUTING_FIELDS}
            stored = json.loads(self.blobs.read(job["params_key"]))
            merged = {**stored, **params}
            requested = job.get("requested_models") or {  # jobs created before requested_models was kept
                "Stable-diffusion": [m["name"] for m in job["models"] if m["type"] == "Stable-diffusion"]}
            models = self.resolve_models(requested, merged)
            with self.blobs.writer(job["params_key"]) as out:
                out.write(json.dumps(merged).encode())
            self.store.update(TABLE, job_id, {"models": models})
        started = self.store.update(TABLE, job_id, {"status": INPROGRESS, "queue_state": "queued"},
                                    expect={"status": CREATED})
        if started is None:
            raise Conflict(f"job {job_id} was started or cancelled by another request.")
        self.compute.job_queued(started["name"])
        return self.start_answer(started)

    def merge(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue a checkpoint merge; its result becomes a new Active Stable-diffusion checkpoint."""
        method = body.get("interp_method", "Weighted sum")
        if method not in MERGE_METHODS:
            raise BadRequest(f"interp_method {method!r} is unknown; use one of {', '.join(MERGE_METHODS)}.")
        multiplier = body.get("multiplier", 0.3)
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not 0 <= multiplier <= 1:
            raise BadRequest(f"multiplier must be a number from 0 to 1, not {multiplier!r}.")
        names = {"primary_model_name": body.get("primary_model_name"),
                 "secondary_model_name": body.get("secondary_model_name"),
                 "tertiary_model_name": body.get("tertiary_model_name") or None}
        if not names["primary_model_name"] or (method != "No interpolation" and not names["secondary_model_name"]):
            raise BadRequest("primary_model_name and secondary_model_name are required.")
        if method == "Add difference" and not names["tertiary_model_name"]:
            raise BadRequest("Add difference needs tertiary_model_name (A + (B - C) * M).")
        files = self._active_files("Stable-diffusion")
        resolved = {role: self._resolve("Stable-diffusion", name, files) for role, name in names.items() if name}
        endpoint = self._pick_endpoint(body.get("sagemaker_endpoint_name"))
        custom = body.get("custom_name") or "-".join(stem(r["name"]) for r in resolved.values()) + "-merged"
        filename = check_filename(custom if custom.endswith(".safetensors") else custom + ".safetensors")
        record = self.checkpoints.new_record("Stable-diffusion", [filename], {"merged_from": {
            role: r["name"] for role, r in resolved.items()}, "interp_method": method, "multiplier": multiplier},
            source="merge")
        self.store.create(ckpt.TABLE, record)
        merge = {"checkpoint_id": record["id"], "key": record["files"][0]["key"], "filename": filename,
                 "params": {**{role: r["name"] for role, r in resolved.items()}, "interp_method": method,
                            "multiplier": multiplier, "save_as_half": bool(body.get("save_as_half"))}}
        job = self._new_job(MERGE_TASK, endpoint, list(resolved.values()), None, merge=merge)
        with self.blobs.writer(job["params_key"]) as out:
            out.write(json.dumps(merge["params"]).encode())
        self.store.create(TABLE, job)
        self.compute.job_queued(endpoint)
        return {**{k: v for k, v in names.items()}, "inference_id": job["id"], "checkpoint_id": record["id"],
                "endpoint_name": endpoint}

    # -- reading ------------------------------------------------------------------------------------------
    def get_record(self, job_id: str) -> dict[str, Any]:
        job = self.store.get(TABLE, job_id)
        if job is None:
            raise NotFound(f"inference job {job_id} does not exist.")
        return job

    def queue_position(self, job: dict[str, Any]) -> int | None:
        if job["status"] != INPROGRESS or job.get("queue_state") != "queued":
            return None
        return self.store.count(TABLE, filters={"name": [job["name"]], "queue_state": ["queued"]}, before=job)

    def get(self, job_id: str) -> dict[str, Any]:
        job = self.get_record(job_id)
        return public_job(job, self.queue_position(job))

    def list(self, status: str | None, task_type: str | None, endpoint: str | None, limit: int,
             last_key: str | None) -> list[dict[str, Any]]:
        filters = {"status": [status] if status else [], "kind": [task_type] if task_type else [],
                   "name": [endpoint] if endpoint else []}
        after = None
        if last_key:  # the id of the last job of the previous page
            previous = self.store.get(TABLE, last_key)
            if previous is None:
                raise BadRequest(f"last_key {last_key!r} is not the id of a job.")
            after = self.store.key_after(previous)
        return [public_job(j, self.queue_position(j))
                for j in self.store.list(TABLE, filters=filters, limit=limit, after=after).records]

    def _finished(self, job_id: str) -> dict[str, Any]:
        job = self.get_record(job_id)
        if job["status"] != SUCCEED:
            raise Conflict(f"job {job_id} is {job['status']}, not succeed: it has no output"
                           + (f" ({job['error']})." if job.get("error") else " yet."))
        return job

    def image_urls(self, job_id: str) -> list[str]:
        job = self._finished(job_id)
        return [self.blobs.signed_url(f"out/{job_id}/result/{name}") for name in job.get("image_names", [])]

    def param_urls(self, job_id: str) -> list[str]:
        self._finished(job_id)
        return [self.blobs.signed_url(f"out/{job_id}/result/{job_id}_param.json")]

    # -- cancelling -----------------------------------------------------------------------------------------
    def cancel(self, job_id: str, reason: str = "Cancelled by the user.") -> dict[str, Any]:
        job = self.get_record(job_id)
        if job["status"] in TERMINAL:
            raise Conflict(f"job {job_id} is already {job['status']}; it cannot be cancelled.")
        changes = {"status": CANCELLED, "queue_state": None, "error": reason, "completeTime": time_text(now())}
        for expect in ({"status": CREATED}, {"status": INPROGRESS, "queue_state": "queued"}):
            cancelled = self.store.update(TABLE, job_id, changes, expect=expect)
            if cancelled:
                self._after_end(cancelled)
                return public_job(cancelled)
        # Running: interrupt the worker at its next step; the worker's answer completes the job.
        self.store.update(TABLE, job_id, {"cancel_reason": reason}, expect={"status": INPROGRESS})
        self.compute.interrupt(job_id)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            job = self.get_record(job_id)
            if job["status"] in TERMINAL:
                return public_job(job)
            time.sleep(0.1)
        return public_job(job)

    def cancel_endpoint_jobs(self, endpoint: str, reason: str) -> None:
        """Cancel the endpoint's waiting jobs; running ones get the reason, for when their worker stops."""
        for job in list_all(self.store, TABLE, {"status": [CREATED, INPROGRESS], "name": [endpoint]}):
            if job.get("queue_state") == "running":
                self.store.update(TABLE, job["id"], {"cancel_reason": reason}, expect={"status": INPROGRESS})
                continue
            try:
                self.cancel(job["id"], reason)
            except Conflict:
                pass  # it ended meanwhile

    def fail_endpoint_jobs(self, endpoint: str, reason: str) -> None:
        """The endpoint left service without being deleted: its waiting and running jobs fail with the reason
        (jobs created with `run: false` stay; running them answers that the endpoint is not in service)."""
        for job in list_all(self.store, TABLE, {"status": [INPROGRESS], "name": [endpoint]}):
            self.complete(job["id"], {"status": FAILED, "error": f"The endpoint {endpoint} failed: {reason}"})

    def delete_endpoints(self, names: list[str]) -> dict[str, str]:
        """Delete each endpoint independently: queued jobs cancelled, running ones interrupted, workers stopped."""
        results: dict[str, str] = {}
        for name in names:
            try:
                record = self.endpoints.begin_delete(name)
            except (NotFound, Conflict) as exc:
                results[name] = exc.message
                continue
            reason = f"The endpoint {name} was deleted."
            self.cancel_endpoint_jobs(name, reason)
            self.endpoints.finish_delete(record)  # interrupts running jobs, stops the workers
            for job in list_all(self.store, TABLE, {"status": [INPROGRESS], "name": [name]}):
                self.complete(job["id"], {"status": CANCELLED, "error": reason})
            results[name] = "deleted"
        if names and all(r != "deleted" and "does not exist" in r for r in results.values()):
            raise NotFound(f"none of the endpoints {names} exist.")
        return results

    # -- compute callbacks ------------------------------------------------------------------------------------
    def prepare_invocation(self, job: dict[str, Any]) -> dict[str, Any]:
        """The worker's /invocations request for a job (see worker/invocations.py), with fresh signed URLs."""
        models = []
        for model in job["models"]:
            if not self.blobs.exists(model["key"]):
                raise BadRequest(f"the {model['type']} model {model['name']} is no longer in the catalogue.")
            models.append({"type": model["type"], "name": model["name"], "sha256": model["sha256"],
                           "url": self.blobs.signed_url(model["key"])})
        payload: dict[str, Any] = {"task": job["kind"], "job_id": job["id"], "models": models,
                                   "params_url": self.blobs.signed_url(job["params_key"])}
        if job["kind"] == MERGE_TASK:
            payload["output"] = {"model_url": self.blobs.signed_url(job["merge"]["key"], "PUT")}
        else:
            params = json.loads(self.blobs.read(job["params_key"]))
            count = max(1, int(params.get("batch_size") or 1)) * max(1, int(params.get("n_iter") or 1))
            payload["output"] = {"image_urls": [
                self.blobs.signed_url(f"out/{job['id']}/result/image_{i}.png", "PUT") for i in range(count)]}
        return payload

    def complete(self, job_id: str, answer: dict[str, Any]) -> None:
        """The one completion path: a worker's answer (or compute's report) settles the job."""
        job = self.store.get(TABLE, job_id)
        if job is None or job["status"] in TERMINAL:
            return
        status = answer.get("status")
        timings = dict(answer.get("timings") or {})
        if job.get("dispatched_at"):
            timings["queued_s"] = round(job["dispatched_at"] - job["created"], 3)
        changes: dict[str, Any] = {"queue_state": None, "completeTime": time_text(now()), "timings": timings,
                                   "sagemakerRaw": json.dumps({k: v for k, v in answer.items() if k != "images"})}
        if status == "succeed":
            try:
                changes.update(self._store_results(job, answer))
                changes.update(status=SUCCEED, progress=1.0, error=None)
            except BadRequest as exc:
                changes.update(status=FAILED, error=exc.message)
        elif status == CANCELLED or job.get("cancel_reason"):  # asked to stop: however it ended, it was cancelled
            changes.update(status=CANCELLED, error=job.get("cancel_reason") or answer.get("error") or "Cancelled.")
        else:
            changes.update(status=FAILED, error=answer.get("error") or "The worker failed without a reason.")
        ended = self.store.update(TABLE, job_id, changes, expect={"status": INPROGRESS})
        if ended:
            self._after_end(ended)

    def _store_results(self, job: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        if job["kind"] == MERGE_TASK:
            merge = job["merge"]
            size = self.blobs.size(merge["key"])
            if size is None:
                raise BadRequest("the merged model was not uploaded.")
            sha256 = hashlib.sha256()
            for chunk in self.blobs.iter_chunks(merge["key"]):
                sha256.update(chunk)
            self.checkpoints.finish(merge["checkpoint_id"], [{"filename": merge["filename"], "key": merge["key"],
                                                              "sha256": sha256.hexdigest(), "size": size}],
                                    expect={"status": ckpt.INITIALED})
            return {"image_names": []}
        count = int(answer.get("image_count") or 0)
        names = [f"image_{i}.png" for i in range(count)]
        missing = [n for n in names if not self.blobs.exists(f"out/{job['id']}/result/{n}")]
        if missing:
            raise BadRequest(f"the worker reported {count} images but {missing} did not arrive.")
        param = {"parameters": answer.get("parameters") or {}, "info": answer.get("info") or "{}",
                 "endpoint_name": job["name"], "inference_id": job["id"]}
        with self.blobs.writer(f"out/{job['id']}/result/{job['id']}_param.json") as out:
            out.write(json.dumps(param).encode())
        return {"image_names": names}

    def _after_end(self, job: dict[str, Any]) -> None:
        """Whatever ended the job (its worker, a cancel, a deleted or failed endpoint)."""
        if job["kind"] == MERGE_TASK and job["status"] != SUCCEED:  # the merge's checkpoint will never arrive
            self.checkpoints.fail(job["merge"]["checkpoint_id"],
                                  f"the merge job {job['id']} ended {job['status']}: {job['error']}")
        if job.get("callback_url"):
            self.webhooks.send(job["callback_url"], public_job(job), self.record_delivery)

    def record_delivery(self, job_id: str, delivery: dict[str, Any]) -> None:
        self.store.update(TABLE, job_id, {"callback": delivery})

    def restore(self) -> None:
        """After a restart: jobs that were running go back to the queue (their workers are gone); jobs of
        endpoints no longer in service fail with the reason."""
        live = set(self.endpoints.in_service_names())
        for job in list_all(self.store, TABLE, {"status": [INPROGRESS]}):
            if job["name"] not in live:
                self.complete(job["id"], {"status": FAILED, "error": f"The endpoint {job['name']} is no longer "
                                                                     "in service (the middleware restarted)."})
            elif job.get("queue_state") == "running":
                self.store.update(TABLE, job["id"], {"queue_state": "queued", "worker": None, "progress": 0.0,
                                                     "attempts": max(0, job.get("attempts", 1) - 1)},
                                  expect={"status": INPROGRESS, "queue_state": "running"})
