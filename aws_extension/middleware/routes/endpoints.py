"""The endpoint routes of API.md."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aws_extension.middleware import answers
from aws_extension.middleware.errors import MisdirectedRequest
from aws_extension.middleware.principals import Principal, current_principal
from aws_extension.middleware.routes.deps import get_services, owner_labels
from aws_extension.middleware.routes.paging import LIST_PAGE, LIST_PAGE_MAX
from aws_extension.middleware.wiring import Services

router = APIRouter(tags=["endpoints"])


class DeployEndpoint(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance_type: str
    initial_instance_count: int | str
    endpoint_name: str | None = None
    autoscaling_enabled: bool = False
    min_instance_number: int | str | None = None
    max_instance_number: int | str | None = None
    assign_to_roles: list[str] | None = None


class DeleteEndpoints(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delete_endpoint_list: list[str] = Field(max_length=100)


def _deploy_request(body: dict[str, Any]) -> DeployEndpoint:
    if "delete_endpoint_list" in body and "instance_type" not in body:
        raise MisdirectedRequest("This body deletes endpoints: use DELETE /endpoints with it.", "delete_endpoint_list")
    try:
        return DeployEndpoint.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


@router.post("/endpoints", response_model=answers.DeploymentStarted,
             summary="Deploy an endpoint (answers at once; it comes up in the background)")
def deploy_endpoint(body: dict[str, Any] = Body(..., examples=[{"instance_type": "local", "initial_instance_count": 1}]),
                    services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    record = services.endpoints.deploy(_deploy_request(body).model_dump(exclude_none=True), principal)
    return answers.deployment_started(record)


@router.delete("/endpoints", response_model=answers.EndpointsDeleted, summary="Delete endpoints (each independently)")
def delete_endpoints(body: DeleteEndpoints, services: Services = Depends(get_services)):
    return answers.EndpointsDeleted(results=services.retirement.delete(body.delete_endpoint_list))


@router.get("/endpoints", response_model=list[answers.EndpointAnswer],
            summary="Endpoint deployment jobs, newest first, a page at a time (those assigned to one of the key's "
                    "roles, or to none)",
            description="Pages as GET /inference/list-inference-jobs does: `limit` records (default 100, at most "
                        "1000), after the record whose `EndpointDeploymentJobId` is `last_key`; a page shorter than "
                        "`limit` is the last one.")
def list_endpoints(status: str | None = None, endpoint_name: str | None = None,
                   limit: int = Query(LIST_PAGE, ge=1, le=LIST_PAGE_MAX), last_key: str | None = None,
                   services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    label = owner_labels(services)
    return [answers.endpoint_answer(r, label)
            for r in services.endpoints.page(status, endpoint_name, limit, last_key, principal)]


@router.get("/inference/get-endpoint-deployment-job", response_model=answers.EndpointAnswer)
def endpoint_deployment_job(jobID: str = Query(...), services: Services = Depends(get_services), principal: Principal = Depends(current_principal)):
    return answers.endpoint_answer(services.endpoints.get(jobID, principal), owner_labels(services))
