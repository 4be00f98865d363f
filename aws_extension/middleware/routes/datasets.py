"""The dataset routes of API.md."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from aws_extension.middleware.routes.deps import get_services, query_list
from aws_extension.middleware.services.datasets import DatasetFile, listed_dataset
from aws_extension.middleware.wiring import Services

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
    status: Literal["Enabled", "Disabled"]


@router.post("/dataset")
def create_dataset(body: CreateDataset, services: Services = Depends(get_services)) -> dict:
    urls = services.datasets.create(
        body.dataset_name, [DatasetFile(c.filename, c.name or c.filename, c.type) for c in body.content], body.params)
    return {"statusCode": 200, "datasetName": body.dataset_name, "s3PresignUrl": urls}


@router.put("/dataset")
def update_dataset(body: UpdateDataset, services: Services = Depends(get_services)) -> dict:
    record = services.datasets.set_status(body.dataset_name, body.status)
    return {"statusCode": 200, "datasetName": record["name"], "status": record["status"]}


@router.get("/datasets")
def list_datasets(request: Request, services: Services = Depends(get_services)) -> dict:
    records = services.datasets.list(query_list(request, "dataset_status"))
    return {"statusCode": 200, "datasets": [listed_dataset(r) for r in records]}


def dataset_data(dataset_name: str, services: Services = Depends(get_services)) -> dict:
    return {"statusCode": 200, "dataset_name": dataset_name, "data": services.datasets.files(dataset_name)}


router.add_api_route("/dataset/{dataset_name}/data", dataset_data, methods=["GET"])
# The seed's spelling of the same route.
router.add_api_route("/{dataset_name}/data", dataset_data, methods=["GET"], include_in_schema=False)
