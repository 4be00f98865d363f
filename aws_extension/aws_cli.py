"""`sd-aws aws init | deploy | destroy | build-image`: a stack's AWS resources, found by its name.

- `init` creates what `sd-aws serve --backend aws` needs (tables, bucket, topics, events queue with its
  subscriptions and policy, the SageMaker state-change rules, the secrets), idempotently: for development
  against an emulator (`AWS_ENDPOINT_URL`) or an account.
- `deploy` packages the middleware for the Lambda runtime, uploads it to a bootstrap bucket and creates or
  updates the CloudFormation stack of `deploy/template.yaml`, with a progress bar of the stack's events.
- `destroy` empties the stack's bucket, then deletes the stack.
- `build-image` starts the stack's CodeBuild project (or `--local`: docker build + push) for the worker or
  webui image.

Every name comes from `StackResources` (aws_resources.py); every AWS call goes through boto3's standard
configuration (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL), so nothing here names an emulator.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aws_extension.middleware.aws_resources import DEFAULT_STACK_NAME, StackResources, check_stack_name

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "template.yaml"
PACKAGE_DIR = Path(__file__).resolve().parent
LAMBDA_PYTHON = "3.12"  # the template's Runtime: python3.12
LAMBDA_PLATFORM = "manylinux2014_x86_64"
# What the Lambda package leaves out: the worker's and UI's code needs torch/gradio, which it does not get.
LAMBDA_EXCLUDED_EXTRAS = ("worker", "ui", "test", "all")
POLL_S = 2.0
MAX_TEMPLATE_TTL_DAYS = 7  # the template's MultipartUploadTtlDays
FLAVOURS = ("worker", "webui")
STATE_CHANGES = {  # EventBridge detail-type → the detail field naming the resource (template: *StateRule)
    "endpoint-state": ("SageMaker Endpoint State Change", "EndpointName"),
    "training-job-state": ("SageMaker Training Job State Change", "TrainingJobName"),
}
EVENTS_QUEUE_ATTRIBUTES = {"VisibilityTimeout": "960", "MessageRetentionPeriod": "345600",
                           "SqsManagedSseEnabled": "true"}
DLQ_ATTRIBUTES = {"MessageRetentionPeriod": "1209600", "SqsManagedSseEnabled": "true"}
DLQ_MAX_RECEIVES = 5


class AwsCommandError(Exception):
    """A failure the user can act on (printed without a traceback)."""


# -- finding the stack --------------------------------------------------------------------------------------
def _session(region: str | None = None) -> Any:
    import boto3

    session = boto3.session.Session(region_name=region) if region else boto3.session.Session()
    if not session.region_name:
        raise AwsCommandError("no AWS region: pass --region or set AWS_REGION (or a profile's region).")
    return session


def stack_of(stack_name: str, region: str | None = None, session: Any = None) -> tuple[Any, StackResources]:
    """The session (default: boto3's standard configuration, `region` if given) and the names of stack
    `stack_name` in its account and region, found as the middleware finds them (`wiring.stack_resources`)."""
    from aws_extension.middleware.wiring import stack_resources
    from aws_extension.settings import MiddlewareSettings, load

    session = session or _session(region)
    return session, stack_resources(replace(load(MiddlewareSettings), stack_name=check_stack_name(stack_name)),
                                    session)


def _error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


# -- the template ---------------------------------------------------------------------------------------------
def template_resource_count(template: str) -> int:
    """How many resources the template declares (the progress bar's length; conditions aside)."""
    return len(re.findall(r"^  [A-Za-z0-9]+:\n    Type: AWS::", template, re.M))


def sagemaker_prefix(resources: StackResources) -> str:
    """How every SageMaker name of the stack starts (`<stack>--`; the template's IAM and rules use it)."""
    return resources.sagemaker_name("x").removesuffix("x")


def state_change_pattern(resources: StackResources, rule: str) -> dict[str, Any]:
    detail_type, field = STATE_CHANGES[rule]
    return {"source": ["aws.sagemaker"], "detail-type": [detail_type],
            "detail": {field: [{"prefix": sagemaker_prefix(resources)}]}}


def queue_policy(queue_arn: str, topic_arns: list[str], rule_arns: list[str]) -> dict[str, Any]:
    """Who may send to the events queue: the two topics and the state-change rules (template: EventsQueuePolicy)."""
    def allow(sid: str, service: str, sources: list[str]) -> dict[str, Any]:
        return {"Sid": sid, "Effect": "Allow", "Principal": {"Service": service}, "Action": "sqs:SendMessage",
                "Resource": queue_arn, "Condition": {"ArnEquals": {"aws:SourceArn": sources}}}
    return {"Version": "2012-10-17", "Statement": [
        allow("SageMakerNotifications", "sns.amazonaws.com", topic_arns),
        allow("SageMakerStateChanges", "events.amazonaws.com", rule_arns)]}


# -- init -------------------------------------------------------------------------------------------------------
@dataclass
class InitResult:
    resources: StackResources
    queue_url: str
    created_secrets: list[str]


def _queue(sqs: Any, name: str, attributes: dict[str, str]) -> str:
    try:
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except Exception as exc:
        if _error_code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def _secret(client: Any, name: str, description: str) -> bool:
    """Create the secret with a generated value unless it exists; True when created."""
    try:
        client.describe_secret(SecretId=name)
        return False
    except Exception as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
    value = client.get_random_password(PasswordLength=48, ExcludePunctuation=True)["RandomPassword"]
    client.create_secret(Name=name, Description=description, SecretString=value)
    return True


def init(stack_name: str, region: str | None = None, multipart_ttl_s: int | None = None,
         echo: Callable[[str], None] = print, session: Any = None) -> InitResult:
    """Create (or bring up to date) the resources `serve --backend aws` uses; safe to run again.
    `session`: a boto3 session (default: the standard configuration, `region` if given)."""
    from aws_extension.middleware.blobs.s3 import ensure_bucket
    from aws_extension.middleware.store.dynamodb import DynamoDBStore
    from aws_extension.settings import MiddlewareSettings, load

    session, resources = stack_of(stack_name, region, session)
    ttl = multipart_ttl_s or load(MiddlewareSettings).multipart_ttl_s
    DynamoDBStore(resources.table_prefix, session.client("dynamodb")).ensure_tables(poll_s=1.0)
    echo(f"tables: {resources.table_prefix}-*")
    ensure_bucket(session.client("s3"), resources.bucket, ttl)
    echo(f"bucket: {resources.bucket}")
    sns, sqs, events = session.client("sns"), session.client("sqs"), session.client("events")
    topics = [sns.create_topic(Name=name)["TopicArn"] for name in (resources.success_topic, resources.error_topic)]
    dlq_url = _queue(sqs, f"{resources.events_queue}-dlq", DLQ_ATTRIBUTES)
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": DLQ_MAX_RECEIVES})
    queue_url = _queue(sqs, resources.events_queue, {**EVENTS_QUEUE_ATTRIBUTES, "RedrivePolicy": redrive})
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rules = []
    for rule in STATE_CHANGES:
        name = f"{resources.stack_name}-{rule}"
        rules.append(events.put_rule(Name=name, EventPattern=json.dumps(state_change_pattern(resources, rule)),
                                     State="ENABLED")["RuleArn"])
        events.put_targets(Rule=name, Targets=[{"Id": "events-queue", "Arn": queue_arn}])
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(queue_policy(queue_arn, topics, rules))})
    for topic in topics:  # Subscribe answers the existing subscription when there is one
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, ReturnSubscriptionArn=True)
    echo(f"topics, events queue and rules: {resources.events_queue}")
    secrets = session.client("secretsmanager")
    created = [name for name, description in (
        (resources.api_key_secret, "The API key of this stack (X-API-Key)."),
        (resources.webhook_secret, "The HMAC key this stack signs its webhooks with."))
        if _secret(secrets, name, description)]
    echo(f"secrets: {resources.api_key_secret}, {resources.webhook_secret}"
         + (f" (created {len(created)})" if created else " (kept)"))
    echo(f"ready: SD_AWS_BACKEND=aws SD_AWS_STACK_NAME={resources.stack_name} sd-aws serve")
    return InitResult(resources=resources, queue_url=queue_url, created_secrets=created)


# -- the Lambda package -------------------------------------------------------------------------------------
def lambda_requirements(requirements: Iterable[str] | None = None) -> list[str]:
    """The run-time requirements of the Lambda code: the base install and every extra but the worker's,
    the UI's and the tests' (no torch, no gradio)."""
    from packaging.requirements import Requirement

    if requirements is None:
        requirements = importlib.metadata.requires("aws_extension") or []
    wanted: list[str] = []
    for text in requirements:
        requirement = Requirement(text)
        marker = str(requirement.marker or "")
        extras = re.findall(r'extra == "([^"]+)"', marker)
        if any(extra in LAMBDA_EXCLUDED_EXTRAS for extra in extras) or requirement.name == "aws_extension":
            continue
        line = f"{requirement.name}{requirement.specifier}"
        if line not in wanted:
            wanted.append(line)
    return wanted


def pip_command(target: Path, requirements: list[str]) -> list[str]:
    """pip installing `requirements` as wheels for the Lambda runtime (Linux x86_64, CPython 3.12)."""
    return [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target),
            "--platform", LAMBDA_PLATFORM, "--implementation", "cp", "--python-version", LAMBDA_PYTHON,
            "--only-binary=:all:", "--upgrade", *requirements]


def build_lambda_package(out: Path, install: Callable[[Path], None] | None = None) -> Path:
    """A zip of the `aws_extension` package and its run-time dependencies for the Lambda runtime.
    `install(folder)` puts the dependencies into the folder (default: pip, see `pip_command`)."""
    install = install or (lambda folder: subprocess.run(pip_command(folder, lambda_requirements()), check=True))
    with tempfile.TemporaryDirectory(prefix="sd-aws-lambda-") as tmp:
        root = Path(tmp)
        install(root)
        shutil.copytree(PACKAGE_DIR, root / "aws_extension", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    # Fixed times: the same code gives the same zip, hence the same key (no needless update).
                    info = zipfile.ZipInfo(str(path.relative_to(root)), date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = 0o644 << 16
                    archive.writestr(info, path.read_bytes(), zipfile.ZIP_DEFLATED)
    return out


def bootstrap_bucket(resources: StackResources) -> str:
    """Where `deploy` uploads the Lambda code (one per account and region, shared by its stacks)."""
    return f"sd-aws-bootstrap-{resources.account_id}-{resources.region}"


# -- following a stack --------------------------------------------------------------------------------------
TERMINAL = re.compile(r"_(COMPLETE|FAILED)$")
IN_PROGRESS = "_IN_PROGRESS"


def _stack(cf: Any, name: str) -> dict[str, Any] | None:
    try:
        return cf.describe_stacks(StackName=name)["Stacks"][0]
    except Exception as exc:
        if _error_code(exc) == "ValidationError" and "does not exist" in str(exc):
            return None
        raise


def follow_stack(cf: Any, name: str, since: float, total: int, poll_s: float = POLL_S,
                 stack_id: str | None = None) -> dict[str, Any] | None:
    """Show the stack's events after `since` as a progress bar (one step per resource that finished) until
    the stack is done; returns the stack (None once deleted)."""
    from tqdm import tqdm

    seen: set[str] = set()
    failures: list[str] = []
    with tqdm(total=total, unit="resource", desc=name, file=sys.stderr) as bar:
        while True:
            stack = _stack(cf, stack_id or name)
            events = cf.describe_stack_events(StackName=stack_id or name)["StackEvents"] if stack else []
            for event in reversed(events):
                if event["EventId"] in seen or event["Timestamp"].timestamp() < since - 1:
                    continue
                seen.add(event["EventId"])
                status = event["ResourceStatus"]
                if event["LogicalResourceId"] != name and TERMINAL.search(status):
                    bar.update(1)
                if status.endswith("_FAILED") and event.get("ResourceStatusReason"):
                    failures.append(f"{event['LogicalResourceId']}: {event['ResourceStatusReason']}")
                bar.set_postfix_str(f"{event['LogicalResourceId']} {status}", refresh=False)
            if stack is None or stack["StackStatus"] == "DELETE_COMPLETE":
                bar.n = bar.total
                return None
            if not stack["StackStatus"].endswith(IN_PROGRESS):
                bar.n = bar.total if stack["StackStatus"].endswith("COMPLETE") else bar.n
                bar.refresh()
                break
            time.sleep(poll_s)
    if stack["StackStatus"].endswith(("FAILED", "ROLLBACK_COMPLETE")):
        reasons = "; ".join(failures[:5]) or stack.get("StackStatusReason") or "see the stack's events"
        raise AwsCommandError(f"stack {name} ended {stack['StackStatus']}: {reasons}")
    return stack


def _outputs(stack: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


# -- deploy ---------------------------------------------------------------------------------------------------
@dataclass
class Deployment:
    resources: StackResources
    api_url: str | None
    key_command: str
    status: str


def key_command(resources: StackResources) -> str:
    return (f"aws secretsmanager get-secret-value --region {resources.region} --secret-id "
            f"{resources.api_key_secret} --query SecretString --output text")


def deploy(stack_name: str, region: str | None = None, worker_image: str | None = None,
           source_repository: str | None = None, package: Path | None = None, show_key: bool = False,
           poll_s: float = POLL_S, echo: Callable[[str], None] = print) -> Deployment:
    from aws_extension.middleware.blobs.s3 import ensure_bucket, multipart_expiry_days
    from aws_extension.settings import MiddlewareSettings, load

    session, resources = stack_of(stack_name, region)
    if not TEMPLATE.is_file():
        raise AwsCommandError(f"{TEMPLATE} is missing: run `sd-aws aws deploy` from a checkout of the repository.")
    settings = load(MiddlewareSettings)
    ttl_days = multipart_expiry_days(settings.multipart_ttl_s)
    if ttl_days > MAX_TEMPLATE_TTL_DAYS:
        raise AwsCommandError(f"SD_AWS_MULTIPART_TTL_S={settings.multipart_ttl_s} is {ttl_days} days; the "
                              f"stack aborts incomplete uploads after 1 to {MAX_TEMPLATE_TTL_DAYS} days.")
    template = TEMPLATE.read_text()
    with tempfile.TemporaryDirectory(prefix="sd-aws-deploy-") as tmp:
        if package is None:
            echo("packaging the middleware for the Lambda runtime (pip, manylinux2014_x86_64, CPython 3.12)")
            package = build_lambda_package(Path(tmp) / "lambda.zip")
        code = package.read_bytes()
    key = f"{resources.stack_name}/lambda-{hashlib.sha256(code).hexdigest()[:20]}.zip"
    s3 = session.client("s3")
    bucket = bootstrap_bucket(resources)
    ensure_bucket(s3, bucket, settings.multipart_ttl_s)
    s3.put_object(Bucket=bucket, Key=key, Body=code)
    echo(f"uploaded the Lambda code ({len(code) / 2**20:.1f} MiB) to s3://{bucket}/{key}")
    parameters = {"LambdaCodeBucket": bucket, "LambdaCodeKey": key, "WorkerImage": worker_image or "",
                  "MultipartUploadTtlDays": str(ttl_days), "SourceRepositoryUrl": source_repository or ""}
    cf = session.client("cloudformation")
    arguments = {"StackName": resources.stack_name, "TemplateBody": template,
                 "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
                 "Capabilities": ["CAPABILITY_NAMED_IAM"], "Tags": [{"Key": "sd-aws:stack", "Value": stack_name}]}
    existing = _stack(cf, resources.stack_name)
    if existing and existing["StackStatus"] == "ROLLBACK_COMPLETE":
        raise AwsCommandError(f"stack {stack_name} failed to create before (ROLLBACK_COMPLETE): run "
                              f"`sd-aws aws destroy --stack-name {stack_name}` first, then deploy again.")
    since = time.time()
    total = template_resource_count(template)
    try:
        if existing:
            cf.update_stack(**arguments)
        else:
            stack_id = cf.create_stack(**arguments)["StackId"]
            existing = {"StackId": stack_id}
        stack = follow_stack(cf, resources.stack_name, since, total, poll_s, existing["StackId"])
    except Exception as exc:
        if "No updates are to be performed" not in str(exc):
            raise
        echo("the stack is up to date")
        stack = _stack(cf, resources.stack_name)
    assert stack is not None
    outputs = _outputs(stack)
    deployment = Deployment(resources=resources, api_url=outputs.get("ApiUrl"), key_command=key_command(resources),
                            status=stack["StackStatus"])
    echo(f"stack {stack_name}: {deployment.status}")
    echo(f"API URL: {deployment.api_url}")
    if show_key:
        from aws_extension.middleware.wiring import stack_secret

        echo(f"API key: {stack_secret(session, resources.api_key_secret)}")
    else:
        echo(f"API key: {deployment.key_command}")
    echo("Paste both into the WebUI extension's settings.")
    return deployment


# -- destroy --------------------------------------------------------------------------------------------------
def empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every object version, delete marker and unfinished multipart upload; returns the count."""
    removed = 0
    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            batch = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                     for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            for start in range(0, len(batch), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": batch[start:start + 1000], "Quiet": True})
            removed += len(batch)
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                removed += 1
    except Exception as exc:
        if _error_code(exc) != "NoSuchBucket":
            raise
    return removed


def destroy(stack_name: str, region: str | None = None, poll_s: float = POLL_S,
            echo: Callable[[str], None] = print) -> None:
    session, resources = stack_of(stack_name, region)
    cf = session.client("cloudformation")
    stack = _stack(cf, resources.stack_name)
    if stack is None:
        raise AwsCommandError(f"there is no stack {stack_name} in {resources.region}.")
    removed = empty_bucket(session.client("s3"), resources.bucket)
    echo(f"emptied s3://{resources.bucket} ({removed} objects and uploads)")
    since = time.time()
    cf.delete_stack(StackName=stack["StackId"])
    follow_stack(cf, resources.stack_name, since, template_resource_count(TEMPLATE.read_text()), poll_s,
                 stack["StackId"])
    echo(f"stack {stack_name} deleted")


# -- build-image ----------------------------------------------------------------------------------------------
def image_uri(resources: StackResources, flavour: str, tag: str) -> str:
    return (f"{resources.account_id}.dkr.ecr.{resources.region}.amazonaws.com/"
            f"{resources.ecr_repository}:{flavour}-{tag}")


def build_image(stack_name: str, flavour: str, region: str | None = None, tag: str | None = None,
                source_version: str | None = None, local: bool = False, poll_s: float = 5.0,
                echo: Callable[[str], None] = print) -> str:
    """Build the worker or webui image and push it to the stack's repository; returns its URI."""
    if flavour not in FLAVOURS:
        raise AwsCommandError(f"--flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}.")
    session, resources = stack_of(stack_name, region)
    tag = tag or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    uri = image_uri(resources, flavour, tag)
    if local:
        _build_locally(session, flavour, uri, echo)
    else:
        _build_on_codebuild(session, resources, flavour, tag, source_version, poll_s, echo)
    echo(f"image: {uri}")
    echo(f"use it: sd-aws aws deploy --stack-name {stack_name} --worker-image {uri}")
    return uri


def _build_locally(session: Any, flavour: str, uri: str, echo: Callable[[str], None]) -> None:
    import base64

    docker = shutil.which("docker")
    if not docker:
        raise AwsCommandError("--local needs Docker (no `docker` on PATH); without it, leave out --local to "
                              "build on the stack's CodeBuild project.")
    root = PACKAGE_DIR.parent
    dockerfile = root / "deploy" / f"{flavour}.Dockerfile"
    if not dockerfile.is_file():
        raise AwsCommandError(f"{dockerfile} is missing: --local builds from a checkout of the repository.")
    token = session.client("ecr").get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    registry = uri.split("/", 1)[0]
    subprocess.run([docker, "login", "--username", user, "--password-stdin", registry], input=password.encode(),
                   check=True, stdout=subprocess.DEVNULL)
    echo(f"docker build -f {dockerfile.relative_to(root)} -t {uri} .")
    subprocess.run([docker, "build", "-f", str(dockerfile), "-t", uri, str(root)], check=True)
    subprocess.run([docker, "push", uri], check=True)


BUILD_PHASES = ("SUBMITTED", "QUEUED", "PROVISIONING", "DOWNLOAD_SOURCE", "INSTALL", "PRE_BUILD", "BUILD",
                "POST_BUILD", "UPLOAD_ARTIFACTS", "FINALIZING", "COMPLETED")


def _build_on_codebuild(session: Any, resources: StackResources, flavour: str, tag: str,
                        source_version: str | None, poll_s: float, echo: Callable[[str], None]) -> None:
    from tqdm import tqdm

    codebuild = session.client("codebuild")
    project = resources.image_build_project
    arguments: dict[str, Any] = {"projectName": project, "environmentVariablesOverride": [
        {"name": "FLAVOUR", "value": flavour, "type": "PLAINTEXT"},
        {"name": "IMAGE_TAG", "value": tag, "type": "PLAINTEXT"}]}
    if source_version:
        arguments["sourceVersion"] = source_version
    try:
        build = codebuild.start_build(**arguments)["build"]
    except Exception as exc:
        if _error_code(exc) == "ResourceNotFoundException":
            raise AwsCommandError(f"the stack has no CodeBuild project {project}: deploy it with "
                                  "--source-repository URL (or build with --local).") from None
        raise
    echo(f"CodeBuild build {build['id']}")
    with tqdm(total=len(BUILD_PHASES), unit="phase", desc=f"{flavour} image", file=sys.stderr) as bar:
        while True:
            build = codebuild.batch_get_builds(ids=[build["id"]])["builds"][0]
            done = [p for p in build.get("phases", []) if p.get("phaseStatus")]
            bar.n = min(len(done), bar.total)
            bar.set_postfix_str(build.get("currentPhase", ""), refresh=True)
            if build["buildStatus"] != "IN_PROGRESS":
                break
            time.sleep(poll_s)
    if build["buildStatus"] != "SUCCEEDED":
        failed = [f"{p['phaseType']}: {'; '.join(c.get('message', '') for c in p.get('contexts', []))}"
                  for p in build.get("phases", []) if p.get("phaseStatus") not in (None, "SUCCEEDED")]
        logs = build.get("logs", {}).get("deepLink", "the build's CloudWatch logs")
        raise AwsCommandError(f"the image build ended {build['buildStatus']} ({'; '.join(failed) or 'no reason'}); "
                              f"see {logs}")


# -- the command line ---------------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """`sd-aws aws ...` (cli.py registers it)."""
    aws = sub.add_parser("aws", help="the AWS stack: init, deploy, destroy, build-image").add_subparsers(
        dest="action", required=True)
    default = os.environ.get("SD_AWS_STACK_NAME", DEFAULT_STACK_NAME)

    def stack_flags(p: Any) -> None:
        p.add_argument("--stack-name", default=default, help=f"the stack (env SD_AWS_STACK_NAME, default {default})")
        p.add_argument("--region", help="AWS region (default: AWS_REGION / the profile's)")

    p = aws.add_parser("init", help="create the resources `serve --backend aws` needs (idempotent)")
    stack_flags(p)
    p = aws.add_parser("deploy", help="package the middleware and create or update the CloudFormation stack")
    stack_flags(p)
    p.add_argument("--worker-image", help="ECR URI of the worker image SageMaker endpoints run")
    p.add_argument("--source-repository", help="public git URL of this repository: adds the CodeBuild project")
    p.add_argument("--package", type=Path, help="a Lambda code zip built before (default: build one with pip)")
    p.add_argument("--show-key", action="store_true", help="print the API key itself, not how to read it")
    p = aws.add_parser("destroy", help="empty the stack's bucket and delete the stack")
    stack_flags(p)
    p = aws.add_parser("build-image", help="build the worker or webui image and push it to the stack's ECR repository")
    stack_flags(p)
    p.add_argument("--flavour", choices=FLAVOURS, default="worker")
    p.add_argument("--tag", help="image tag suffix (default: the UTC time)")
    p.add_argument("--source-version", help="git ref CodeBuild builds (default: the project's default branch)")
    p.add_argument("--local", action="store_true", help="docker build + push here instead of CodeBuild")


def run(args: Any) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        check_stack_name(args.stack_name)  # before any AWS call
        if args.action == "init":
            init(args.stack_name, args.region)
        elif args.action == "deploy":
            deploy(args.stack_name, args.region, args.worker_image, args.source_repository, args.package,
                   args.show_key)
        elif args.action == "destroy":
            destroy(args.stack_name, args.region)
        else:
            build_image(args.stack_name, args.flavour, args.region, args.tag, args.source_version, args.local)
    except (AwsCommandError, ValueError) as exc:
        print(f"sd-aws aws {args.action}: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError) as exc:  # no credentials, access denied, a stack busy updating...
        print(f"sd-aws aws {args.action}: AWS answered: {exc}", file=sys.stderr)
        return 1
    return 0
