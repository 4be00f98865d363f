"""The model catalogue routes of API.md."""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from aws_extension.middleware import answers
from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.principals import Principal, current_principal
from aws_extension.middleware.routes.deps import get_services, owner_labels, query_list
from aws_extension.middleware.routes.paging import LIST_PAGE, LIST_PAGE_MAX
from aws_extension.middleware.services.checkpoints import FileToUpload
from aws_extension.middleware.services.ownership import may_use_checkpoint
from aws_extension.middleware.wiring import Services
from aws_extension.vocabulary import MODEL_TYPES, CheckpointStatus, CheckpointType

router = APIRouter(tags=["checkpoints"])
CheckpointTypeName = Literal[MODEL_TYPES]  # type: ignore[valid-type]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilenameParts(Strict):
    filename: str
    parts_number: int
    sha256: str | None = Field(None, pattern="^[0-9a-fA-F]{64}$",
                               description="the file's sha256: if that content is Active already, nothing is uploaded")


class CreateCheckpoint(Strict):
    checkpoint_type: CheckpointTypeName
    filenames: list[FilenameParts]
    params: dict[str, Any] = Field(default_factory=dict)


class PartTag(BaseModel):
    ETag: str
    PartNumber: int


class UpdateCheckpoint(Strict):
    checkpoint_id: str
    status: Literal[CheckpointStatus.ACTIVE.value, CheckpointStatus.DISABLED.value] | None = None  # type: ignore[valid-type]
    multi_parts_tags: dict[str, list[PartTag]] | None = None
    allowed_roles: list[str] | None = Field(None, description="who may see and use it from now on ([]: everyone)")


class ImportCheckpoint(Strict):
    checkpointType: CheckpointTypeName
    modelUrl: list[str]
    params: dict[str, Any] = Field(default_factory=dict)


@router.post("/checkpoint", response_model=answers.CheckpointUploadStarted)
def create_checkpoint(body: CreateCheckpoint, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    record, urls = services.checkpoints.create_upload(
        body.checkpoint_type, [FileToUpload(f.filename, f.parts_number, f.sha256) for f in body.filenames], body.params,
        principal)
    return answers.CheckpointUploadStarted(checkpoint=answers.public_checkpoint(record, owner_labels(services)),
                                           s3PresignUrl=urls,
                                           existing=record.status == CheckpointStatus.ACTIVE)


@router.put("/checkpoint", response_model=answers.CheckpointAnswer,
            summary="Complete an upload (Active when done; a long one goes on in the background), toggle Disabled, "
                    "or change allowed_roles")
async def update_checkpoint(body: UpdateCheckpoint, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    if body.status is None and body.allowed_roles is None:
        raise InvalidRequest("give status (Active or Disabled), allowed_roles, or both.")
    record = await anyio.to_thread.run_sync(services.checkpoints.get, body.checkpoint_id, principal)
    if body.allowed_roles is not None:
        record = await anyio.to_thread.run_sync(services.checkpoints.set_allowed_roles, body.checkpoint_id,
                                                body.allowed_roles, principal)
    if body.status is not None:
        tags = {name: [(t.PartNumber, t.ETag) for t in parts] for name, parts in (body.multi_parts_tags or {}).items()}
        record = await services.checkpoints.update(body.checkpoint_id, CheckpointStatus(body.status), tags)
    return answers.CheckpointAnswer(checkpoint=answers.public_checkpoint(record, owner_labels(services)))


@router.get("/checkpoints", response_model=answers.CheckpointList,
            summary="Checkpoints, newest first, a page at a time",
            description="`limit` checkpoints (default 100, at most 1000) after the one whose id is `last_key`; the "
                        "answer's `last_key` is the next page's, null on the last page. Checkpoints limited to roles "
                        "the key does not have are left out (a page may then be shorter than `limit`).")
def list_checkpoints(request: Request, limit: int = Query(LIST_PAGE, ge=1, le=LIST_PAGE_MAX),
                     last_key: str | None = None, services: Services = Depends(get_services),
                     principal: Principal = Depends(current_principal)):
    statuses, types = query_list(request, "status"), query_list(request, "types")
    records, next_key = services.checkpoints.page(statuses, types, limit, last_key)
    label = owner_labels(services)
    return answers.CheckpointList(checkpoints=[answers.listed_checkpoint(r, label) for r in records
                                               if may_use_checkpoint(principal, r)], last_key=next_key)


@router.get("/checkpoint/{checkpoint_id}", response_model=answers.OneCheckpoint,
            summary="One checkpoint (as listed by GET /checkpoints)")
def get_checkpoint(checkpoint_id: str, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    record = services.checkpoints.get(checkpoint_id, principal)
    return answers.OneCheckpoint(checkpoint=answers.listed_checkpoint(record, owner_labels(services)))


@router.delete("/checkpoint/{checkpoint_id}", response_model=answers.CheckpointDeleted,
               summary="Delete a checkpoint and its files")
def delete_checkpoint(checkpoint_id: str, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    services.checkpoints.delete(checkpoint_id, principal)
    return answers.CheckpointDeleted(checkpoint_id=checkpoint_id)


@router.post("/upload_checkpoint", response_model=answers.CheckpointAnswer)
def import_checkpoint(body: ImportCheckpoint, services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    record = services.importer.start(body.checkpointType, body.modelUrl, body.params, principal)
    return answers.CheckpointAnswer(checkpoint=answers.public_checkpoint(record, owner_labels(services)))


def _names(checkpoint_type: str):
    def route(services: Services = Depends(get_services), principal: Principal = Depends(current_principal)) -> list[str]:
        return services.checkpoints.active_file_names(checkpoint_type, principal)
    return route


for _path, _type in [("get-texual-inversion-list", CheckpointType.EMBEDDINGS),
                     ("get-textual-inversion-list", CheckpointType.EMBEDDINGS),
                     ("get-lora-list", CheckpointType.LORA), ("get-hypernetwork-list", CheckpointType.HYPERNETWORKS),
                     ("get-controlnet-model-list", CheckpointType.CONTROLNET)]:
    router.add_api_route(f"/inference/{_path}", _names(_type), methods=["GET"], response_model=list[str],
                         summary=f"File names of the Active {_type} checkpoints")


@router.get("/inference/generate-s3-presigned-url-for-uploading", response_model=str)
def presigned_upload_url(key: str = Query(..., description="a key under uploads/"),
                         services: Services = Depends(get_services)):
    return services.uploads.signed_put_url(key)
