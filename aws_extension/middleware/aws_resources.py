"""The AWS resources of one stack, every name derived from the stack name.

`deploy/template.yaml`, `sd-aws aws init|deploy|destroy`, `sd-aws serve --backend aws` and the Lambda
functions all find a stack's resources through this one class, so `init` then `serve --backend aws` with the
same `SD_AWS_STACK_NAME` work together, and several stacks fit in one account and region. The template
writes the same names with `!Sub "${AWS::StackName}-..."`; a test checks that the two agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# CloudFormation allows [A-Za-z][-A-Za-z0-9]* up to 128; S3 bucket names are lowercase and at most 63 long,
# and the bucket's name carries the account (12 digits) and the region (up to 14), so the stack name is
# lowercase and at most 30 long.
STACK_NAME = re.compile(r"^[a-z][a-z0-9-]{0,29}$")
DEFAULT_STACK_NAME = "sd-aws"


def check_stack_name(name: str) -> str:
    if not isinstance(name, str) or not STACK_NAME.match(name) or name.endswith("-") or "--" in name:
        raise ValueError(f"stack name {name!r} must be 1-30 lowercase letters, digits and single hyphens, "
                         "starting with a letter and not ending with a hyphen")
    return name


@dataclass(frozen=True)
class StackResources:
    stack_name: str
    account_id: str
    region: str

    def __post_init__(self) -> None:
        check_stack_name(self.stack_name)

    @property
    def table_prefix(self) -> str:
        """DynamoDB tables are `<prefix>-<table>` (`DynamoDBStore(table_prefix)`), e.g. `sd-aws-checkpoints`."""
        return self.stack_name

    @property
    def bucket(self) -> str:
        """Every blob: models, datasets, job requests, images, results (bucket names are global)."""
        return f"{self.stack_name}-{self.account_id}-{self.region}"

    @property
    def success_topic(self) -> str:
        """SNS topic of SageMaker's asynchronous inference successes."""
        return f"{self.stack_name}-inference-success"

    @property
    def error_topic(self) -> str:
        """SNS topic of SageMaker's asynchronous inference failures."""
        return f"{self.stack_name}-inference-error"

    @property
    def events_queue(self) -> str:
        """SQS queue of everything compute reports: both topics' notifications and the EventBridge
        SageMaker state-change events. The Lambda consumes it; `serve --backend aws` long-polls it."""
        return f"{self.stack_name}-events"

    @property
    def api_key_secret(self) -> str:
        """Secrets Manager secret holding the bootstrap API key."""
        return f"{self.stack_name}/api-key"

    @property
    def webhook_secret(self) -> str:
        """Secrets Manager secret holding the webhooks' HMAC key."""
        return f"{self.stack_name}/webhook-secret"

    @property
    def sagemaker_role(self) -> str:
        """The execution role SageMaker models and training jobs run as (reads/writes this stack's bucket)."""
        return f"{self.stack_name}-sagemaker"

    @property
    def sagemaker_role_arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/{self.sagemaker_role}"

    @property
    def ecr_repository(self) -> str:
        """Where `sd-aws aws build-image` pushes the worker and webui images."""
        return f"{self.stack_name}-worker"

    @property
    def api_function(self) -> str:
        """The Lambda function serving the API and the background events."""
        return f"{self.stack_name}-api"

    @property
    def image_build_project(self) -> str:
        """The CodeBuild project that builds the images."""
        return f"{self.stack_name}-image-build"

    def sagemaker_name(self, endpoint_name: str) -> str:
        """The SageMaker model, endpoint config and endpoint of an API endpoint are all named this
        (SageMaker's names: at most 63 characters of letters, digits and hyphens). A stack name never holds
        `--`, so the first `--` ends it: stack `sd` with endpoint `aws-x` and stack `sd-aws` with endpoint `x`
        get different names."""
        name = f"{self.stack_name}--{endpoint_name}"
        if len(name) > 63 or not re.fullmatch(r"[A-Za-z0-9](-*[A-Za-z0-9])*", name):
            raise ValueError(f"endpoint name {endpoint_name!r} makes the SageMaker name {name!r}, which must be "
                             "at most 63 letters, digits and single hyphens")
        return name
