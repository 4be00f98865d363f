"""The tests of the AWS tooling run on the session's one moto server (`moto_server`, tests/conftest.py).
They never reset it (`aws_cloud`'s stacks live there too): each test that needs a clean account gets one of
its own (`fresh_account`), as moto keeps every account's resources apart."""

from __future__ import annotations

import uuid

import boto3
import pytest

REGION = "us-east-1"


@pytest.fixture
def fresh_account(moto_server, monkeypatch) -> str:
    """Credentials of a new, empty account on moto's server (STS AssumeRole into it) in the environment,
    with AWS_ENDPOINT_URL and the region: boto3's standard configuration reaches only that account.
    Returns the account's id."""
    account = str(uuid.uuid4().int)[:12]  # 38 digits, the first never 0
    sts = boto3.client("sts", endpoint_url=moto_server, region_name=REGION, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    credentials = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/tests",
                                  RoleSessionName="tests")["Credentials"]
    for name, value in {"AWS_ENDPOINT_URL": moto_server, "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
                        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
                        "AWS_SESSION_TOKEN": credentials["SessionToken"], "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_REGION", "SD_AWS_STACK_NAME"):
        monkeypatch.delenv(name, raising=False)
    return account
