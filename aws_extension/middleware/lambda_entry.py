"""The middleware under AWS Lambda: one function (`deploy/template.yaml` ApiFunction) for every event.

`handler` routes by the event's shape:
- API Gateway (REST v1 or HTTP v2 payloads) → the FastAPI app through Mangum (no lifespan: nothing runs
  between invocations, so the app's background threads are not started);
- SQS records (the events queue: SageMaker's SNS notifications and EventBridge state changes) →
  `compute.handle_event(body)` per record, reporting the records that failed (`batchItemFailures`), so only
  those come back;
- the EventBridge schedule (the reaper rule) → `compute.reap()`, the blob sweep (`Services.sweep`) and the
  deletions still pending (`EndpointRetirement.finish_pending`);
- a SageMaker state change delivered straight to the function (a rule that targets it) → `handle_event`;
- `{"sd_aws_task": "import", ...}`, the function's asynchronous invocation of itself → one step of a URL
  import (`ModelImporter.run_step`), which invokes the function again to resume when it runs out of time;
- `{"sd_aws_task": "prepare-model", "model_id": ...}` (PUT /model `Creating`, invoked the same way) → the
  training base's preparation (`TrainingModelService.prepare`: the file checked, EMA weights extracted, both
  streamed, so a 7 GB checkpoint needs no more memory than a small one).

SageMaker training jobs' state changes come in SQS records like the endpoints' (`SageMakerCompute.handle_event`
hands them to `SageMakerTraining.handle_event`); the schedule's sweep reconciles the `Training` jobs.

The services are built once per container (on the first event), from the environment: `SD_AWS_BACKEND=aws`
and `SD_AWS_STACK_NAME`. Events are never logged: an import task carries the user's download tokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aws_extension.middleware.services.model_import import IMPORT_TASK
from aws_extension.middleware.services.training import PREPARE_MODEL_TASK

log = logging.getLogger(__name__)

# A step lives at most Lambda's 15 minutes and launches the next before it ends: an import whose progress
# has not moved for two of those lost its chain of steps.
STALLED_IMPORT_S = 2 * 900.0
# A preparation waiting for its checkpoint's upload to complete stops this long before the invocation's end.
PREPARATION_MARGIN_S = 30.0


class CompletionEvents(Protocol):
    """What the SageMaker compute does with what SageMaker reports (compute/sagemaker)."""

    def attach(self, events: Any) -> None:
        """Report through `events` (the services' ComputeReports) without starting background work."""

    def handle_event(self, message: dict[str, Any]) -> None:
        """One SQS message body, parsed: an SNS envelope of an asynchronous-inference notification, or an
        EventBridge event. Raises on a failure worth retrying (the message comes back)."""

    def reap(self) -> None:
        """Fail jobs whose notification never came and endpoints stuck in Creating."""


def event_kind(event: Any) -> str:
    """`api`, `sqs`, `schedule`, `sagemaker`, `import` or `prepare-model`; ValueError for anything else."""
    if isinstance(event, dict):
        if event.get("sd_aws_task") == IMPORT_TASK:
            return "import"
        if event.get("sd_aws_task") == PREPARE_MODEL_TASK and isinstance(event.get("model_id"), str):
            return PREPARE_MODEL_TASK
        if "requestContext" in event and ("httpMethod" in event or "routeKey" in event):
            return "api"
        records = event.get("Records")
        if isinstance(records, list) and records and all(
                isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records):
            return "sqs"
        if event.get("source") == "aws.events" and event.get("detail-type") == "Scheduled Event":
            return "schedule"
        if event.get("source") == "aws.sagemaker" and "detail" in event:
            return "sagemaker"
    shape = sorted(event)[:8] if isinstance(event, dict) else type(event).__name__
    raise ValueError(f"the function does not know this event (keys or type: {shape})")


def handle_sqs(event: dict[str, Any], handle_event: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Each record on its own: a record that fails (bad JSON, or `handle_event` raised) is reported back
    to SQS (the function's event source mapping has ReportBatchItemFailures) and the others are deleted."""
    failures = []
    for record in event["Records"]:
        try:
            handle_event(json.loads(record["body"]))
        except Exception:  # one bad message must not take the batch down with it
            log.exception("events queue: message %s failed; SQS delivers it again (then to the DLQ)",
                          record.get("messageId"))
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


@dataclass
class Container:
    """What one Lambda container keeps between invocations."""

    services: Any  # wiring.Services
    api: Callable[[dict[str, Any], Any], dict[str, Any]]

    @property
    def compute(self) -> CompletionEvents:
        return self.services.compute

    def handle(self, event: dict[str, Any], context: Any) -> Any:
        kind = event_kind(event)
        if kind == "api":
            return self.api(event, context)
        if kind == "sqs":
            return handle_sqs(event, self.compute.handle_event)
        if kind == "sagemaker":
            self.compute.handle_event(event)
            return None
        if kind == "schedule":
            # Each runs even when one before it fails; the first failure is raised after (Lambda records it).
            failed: list[BaseException] = []
            for step in (self.compute.reap, self.services.sweep, self.services.retirement.finish_pending,
                         self._resume_stalled_imports):
                try:
                    step()
                except Exception as exc:
                    log.exception("scheduled %s failed", getattr(step, "__name__", step))
                    failed.append(exc)
            if failed:
                raise failed[0]
            return None
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        remaining_s = (remaining_ms() / 1000.0) if remaining_ms else None
        if kind == PREPARE_MODEL_TASK:
            wait_s = max(0.0, remaining_s - PREPARATION_MARGIN_S) if remaining_s is not None else 3600.0
            self.services.training_models.prepare(event["model_id"], checkpoint_wait_s=wait_s)
            return None
        self.services.importer.run_step(event, remaining_s=remaining_s)
        return None

    def _resume_stalled_imports(self) -> None:
        self.services.importer.resume_stalled(STALLED_IMPORT_S)


def build_container(services: Any, api_key: str) -> Container:
    """The app and its services for one container (tests build theirs from their own services)."""
    from mangum import Mangum

    from aws_extension.middleware.app import create_app

    # Compute reports through the services, as under `serve`, but starts no background work: its events
    # arrive as invocations (SageMakerCompute.attach; `start` would long-poll the queue in a thread).
    services.compute.attach(services.reports())
    services.training.compute.start(services.training)  # SageMaker's training compute starts no thread either
    return Container(services=services, api=Mangum(create_app(services, api_key), lifespan="off"))


def _container_from_environment() -> Container:
    import boto3

    from aws_extension.middleware.wiring import build_services, stack_api_key
    from aws_extension.settings import MiddlewareSettings, load

    settings = load(MiddlewareSettings)
    if settings.backend != "aws":
        raise RuntimeError(f"the Lambda function runs the aws backend, not SD_AWS_BACKEND={settings.backend!r}")
    # The wiring only finds and reads the stack's resources (the template made them; the function's role
    # may not create any).
    session = boto3.Session()
    services = build_services(settings, session)
    return build_container(services, settings.api_key or stack_api_key(settings, session))


_container: Container | None = None


def handler(event: dict[str, Any], context: Any) -> Any:
    """The function's entry point (template: `aws_extension.middleware.lambda_entry.handler`)."""
    global _container
    if _container is None:
        logging.getLogger().setLevel(logging.INFO)
        _container = _container_from_environment()
    return _container.handle(event, context)
