"""Endpoints and their deployment jobs.

One record per deployment job (table `endpoints`): `status` is the deployment job's status
(`inprogress` → `success` | `failed`; `success` → `deleted`), `kind` the endpoint's status (`Creating` →
`InService` | `Failed`; → `Deleting` → `Deleted`), `name` the endpoint name while it is not deleted (so a
live name is unique, and a deleted one can be used again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aws_extension.middleware.compute.base import Compute
from aws_extension.middleware.errors import BadRequest, Conflict, NotFound
from aws_extension.middleware.services.records import check_name, new_id, now, time_text
from aws_extension.middleware.store.base import DuplicateRecord, Store, list_all

log = logging.getLogger(__name__)

TABLE = "endpoints"
CREATING, IN_SERVICE, FAILED, DELETING, DELETED = "Creating", "InService", "Failed", "Deleting", "Deleted"
# Instance types offered: SageMaker's GPU types (run as local processes on the local backend) and `local`.
INSTANCE_TYPES = ("local", "ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g4dn.4xlarge", "ml.g4dn.8xlarge",
                  "ml.g4dn.12xlarge", "ml.g4dn.16xlarge", "ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.4xlarge",
                  "ml.g5.8xlarge", "ml.g5.12xlarge", "ml.g5.16xlarge", "ml.g5.24xlarge", "ml.g5.48xlarge")


def public_endpoint(record: dict[str, Any]) -> dict[str, Any]:
    return {"EndpointDeploymentJobId": record["id"], "startTime": record["startTime"],
            "endTime": record.get("endTime"), "error": record.get("error"), "status": record["status"],
            "endpoint_name": record["endpoint_name"], "endpoint_status": record["kind"],
            "instance_type": record["instance_type"], "current_instance_count": record["current_instance_count"],
            "autoscaling": record["autoscaling"], "min_instance_number": record["min_instance_number"],
            "max_instance_number": record["max_instance_number"]}


def _count(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise BadRequest(f"{field} must be a whole number from {low} to {high}, not {value!r}.")
    number = int(str(value).strip())
    if not low <= number <= high:
        raise BadRequest(f"{field} must be from {low} to {high}, not {number}.")
    return number


class EndpointService:
    def __init__(self, store: Store, compute: Compute, max_instances: int):
        self.store = store
        self.compute = compute
        self.max_instances = max_instances
        self.on_failed: Callable[[str, str], None] | None = None  # (endpoint name, reason), set by the wiring

    def deploy(self, body: dict[str, Any]) -> dict[str, Any]:
        instance_type = body.get("instance_type")
        if instance_type not in INSTANCE_TYPES:
            raise BadRequest(f"instance_type {instance_type!r} is not offered; use one of {', '.join(INSTANCE_TYPES)}.")
        autoscaling = bool(body.get("autoscaling_enabled"))
        low = 0 if autoscaling else 1
        count = _count(body.get("initial_instance_count"), "initial_instance_count", low, self.max_instances)
        minimum, maximum = count, count
        if autoscaling:
            minimum = _count(body.get("min_instance_number", 0), "min_instance_number", 0, self.max_instances)
            maximum = _count(body.get("max_instance_number", max(count, 1)), "max_instance_number", 1,
                             self.max_instances)
            if not minimum <= count <= maximum:
                raise BadRequest(f"initial_instance_count ({count}) must lie between min_instance_number "
                                 f"({minimum}) and max_instance_number ({maximum}).")
        job_id = new_id()
        name = body.get("endpoint_name") or f"infer-endpoint-{job_id[:7]}"
        check_name(name, "endpoint name")
        started = now()
        record = {"id": job_id, "name": name, "endpoint_name": name, "status": "inprogress", "kind": CREATING,
                  "created": started, "startTime": time_text(started), "endTime": None, "error": None,
                  "instance_type": instance_type, "initial_instance_count": count, "current_instance_count": 0,
                  "autoscaling": autoscaling, "min_instance_number": minimum, "max_instance_number": maximum,
                  "assign_to_roles": body.get("assign_to_roles") or []}
        try:
            self.store.create(TABLE, record, unique_name=True)
        except DuplicateRecord:
            raise Conflict(f"an endpoint named {name!r} already exists; choose another name or delete it first.") from None
        self.compute.deploy(record)
        return record

    def endpoint_changed(self, name: str, changes: dict[str, Any]) -> None:
        """Compute's report: InService, Failed (with the reason) or a new instance count.

        Failed also comes for an InService endpoint that could not be brought back (after a restart, or
        when none of its instances restarts): it leaves service, and `on_failed(name, reason)` ends the
        jobs still waiting for it."""
        record = self.store.get_by_name(TABLE, name)
        if record is None:
            return
        update: dict[str, Any] = {}
        status = changes.get("endpoint_status")
        expect = {"kind": IN_SERVICE}
        if status == IN_SERVICE:
            update, expect = {"kind": IN_SERVICE, "status": "success", "endTime": time_text(now())}, {"kind": CREATING}
        elif status == FAILED:
            update = {"kind": FAILED, "endTime": time_text(now()), "error": changes.get("error"), "name": None,
                      "current_instance_count": 0}
            expect = {"kind": [CREATING, IN_SERVICE]}
            if record["kind"] == CREATING:
                update["status"] = "failed"
        if "current_instance_count" in changes:
            update["current_instance_count"] = changes["current_instance_count"]
        if self.store.update(TABLE, record["id"], update, expect=expect) is None:
            log.info("ignored a report for endpoint %s, which is %s", name, record["kind"])
        elif status == FAILED and self.on_failed is not None:
            self.on_failed(name, changes.get("error") or "the endpoint failed")

    def get(self, job_id: str) -> dict[str, Any]:
        record = self.store.get(TABLE, job_id)
        if record is None:
            raise NotFound(f"endpoint deployment job {job_id} does not exist.")
        return record

    def live(self, name: str) -> dict[str, Any] | None:
        return self.store.get_by_name(TABLE, name)

    def in_service(self, name: str) -> dict[str, Any]:
        record = self.live(name)
        if record is None:
            raise NotFound(f"endpoint {name!r} does not exist; create it with POST /endpoints.")
        if record["kind"] != IN_SERVICE:
            raise Conflict(f"endpoint {name!r} is {record['kind']}, not InService; wait for it or use another.")
        return record

    def list(self, status: str | None = None, endpoint_name: str | None = None) -> list[dict[str, Any]]:
        records = list_all(self.store, TABLE, {"status": [status] if status else []})
        return [r for r in records if not endpoint_name or r["endpoint_name"] == endpoint_name]

    def in_service_names(self) -> list[str]:
        return [r["endpoint_name"] for r in list_all(self.store, TABLE, {"kind": [IN_SERVICE]})]

    def begin_delete(self, name: str) -> dict[str, Any]:
        """Move a live endpoint to Deleting (one request wins a race); raises NotFound/Conflict."""
        record = self.live(name)
        if record is None:
            raise NotFound(f"endpoint {name!r} does not exist.")
        updated = self.store.update(TABLE, record["id"], {"kind": DELETING},
                                    expect={"kind": [CREATING, IN_SERVICE, FAILED]})
        if updated is None:
            raise Conflict(f"endpoint {name!r} is already being deleted.")
        return updated

    def finish_delete(self, record: dict[str, Any]) -> None:
        self.compute.delete(record["endpoint_name"])
        update = {"kind": DELETED, "status": "deleted", "name": None, "current_instance_count": 0,
                  "endTime": time_text(now())}
        if record["status"] == "inprogress":  # deleted before it came into service: its deployment failed
            update.update(status="failed", error="The endpoint was deleted before it came into service.")
        elif record["status"] == "failed":
            update["status"] = "failed"
        self.store.update(TABLE, record["id"], update)

    def restore(self) -> None:
        """After a restart: bring back InService endpoints, fail those caught mid-creation or mid-deletion."""
        for record in list_all(self.store, TABLE, {"kind": [IN_SERVICE, CREATING, DELETING]}):
            if record["kind"] == IN_SERVICE:
                self.compute.restore(record)
            elif record["kind"] == CREATING:
                self.store.update(TABLE, record["id"], {
                    "kind": FAILED, "status": "failed", "name": None, "endTime": time_text(now()),
                    "error": "The middleware restarted while the endpoint was being created; deploy it again."})
            else:
                self.finish_delete(record)
