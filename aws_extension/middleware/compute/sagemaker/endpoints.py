"""SageMaker's control plane for the AWS backend's endpoints: create, follow, and remove them.

One API endpoint `E` of stack `S` is, in SageMaker (all named `resources.sagemaker_name(E)`, `S--E`):
- a model: the worker image (`worker_image`), run as the stack's SageMaker execution role, with the worker's
  settings as its environment (never a middleware secret);
- an endpoint config: one production variant (`VARIANT`) of the instance type, and `AsyncInferenceConfig`:
  results to `s3://<bucket>/sagemaker/E/output/`, failures to `.../failure/`, the stack's success and error
  SNS topics, one invocation at a time per instance (a worker runs one job at a time);
- the endpoint;
- with autoscaling, set up when the endpoint first comes into service (Application Auto Scaling refuses an
  endpoint that is still being created): a scalable target `endpoint/S-E/variant/VARIANT` between the
  minimum and maximum, a target-tracking policy on `ApproximateBacklogSizePerInstance` (queued jobs per
  instance), and a step policy with a CloudWatch alarm on `HasBacklogWithoutCapacity`, so an endpoint at 0
  instances gets one when a job arrives (AWS's pattern for asynchronous endpoints, "Autoscale an
  asynchronous endpoint" in the SageMaker developer guide).

Scale to zero: an endpoint (without inference components) cannot be created with 0 instances, so one asked
to start at 0 is created with 1 and set to 0 as soon as its autoscaling is in place.

Everything carries the tags `sd-aws:stack` and `sd-aws:endpoint`; the endpoint also carries its autoscaling
bounds, so a state-change event (which has the tags) or a reconcile is enough to finish the set-up, in the
Lambda as in a long-running server.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, get_type_hints

import boto3
from botocore.exceptions import ClientError

from aws_extension.middleware.aws_resources import StackResources
from aws_extension.middleware.compute.base import EndpointChange
from aws_extension.middleware.compute.sagemaker import instance_types
from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.records import Endpoint
from aws_extension.settings import MiddlewareSettings, WorkerSettings, load
from aws_extension.vocabulary import EndpointStatus

log = logging.getLogger(__name__)

VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
TAG_STACK = "sd-aws:stack"
TAG_ENDPOINT = "sd-aws:endpoint"
TAG_MIN = "sd-aws:min-instances"  # only on endpoints with autoscaling
TAG_MAX = "sd-aws:max-instances"
TAG_INITIAL = "sd-aws:initial-instances"
EVENT_SOURCE = "aws.sagemaker"
EVENT_DETAIL_TYPE = "SageMaker Endpoint State Change"


class DeploymentRefused(Exception):
    """SageMaker will not run the endpoint as asked; `message` says why and what to do."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _status_word(status: str) -> str:
    """`IN_SERVICE` (events) and `InService` (DescribeEndpoint) both become `inservice`."""
    return status.replace("_", "").lower()


def _code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _message(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Message", "")


def _missing(error: ClientError) -> bool:
    """The thing asked for does not exist (SageMaker says so in a ValidationException; Application Auto
    Scaling with ObjectNotFoundException, or a ValidationException in emulators)."""
    message = _message(error)
    return (_code(error) in ("ObjectNotFoundException", "ResourceNotFound")
            or (_code(error) == "ValidationException"
                and ("Could not find" in message or "No scalable target" in message or "No scaling policy" in message)))


def _tag_map(tags: Any) -> dict[str, str]:
    """Tags as a dict, from an event's `Tags` (a map) or a list of `{"Key", "Value"}`."""
    if isinstance(tags, dict):
        return {str(k): str(v) for k, v in tags.items()}
    if isinstance(tags, list):
        return {str(t.get("Key", t.get("key"))): str(t.get("Value", t.get("value"))) for t in tags
                if isinstance(t, dict)}
    return {}


def worker_environment(worker: WorkerSettings) -> dict[str, str]:
    """The model's environment: the worker's settings as this middleware has them (the limits it checks
    requests against among them), without the ones that are paths on this machine. The worker's settings
    hold no secret (the middleware's are in MiddlewareSettings)."""
    hints = get_type_hints(WorkerSettings)
    return {f.metadata["env"]: str(getattr(worker, f.name)) for f in dataclasses.fields(WorkerSettings)
            if "Path" not in str(hints[f.name]) and getattr(worker, f.name) is not None}


class SageMakerEndpoints:
    def __init__(self, resources: StackResources, settings: MiddlewareSettings, session: boto3.Session | None = None,
                 worker_settings: WorkerSettings | None = None):
        self.resources = resources
        self.settings = settings
        self.worker = worker_settings or load(WorkerSettings)
        self.offered = instance_types.offered_types(settings.sagemaker_instance_types, resources.region)
        session = session or boto3.Session()
        self.sagemaker = session.client("sagemaker", region_name=resources.region)
        self.autoscaling = session.client("application-autoscaling", region_name=resources.region)
        self.cloudwatch = session.client("cloudwatch", region_name=resources.region)
        # SageMaker endpoints whose autoscaling is known to be in place (or not wanted): saves the calls that
        # check it on every event and reconcile; a new process checks again (the set-up is idempotent).
        self._scaling_in_place: set[str] = set()

    # --- names -------------------------------------------------------------------------------------------

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self.resources.region}:{self.resources.account_id}:{resource}"

    def output_path(self, endpoint_name: str) -> str:
        return f"s3://{self.resources.bucket}/sagemaker/{endpoint_name}/output/"

    def failure_path(self, endpoint_name: str) -> str:
        return f"s3://{self.resources.bucket}/sagemaker/{endpoint_name}/failure/"

    @staticmethod
    def scalable_resource(sagemaker_name: str) -> str:
        return f"endpoint/{sagemaker_name}/variant/{VARIANT}"

    @staticmethod
    def policy_names(sagemaker_name: str) -> tuple[str, str]:
        """(target tracking on the backlog per instance, step policy that wakes an endpoint at zero)."""
        return f"{sagemaker_name}-backlog-per-instance", f"{sagemaker_name}-wake-from-zero"

    @staticmethod
    def alarm_name(sagemaker_name: str) -> str:
        return f"{sagemaker_name}-backlog-without-capacity"

    def _tags(self, endpoint_name: str) -> list[dict[str, str]]:
        return [{"Key": TAG_STACK, "Value": self.resources.stack_name}, {"Key": TAG_ENDPOINT, "Value": endpoint_name}]

    # --- deploy ------------------------------------------------------------------------------------------

    def check_instance_type(self, instance_type: str) -> None:
        self.offered.check(instance_type)

    def deploy(self, endpoint: Endpoint) -> None:
        """Create the model, the endpoint config and the endpoint (autoscaling follows when it is in service).
        Raises DeploymentRefused (nothing is left behind) when SageMaker will not run it."""
        try:
            self.check_instance_type(endpoint.instance_type)
            name = self.resources.sagemaker_name(endpoint.endpoint_name)
        except InvalidRequest as error:
            raise DeploymentRefused(error.message) from None
        except ValueError as error:
            raise DeploymentRefused(f"{error}; choose a shorter endpoint name.") from None
        image = self.settings.worker_image
        if not image:
            raise DeploymentRefused("No worker image is set for SageMaker endpoints: deploy the stack with "
                                    "`sd-aws aws deploy --worker-image URI`, or set SD_AWS_WORKER_IMAGE.")
        tags = self._tags(endpoint.endpoint_name)
        endpoint_tags = list(tags)
        if endpoint.autoscaling:
            endpoint_tags += [{"Key": TAG_MIN, "Value": str(endpoint.min_instance_number)},
                              {"Key": TAG_MAX, "Value": str(endpoint.max_instance_number)},
                              {"Key": TAG_INITIAL, "Value": str(endpoint.initial_instance_count)}]
        try:
            self.sagemaker.create_model(
                ModelName=name, ExecutionRoleArn=self.resources.sagemaker_role_arn, Tags=tags,
                PrimaryContainer={"Image": image, "Environment": worker_environment(self.worker)})
            self.sagemaker.create_endpoint_config(
                EndpointConfigName=name, Tags=tags,
                ProductionVariants=[{
                    "VariantName": VARIANT, "ModelName": name, "InstanceType": endpoint.instance_type,
                    # at least 1 at creation; an endpoint asked to start at 0 is scaled in once in service
                    "InitialInstanceCount": max(1, endpoint.initial_instance_count),
                    "ContainerStartupHealthCheckTimeoutInSeconds": max(60, min(3600, int(
                        self.settings.endpoint_start_timeout_s))),
                }],
                AsyncInferenceConfig={
                    "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 1},
                    "OutputConfig": {
                        "S3OutputPath": self.output_path(endpoint.endpoint_name),
                        "S3FailurePath": self.failure_path(endpoint.endpoint_name),
                        "NotificationConfig": {"SuccessTopic": self._arn("sns", self.resources.success_topic),
                                               "ErrorTopic": self._arn("sns", self.resources.error_topic)},
                    },
                })
            self.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name, Tags=endpoint_tags)
        except ClientError as error:
            # Nothing half-made stays (nor what an earlier endpoint of this name left, if that was the error).
            try:
                self.delete(endpoint.endpoint_name)
            except ClientError as cleanup_error:
                log.error("could not remove the parts of endpoint %s after a failed deployment: %s", name, cleanup_error)
            refusal = self._refusal(error, endpoint, image)
            if refusal:
                raise refusal from error
            raise

    def _refusal(self, error: ClientError, endpoint: Endpoint, image: str) -> DeploymentRefused | None:
        code, message = _code(error), _message(error)
        region = self.resources.region
        if code == "ResourceLimitExceeded":
            quota = re.search(r"'([^']+)'", message)
            quota_name = quota.group(1) if quota else f"{endpoint.instance_type} for endpoint usage"
            return DeploymentRefused(
                f"Your AWS account's SageMaker quota '{quota_name}' in {region} does not allow this endpoint "
                f"(SageMaker: {message}). Ask for more in the Service Quotas console (AWS services > Amazon "
                f"SageMaker > '{quota_name}', region {region}), or choose another instance type.")
        if code != "ValidationException":
            return None
        lowered = message.lower()
        if "already exist" in lowered:
            return DeploymentRefused(
                f"SageMaker still has resources of an earlier endpoint named {endpoint.endpoint_name!r} "
                f"({message}); they are being removed: deploy again in a few minutes.")
        if endpoint.instance_type in message or "instancetype" in lowered or "instance type" in lowered:
            return DeploymentRefused(f"SageMaker does not offer {endpoint.instance_type} for endpoints in {region} "
                                     f"(SageMaker: {message}); choose another instance type.")
        if "image" in lowered:
            return DeploymentRefused(f"SageMaker cannot use the worker image {image} (SageMaker: {message}); build "
                                     "and push it, or set SD_AWS_WORKER_IMAGE to an image in this account and region.")
        return None

    # --- autoscaling -------------------------------------------------------------------------------------

    def _ensure_autoscaling(self, sagemaker_name: str, tags: dict[str, str]) -> None:
        try:
            self._set_up_autoscaling(sagemaker_name, tags)
        except ClientError as error:  # the endpoint serves anyway; the next event or reconcile tries again
            log.error("could not set up the autoscaling of endpoint %s: %s", sagemaker_name, error)

    def _set_up_autoscaling(self, sagemaker_name: str, tags: dict[str, str]) -> None:
        """Once in service: register the scalable target and its policies and alarm (if the endpoint asked
        for autoscaling and they are not there yet), then go to 0 instances if it asked to start at 0."""
        if TAG_MIN not in tags or TAG_MAX not in tags:
            self._scaling_in_place.add(sagemaker_name)
            return
        resource_id = self.scalable_resource(sagemaker_name)
        registered = self.autoscaling.describe_scalable_targets(
            ServiceNamespace="sagemaker", ResourceIds=[resource_id], ScalableDimension=SCALABLE_DIMENSION)
        if registered.get("ScalableTargets"):
            self._scaling_in_place.add(sagemaker_name)
            return
        target = {"ServiceNamespace": "sagemaker", "ResourceId": resource_id, "ScalableDimension": SCALABLE_DIMENSION}
        self.autoscaling.register_scalable_target(
            **target, MinCapacity=int(tags[TAG_MIN]), MaxCapacity=int(tags[TAG_MAX]),
            Tags={TAG_STACK: self.resources.stack_name, TAG_ENDPOINT: tags.get(TAG_ENDPOINT, "")})
        backlog_policy, wake_policy = self.policy_names(sagemaker_name)
        dimensions = [{"Name": "EndpointName", "Value": sagemaker_name}]
        self.autoscaling.put_scaling_policy(
            **target, PolicyName=backlog_policy, PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": float(self.settings.sagemaker_backlog_per_instance),
                "CustomizedMetricSpecification": {"MetricName": "ApproximateBacklogSizePerInstance",
                                                  "Namespace": "AWS/SageMaker", "Dimensions": dimensions,
                                                  "Statistic": "Average"},
                "ScaleInCooldown": int(self.settings.scale_in_idle_s),
                "ScaleOutCooldown": int(self.settings.sagemaker_scale_out_cooldown_s),
            })
        wake = self.autoscaling.put_scaling_policy(
            **target, PolicyName=wake_policy, PolicyType="StepScaling",
            StepScalingPolicyConfiguration={
                "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                "Cooldown": int(self.settings.sagemaker_scale_out_cooldown_s),
                "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
            })
        self.cloudwatch.put_metric_alarm(
            AlarmName=self.alarm_name(sagemaker_name), Namespace="AWS/SageMaker", MetricName="HasBacklogWithoutCapacity",
            Dimensions=dimensions, Statistic="Average", Period=60, EvaluationPeriods=2, DatapointsToAlarm=2,
            Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="missing",
            AlarmActions=[wake["PolicyARN"]], Tags=[{"Key": k, "Value": v} for k, v in tags.items()
                                                    if k in (TAG_STACK, TAG_ENDPOINT)])
        if tags.get(TAG_INITIAL) == "0":
            try:
                self.sagemaker.update_endpoint_weights_and_capacities(
                    EndpointName=sagemaker_name,
                    DesiredWeightsAndCapacities=[{"VariantName": VARIANT, "DesiredInstanceCount": 0}])
            except ClientError as error:  # the target-tracking policy scales it in anyway, a little later
                log.warning("could not scale endpoint %s to 0 at start: %s", sagemaker_name, error)
        self._scaling_in_place.add(sagemaker_name)

    # --- delete ------------------------------------------------------------------------------------------

    def delete(self, endpoint_name: str) -> None:
        """Remove the scaling policies, scalable target, alarm, endpoint, endpoint config and model; parts
        that are already gone are fine."""
        name = self.resources.sagemaker_name(endpoint_name)
        self._scaling_in_place.discard(name)
        target = {"ServiceNamespace": "sagemaker", "ResourceId": self.scalable_resource(name),
                  "ScalableDimension": SCALABLE_DIMENSION}
        for policy in self.policy_names(name):
            self._ignore_missing(self.autoscaling.delete_scaling_policy, PolicyName=policy, **target)
        self._ignore_missing(self.autoscaling.deregister_scalable_target, **target)
        self.cloudwatch.delete_alarms(AlarmNames=[self.alarm_name(name)])  # no error for a missing alarm
        self._ignore_missing(self.sagemaker.delete_endpoint, EndpointName=name)
        self._ignore_missing(self.sagemaker.delete_endpoint_config, EndpointConfigName=name)
        self._ignore_missing(self.sagemaker.delete_model, ModelName=name)

    @staticmethod
    def _ignore_missing(call: Any, **arguments: Any) -> None:
        try:
            call(**arguments)
        except ClientError as error:
            if not _missing(error):
                raise

    # --- following SageMaker -----------------------------------------------------------------------------

    def _api_name(self, sagemaker_name: str, tags: dict[str, str]) -> str | None:
        """The API endpoint a SageMaker endpoint is, if it is one of this stack's."""
        if tags.get(TAG_STACK) != self.resources.stack_name or TAG_ENDPOINT not in tags:
            return None
        api_name = tags[TAG_ENDPOINT]
        try:
            return api_name if self.resources.sagemaker_name(api_name) == sagemaker_name else None
        except ValueError:
            return None

    def state_change(self, event: dict) -> tuple[str, EndpointChange] | None:
        """An EventBridge "SageMaker Endpoint State Change" event → (API endpoint name, change); None for
        another event or another stack's endpoint. Statuses in between (creating, updating) change nothing."""
        if event.get("source") != EVENT_SOURCE or event.get("detail-type") != EVENT_DETAIL_TYPE:
            return None
        detail = event.get("detail") or {}
        sagemaker_name = str(detail.get("EndpointName", ""))
        arn = str(detail.get("EndpointArn") or self._arn("sagemaker", f"endpoint/{sagemaker_name}"))
        tags = _tag_map(detail.get("Tags"))
        if not tags and sagemaker_name.startswith(f"{self.resources.stack_name}--"):
            tags = self._endpoint_tags(arn)
        api_name = self._api_name(sagemaker_name, tags)
        if api_name is None:
            return None
        status = _status_word(str(detail.get("EndpointStatus", "")))
        if status == "inservice":
            if sagemaker_name not in self._scaling_in_place:  # the endpoint's own tags say what it asked for
                self._ensure_autoscaling(sagemaker_name, self._endpoint_tags(arn))
            return api_name, EndpointChange(status=EndpointStatus.IN_SERVICE,
                                            instance_count=self._current_count(sagemaker_name))
        if status in ("failed", "updaterollbackfailed"):
            reason = detail.get("FailureReason") or self._describe(sagemaker_name).get("FailureReason")
            return api_name, EndpointChange(status=EndpointStatus.FAILED, instance_count=0,
                                            error=f"SageMaker: {reason or 'the endpoint failed'}")
        if status in ("deleting", "deleted"):
            # Ours are Deleting already (the report is then ignored); one deleted outside sd-aws fails.
            return api_name, EndpointChange(status=EndpointStatus.FAILED, instance_count=0,
                                            error="SageMaker is deleting the endpoint (it was deleted outside sd-aws).")
        return api_name, EndpointChange()

    def reconcile(self, endpoint_name: str) -> EndpointChange:
        """What SageMaker says of the endpoint now (DescribeEndpoint)."""
        name = self.resources.sagemaker_name(endpoint_name)
        description = self._describe(name)
        if not description:
            return EndpointChange(status=EndpointStatus.FAILED, instance_count=0,
                                  error=f"The SageMaker endpoint {name} no longer exists.")
        status = _status_word(description.get("EndpointStatus", ""))
        count = self._count_of(description)
        if status == "inservice":
            if name not in self._scaling_in_place:
                self._ensure_autoscaling(name, self._endpoint_tags(description["EndpointArn"]))
            return EndpointChange(status=EndpointStatus.IN_SERVICE, instance_count=count)
        if status in ("failed", "updaterollbackfailed"):
            return EndpointChange(status=EndpointStatus.FAILED, instance_count=0,
                                  error=f"SageMaker: {description.get('FailureReason') or 'the endpoint failed'}")
        if status == "deleting":
            return EndpointChange(status=EndpointStatus.FAILED, instance_count=0,
                                  error="SageMaker is deleting the endpoint (it was deleted outside sd-aws).")
        return EndpointChange(instance_count=count)

    def instance_count(self, endpoint_name: str) -> int:
        return self._current_count(self.resources.sagemaker_name(endpoint_name))

    def _current_count(self, sagemaker_name: str) -> int:
        return self._count_of(self._describe(sagemaker_name))

    @staticmethod
    def _count_of(description: dict) -> int:
        return sum(int(v.get("CurrentInstanceCount") or 0) for v in description.get("ProductionVariants") or [])

    def _describe(self, sagemaker_name: str) -> dict:
        """DescribeEndpoint's answer; {} when there is no such endpoint."""
        try:
            return self.sagemaker.describe_endpoint(EndpointName=sagemaker_name)
        except ClientError as error:
            if _missing(error):
                return {}
            raise

    def _endpoint_tags(self, arn: str) -> dict[str, str]:
        try:
            return _tag_map(self.sagemaker.list_tags(ResourceArn=arn).get("Tags"))
        except ClientError as error:
            if _missing(error):
                return {}
            raise
