"""`sd-aws aws init | deploy | destroy | build-image` against moto's server on 127.0.0.1 (AWS_ENDPOINT_URL).

moto's CloudFormation creates the stack's buckets, tables, topics, queues, rules, Lambda function and
permissions, event source mapping, REST API (resources, methods, deployment), IAM roles, log group and ECR
repository; it skips (with a warning, leaving them out of the stack) AWS::S3::BucketPolicy,
AWS::SQS::QueuePolicy, AWS::SNS::Subscription, AWS::SecretsManager::Secret and AWS::CodeBuild::Project.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import boto3
import pytest
import tomllib

from aws_extension import aws_cli
from aws_extension.cli import main
from aws_extension.middleware.aws_resources import StackResources
from aws_extension.middleware.store.dynamodb import ALL_TABLES

STACK = "sd-cli"
REGION = "us-east-1"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def aws(fresh_account):
    return boto3.session.Session(region_name=REGION)


@pytest.fixture
def resources(aws, fresh_account):
    return StackResources(STACK, fresh_account, REGION)


@pytest.fixture
def package(tmp_path):
    """A Lambda package of this checkout with a stand-in dependency (pip cannot reach PyPI here)."""
    def install(folder: Path) -> None:
        (folder / "mangum").mkdir()
        (folder / "mangum" / "__init__.py").write_text("")
    return aws_cli.build_lambda_package(tmp_path / "lambda.zip", install)


def _deploy(package, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moto: "Tried to parse AWS::SNS::Subscription but it's not supported"
        return aws_cli.deploy(STACK, REGION, package=package, poll_s=0.05, echo=lambda _: None, **kwargs)


def test_deploy_creates_the_stack(aws, resources, package, capsys):
    deployment = _deploy(package, worker_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/sd-cli-worker:worker-1")
    assert deployment.status == "CREATE_COMPLETE"
    assert deployment.api_url.startswith("https://") and deployment.api_url.endswith(".amazonaws.com/prod")
    assert resources.api_key_secret in deployment.key_command
    function = aws.client("lambda").get_function(FunctionName=resources.api_function)["Configuration"]
    assert function["Handler"] == "aws_extension.middleware.lambda_entry.handler"
    assert function["Environment"]["Variables"]["SD_AWS_STACK_NAME"] == STACK
    assert function["Environment"]["Variables"]["SD_AWS_WORKER_IMAGE"].endswith(":worker-1")
    tables = aws.client("dynamodb").list_tables()["TableNames"]
    assert sorted(tables) == sorted(f"{STACK}-{table.name}" for table in ALL_TABLES)
    aws.client("s3").head_bucket(Bucket=resources.bucket)
    queue = aws.client("sqs").get_queue_url(QueueName=resources.events_queue)["QueueUrl"]
    assert queue
    rules = {r["Name"] for r in aws.client("events").list_rules(NamePrefix=STACK)["Rules"]}
    assert rules == {f"{STACK}-endpoint-state", f"{STACK}-training-job-state", f"{STACK}-reaper"}
    assert aws.client("iam").get_role(RoleName=resources.sagemaker_role)["Role"]["Arn"] == resources.sagemaker_role_arn
    # The code the function runs is the package, uploaded under its content's hash.
    bucket = aws_cli.bootstrap_bucket(resources)
    (uploaded,) = aws.client("s3").list_objects_v2(Bucket=bucket)["Contents"]
    assert aws.client("s3").get_object(Bucket=bucket, Key=uploaded["Key"])["Body"].read() == package.read_bytes()


def test_deploy_again_updates_the_stack(aws, resources, package):
    _deploy(package)
    again = _deploy(package, worker_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/sd-cli-worker:worker-2")
    assert again.status in ("UPDATE_COMPLETE", "CREATE_COMPLETE")
    function = aws.client("lambda").get_function(FunctionName=resources.api_function)["Configuration"]
    assert function["Environment"]["Variables"]["SD_AWS_WORKER_IMAGE"].endswith(":worker-2")


def test_destroy_empties_the_bucket_and_deletes_the_stack(aws, resources, package):
    _deploy(package)
    s3 = aws.client("s3")
    s3.put_object(Bucket=resources.bucket, Key="models/Lora/x/a.safetensors", Body=b"x")
    s3.create_multipart_upload(Bucket=resources.bucket, Key="models/Lora/y/b.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        aws_cli.destroy(STACK, REGION, poll_s=0.05, echo=lambda _: None)
    stacks = [s for s in aws.client("cloudformation").list_stacks()["StackSummaries"] if s["StackName"] == STACK]
    assert all(s["StackStatus"] == "DELETE_COMPLETE" for s in stacks)
    assert resources.bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert not aws.client("dynamodb").list_tables()["TableNames"]
    with pytest.raises(aws_cli.AwsCommandError, match="no stack"):
        aws_cli.destroy(STACK, REGION, echo=lambda _: None)


def test_init_twice_is_idempotent(aws, resources):
    first = aws_cli.init(STACK, REGION, echo=lambda _: None)
    secrets = aws.client("secretsmanager")
    key = secrets.get_secret_value(SecretId=resources.api_key_secret)["SecretString"]
    second = aws_cli.init(STACK, REGION, echo=lambda _: None)
    assert sorted(first.created_secrets) == sorted([resources.api_key_secret, resources.webhook_secret])
    assert second.created_secrets == [] and second.queue_url == first.queue_url
    assert secrets.get_secret_value(SecretId=resources.api_key_secret)["SecretString"] == key  # kept
    sns, sqs = aws.client("sns"), aws.client("sqs")
    topics = sorted(t["TopicArn"].rsplit(":", 1)[1] for t in sns.list_topics()["Topics"])
    assert topics == sorted([resources.success_topic, resources.error_topic])
    queue_arn = sqs.get_queue_attributes(QueueUrl=first.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    subscriptions = sns.list_subscriptions()["Subscriptions"]
    assert len(subscriptions) == 2 and all(s["Endpoint"] == queue_arn for s in subscriptions)
    attributes = sqs.get_queue_attributes(QueueUrl=first.queue_url, AttributeNames=["All"])["Attributes"]
    policy = json.loads(attributes["Policy"])
    assert {s["Principal"]["Service"] for s in policy["Statement"]} == {"sns.amazonaws.com", "events.amazonaws.com"}
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == aws_cli.DLQ_MAX_RECEIVES
    events = aws.client("events")
    for rule in aws_cli.STATE_CHANGES:
        name = f"{STACK}-{rule}"
        assert json.loads(events.describe_rule(Name=name)["EventPattern"]) == aws_cli.state_change_pattern(resources, rule)
        assert [t["Arn"] for t in events.list_targets_by_rule(Rule=name)["Targets"]] == [queue_arn]
    tables = aws.client("dynamodb").list_tables()["TableNames"]
    assert sorted(tables) == sorted(f"{STACK}-{table.name}" for table in ALL_TABLES)
    aws.client("s3").head_bucket(Bucket=resources.bucket)


def test_build_image_follows_the_codebuild_build(aws, resources, capsys):
    codebuild = aws.client("codebuild")
    with pytest.raises(aws_cli.AwsCommandError, match="no CodeBuild project"):
        aws_cli.build_image(STACK, "worker", REGION, tag="t1", poll_s=0.05, echo=lambda _: None)
    codebuild.create_project(name=resources.image_build_project, source={"type": "GITHUB", "buildspec": "deploy/buildspec.yml",
                                                                       "location": "https://git.example/sd-aws.git"},
                             artifacts={"type": "NO_ARTIFACTS"}, serviceRole=resources.sagemaker_role_arn,
                             environment={"type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
                                          "computeType": "BUILD_GENERAL1_SMALL"})
    uri = aws_cli.build_image(STACK, "webui", REGION, tag="t1", poll_s=0.05, echo=lambda _: None)
    assert uri == f"{resources.account_id}.dkr.ecr.{REGION}.amazonaws.com/{resources.ecr_repository}:webui-t1"
    (build_id,) = codebuild.list_builds_for_project(projectName=resources.image_build_project)["ids"]
    build = codebuild.batch_get_builds(ids=[build_id])["builds"][0]
    assert build["buildStatus"] == "SUCCEEDED"


def test_build_image_locally_needs_docker(aws, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(aws_cli.AwsCommandError, match="needs Docker"):
        aws_cli.build_image(STACK, "worker", REGION, local=True, echo=lambda _: None)


def test_a_bad_stack_name_is_refused_before_any_call(aws, capsys):
    assert main(["aws", "init", "--stack-name", "Bad_Name", "--region", REGION]) == 2
    assert "stack name 'Bad_Name'" in capsys.readouterr().err


def test_no_region_is_said_so(monkeypatch, capsys):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert main(["aws", "destroy", "--stack-name", STACK]) == 2
    assert "no AWS region" in capsys.readouterr().err


def test_the_lambda_package_holds_the_code_and_no_worker_dependencies(package):
    names = zipfile.ZipFile(io.BytesIO(package.read_bytes())).namelist()
    assert "aws_extension/middleware/lambda_entry.py" in names and "mangum/__init__.py" in names
    assert not [n for n in names if "__pycache__" in n]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + [
        f'{r}; extra == "{extra}"' for extra, rs in project["optional-dependencies"].items() for r in rs]
    wanted = aws_cli.lambda_requirements(requirements)
    assert {r.split(">")[0].split("=")[0].split("~")[0] for r in wanted} >= {"fastapi", "boto3", "mangum", "requests"}
    assert not [r for r in wanted if r.startswith(("torch", "gradio", "diffusers", "pytest", "moto"))]
    command = aws_cli.pip_command(Path("/tmp/x"), wanted)
    assert command[command.index("--platform") + 1] == "manylinux2014_x86_64"
    assert "--only-binary=:all:" in command and command[command.index("--target") + 1] == "/tmp/x"


def test_the_same_code_gives_the_same_package(tmp_path, package):
    again = aws_cli.build_lambda_package(tmp_path / "again.zip", lambda folder: (folder / "mangum").mkdir() or
                                         (folder / "mangum" / "__init__.py").write_text(""))
    assert again.read_bytes() == package.read_bytes()


def test_the_stack_is_found_in_the_session_account(aws, fresh_account):
    session, resources = aws_cli.stack_of(STACK, session=aws)
    assert session is aws and resources == StackResources(STACK, fresh_account, REGION)


def test_aws_refusals_are_said_without_a_traceback(aws, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert main(["aws", "destroy", "--stack-name", STACK, "--region", REGION]) == 1
    assert "AWS answered" in capsys.readouterr().err
