"""The endpoint routes of API.md."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError

from aws_extension.middleware.errors import Unprocessable
from aws_extension.middleware.routes.deps import get_services
from aws_extension.middleware.services.endpoints import public_endpoint
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

    delete_endpoint_list: list[str]


@router.post("/endpoints", summary="Deploy an endpoint (answers at once; it comes up in the background)")
def deploy_endpoint(body: dict[str, Any] = Body(..., examples=[{"instance_type": "local", "initial_instance_count": 1}]),
                    services: Services = Depends(get_services)) -> dict:
    if "delete_endpoint_list" in body and "instance_type" not in body:
        raise Unprocessable("This body deletes endpoints: use DELETE /endpoints with it.", "delete_endpoint_list")
    try:
        request = DeployEndpoint.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    record = services.endpoints.deploy(request.model_dump(exclude_none=True))
    return {"EndpointDeploymentJobId": record["id"], "endpoint_name": record["endpoint_name"],
            "status": record["status"], "endpoint_status": record["kind"], "startTime": record["startTime"]}


@router.delete("/endpoints", summary="Delete endpoints (each independently)")
def delete_endpoints(body: DeleteEndpoints, services: Services = Depends(get_services)) -> dict:
    return {"message": "Endpoint deleted", "results": services.inference.delete_endpoints(body.delete_endpoint_list)}


@router.get("/endpoints", summary="Endpoint deployment jobs, newest first")
def list_endpoints(status: str | None = None, endpoint_name: str | None = None,
                   services: Services = Depends(get_services)) -> list[dict]:
    return [public_endpoint(r) for r in services.endpoints.list(status, endpoint_name)]


@router.get("/inference/get-endpoint-deployment-job")
def endpoint_deployment_job(jobID: str = Query(...), services: Services = Depends(get_services)) -> dict:
    return public_endpoint(services.endpoints.get(jobID))
