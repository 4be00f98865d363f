"""What arrives on the events queue: SageMaker's asynchronous-inference notifications and EventBridge events.

The events queue (`StackResources.events_queue`) receives both SNS topics' messages (an SNS envelope, or the
bare message with raw delivery) and the EventBridge "SageMaker Endpoint State Change" events. An inference
notification (SageMaker's JSON; fields this code does not know are ignored)::

    {"eventName": "InferenceResult", "invocationStatus": "Completed" | "Failed", "inferenceId": "<job id>",
     "requestParameters": {"endpointName": ..., "inputLocation": "s3://..."},
     "responseParameters": {"outputLocation": "s3://..."} (or "failureLocation"), "failureReason": "..."}

The result's location is read from the notification, never built: SageMaker chooses the object's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ENDPOINT_STATE_CHANGE = "SageMaker Endpoint State Change"
COMPLETED = "Completed"


class UnknownEvent(ValueError):
    """A message that is none of the events this backend handles (it is dropped, with a log line)."""


@dataclass(frozen=True)
class InferenceResult:
    job_id: str
    succeeded: bool
    input_location: str | None
    result_location: str | None  # the output (success) or failure object, when SageMaker names one
    failure_reason: str | None


def unwrap(message: dict[str, Any]) -> dict[str, Any]:
    """The event inside an SNS envelope (or the message itself when it has none)."""
    if message.get("Type") == "Notification" and isinstance(message.get("Message"), str):
        try:
            inner = json.loads(message["Message"])
        except ValueError:
            raise UnknownEvent("an SNS notification whose Message is not JSON") from None
        if not isinstance(inner, dict):
            raise UnknownEvent("an SNS notification whose Message is not a JSON object")
        return inner
    return message


def is_endpoint_state_change(event: dict[str, Any]) -> bool:
    return event.get("detail-type") == ENDPOINT_STATE_CHANGE and event.get("source") == "aws.sagemaker"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def inference_result(event: dict[str, Any]) -> InferenceResult:
    """The asynchronous inference notification `event`; UnknownEvent when it is not one."""
    job_id = _text(event.get("inferenceId"))
    status = event.get("invocationStatus")
    if job_id is None or not isinstance(status, str):
        raise UnknownEvent(f"not an inference notification (keys: {sorted(event)[:10]})")
    request = event.get("requestParameters") if isinstance(event.get("requestParameters"), dict) else {}
    response = event.get("responseParameters") if isinstance(event.get("responseParameters"), dict) else {}
    succeeded = status == COMPLETED
    location = _text(response.get("outputLocation")) if succeeded else \
        _text(response.get("failureLocation")) or _text(response.get("outputLocation"))
    return InferenceResult(job_id=job_id, succeeded=succeeded, input_location=_text(request.get("inputLocation")),
                           result_location=location, failure_reason=_text(event.get("failureReason")))
