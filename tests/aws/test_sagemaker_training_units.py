"""The aws backend's training pieces that need no trainer: the Lambda's `prepare-model` task and its launcher,
and how SageMaker's training job states become the reports of `SageMakerTraining` (in-process moto)."""

from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from moto import mock_aws

from aws_extension.middleware import lambda_entry
from aws_extension.middleware.aws_resources import StackResources
from aws_extension.middleware.blobs.s3 import S3BlobStore
from aws_extension.middleware.compute.sagemaker.training import SageMakerTraining
from aws_extension.middleware.records import TrainingJob
from aws_extension.middleware.wiring import _preparation_launcher
from aws_extension.settings import MiddlewareSettings, load
from aws_extension.vocabulary import TrainingStatus
from tests.aws.test_lambda_entry import LambdaContext, container  # noqa: F401 - the fixture

REGION = "us-east-1"


def test_a_prepare_model_task_runs_the_preparation_within_the_invocations_time(container, monkeypatch):  # noqa: F811
    calls = []
    monkeypatch.setattr(container.services.training_models, "prepare",
                        lambda model_id, checkpoint_wait_s: calls.append((model_id, checkpoint_wait_s)))
    event = {"sd_aws_task": "prepare-model", "model_id": "m-1"}
    assert lambda_entry.event_kind(event) == "prepare-model"
    container.handle(event, LambdaContext(remaining_ms=120_000))
    assert calls == [("m-1", 120.0 - lambda_entry.PREPARATION_MARGIN_S)]
    with pytest.raises(ValueError):
        lambda_entry.event_kind({"sd_aws_task": "prepare-model"})  # no model named


def test_preparations_are_invoked_asynchronously_only_under_lambda_on_aws(monkeypatch, tmp_path):
    settings = load(MiddlewareSettings, data_dir=tmp_path)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert _preparation_launcher(dataclasses.replace(settings, backend="aws")) is None
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sd-aws-api")
    assert _preparation_launcher(dataclasses.replace(settings, backend="local")) is None
    invoked = []

    class Lambda:
        def invoke(self, **call):
            invoked.append(call)

    monkeypatch.setattr(boto3, "client", lambda service: Lambda() if service == "lambda" else None)
    _preparation_launcher(dataclasses.replace(settings, backend="aws"))("m-2")
    (call,) = invoked
    assert (call["FunctionName"], call["InvocationType"]) == ("sd-aws-api", "Event")
    assert json.loads(call["Payload"]) == {"sd_aws_task": "prepare-model", "model_id": "m-2"}


class Reports:
    def __init__(self):
        self.ended = []

    def run_ended(self, job_id, ended):
        self.ended.append((job_id, ended))


@pytest.fixture
def training(tmp_path):
    with mock_aws():
        resources = StackResources("st", "123456789012", REGION)
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=resources.bucket)
        blobs = S3BlobStore(resources.bucket, client=s3, signed_url_ttl_s=600, min_part_bytes=5 << 20,
                            max_parts=100, max_part_bytes=5 << 30, max_put_bytes=5 << 30)
        settings = dataclasses.replace(load(MiddlewareSettings, data_dir=tmp_path), worker_image="w:t")
        compute = SageMakerTraining(blobs, resources, settings, boto3.Session(region_name=REGION))
        reports = Reports()
        compute.start(reports)
        yield compute, reports


def _event(name: str, status: str, secondary: str, stack: str = "st", **detail) -> dict:
    return {"source": "aws.sagemaker", "detail-type": "SageMaker Training Job State Change", "detail": {
        "TrainingJobName": name, "TrainingJobStatus": status, "SecondaryStatus": secondary,
        "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}",
        "Tags": {"sd-aws:stack": stack, "sd-aws:training-job": "job-1"}, **detail}}


@pytest.mark.parametrize(("status", "secondary", "detail", "expect"), [
    ("Completed", "Completed", {"ModelArtifacts": {"S3ModelArtifacts": "s3://b/m.tar.gz"}},
     {"completed": True, "model": "s3://b/m.tar.gz"}),
    ("Failed", "Failed", {"FailureReason": "dataset: broken.png is not an image"},
     {"failure": "dataset: broken.png is not an image"}),
    ("Stopped", "Stopped", {}, {"stopped": True}),
    ("Stopped", "MaxRuntimeExceeded", {}, {"death": "SageMaker ended the training job st--abc-1 (Stopped, "
                                                    "MaxRuntimeExceeded)"}),
], ids=["completed", "failed", "stopped-by-user", "stopped-by-sagemaker"])
def test_state_changes_become_reports(training, status, secondary, detail, expect):
    compute, reports = training
    compute.handle_event(_event("st--abc-1", status, secondary, **detail))
    ((job_id, ended),) = reports.ended
    assert job_id == "job-1" and ended.run_name == "st--abc-1"
    assert {k: getattr(ended, k) for k in expect} == expect
    assert [ended.completed, bool(ended.failure), ended.stopped].count(True) <= 1


def test_running_states_and_other_stacks_jobs_report_nothing(training):
    compute, reports = training
    compute.handle_event(_event("st--abc-1", "InProgress", "Training"))
    compute.handle_event(_event("other--abc-1", "Failed", "Failed"))
    compute.handle_event(_event("st--abc-1", "Failed", "Failed", stack="other"))
    assert reports.ended == []


def test_a_refused_job_is_reported_as_a_failure_and_a_name_is_new_per_run(training):
    compute, reports = training
    names = {compute.new_run_name("0a1b2c3d-0000-4000-8000-000000000000") for _ in range(3)}
    assert all(n.startswith("st--0a1b2c3d00004000-") and len(n) <= 63 for n in names)
    job = TrainingJob(id="job-1", train_type="Lora", status=TrainingStatus.TRAINING, created=0, model_id="m",
                      dataset_name="d", instance_type="ml.g5.xlarge", params={}, hyperparameters={},
                      model_name="x", run_name="st--abc-1")
    compute.settings = dataclasses.replace(compute.settings, worker_image=None)
    from aws_extension.middleware.compute.base import ChannelFile, TrainingRun

    compute.submit(TrainingRun("job-1", {}, ChannelFile("models/S/c/b.safetensors", "b.safetensors"), [], [],
                               "ml.g5.xlarge", run_name="st--abc-1"))
    ((_, ended),) = reports.ended
    assert "SD_AWS_WORKER_IMAGE" in ended.failure
    assert compute.is_running(job) is False  # SageMaker never heard of it


def test_a_channel_of_several_concepts_is_copied_under_the_job_and_one_dataset_is_listed_where_it_is(training):
    from aws_extension.middleware.compute.base import ChannelFile

    compute, _ = training
    for key in ("dataset/reds/a.png", "dataset/blues/b.png", "dataset/blues/b.txt"):
        with compute.blobs.writer(key) as out:
            out.write(key.encode())
    one = compute._channel("job-1", "instance", [ChannelFile("dataset/blues/b.png", "b.png"),
                                                 ChannelFile("dataset/blues/b.txt", "b.txt")])
    manifest = json.loads(compute.blobs.read(one["DataSource"]["S3DataSource"]["S3Uri"].split("/", 3)[3]))
    assert manifest == [{"prefix": compute.blobs.uri("dataset/blues") + "/"}, "b.png", "b.txt"]
    several = compute._channel("job-2", "instance", [ChannelFile("dataset/reds/a.png", "0/a.png"),
                                                     ChannelFile("dataset/blues/b.png", "1/b.png")])
    manifest = json.loads(compute.blobs.read(several["DataSource"]["S3DataSource"]["S3Uri"].split("/", 3)[3]))
    assert manifest == [{"prefix": compute.blobs.uri("training/job-2/input/instance") + "/"}, "0/a.png", "1/b.png"]
    assert compute.blobs.read("training/job-2/input/instance/1/b.png") == b"dataset/blues/b.png"
