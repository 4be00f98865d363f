"""Endpoints and their deployment jobs.

One record per deployment job (`Endpoint`): `deployment_status` (`inprogress` → `success` | `failed`;
`success` → `deleted`), `endpoint_status` (`Creating` → `InService` | `Failed`; → `Deleting` → `Deleted`),
and `live_name`, the endpoint's name while it is not deleted (so a live name is unique, and a deleted one
can be used again). Deleting endpoints, which ends their jobs too, is `retirement.py`'s.
"""

from __future__ import annotations

import logging
from typing import Any

from aws_extension.middleware.compute.base import Compute, EndpointChange
from aws_extension.middleware.errors import InvalidRequest, TooLarge, UnknownRecord, WrongState
from aws_extension.middleware.principals import BOOTSTRAP_ADMIN, Principal
from aws_extension.middleware.records import ENDPOINTS, Endpoint
from aws_extension.middleware.services.names import check_name, new_id, now, time_text
from aws_extension.middleware.services.ownership import check_roles, in_roles
from aws_extension.middleware.store.base import DuplicateRecord, Store
from aws_extension.middleware.store.typed import Records
from aws_extension.vocabulary import DeploymentStatus, EndpointStatus

log = logging.getLogger(__name__)

def _count(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise InvalidRequest(f"{field} must be a whole number from {low} to {high}, not {value!r}.")
    number = int(str(value).strip())
    if not low <= number <= high:
        raise InvalidRequest(f"{field} must be from {low} to {high}, not {number}.")
    return number


class EndpointService:
    def __init__(self, store: Store, compute: Compute, max_instances: int, max_endpoints: int):
        self.records = Records(store, ENDPOINTS, Endpoint)
        self.compute = compute
        self.max_instances = max_instances
        self.max_endpoints = max_endpoints

    def deploy(self, body: dict[str, Any], principal: Principal = BOOTSTRAP_ADMIN) -> Endpoint:
        instance_type = body.get("instance_type")
        self.compute.check_instance_type(instance_type)
        autoscaling = bool(body.get("autoscaling_enabled"))
        count = _count(body.get("initial_instance_count"), "initial_instance_count", 0 if autoscaling else 1,
                       self.max_instances)
        minimum, maximum = count, count
        if autoscaling:
            minimum = _count(body.get("min_instance_number", 0), "min_instance_number", 0, self.max_instances)
            maximum = _count(body.get("max_instance_number", max(count, 1)), "max_instance_number", 1,
                             self.max_instances)
            if not minimum <= count <= maximum:
                raise InvalidRequest(f"initial_instance_count ({count}) must lie between min_instance_number "
                                     f"({minimum}) and max_instance_number ({maximum}).")
        live = self.records.count({"endpoint_status": [EndpointStatus.CREATING, EndpointStatus.IN_SERVICE]})
        if live >= self.max_endpoints:
            raise TooLarge(f"there are {live} endpoints already, the most this server allows "
                           f"(SD_AWS_MAX_ENDPOINTS={self.max_endpoints}); delete one first.")
        job_id = new_id()
        name = check_name(body.get("endpoint_name") or f"infer-endpoint-{job_id[:7]}", "endpoint name")
        started = now()
        record = Endpoint(id=job_id, endpoint_name=name, live_name=name, deployment_status=DeploymentStatus.INPROGRESS,
                          endpoint_status=EndpointStatus.CREATING, created=started, start_time=time_text(started),
                          instance_type=instance_type, initial_instance_count=count, autoscaling=autoscaling,
                          min_instance_number=minimum, max_instance_number=maximum,
                          assign_to_roles=check_roles(body.get("assign_to_roles"), "assign_to_roles"),
                          owner=principal.username)
        try:
            self.records.create(record)
        except DuplicateRecord:
            raise WrongState(f"an endpoint named {name!r} already exists; choose another name or delete it first.") from None
        self.compute.deploy(record)
        return record

    def apply_change(self, name: str, change: EndpointChange) -> bool:
        """Compute's report: InService, Failed (with the reason) or a new instance count. True when the
        endpoint left service by failing (it was Creating or InService), so its jobs must end."""
        record = self.live(name)
        if record is None:
            return False
        update: dict[str, Any] = {}
        expect: dict[str, Any] = {"endpoint_status": EndpointStatus.IN_SERVICE}
        if change.status == EndpointStatus.IN_SERVICE:
            update = {"endpoint_status": EndpointStatus.IN_SERVICE, "deployment_status": DeploymentStatus.SUCCESS,
                      "end_time": time_text(now())}
            expect = {"endpoint_status": EndpointStatus.CREATING}
        elif change.status == EndpointStatus.FAILED:
            update = {"endpoint_status": EndpointStatus.FAILED, "end_time": time_text(now()), "error": change.error,
                      "live_name": None, "current_instance_count": 0}
            expect = {"endpoint_status": [EndpointStatus.CREATING, EndpointStatus.IN_SERVICE]}
            if record.endpoint_status == EndpointStatus.CREATING:
                update["deployment_status"] = DeploymentStatus.FAILED
        if change.instance_count is not None:
            update["current_instance_count"] = change.instance_count
        if self.records.update(record.id, update, expect=expect) is None:
            log.info("ignored a report for endpoint %s, which is %s", name, record.endpoint_status)
            return False
        return change.status == EndpointStatus.FAILED

    def get(self, job_id: str, principal: Principal = BOOTSTRAP_ADMIN) -> Endpoint:
        record = self.records.get(job_id)
        if record is None or not in_roles(principal, record.assign_to_roles):
            raise UnknownRecord(f"endpoint deployment job {job_id} does not exist.")
        return record

    def live(self, name: str) -> Endpoint | None:
        return self.records.find("live_name", name)

    def in_service(self, name: str, principal: Principal = BOOTSTRAP_ADMIN) -> Endpoint:
        """The InService endpoint of that name, if the principal may run jobs on it (`assign_to_roles`)."""
        record = self.live(name)
        if record is None or not in_roles(principal, record.assign_to_roles):
            raise UnknownRecord(f"endpoint {name!r} does not exist; create it with POST /endpoints.")
        if record.endpoint_status != EndpointStatus.IN_SERVICE:
            raise WrongState(f"endpoint {name!r} is {record.endpoint_status}, not InService; wait for it or use another.")
        return record

    def page(self, status: str | None, endpoint_name: str | None, limit: int, last_key: str | None,
             principal: Principal = BOOTSTRAP_ADMIN) -> list[Endpoint]:
        """One page of the deployment jobs the principal may use (those assigned to one of its roles, or to
        none), newest first, after the one whose id is `last_key` (GET /endpoints): a page shorter than
        `limit` is the last one, so pages are read on until `limit` usable ones are found."""
        after = None
        if last_key:
            previous = self.records.get(last_key)
            if previous is None or not in_roles(principal, previous.assign_to_roles):
                raise InvalidRequest(f"last_key {last_key!r} is not the id of an endpoint deployment job.")
            after = self.records.key_after(previous)
        where = {"deployment_status": [status] if status else [], "endpoint_name": [endpoint_name] if endpoint_name else []}
        usable: list[Endpoint] = []
        while True:
            page = self.records.page(where, limit, after)
            usable += [r for r in page.records if in_roles(principal, r.assign_to_roles)]
            if len(usable) >= limit or not page.next_key:
                return usable[:limit]
            after = page.next_key

    def in_service_names(self, principal: Principal = BOOTSTRAP_ADMIN) -> list[str]:
        return [r.endpoint_name for r in self.records.all({"endpoint_status": [EndpointStatus.IN_SERVICE]})
                if in_roles(principal, r.assign_to_roles)]

    def begin_delete(self, name: str) -> Endpoint:
        """Move a live endpoint to Deleting (one request wins a race); raises UnknownRecord/WrongState."""
        record = self.live(name)
        if record is None:
            raise UnknownRecord(f"endpoint {name!r} does not exist.")
        updated = self.records.update(record.id, {"endpoint_status": EndpointStatus.DELETING}, expect={
            "endpoint_status": [EndpointStatus.CREATING, EndpointStatus.IN_SERVICE, EndpointStatus.FAILED]})
        if updated is None:
            raise WrongState(f"endpoint {name!r} is already being deleted.")
        return updated

    def finish_delete(self, record: Endpoint) -> None:
        """Stop the endpoint's instances; the record becomes Deleted (its deployment failed if it never came up)."""
        self.compute.delete(record.endpoint_name)
        update: dict[str, Any] = {"endpoint_status": EndpointStatus.DELETED, "deployment_status": DeploymentStatus.DELETED,
                                  "live_name": None, "current_instance_count": 0, "end_time": time_text(now())}
        if record.deployment_status == DeploymentStatus.INPROGRESS:
            update.update(deployment_status=DeploymentStatus.FAILED,
                          error="The endpoint was deleted before it came into service.")
        elif record.deployment_status == DeploymentStatus.FAILED:
            update["deployment_status"] = DeploymentStatus.FAILED
        self.records.update(record.id, update)

    def deleting(self) -> list[Endpoint]:
        """The endpoints whose deletion began and has not finished."""
        return self.records.all({"endpoint_status": [EndpointStatus.DELETING]})

    def restore(self) -> list[Endpoint]:
        """After a restart: bring back InService endpoints, fail those caught mid-creation; returns those
        caught mid-deletion (their deletion is finished by the retirement service)."""
        deleting = []
        for record in self.records.all({"endpoint_status": [EndpointStatus.IN_SERVICE, EndpointStatus.CREATING,
                                                            EndpointStatus.DELETING]}):
            if record.endpoint_status == EndpointStatus.IN_SERVICE:
                self.compute.restore(record)
            elif record.endpoint_status == EndpointStatus.CREATING:
                self.records.update(record.id, {
                    "endpoint_status": EndpointStatus.FAILED, "deployment_status": DeploymentStatus.FAILED,
                    "live_name": None, "end_time": time_text(now()),
                    "error": "The middleware restarted while the endpoint was being created; deploy it again."})
            else:
                deleting.append(record)
        return deleting
