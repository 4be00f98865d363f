"""The dataset routes of API.md."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from aws_extension.middleware import answers
from aws_extension.middleware.principals import Principal, current_principal
from aws_extension.middleware.routes.deps import get_services, owner_labels, query_list
from aws_extension.middleware.routes.paging import LIST_PAGE, LIST_PAGE_MAX
from aws_extension.middleware.services.datasets import FileToAdd
from aws_extension.middleware.wiring import Services
from aws_extension.vocabulary import DatasetStatus

router = APIRouter(tags=["datasets"])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentItem(Strict):
    filename: str
    name: str = ""
    type: str = "image"


class CreateDataset(Strict):
    dataset_name: str
    content: list[ContentItem]
    params: dict[str, Any] = Field(default_factory=dict)


class UpdateDataset(Strict):
    dataset_name: str
    status: Literal[DatasetStatus.ENABLED.value, DatasetStatus.DISABLED.value]  # type: ignore[valid-type]


@router.post("/dataset", response_model=answers.DatasetCreated)
def create_dataset(body: CreateDataset, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    urls = services.datasets.create(
        body.dataset_name, [FileToAdd(c.filename, c.name or c.filename, c.type) for c in body.content], body.params,
        principal)
    return answers.DatasetCreated(datasetName=body.dataset_name, s3PresignUrl=urls)


@router.put("/dataset", response_model=answers.DatasetStatusAnswer)
def update_dataset(body: UpdateDataset, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    record = services.datasets.set_status(body.dataset_name, DatasetStatus(body.status), principal)
    return answers.DatasetStatusAnswer(datasetName=record.name, status=record.status)


@router.get("/datasets", response_model=answers.DatasetList,
            summary="The key's own datasets (administrators: everyone's, or ?owner=NAME's), newest first, a page at a time",
            description="`limit` datasets (default 100, at most 1000) after the one named `last_key`; the answer's "
                        "`last_key` is the next page's, null on the last page.")
def list_datasets(request: Request, owner: str | None = None, limit: int = Query(LIST_PAGE, ge=1, le=LIST_PAGE_MAX),
                  last_key: str | None = None, services: Services = Depends(get_services),
                  principal: Principal = Depends(current_principal)):
    records, next_key = services.datasets.page(query_list(request, "dataset_status"), limit, last_key, principal, owner)
    label = owner_labels(services)
    return answers.DatasetList(datasets=[answers.listed_dataset(r, label) for r in records], last_key=next_key)


@router.delete("/dataset/{dataset_name}", response_model=answers.DatasetDeleted,
               summary="Delete a dataset and its files")
def delete_dataset(dataset_name: str, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    services.datasets.delete(dataset_name, principal)
    return answers.DatasetDeleted(datasetName=dataset_name)


def dataset_data(dataset_name: str, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    return answers.dataset_data(dataset_name, services.datasets.files(dataset_name, principal))


router.add_api_route("/dataset/{dataset_name}/data", dataset_data, methods=["GET"], response_model=answers.DatasetData)
# The seed's spelling of the same route.
router.add_api_route("/{dataset_name}/data", dataset_data, methods=["GET"], response_model=answers.DatasetData,
                     include_in_schema=False)
