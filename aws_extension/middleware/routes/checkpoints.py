"""The model catalogue routes of API.md."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from aws_extension.middleware.blobs.base import InvalidKey, validate_key
from aws_extension.middleware.errors import BadRequest
from aws_extension.middleware.routes.deps import get_services, query_list
from aws_extension.middleware.services.checkpoints import FileToUpload, listed_checkpoint, public_checkpoint
from aws_extension.middleware.wiring import Services
from aws_extension.model_types import MODEL_TYPES

router = APIRouter(tags=["checkpoints"])
CheckpointType = Literal[MODEL_TYPES]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilenameParts(Strict):
    filename: str
    parts_number: int


class CreateCheckpoint(Strict):
    checkpoint_type: CheckpointType
    filenames: list[FilenameParts]
    params: dict[str, Any] = Field(default_factory=dict)


class PartTag(BaseModel):
    ETag: str
    PartNumber: int


class UpdateCheckpoint(Strict):
    checkpoint_id: str
    status: Literal["Active", "Disabled"]
    multi_parts_tags: dict[str, list[PartTag]] | None = None


class ImportCheckpoint(Strict):
    checkpointType: CheckpointType
    modelUrl: list[str]
    params: dict[str, Any] = Field(default_factory=dict)


@router.post("/checkpoint")
def create_checkpoint(body: CreateCheckpoint, services: Services = Depends(get_services)) -> dict:
    record, urls = services.checkpoints.create_upload(
        body.checkpoint_type, [FileToUpload(f.filename, f.parts_number) for f in body.filenames], body.params)
    return {"statusCode": 200, "checkpoint": public_checkpoint(record), "s3PresignUrl": urls}


@router.put("/checkpoint")
def update_checkpoint(body: UpdateCheckpoint, services: Services = Depends(get_services)) -> dict:
    tags = {name: [(t.PartNumber, t.ETag) for t in parts] for name, parts in (body.multi_parts_tags or {}).items()}
    record = services.checkpoints.update_status(body.checkpoint_id, body.status, tags)
    return {"statusCode": 200, "checkpoint": public_checkpoint(record)}


@router.get("/checkpoints", summary="Checkpoints, newest first; ?limit= and ?last_key=<last id> page them")
def list_checkpoints(request: Request, limit: int | None = Query(None, ge=1, le=1000), last_key: str | None = None,
                     services: Services = Depends(get_services)) -> dict:
    statuses, types = query_list(request, "status"), query_list(request, "types")
    if limit is None and last_key is None:  # the seed's route: the whole catalogue
        return {"statusCode": 200,
                "checkpoints": [listed_checkpoint(r) for r in services.checkpoints.list(statuses, types)]}
    records, next_key = services.checkpoints.page(statuses, types, limit or 100, last_key)
    return {"statusCode": 200, "checkpoints": [listed_checkpoint(r) for r in records], "last_key": next_key}


@router.get("/checkpoint/{checkpoint_id}", summary="One checkpoint (as listed by GET /checkpoints)")
def get_checkpoint(checkpoint_id: str, services: Services = Depends(get_services)) -> dict:
    return {"statusCode": 200, "checkpoint": listed_checkpoint(services.checkpoints.get(checkpoint_id))}


@router.post("/upload_checkpoint")
def import_checkpoint(body: ImportCheckpoint, services: Services = Depends(get_services)) -> dict:
    record = services.importer.start(body.checkpointType, body.modelUrl, body.params)
    return {"statusCode": 200, "checkpoint": public_checkpoint(record)}


def _names(checkpoint_type: str):
    def route(services: Services = Depends(get_services)) -> list[str]:
        return services.checkpoints.active_file_names(checkpoint_type)
    return route


for _path, _type in [("get-texual-inversion-list", "embeddings"), ("get-textual-inversion-list", "embeddings"),
                     ("get-lora-list", "Lora"), ("get-hypernetwork-list", "hypernetworks"),
                     ("get-controlnet-model-list", "ControlNet")]:
    router.add_api_route(f"/inference/{_path}", _names(_type), methods=["GET"],
                         summary=f"File names of the Active {_type} checkpoints")


@router.get("/inference/generate-s3-presigned-url-for-uploading")
def presigned_upload_url(key: str = Query(..., description="a key under uploads/"),
                         services: Services = Depends(get_services)) -> str:
    try:
        validate_key(key)
    except InvalidKey as exc:
        raise BadRequest(f"key is not valid: {exc}.") from None
    if not key.startswith("uploads/") or key == "uploads/":
        raise BadRequest(f"key {key!r} must be a file under the uploads/ prefix, e.g. uploads/my-image.png.")
    return services.blobs.signed_url(key, "PUT")

