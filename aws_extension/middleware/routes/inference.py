"""The inference routes of API.md."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict

from aws_extension.middleware.errors import Unprocessable
from aws_extension.middleware.routes.deps import get_services
from aws_extension.middleware.wiring import Services

router = APIRouter(tags=["inference"])
SEED_EXAMPLE = {"task_type": "txt2img", "models": {"Stable-diffusion": ["v1-5-pruned-emaonly.safetensors"]},
                "sagemaker_endpoint_name": "infer-endpoint-cb821ea", "prompt": "a cute panda",
                "denoising_strength": 0.75}


@router.post("/inference/v2", summary="Create and start an inference job (A1111 parameters at the top level)")
def create_inference(body: dict[str, Any] = Body(..., examples=[SEED_EXAMPLE]),
                     services: Services = Depends(get_services)) -> dict:
    return services.inference.create(body)


@router.put("/inference/v2/{job_id}/run", summary="Start a job created with run: false")
def run_inference(job_id: str, body: dict[str, Any] | None = Body(None),
                  services: Services = Depends(get_services)) -> dict:
    if body and "train_type" in body:
        raise Unprocessable("This route starts inference jobs; training jobs are created with POST /train.",
                            "train_type")
    return services.inference.run(job_id)


@router.put("/inference/v2/{job_id}/cancel", summary="Cancel a queued or running job")
def cancel_inference(job_id: str, services: Services = Depends(get_services)) -> dict:
    return services.inference.cancel(job_id)


@router.get("/inference/get-inference-job")
def get_inference_job(jobID: str = Query(...), services: Services = Depends(get_services)) -> dict:
    return services.inference.get(jobID)


@router.get("/inference/get-inference-job-image-output")
def image_output(jobID: str = Query(...), services: Services = Depends(get_services)) -> list[str]:
    return services.inference.image_urls(jobID)


@router.get("/inference/get-inference-job-param-output")
def param_output(jobID: str = Query(...), services: Services = Depends(get_services)) -> list[str]:
    return services.inference.param_urls(jobID)


@router.get("/inference/list-inference-jobs", summary="Jobs, newest first; ?last_key=<last id seen> pages")
def list_inference_jobs(status: str | None = None, task_type: str | None = None, endpoint: str | None = None,
                        limit: int = Query(100, ge=1, le=1000), last_key: str | None = None,
                        services: Services = Depends(get_services)) -> list[dict]:
    return services.inference.list(status, task_type, endpoint, limit, last_key)


class ModelMerge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    primary_model_name: str
    secondary_model_name: str | None = None
    tertiary_model_name: str | None = None
    interp_method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str | None = None
    sagemaker_endpoint_name: str | None = None


@router.post("/inference/run-model-merge", summary="Merge checkpoints on an endpoint into a new checkpoint")
def run_model_merge(body: ModelMerge, services: Services = Depends(get_services)) -> dict:
    return services.inference.merge(body.model_dump())
