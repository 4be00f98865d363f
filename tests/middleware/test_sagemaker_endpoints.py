"""SageMaker endpoints' control plane (compute/sagemaker/endpoints.py) against moto, read back with describe
and list calls. What moto cannot do (quota errors, name conflicts, Failed endpoints) is made to happen on the
one call concerned, everything else going through moto."""

from __future__ import annotations

import copy
import dataclasses

import boto3
import pytest
from botocore.exceptions import ClientError

moto = pytest.importorskip("moto")

from moto.sagemaker.models import FakeEndpointConfig, sagemaker_backends  # noqa: E402

from aws_extension.middleware.aws_resources import StackResources  # noqa: E402
from aws_extension.middleware.compute.sagemaker import instance_types  # noqa: E402
from aws_extension.middleware.compute.sagemaker.endpoints import (  # noqa: E402
    DeploymentRefused,
    SageMakerEndpoints,
)
from aws_extension.middleware.errors import InvalidRequest  # noqa: E402
from aws_extension.middleware.records import Endpoint  # noqa: E402
from aws_extension.settings import MiddlewareSettings, WorkerSettings  # noqa: E402
from aws_extension.vocabulary import DeploymentStatus, EndpointStatus  # noqa: E402

ACCOUNT = "123456789012"
REGION = "us-east-1"
STACK = "sd-test"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/sd-test-worker:1"
RESOURCE_ID = "endpoint/sd-test--{}/variant/AllTraffic"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
QUOTA_MESSAGE = ("The account-level service limit 'ml.g5.xlarge for endpoint usage' is 0 Instances, with current "
                 "utilization of 0 Instances and a request delta of 1 Instances. Please use AWS Service Quotas to "
                 "request an increase for this quota. If AWS Service Quotas is not available, contact AWS support "
                 "to request an increase for this quota.")


@pytest.fixture
def aws(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # moto's own instance-type list lacks the GPU types (ml.g5.*)
    monkeypatch.setattr(FakeEndpointConfig, "validate_instance_type", lambda self, instance_type: None)
    with moto.mock_aws():
        yield boto3.Session(region_name=REGION)


def _settings(**changes) -> MiddlewareSettings:
    return dataclasses.replace(MiddlewareSettings(), **{"stack_name": STACK, "worker_image": IMAGE, **changes})


def _endpoints(session, **changes) -> SageMakerEndpoints:
    return SageMakerEndpoints(StackResources(STACK, ACCOUNT, REGION), _settings(**changes), session,
                              worker_settings=WorkerSettings(max_steps=77))


def _record(name: str, count: int = 1, autoscaling: bool = False, minimum: int | None = None,
            maximum: int | None = None, instance_type: str = "ml.g5.xlarge") -> Endpoint:
    return Endpoint(id=f"id-{name}", endpoint_name=name, live_name=name, deployment_status=DeploymentStatus.INPROGRESS,
                    endpoint_status=EndpointStatus.CREATING, created=0.0, start_time="", instance_type=instance_type,
                    initial_instance_count=count, autoscaling=autoscaling,
                    min_instance_number=count if minimum is None else minimum,
                    max_instance_number=count if maximum is None else maximum)


def _event(sagemaker_name: str, status: str, tags: dict | None = None, **detail) -> dict:
    """An EventBridge "SageMaker Endpoint State Change" event as SageMaker sends it (the developer guide's
    example, "Events that Amazon SageMaker AI sends to Amazon EventBridge")."""
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{sagemaker_name.lower()}"
    return {
        "version": "0", "id": "d2921b5a-b0ad-cace-a8e3-0f159d018e06", "detail-type": "SageMaker Endpoint State Change",
        "source": "aws.sagemaker", "account": ACCOUNT, "time": "2026-12-01T12:00:00Z", "region": REGION,
        "resources": [arn],
        "detail": {"EndpointName": sagemaker_name, "EndpointArn": arn, "EndpointConfigName": sagemaker_name,
                   "ProductionVariants": [{"DesiredWeight": 1.0, "DesiredInstanceCount": 1.0}],
                   "EndpointStatus": status, "CreationTime": 1592411992203.0, "LastModifiedTime": 1592411994287.0,
                   "Tags": {"sd-aws:stack": STACK, "sd-aws:endpoint": sagemaker_name.removeprefix(f"{STACK}--")}
                   if tags is None else tags, **detail},
    }


def _fail_call(client, operation: str, code: str, message: str) -> list[dict]:
    """Make one operation of this client answer an AWS error (moto cannot produce it) until the returned
    list is given a None; the others go on to moto. The list holds the parameters of each failed call."""
    calls: list[dict] = []

    def refuse(params, **_):
        if None in calls:
            return
        calls.append(params)
        raise ClientError({"Error": {"Code": code, "Message": message}}, operation)

    client.meta.events.register(f"before-parameter-build.{client.meta.service_model.endpoint_prefix}.{operation}",
                                refuse)
    return calls


def _record_calls(client, operation: str) -> list[dict]:
    calls: list[dict] = []
    client.meta.events.register(f"before-parameter-build.{client.meta.service_model.endpoint_prefix}.{operation}",
                                lambda params, **_: calls.append(copy.deepcopy(params)))
    return calls


def _tags(sm, arn: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}


def _missing(call, **params) -> bool:
    try:
        call(**params)
    except ClientError as error:
        return "Could not find" in error.response["Error"]["Message"]
    return False


def test_deploy_creates_the_model_the_async_config_and_the_endpoint(aws):
    endpoints = _endpoints(aws)
    endpoints.deploy(_record("alpha", count=2))
    sm = aws.client("sagemaker")

    model = sm.describe_model(ModelName="sd-test--alpha")
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["ExecutionRoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/sd-test-sagemaker"
    environment = model["PrimaryContainer"]["Environment"]
    assert environment["SD_AWS_MAX_STEPS"] == "77" and environment["SD_AWS_MAX_WIDTH"] == "2048"
    middleware_only = {f.metadata["env"] for f in dataclasses.fields(MiddlewareSettings)}
    assert not middleware_only & set(environment), "no middleware setting (keys, secrets) reaches the worker"
    assert "SD_AWS_MODEL_CACHE_DIR" not in environment and "SD_AWS_SAGEMAKER_ROOT" not in environment

    config = sm.describe_endpoint_config(EndpointConfigName="sd-test--alpha")
    [variant] = config["ProductionVariants"]
    assert (variant["VariantName"], variant["ModelName"], variant["InstanceType"], variant["InitialInstanceCount"]) == (
        "AllTraffic", "sd-test--alpha", "ml.g5.xlarge", 2)
    async_config = config["AsyncInferenceConfig"]
    assert async_config["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 1}
    output = async_config["OutputConfig"]
    assert output["S3OutputPath"] == f"s3://sd-test-{ACCOUNT}-{REGION}/sagemaker/alpha/output/"
    assert output["S3FailurePath"] == f"s3://sd-test-{ACCOUNT}-{REGION}/sagemaker/alpha/failure/"
    assert output["NotificationConfig"] == {"SuccessTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:sd-test-inference-success",
                                            "ErrorTopic": f"arn:aws:sns:{REGION}:{ACCOUNT}:sd-test-inference-error"}

    endpoint = sm.describe_endpoint(EndpointName="sd-test--alpha")
    assert endpoint["EndpointConfigName"] == "sd-test--alpha"
    for arn in (model["ModelArn"], config["EndpointConfigArn"], endpoint["EndpointArn"]):
        tags = _tags(sm, arn)
        assert tags["sd-aws:stack"] == STACK and tags["sd-aws:endpoint"] == "alpha"
    assert "sd-aws:min-instances" not in _tags(sm, endpoint["EndpointArn"])  # no autoscaling asked
    # without autoscaling nothing is registered, even once in service
    assert endpoints.state_change(_event("sd-test--alpha", "IN_SERVICE"))[1].status == EndpointStatus.IN_SERVICE
    assert aws.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_an_endpoint_asked_to_start_at_zero_is_created_with_one_and_scaled_to_zero_once_in_service(aws):
    endpoints = _endpoints(aws, scale_in_idle_s=900, sagemaker_backlog_per_instance=3.0)
    endpoints.deploy(_record("zero", count=0, autoscaling=True, minimum=0, maximum=3))
    sm, scaling, cloudwatch = aws.client("sagemaker"), aws.client("application-autoscaling"), aws.client("cloudwatch")
    config = sm.describe_endpoint_config(EndpointConfigName="sd-test--zero")
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 1
    # Application Auto Scaling takes endpoints in service only: nothing yet
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    registrations = _record_calls(endpoints.autoscaling, "RegisterScalableTarget")

    name, change = endpoints.state_change(_event("sd-test--zero", "IN_SERVICE"))
    assert name == "zero"
    assert change.status == EndpointStatus.IN_SERVICE and change.instance_count == 0

    [target] = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["ScalableDimension"], target["MinCapacity"], target["MaxCapacity"]) == (
        RESOURCE_ID.format("zero"), DIMENSION, 0, 3)
    assert registrations[0]["Tags"] == {"sd-aws:stack": STACK, "sd-aws:endpoint": "zero"}
    policies = {p["PolicyName"]: p for p in scaling.describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=RESOURCE_ID.format("zero"))["ScalingPolicies"]}
    tracking = policies["sd-test--zero-backlog-per-instance"]
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    tracking_config = tracking["TargetTrackingScalingPolicyConfiguration"]
    assert tracking_config["TargetValue"] == 3.0 and tracking_config["ScaleInCooldown"] == 900
    assert tracking_config["CustomizedMetricSpecification"] == {
        "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker", "Statistic": "Average",
        "Dimensions": [{"Name": "EndpointName", "Value": "sd-test--zero"}]}
    wake = policies["sd-test--zero-wake-from-zero"]
    assert wake["PolicyType"] == "StepScaling"
    assert wake["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]
    [alarm] = cloudwatch.describe_alarms(AlarmNames=["sd-test--zero-backlog-without-capacity"])["MetricAlarms"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "AWS/SageMaker", "HasBacklogWithoutCapacity", "GreaterThanOrEqualToThreshold", 1.0)
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": "sd-test--zero"}]
    assert alarm["AlarmActions"] == [wake["PolicyARN"]]
    alarm_tags = cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in alarm_tags} == {"sd-aws:stack": STACK, "sd-aws:endpoint": "zero"}
    assert sm.describe_endpoint(EndpointName="sd-test--zero")["ProductionVariants"][0]["DesiredInstanceCount"] == 0

    # the next events (the scale-in's Updating, then InService) set nothing up again
    assert endpoints.state_change(_event("sd-test--zero", "UPDATING")) == ("zero", type(change)())
    assert endpoints.state_change(_event("sd-test--zero", "IN_SERVICE"))[1].instance_count == 0
    assert len(registrations) == 1


def test_reconcile_follows_describe_endpoint_and_finishes_the_autoscaling_set_up(aws):
    _endpoints(aws).deploy(_record("beta", count=1, autoscaling=True, minimum=1, maximum=2))
    endpoints = _endpoints(aws)  # another process (a Lambda, a restarted server) reconciles it
    change = endpoints.reconcile("beta")
    assert change.status == EndpointStatus.IN_SERVICE and change.instance_count == 1 and change.error is None
    assert endpoints.instance_count("beta") == 1
    [target] = aws.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)

    fake = sagemaker_backends[ACCOUNT][REGION].endpoints["sd-test--beta"]
    fake.endpoint_status = "Creating"
    assert endpoints.reconcile("beta").status is None
    fake.endpoint_status, fake.failure_reason = "Failed", "The primary container for production variant AllTraffic did not pass the ping health check."
    failed = endpoints.reconcile("beta")
    assert failed.status == EndpointStatus.FAILED and failed.instance_count == 0
    assert "did not pass the ping health check" in failed.error

    gone = endpoints.reconcile("never-deployed")
    assert gone.status == EndpointStatus.FAILED and "no longer exists" in gone.error
    assert endpoints.instance_count("never-deployed") == 0


def test_delete_removes_every_part_and_may_be_repeated(aws):
    endpoints = _endpoints(aws)
    endpoints.deploy(_record("gamma", count=1, autoscaling=True, minimum=0, maximum=2))
    endpoints.deploy(_record("other", count=1))
    endpoints.state_change(_event("sd-test--gamma", "IN_SERVICE"))
    sm, scaling, cloudwatch = aws.client("sagemaker"), aws.client("application-autoscaling"), aws.client("cloudwatch")
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]

    endpoints.delete("gamma")
    assert _missing(sm.describe_endpoint, EndpointName="sd-test--gamma")
    assert _missing(sm.describe_endpoint_config, EndpointConfigName="sd-test--gamma")
    assert _missing(sm.describe_model, ModelName="sd-test--gamma")
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert cloudwatch.describe_alarms()["MetricAlarms"] == []
    assert sm.describe_endpoint(EndpointName="sd-test--other")["EndpointStatus"] == "InService"  # only its own

    endpoints.delete("gamma")  # again: nothing left, no error
    endpoints.delete("never-deployed")


def test_a_quota_error_is_refused_with_the_quota_and_where_to_raise_it_and_nothing_is_left(aws):
    endpoints = _endpoints(aws)
    refused = _fail_call(endpoints.sagemaker, "CreateEndpoint", "ResourceLimitExceeded", QUOTA_MESSAGE)
    with pytest.raises(DeploymentRefused) as caught:
        endpoints.deploy(_record("delta"))
    assert len(refused) == 1
    message = caught.value.message
    assert "'ml.g5.xlarge for endpoint usage'" in message and "Service Quotas" in message and REGION in message
    sm = aws.client("sagemaker")
    assert _missing(sm.describe_endpoint_config, EndpointConfigName="sd-test--delta")
    assert _missing(sm.describe_model, ModelName="sd-test--delta")


def test_what_sagemaker_refuses_is_said_so(aws):
    endpoints = _endpoints(aws)
    _fail_call(endpoints.sagemaker, "CreateModel", "ValidationException",
               f"Requested image {IMAGE} not found.")
    with pytest.raises(DeploymentRefused, match="cannot use the worker image"):
        endpoints.deploy(_record("epsilon"))

    endpoints = _endpoints(aws)
    _fail_call(endpoints.sagemaker, "CreateEndpointConfig", "ValidationException",
               "The instance type ml.p5.48xlarge is not supported in this region.")
    with pytest.raises(DeploymentRefused, match="does not offer ml.p5.48xlarge for endpoints in us-east-1"):
        endpoints.deploy(_record("zeta", instance_type="ml.p5.48xlarge"))
    assert _missing(aws.client("sagemaker").describe_model, ModelName="sd-test--zeta")

    # an earlier endpoint's leftovers under the same name are removed, and the user told to try again
    leftover = _endpoints(aws)
    leftover.deploy(_record("eta"))
    endpoints = _endpoints(aws)
    _fail_call(endpoints.sagemaker, "CreateModel", "ValidationException",
               'Cannot create already existing model "arn:aws:sagemaker:us-east-1:123456789012:model/sd-test-eta".')
    with pytest.raises(DeploymentRefused, match="deploy again in a few minutes"):
        endpoints.deploy(_record("eta"))
    assert _missing(aws.client("sagemaker").describe_endpoint, EndpointName="sd-test--eta")

    other_error = _endpoints(aws)
    _fail_call(other_error.sagemaker, "CreateEndpoint", "ThrottlingException", "Rate exceeded")
    with pytest.raises(ClientError):
        other_error.deploy(_record("theta"))
    assert _missing(aws.client("sagemaker").describe_model, ModelName="sd-test--theta")


def test_deploy_refuses_before_calling_sagemaker(aws):
    no_image = SageMakerEndpoints(StackResources(STACK, ACCOUNT, REGION), _settings(worker_image=None), aws)
    with pytest.raises(DeploymentRefused, match="SD_AWS_WORKER_IMAGE"):
        no_image.deploy(_record("iota"))
    with pytest.raises(DeploymentRefused, match="not offered"):
        _endpoints(aws).deploy(_record("kappa", instance_type="ml.t2.medium"))
    with pytest.raises(DeploymentRefused, match="shorter endpoint name"):
        _endpoints(aws).deploy(_record("x" * 60))
    assert aws.client("sagemaker").list_models()["Models"] == []


def test_instance_types_offered_and_checked(aws):
    endpoints = _endpoints(aws)
    endpoints.check_instance_type("ml.g5.xlarge")
    endpoints.check_instance_type("ml.m5.xlarge")
    with pytest.raises(InvalidRequest) as caught:
        endpoints.check_instance_type("local")
    assert "ml.g5.xlarge" in caught.value.message and "ml.g4dn.xlarge" in caught.value.message

    narrowed = _endpoints(aws, sagemaker_instance_types="ml.g5.xlarge, ml.g6.xlarge")
    narrowed.check_instance_type("ml.g6.xlarge")
    with pytest.raises(InvalidRequest, match=f"{REGION} offers ml.g5.xlarge, ml.g6.xlarge."):
        narrowed.check_instance_type("ml.g4dn.xlarge")
    with pytest.raises(ValueError, match="ml.inf2.xlarge"):
        _endpoints(aws, sagemaker_instance_types="ml.g5.xlarge,ml.inf2.xlarge")


def test_each_region_offers_its_own_types_and_an_unknown_region_the_whole_table():
    ireland = instance_types.offered_types(None, "eu-west-1")
    ireland.check("ml.g5.xlarge")
    ireland.check("ml.p4d.24xlarge")
    ireland.check("ml.c7i.xlarge")
    with pytest.raises(InvalidRequest) as caught:
        ireland.check("ml.g6.xlarge")  # no L4 machines in Ireland
    assert "in eu-west-1" in caught.value.message and "eu-west-1 offers ml.g4dn.xlarge" in caught.value.message
    assert "ml.g6" not in caught.value.message.split("offers", 1)[1]
    for region in instance_types.REGION_FAMILIES:
        offer = instance_types.offered_types(None, region)
        assert offer.region_known and set(offer.types) <= set(instance_types.ASYNC_INFERENCE_TYPES)
        assert "ml.g5.xlarge" in offer.types and "ml.p5e.48xlarge" not in offer.types
    tokyo = instance_types.offered_types(None, "ap-northeast-1")
    assert "ml.g6e.xlarge" in tokyo.types and "ml.p6-b200.48xlarge" not in tokyo.types
    unknown = instance_types.offered_types(None, "xx-test-9")
    assert unknown.types == instance_types.ASYNC_INFERENCE_TYPES and not unknown.region_known
    unknown.check("ml.p5e.48xlarge")
    with pytest.raises(InvalidRequest, match="no list of what xx-test-9 offers"):
        unknown.check("ml.t2.medium")
    chosen = instance_types.offered_types("ml.g6.xlarge", "eu-west-1")  # the operator's setting wins
    chosen.check("ml.g6.xlarge")


def test_a_quota_error_without_the_quota_in_its_message_names_the_instance_types_quota(aws):
    endpoints = _endpoints(aws)
    _fail_call(endpoints.sagemaker, "CreateEndpoint", "ResourceLimitExceeded", "Account limit exceeded.")
    with pytest.raises(DeploymentRefused, match="quota 'ml.g5.xlarge for endpoint usage' in us-east-1"):
        endpoints.deploy(_record("epsilon"))


def test_the_instance_type_table_is_sagemakers_own_names():
    accepted = set(boto3.Session(region_name=REGION).client("sagemaker").meta.service_model
                   .shape_for("ProductionVariantInstanceType").enum)
    assert set(instance_types.ASYNC_INFERENCE_TYPES) <= accepted
    assert set(instance_types.GPU_MEMORY_GIB) == set(instance_types.GPUS)
    assert instance_types.GPU_MEMORY_GIB["ml.g5.xlarge"] == 24 and instance_types.GPUS["ml.g5.12xlarge"].count == 4
    assert instance_types.GPUS["ml.g4dn.xlarge"].model == "NVIDIA T4"
    assert not [t for t in instance_types.ASYNC_INFERENCE_TYPES if t.split(".")[1].endswith(("g", "gd", "gn"))
                or t.startswith(("ml.inf", "ml.trn", "ml.t2", "ml.p3."))]


def test_state_change_events(aws):
    endpoints = _endpoints(aws)
    endpoints.deploy(_record("lambda"))

    name, failed = endpoints.state_change(_event(
        "sd-test--lambda", "FAILED", FailureReason="Image size 12 GB is greater than supported size 10 GB"))
    assert name == "lambda" and failed.status == EndpointStatus.FAILED and failed.instance_count == 0
    assert failed.error == "SageMaker: Image size 12 GB is greater than supported size 10 GB"
    # without the reason in the event, DescribeEndpoint's
    fake = sagemaker_backends[ACCOUNT][REGION].endpoints["sd-test--lambda"]
    fake.endpoint_status, fake.failure_reason = "Failed", "the container did not start"
    assert endpoints.state_change(_event("sd-test--lambda", "FAILED"))[1].error == "SageMaker: the container did not start"

    deleting = endpoints.state_change(_event("sd-test--lambda", "DELETING"))[1]
    assert deleting.status == EndpointStatus.FAILED and "deleted outside sd-aws" in deleting.error
    assert endpoints.state_change(_event("sd-test--lambda", "CREATING")) == ("lambda", type(deleting)())

    # an event whose Tags are empty: the endpoint's own tags are read
    fake.endpoint_status = "InService"
    name, in_service = endpoints.state_change(_event("sd-test--lambda", "IN_SERVICE", tags={}))
    assert name == "lambda" and in_service.status == EndpointStatus.IN_SERVICE and in_service.instance_count == 1

    # not this stack's: another stack's endpoint, a name that does not match its tags, another event
    assert endpoints.state_change(_event("sd-other-lambda", "IN_SERVICE", tags={
        "sd-aws:stack": "sd-other", "sd-aws:endpoint": "lambda"})) is None
    assert endpoints.state_change(_event("sd-test--lambda", "IN_SERVICE", tags={
        "sd-aws:stack": STACK, "sd-aws:endpoint": "mu"})) is None
    assert endpoints.state_change(_event("someone-elses", "IN_SERVICE", tags={})) is None
    training = _event("sd-test--lambda", "IN_SERVICE")
    training["detail-type"] = "SageMaker Training Job State Change"
    assert endpoints.state_change(training) is None


def test_autoscaling_that_could_not_be_set_up_is_tried_again(aws):
    endpoints = _endpoints(aws)
    endpoints.deploy(_record("nu", count=1, autoscaling=True, minimum=1, maximum=4))
    refused = _fail_call(endpoints.autoscaling, "RegisterScalableTarget", "ValidationException",
                         "Endpoint sd-test--nu is being updated.")
    change = endpoints.state_change(_event("sd-test--nu", "IN_SERVICE"))[1]
    assert change.status == EndpointStatus.IN_SERVICE and len(refused) == 1  # reported in service all the same
    scaling = aws.client("application-autoscaling")
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    refused.append(None)
    assert endpoints.reconcile("nu").status == EndpointStatus.IN_SERVICE
    [target] = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert target["MaxCapacity"] == 4
