"""The inference routes of API.md."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from aws_extension.middleware import answers
from aws_extension.middleware.errors import MisdirectedRequest
from aws_extension.middleware.principals import Principal, current_principal
from aws_extension.middleware.routes.deps import get_services
from aws_extension.middleware.wiring import Services
from aws_extension.vocabulary import MergeMethod

router = APIRouter(tags=["inference"])
SEED_EXAMPLE = {"task_type": "txt2img", "models": {"Stable-diffusion": ["v1-5-pruned-emaonly.safetensors"]},
                "sagemaker_endpoint_name": "infer-endpoint-cb821ea", "prompt": "a cute panda",
                "denoising_strength": 0.75}


@router.post("/inference/v2", response_model=answers.JobStarted, response_model_exclude_none=True,
             summary="Create and start an inference job (A1111 parameters at the top level)")
def create_inference(body: dict[str, Any] = Body(..., examples=[SEED_EXAMPLE]),
                     services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    return services.jobs.create(body, principal)


@router.put("/inference/v2/{job_id}/run", response_model=answers.JobStarted, response_model_exclude_none=True,
            summary="Start a job created with run: false")
def run_inference(job_id: str, body: dict[str, Any] | None = Body(None), services: Services = Depends(get_services),
                  principal: Principal = Depends(current_principal)):
    if body and "train_type" in body:
        raise MisdirectedRequest("This route starts inference jobs; training jobs are created with POST /train.",
                                 "train_type")
    return services.jobs.run(job_id, principal)


@router.put("/inference/v2/{job_id}/cancel", response_model=answers.JobAnswer,
            summary="Cancel a job: a waiting one at once; a running one becomes cancelling until its worker stops")
def cancel_inference(job_id: str, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    return services.jobs.cancel(job_id, principal)


@router.get("/inference/get-inference-job", response_model=answers.JobAnswer)
def get_inference_job(jobID: str = Query(...), services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    return services.jobs.describe(jobID, principal)


@router.get("/inference/get-inference-job-image-output", response_model=list[str])
def image_output(jobID: str = Query(...), services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    return services.jobs.image_urls(jobID, principal)


@router.get("/inference/get-inference-job-param-output", response_model=list[str])
def param_output(jobID: str = Query(...), services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    return services.jobs.param_urls(jobID, principal)


@router.get("/inference/list-inference-jobs", response_model=list[answers.JobAnswer],
            summary="Jobs, newest first; ?last_key=<last id seen> pages; the key's own jobs (administrators: "
                    "everyone's, or ?owner=NAME's)")
def list_inference_jobs(status: str | None = None, task_type: str | None = None, endpoint: str | None = None,
                        limit: int = Query(100, ge=1, le=1000), last_key: str | None = None, owner: str | None = None,
                        services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    return services.jobs.list(status, task_type, endpoint, limit, last_key, principal, owner)


class ModelMerge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    primary_model_name: str
    secondary_model_name: str | None = None
    tertiary_model_name: str | None = None
    interp_method: Literal[MergeMethod.values()] = MergeMethod.WEIGHTED_SUM.value  # type: ignore[valid-type]
    multiplier: float = Field(0.3, ge=0, le=1)
    save_as_half: bool = False
    custom_name: str | None = None
    sagemaker_endpoint_name: str | None = None


@router.post("/inference/run-model-merge", response_model=answers.MergeStarted,
             summary="Merge checkpoints on an endpoint into a new checkpoint")
def run_model_merge(body: ModelMerge, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    return services.jobs.merge(body.model_dump(), principal)
