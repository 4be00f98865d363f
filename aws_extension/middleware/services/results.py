"""What a job's worker is given and what it leaves: the invocation request, and the results it stores.

Blob layout of a job: `out/<id>/<id>_request.json` (its parameters), `out/<id>/api_params.json`
(parameters uploaded for a `run: false` job), `out/<id>/result/image_<n>.png`, `out/<id>/result/<id>_param.json`;
on SageMaker also `out/<id>/invocation.json` (the request object), `out/<id>/progress.json` (written by the
worker) and `out/<id>/cancel.json` (written by a cancel, read by the worker).
A merge job's result is the file of the checkpoint it fills.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aws_extension.middleware.blobs.base import BlobStore
from aws_extension.middleware.errors import InvalidRequest, TooLarge, WorkerResultMissing
from aws_extension.middleware.records import CheckpointFile, InferenceJob
from aws_extension.middleware.services.checkpoints import INITIALED, CheckpointService
from aws_extension.vocabulary import Task
from aws_extension.wire import InvocationAnswer, InvocationOutput, InvocationRequest, ModelRef, ParamFile


def params_key(job_id: str) -> str:
    return f"out/{job_id}/{job_id}_request.json"


def params_upload_key(job_id: str) -> str:
    return f"out/{job_id}/api_params.json"


def invocation_key(job_id: str) -> str:
    return f"out/{job_id}/invocation.json"


def progress_key(job_id: str) -> str:
    return f"out/{job_id}/progress.json"


def cancel_key(job_id: str) -> str:
    return f"out/{job_id}/cancel.json"


def result_prefix(job_id: str) -> str:
    return f"out/{job_id}/result"


def image_key(job_id: str, name: str) -> str:
    return f"{result_prefix(job_id)}/{name}"


def param_file_key(job_id: str) -> str:
    return f"{result_prefix(job_id)}/{job_id}_param.json"


def image_count(params: dict[str, Any]) -> int:
    """Images a (validated) generation payload makes: batch_size × n_iter."""
    return (params.get("batch_size") or 1) * (params.get("n_iter") or 1)


class JobResults:
    def __init__(self, blobs: BlobStore, checkpoints: CheckpointService, max_params_bytes: int):
        self.blobs = blobs
        self.checkpoints = checkpoints
        self.max_params_bytes = max_params_bytes  # as a request body may be

    def save_params(self, job_id: str, params: dict[str, Any]) -> None:
        with self.blobs.writer(params_key(job_id)) as out:
            out.write(json.dumps(params).encode())

    def read_params(self, job_id: str) -> dict[str, Any]:
        return json.loads(self.blobs.read(params_key(job_id)))

    def uploaded_params(self, job: InferenceJob) -> dict[str, Any] | None:
        """Parameters uploaded to a `run: false` job's upload URL, if any; InvalidRequest if not an object."""
        size = self.blobs.size(job.params_upload_key) if job.params_upload_key else None
        if size is None:
            return None
        if size > self.max_params_bytes:
            raise TooLarge(f"the parameters uploaded for job {job.id} are {size} bytes; at most "
                           f"{self.max_params_bytes} (SD_AWS_MAX_BODY_BYTES) are read.")
        try:
            params = json.loads(self.blobs.read(job.params_upload_key))
        except ValueError:
            params = None
        if not isinstance(params, dict):
            raise InvalidRequest(f"the parameters uploaded for job {job.id} are not a JSON object.")
        return params

    def invocation_for(self, job: InferenceJob, url_lifetime_s: int | None = None) -> InvocationRequest:
        """The worker's /invocations request for `job` (see worker/invocations.py), with fresh signed URLs
        (living `url_lifetime_s`, or the store's default)."""
        def signed(key: str, method: str = "GET") -> str:
            return self.blobs.signed_url(key, method, url_lifetime_s)

        models = []
        for model in job.models:
            if not self.blobs.exists(model.key):
                raise InvalidRequest(f"the {model.type} model {model.name} is no longer in the catalogue.")
            models.append(ModelRef(type=model.type, name=model.name, sha256=model.sha256,
                                   url=signed(model.key)))
        if job.task == Task.MERGE_CHECKPOINT:
            output = InvocationOutput(model_url=signed(job.merge.key, "PUT"))
        else:
            count = image_count(self.read_params(job.id))
            output = InvocationOutput(image_urls=[signed(image_key(job.id, f"image_{i}.png"), "PUT")
                                                  for i in range(count)])
        return InvocationRequest(task=job.task, job_id=job.id, models=models,
                                 params_url=signed(params_key(job.id)), output=output)

    def store(self, job: InferenceJob, answer: InvocationAnswer) -> list[str]:
        """Check what a successful worker left and record it; returns the image names. WorkerResultMissing
        (or the catalogue's InvalidRequest for a merged file that is not a model) when it did not arrive."""
        if job.task == Task.MERGE_CHECKPOINT:
            self._store_merged_checkpoint(job)
            return []
        names = [f"image_{i}.png" for i in range(answer.image_count)]
        missing = [n for n in names if not self.blobs.exists(image_key(job.id, n))]
        if missing:
            raise WorkerResultMissing(f"the worker reported {answer.image_count} images but {missing} did not arrive.")
        param_file = ParamFile(parameters=answer.parameters, info=answer.info, endpoint_name=job.endpoint,
                               inference_id=job.id)
        with self.blobs.writer(param_file_key(job.id)) as out:
            out.write(json.dumps(param_file.to_json()).encode())
        return names

    def _store_merged_checkpoint(self, job: InferenceJob) -> None:
        merge = job.merge
        size = self.blobs.size(merge.key)
        if size is None:
            raise WorkerResultMissing("the merged model was not uploaded.")
        sha256 = hashlib.sha256()
        for chunk in self.blobs.iter_chunks(merge.key):
            sha256.update(chunk)
        self.checkpoints.finish(merge.checkpoint_id, [CheckpointFile(filename=merge.filename, key=merge.key,
                                                                     sha256=sha256.hexdigest(), size=size)],
                                expect={"status": INITIALED})

    def image_urls(self, job: InferenceJob) -> list[str]:
        return [self.blobs.signed_url(image_key(job.id, name)) for name in job.image_names]

    def param_urls(self, job: InferenceJob) -> list[str]:
        return [self.blobs.signed_url(param_file_key(job.id))]
