"""The training routes of API.md: training bases (`/model`, `/models`) and training jobs (`/train`, `/trains`)."""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from aws_extension.middleware import answers
from aws_extension.middleware.principals import Principal, current_principal
from aws_extension.middleware.routes.checkpoints import FilenameParts, PartTag
from aws_extension.middleware.routes.deps import get_services, owner_labels, query_list
from aws_extension.middleware.routes.paging import LIST_PAGE, LIST_PAGE_MAX
from aws_extension.middleware.services.checkpoints import FileToUpload
from aws_extension.middleware.wiring import Services
from aws_extension.vocabulary import TrainingModelStatus, TrainingStatus

router = APIRouter(tags=["training"])

PAGED = ("`limit` records (default 100, at most 1000), newest first, after the one whose id is `last_key`; the "
         "answer's `last_key` is the next page's, null on the last page.")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateModel(Strict):
    model_type: str = "Stable-diffusion"
    name: str | None = None
    checkpoint_id: str | None = Field(None, description="an Active Stable-diffusion checkpoint (else: filenames)")
    filenames: list[FilenameParts] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)


class UpdateModel(Strict):
    model_id: str
    status: Literal[TrainingModelStatus.CREATING.value]  # type: ignore[valid-type]
    multi_parts_tags: dict[str, list[PartTag]] | None = None


class CreateTraining(Strict):
    train_type: str
    model_id: str
    params: dict[str, Any] = Field(default_factory=dict)


class UpdateTraining(Strict):
    train_job_id: str
    status: Literal[TrainingStatus.TRAINING.value, TrainingStatus.STOPPED.value]  # type: ignore[valid-type]


@router.post("/model", response_model=answers.TrainingModelCreated,
             summary="A training base from an Active checkpoint (checkpoint_id) or an upload (filenames)")
def create_model(body: CreateModel, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    models = services.training_models
    record, urls = models.create(body.model_type, body.name, body.checkpoint_id,
                                 [FileToUpload(f.filename, f.parts_number, f.sha256) for f in body.filenames],
                                 body.params, principal)
    return answers.TrainingModelCreated(job=answers.training_model_job(record, models.location(record),
                                                                        owner_labels(services)),
                                        s3PresignUrl=urls)


@router.put("/model", response_model=answers.TrainingModelCreating,
            summary="Complete the upload, if any, and prepare the base (Complete or Fail, in the background)")
async def update_model(body: UpdateModel, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    tags = {name: [(t.PartNumber, t.ETag) for t in parts] for name, parts in (body.multi_parts_tags or {}).items()}
    record = await services.training_models.start_creating(body.model_id, tags, principal)
    return answers.training_model_creating(record, services.training_models.location(record))


@router.get("/models", response_model=answers.TrainingModelList,
            summary="The key's own training bases (administrators: everyone's, or ?owner=NAME's), a page at a time",
            description=PAGED)
def list_models(request: Request, owner: str | None = None, limit: int = Query(LIST_PAGE, ge=1, le=LIST_PAGE_MAX),
                last_key: str | None = None, services: Services = Depends(get_services),
                principal: Principal = Depends(current_principal)):
    models = services.training_models
    records, next_key = models.page(query_list(request, "status"), query_list(request, "types"), limit, last_key,
                                    principal, owner)
    label = owner_labels(services)
    return answers.TrainingModelList(models=[answers.training_model_job(r, models.location(r), label) for r in records],
                                     last_key=next_key)


@router.post("/train", response_model=answers.TrainingJobCreated, summary="Create a training job (Initial)")
def create_training(body: CreateTraining, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    training = services.training
    record = training.create(body.train_type, body.model_id, body.params, principal)
    return answers.TrainingJobCreated(job=answers.training_job(record, training.input_location(record), label=owner_labels(services)))


@router.put("/train", response_model=answers.OneTrainingJob,
            summary="Training: start (or resume a Stopped job); Stopped: stop, keeping its saved state")
async def update_training(body: UpdateTraining, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    training = services.training
    if body.status == TrainingStatus.TRAINING:
        record = await anyio.to_thread.run_sync(training.start, body.train_job_id, principal)
    else:
        record = await training.stop(body.train_job_id, principal)
    return answers.OneTrainingJob(job=answers.training_job(record, training.input_location(record), label=owner_labels(services)))


@router.get("/trains", response_model=answers.TrainingJobList,
            summary="The key's own training jobs (administrators: everyone's, or ?owner=NAME's), a page at a time",
            description=PAGED)
def list_trainings(request: Request, owner: str | None = None, limit: int = Query(LIST_PAGE, ge=1, le=LIST_PAGE_MAX),
                   last_key: str | None = None, services: Services = Depends(get_services),
                   principal: Principal = Depends(current_principal)):
    training = services.training
    records, next_key = training.page(query_list(request, "status"), query_list(request, "types"), limit, last_key,
                                      principal, owner)
    label = owner_labels(services)
    return answers.TrainingJobList(trainJobs=[answers.training_job(r, training.input_location(r), label=label)
                                              for r in records], last_key=next_key)


@router.get("/train/{train_job_id}", response_model=answers.OneTrainingJob,
            summary="One training job with its live progress and signed URLs of its sample images")
def get_training(train_job_id: str, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    training = services.training
    record, progress, samples, position = training.describe(train_job_id, principal)
    return answers.OneTrainingJob(job=answers.training_job(record, training.input_location(record), progress,
                                                           samples, position))
