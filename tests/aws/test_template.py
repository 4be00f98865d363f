"""deploy/template.yaml: cfn-lint clean, and the same names, tables, rules and policies as the code uses."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml
from moto import mock_aws

from aws_extension import aws_cli
from aws_extension.middleware.aws_resources import StackResources
from aws_extension.middleware.blobs.s3 import LIFECYCLE_RULE_ID
from aws_extension.middleware.store.dynamodb import ALL_TABLES, DynamoDBStore
from tests.aws.cfn import TEMPLATE, load_template, substitute

STACK = "sd-test"
RESOURCES = StackResources(STACK, "123456789012", "us-east-1")

# Actions AWS grants on "*" only (no resource-level permissions), the only ones allowed there.
NO_RESOURCE_ARN_ACTIONS = {
    "ecr:GetAuthorizationToken",  # the registry login token
    "cloudwatch:PutMetricData",  # metrics have no ARN (the statement is limited by cloudwatch:namespace)
    "application-autoscaling:RegisterScalableTarget", "application-autoscaling:DeregisterScalableTarget",
    "application-autoscaling:DescribeScalableTargets", "application-autoscaling:PutScalingPolicy",
    "application-autoscaling:DeleteScalingPolicy", "application-autoscaling:DescribeScalingPolicies",
    "sagemaker:ListEndpoints", "sagemaker:ListTrainingJobs",  # List* calls have no resource
    "servicequotas:GetServiceQuota", "servicequotas:ListServiceQuotas",
}


@pytest.fixture(scope="module")
def template():
    return load_template()


def resources_of(template, kind):
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def named(template, logical_id, prop):
    return substitute(template["Resources"][logical_id]["Properties"][prop], STACK)


def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")  # the test extra's console script
    result = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _table_shape(table: dict) -> dict:
    return {
        "name": table["TableName"],
        "billing": table.get("BillingMode") or table["BillingModeSummary"]["BillingMode"],
        "key": table["KeySchema"],
        "attributes": sorted(table["AttributeDefinitions"], key=lambda a: a["AttributeName"]),
        "indexes": {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in table["GlobalSecondaryIndexes"]},
    }


def test_tables_and_indexes_are_those_the_store_creates(template):
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        store = DynamoDBStore(RESOURCES.table_prefix, client)
        store.ensure_tables(poll_s=0)
        created = {t.name: _table_shape(client.describe_table(TableName=store.table_name(t))["Table"])
                   for t in ALL_TABLES}
    declared = {}
    for table in resources_of(template, "AWS::DynamoDB::Table").values():
        shape = _table_shape(substitute(table["Properties"], STACK))
        declared[shape["name"].removeprefix(f"{STACK}-")] = shape
    assert declared == created


def test_names_are_those_of_stack_resources(template):
    assert named(template, "Bucket", "BucketName") == RESOURCES.bucket
    assert named(template, "InferenceSuccessTopic", "TopicName") == RESOURCES.success_topic
    assert named(template, "InferenceErrorTopic", "TopicName") == RESOURCES.error_topic
    assert named(template, "EventsQueue", "QueueName") == RESOURCES.events_queue
    assert named(template, "ApiKeySecret", "Name") == RESOURCES.api_key_secret
    assert named(template, "WebhookSecret", "Name") == RESOURCES.webhook_secret
    assert named(template, "SageMakerExecutionRole", "RoleName") == RESOURCES.sagemaker_role
    assert named(template, "WorkerRepository", "RepositoryName") == RESOURCES.ecr_repository
    assert named(template, "ApiFunction", "FunctionName") == RESOURCES.api_function
    assert named(template, "ImageBuild", "Name") == RESOURCES.image_build_project
    environment = template["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert environment["SD_AWS_BACKEND"] == "aws"
    assert environment["SD_AWS_STACK_NAME"] == {"Ref": "AWS::StackName"}
    # a body API Gateway base64-encodes must fit Lambda's 6 MB event (4/3 of it, plus the event's own fields)
    assert int(environment["SD_AWS_MAX_BODY_BYTES"]) * 4 / 3 + 64 * 1024 < 6 * 1024 * 1024


def test_the_function_handler_is_the_lambda_entry(template):
    module, _, function = template["Resources"]["ApiFunction"]["Properties"]["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), function))


def test_rules_queue_and_policy_are_those_init_creates(template):
    for logical_id, rule in (("EndpointStateRule", "endpoint-state"), ("TrainingJobStateRule", "training-job-state")):
        assert named(template, logical_id, "EventPattern") == aws_cli.state_change_pattern(RESOURCES, rule)
        assert named(template, logical_id, "Name") == f"{STACK}-{rule}"
    queue = template["Resources"]["EventsQueue"]["Properties"]
    assert {k: str(queue[k]).lower() for k in aws_cli.EVENTS_QUEUE_ATTRIBUTES} == aws_cli.EVENTS_QUEUE_ATTRIBUTES
    assert queue["RedrivePolicy"]["maxReceiveCount"] == aws_cli.DLQ_MAX_RECEIVES
    assert named(template, "EventsDeadLetterQueue", "QueueName") == f"{RESOURCES.events_queue}-dlq"
    # The same statements, with the template's references for the ARNs init looks up.
    policy = template["Resources"]["EventsQueuePolicy"]["Properties"]["PolicyDocument"]
    queue_arn = {"Fn::GetAtt": ["EventsQueue", "Arn"]}
    assert policy == aws_cli.queue_policy(
        queue_arn, [{"Ref": "InferenceSuccessTopic"}, {"Ref": "InferenceErrorTopic"}],
        [{"Fn::GetAtt": ["EndpointStateRule", "Arn"]}, {"Fn::GetAtt": ["TrainingJobStateRule", "Arn"]}])
    subscriptions = resources_of(template, "AWS::SNS::Subscription").values()
    assert sorted(s["Properties"]["TopicArn"]["Ref"] for s in subscriptions) == ["InferenceErrorTopic",
                                                                                 "InferenceSuccessTopic"]
    assert all(s["Properties"]["Endpoint"] == queue_arn and s["Properties"]["Protocol"] == "sqs"
               for s in subscriptions)


def test_the_queue_feeds_the_function_with_partial_batch_failures(template):
    mapping = template["Resources"]["EventsQueueMapping"]["Properties"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    function_timeout = template["Resources"]["ApiFunction"]["Properties"]["Timeout"]
    assert template["Resources"]["EventsQueue"]["Properties"]["VisibilityTimeout"] >= function_timeout
    schedule = template["Resources"]["ReaperSchedule"]["Properties"]
    assert schedule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["ApiFunction", "Arn"]}


def test_the_bucket_is_private_encrypted_and_aborts_stale_uploads(template):
    bucket = template["Resources"]["Bucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    (rule,) = bucket["LifecycleConfiguration"]["Rules"]
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == {"Ref": "MultipartUploadTtlDays"}
    assert rule["Id"] == LIFECYCLE_RULE_ID  # the rule ensure_bucket writes (init, serve --backend aws)
    # The middleware's TTL (seconds) is the same number of days.
    days = template["Mappings"]["MultipartTtl"]
    assert all(int(v["Seconds"]) == int(k) * 86400 for k, v in days.items())
    assert sorted(days) == sorted(template["Parameters"]["MultipartUploadTtlDays"]["AllowedValues"])
    assert max(int(d) for d in days) == aws_cli.MAX_TEMPLATE_TTL_DAYS


def test_secrets_are_generated_never_parameters(template):
    for secret in resources_of(template, "AWS::SecretsManager::Secret").values():
        assert "GenerateSecretString" in secret["Properties"] and "SecretString" not in secret["Properties"]
    assert not [p for p in template["Parameters"] if "key" in p.lower() and p != "LambdaCodeKey"]
    assert not [p for p in template["Parameters"] if "secret" in p.lower() or "password" in p.lower()]


def _statements(template):
    for role_id, role in resources_of(template, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                yield role_id, statement, actions, resources


def test_no_resource_star_where_an_arn_exists(template):
    for role_id, statement, actions, resources in _statements(template):
        assert statement["Effect"] == "Allow"
        assert not [a for a in actions if "*" in a], (role_id, statement)
        if "*" in resources:
            assert resources == ["*"]
            assert set(actions) <= NO_RESOURCE_ARN_ACTIONS, (role_id, sorted(set(actions) - NO_RESOURCE_ARN_ACTIONS))


def test_sagemaker_calls_are_on_this_stacks_names_and_pass_role_only_its_role(template):
    for _, statement, actions, resources in _statements(template):
        scoped = [a for a in actions if a.startswith("sagemaker:") and a not in NO_RESOURCE_ARN_ACTIONS]
        if scoped:
            arns = [substitute(r, STACK) for r in resources]
            assert all(arn.rsplit(":", 1)[1].split("/", 1)[1] == aws_cli.sagemaker_prefix(RESOURCES) + "*"
                       for arn in arns), arns
        if "iam:PassRole" in actions:
            assert actions == ["iam:PassRole"]
            assert resources == [{"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]}]
            assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_alarms_are_those_of_this_stacks_endpoints(template):
    from aws_extension.middleware.compute.sagemaker.endpoints import SageMakerEndpoints

    alarm = SageMakerEndpoints.alarm_name(RESOURCES.sagemaker_name("ep"))
    for _, _, actions, resources in _statements(template):
        if "cloudwatch:PutMetricAlarm" in actions:
            (arn,) = [substitute(r, STACK) for r in resources]
            assert alarm.startswith(arn.rsplit(":", 1)[1].removesuffix("*"))


def test_the_sagemaker_role_is_its_own_and_reads_only_this_bucket(template):
    role = template["Resources"]["SageMakerExecutionRole"]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    for statement in role["Policies"][0]["PolicyDocument"]["Statement"]:
        if any(a.startswith("s3:") for a in statement["Action"] if isinstance(statement["Action"], list)) \
                or str(statement["Action"]).startswith("s3:"):
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            assert all(json.dumps(r).count("Bucket") for r in resources), statement


def test_the_sagemaker_role_may_write_the_async_output_and_failure_paths(template, tmp_path):
    from aws_extension.middleware.compute.sagemaker.endpoints import SageMakerEndpoints
    from aws_extension.settings import MiddlewareSettings, load

    session = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    endpoints = SageMakerEndpoints(RESOURCES, load(MiddlewareSettings, data_dir=tmp_path), session)
    statements = template["Resources"]["SageMakerExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    (writes,) = [st for st in statements["Statement"] if st["Sid"] == "WriteResults"]
    prefixes = [substitute(r, STACK).split("}/", 1)[1].removesuffix("*") for r in writes["Resource"]]
    for path in (endpoints.output_path("ep"), endpoints.failure_path("ep")):
        key = path.removeprefix(f"s3://{RESOURCES.bucket}/")
        assert any(key.startswith(prefix) for prefix in prefixes), (key, prefixes)


def test_outputs_say_where_the_url_and_the_key_are(template):
    outputs = template["Outputs"]
    assert substitute(outputs["ApiUrl"]["Value"], STACK).endswith("/prod")
    assert substitute(outputs["ApiKeyCommand"]["Value"], STACK) == aws_cli.key_command(RESOURCES)
    assert outputs["ApiKeySecretArn"]["Value"] == {"Ref": "ApiKeySecret"}


def test_the_image_build_builds_either_dockerfile_of_the_repository(template):
    project = template["Resources"]["ImageBuild"]
    assert project["Condition"] == "HasImageBuild"
    assert project["Properties"]["Source"]["BuildSpec"] == "deploy/buildspec.yml"
    buildspec = yaml.safe_load((TEMPLATE.parent / "buildspec.yml").read_text())
    build = " ".join(buildspec["phases"]["build"]["commands"])
    assert '-f "deploy/$FLAVOUR.Dockerfile"' in build
    for flavour in aws_cli.FLAVOURS:
        assert (Path(TEMPLATE.parent) / f"{flavour}.Dockerfile").is_file()
    assert template["Resources"]["ImageBuildRole"]["Condition"] == "HasImageBuild"


def test_template_resource_count_counts_every_resource(template):
    assert aws_cli.template_resource_count(TEMPLATE.read_text()) == len(template["Resources"])
