"""Jobs on SageMaker asynchronous endpoints (the aws backend), where they differ from local compute: the
request object and InvokeEndpointAsync, progress and cancel through signed URLs, notifications (duplicate,
late, unknown, failed), a notification that never comes, and a middleware restart with results waiting in
the events queue. The API behaviour both backends share is tested by the parametrised API tests."""

from __future__ import annotations

import json
import signal
import time

import pytest
import requests

from aws_extension.client import MiddlewareClient
from aws_extension.middleware.compute.sagemaker.notifications import UnknownEvent, inference_result, unwrap
from aws_extension.wire import InvocationRequest, JobProgress
from tests.aws_stack import INSTANCE_TYPE, start_aws_middleware
from tests.inference.conftest import SEED_MODEL, TEST_ENV, deploy, register_tiny_models

API_KEY = "sagemaker-key"
ENDPOINT = "async-one"
QUICK = {"task_type": "txt2img", "models": {"Stable-diffusion": [SEED_MODEL]}, "width": 64, "height": 64,
         "steps": 2, "prompt": "quick", "sagemaker_endpoint_name": ENDPOINT}
INVOCATION_TIMEOUT_S = 600


def _start(cloud, tmp, env=None, stack_name=None):
    server, resources = start_aws_middleware(cloud, tmp / "data", API_KEY, {
        **TEST_ENV, "SD_AWS_INVOCATION_TIMEOUT_S": str(INVOCATION_TIMEOUT_S), **(env or {})}, stack_name=stack_name)
    return server, resources, MiddlewareClient(server.url, API_KEY, timeout_s=60)


@pytest.fixture(scope="module")
def sm(aws_cloud, tmp_path_factory, tiny_models_dir):
    tmp = tmp_path_factory.mktemp("sagemaker-jobs")
    server, resources, client = _start(aws_cloud, tmp)
    try:
        register_tiny_models(client, tiny_models_dir, tmp)
        deploy(client, ENDPOINT, instance_type=INSTANCE_TYPE)
        yield server, resources, client
    finally:
        server.stop()


def _queue_drained(cloud, resources, timeout_s: float = 30) -> None:
    """Wait until the middleware has handled (and deleted) every message of the stack's events queue."""
    sqs = cloud.client("sqs")
    url = cloud.events_queues[resources.stack_name]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        if counts["ApproximateNumberOfMessages"] == "0" and counts["ApproximateNumberOfMessagesNotVisible"] == "0":
            return
        time.sleep(0.2)
    raise AssertionError(f"the events queue still holds messages: {counts}")


def test_the_request_object_and_the_invocation(aws_cloud, sm):
    _, resources, client = sm
    with aws_cloud.holding():
        job_id = client.create_inference(QUICK)["inference_id"]
        invocation = aws_cloud.wait_for(job_id)
        assert invocation.endpoint_name == resources.sagemaker_name(ENDPOINT)
        assert invocation.input_location == f"s3://{resources.bucket}/out/{job_id}/invocation.json"
        assert invocation.invocation_timeout_s == INVOCATION_TIMEOUT_S
        request = InvocationRequest.from_json(aws_cloud.request_of(job_id))  # exactly what the worker parses
        assert request.job_id == job_id and request.task == "txt2img" and request.params_url
        assert [m.name for m in request.models] == [SEED_MODEL] and len(request.output.image_urls) == 1
        assert request.progress_url and request.cancel_url
        assert requests.get(request.cancel_url, timeout=10).status_code == 404  # nobody asked to cancel
        record = client.inference_job(job_id)
        assert record["status"] == "inprogress" and record["queue_position"] == 0 and record["progress"] == 0
        aws_cloud.release(job_id)
    job = client.wait_for_job(job_id, timeout_s=300)
    assert job["status"] == "succeed" and job["progress"] == 1.0 and job["attempts"] == 1, job
    assert json.loads(job["sagemakerRaw"])["image_count"] == 1


def test_progress_from_the_worker_marks_the_job_running(aws_cloud, sm):
    _, _, client = sm
    with aws_cloud.holding():
        first = client.create_inference({**QUICK, "seed": 1})["inference_id"]
        second = client.create_inference({**QUICK, "seed": 2})["inference_id"]
        aws_cloud.wait_for(second)
        assert client.inference_job(second)["queue_position"] == 1  # the first is not known to have started
        request = aws_cloud.request_of(first)
        started = time.time() - 3
        report = JobProgress(job_id=first, step=3, total=12, started=started, updated=time.time(), worker="instance-7")
        assert requests.put(request["progress_url"], data=json.dumps(report.to_json()), timeout=10).status_code == 200
        running = client.inference_job(first)  # read on describe
        assert running["status"] == "inprogress" and running["progress"] == 0.25 and running["queue_position"] is None
        assert client.inference_job(second)["queue_position"] == 0
        for job_id in (first, second):
            aws_cloud.release(job_id)
    for job_id in (first, second):
        job = client.wait_for_job(job_id, timeout_s=300)
        assert job["status"] == "succeed", job
    assert job["timings"]["queued_s"] >= 0


def test_a_job_cancelled_in_sagemakers_queue_never_runs(aws_cloud, sm):
    _, resources, client = sm
    with aws_cloud.holding():
        job_id = client.create_inference(QUICK)["inference_id"]
        invocation = aws_cloud.wait_for(job_id)
        assert client.cancel_inference(job_id)["status"] == "cancelled"  # waiting: at once
        cancel_url = aws_cloud.request_of(job_id)["cancel_url"]
        assert requests.get(cancel_url, timeout=10).status_code == 200  # what the worker reads
        aws_cloud.release(job_id)  # SageMaker delivers it anyway: the worker stops before it starts
    assert invocation.done.wait(120)
    _queue_drained(aws_cloud, resources)
    job = client.inference_job(job_id)
    assert job["status"] == "cancelled" and job["error"] == "Cancelled by the user.", job
    failure = aws_cloud.client("s3").get_object(Bucket=resources.bucket,
                                                Key=invocation.failure_location.split("/", 3)[3])
    assert json.loads(failure["Body"].read())["status"] == "cancelled"  # the worker's answer (409)


def test_duplicate_late_and_unknown_messages_change_nothing(aws_cloud, sm):
    _, resources, client = sm
    with aws_cloud.holding():
        job_id = client.create_inference(QUICK)["inference_id"]
        invocation = aws_cloud.wait_for(job_id)
        aws_cloud.release(job_id)
    job = client.wait_for_job(job_id, timeout_s=300)
    assert job["status"] == "succeed"
    sqs = aws_cloud.client("sqs")
    url = aws_cloud.events_queues[resources.stack_name]
    aws_cloud.finish(invocation, 200, json.dumps({"status": "succeed", "job_id": job_id, "image_count": 9}).encode())
    aws_cloud.finish(invocation, 500, b"late failure", reason="ClientError: late")
    for body in ("not json", "[1, 2]", json.dumps({"hello": "world"}),
                 json.dumps({"Type": "Notification", "Message": "{broken"})):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    _queue_drained(aws_cloud, resources)
    assert client.inference_job(job_id) == job
    after = client.wait_for_job(client.create_inference(QUICK)["inference_id"], timeout_s=300)
    assert after["status"] == "succeed"  # nothing is stuck behind them


def test_a_failed_invocation_fails_the_job_with_the_reason(aws_cloud, sm):
    _, _, client = sm
    with aws_cloud.holding():
        answered = client.create_inference({**QUICK, "seed": 1})["inference_id"]
        crashed = client.create_inference({**QUICK, "seed": 2})["inference_id"]
        aws_cloud.wait_for(crashed)
        for job_id in (answered, crashed):
            aws_cloud.drop(job_id)
    aws_cloud.finish(aws_cloud.invocations[answered], 400, json.dumps(
        {"status": "failed", "job_id": answered, "error": "steps: the engine refused it"}).encode())
    aws_cloud.finish(aws_cloud.invocations[crashed], 500, b"<html>Internal Server Error</html>",
                     reason="ClientError: Received server error (500) from primary.")
    assert client.wait_for_job(answered, 60)["error"] == "steps: the engine refused it"
    failed = client.wait_for_job(crashed, 60)
    assert failed["status"] == "failed" and failed["error"].startswith("ClientError: Received server error (500)")


def test_an_instance_type_sagemaker_does_not_offer_is_refused_at_the_door(sm):
    server, _, client = sm
    before = len(client.list_endpoints())
    response = requests.post(f"{server.url}/endpoints", headers={"x-api-key": API_KEY}, timeout=10,
                             json={"instance_type": "local", "initial_instance_count": 1, "endpoint_name": "nowhere"})
    assert response.status_code == 400 and "'local' is not offered" in response.json()["error"], response.text
    # a type SageMaker has, but not in this region (the stack's region, us-east-1: no ml.p5e outside capacity blocks)
    elsewhere = requests.post(f"{server.url}/endpoints", headers={"x-api-key": API_KEY}, timeout=10, json={
        "instance_type": "ml.p5e.48xlarge", "initial_instance_count": 1, "endpoint_name": "nowhere"})
    error = elsewhere.json()["error"]
    assert elsewhere.status_code == 400 and "in us-east-1" in error and "ml.g5.xlarge" in error, elsewhere.text
    assert len(client.list_endpoints()) == before  # no record was made


def test_a_job_sagemaker_refuses_fails_at_once(aws_cloud, sm):
    _, resources, client = sm
    deploy(client, "vanishing", instance_type=INSTANCE_TYPE)
    aws_cloud.client("sagemaker").delete_endpoint(EndpointName=resources.sagemaker_name("vanishing"))
    job = client.inference_job(client.create_inference({**QUICK, "sagemaker_endpoint_name": "vanishing"})["inference_id"])
    assert job["status"] == "failed" and job["error"].startswith("SageMaker refused the job: ValidationError"), job


def test_a_job_whose_notification_never_comes_is_failed(aws_cloud, tmp_path, tiny_models_dir):
    server, _, client = _start(aws_cloud, tmp_path, {
        "SD_AWS_INVOCATION_TIMEOUT_S": "1", "SD_AWS_SAGEMAKER_NOTIFICATION_MARGIN_S": "0",
        "SD_AWS_SAGEMAKER_REAP_INTERVAL_S": "0.5"})
    try:
        register_tiny_models(client, tiny_models_dir, tmp_path)
        deploy(client, "forgetful", instance_type=INSTANCE_TYPE)
        with aws_cloud.holding():
            job_id = client.create_inference({**QUICK, "sagemaker_endpoint_name": "forgetful"})["inference_id"]
            invocation = aws_cloud.wait_for(job_id)
            assert (invocation.invocation_timeout_s, invocation.request_ttl_s) == (1, 21600)
            request = aws_cloud.request_of(job_id)
            report = JobProgress(job_id=job_id, step=0, total=0, started=time.time(), updated=time.time(), worker="i")
            requests.put(request["progress_url"], data=json.dumps(report.to_json()), timeout=10).raise_for_status()
            aws_cloud.drop(job_id)  # its instance started it, then SageMaker lost it
        job = client.wait_for_job(job_id, timeout_s=60)
        assert job["status"] == "failed" and job["error"].startswith("SageMaker sent no result for this job"), job
        assert "invocation timeout (1 s)" in job["error"]
        assert requests.get(request["cancel_url"], timeout=10).status_code == 200  # a worker still on it stops
    finally:
        server.stop()


def test_results_that_arrive_while_the_middleware_is_down_are_handled_after_it_restarts(aws_cloud, tmp_path,
                                                                                       tiny_models_dir):
    server, resources, client = _start(aws_cloud, tmp_path)
    try:
        register_tiny_models(client, tiny_models_dir, tmp_path)
        deploy(client, "durable", instance_type=INSTANCE_TYPE)
        with aws_cloud.holding():
            job_ids = [client.create_inference({**QUICK, "sagemaker_endpoint_name": "durable", "seed": s})["inference_id"]
                       for s in range(2)]
            aws_cloud.wait_for(job_ids[-1])
            server.stop(signal.SIGKILL)
            for job_id in job_ids:
                aws_cloud.release(job_id)
        for job_id in job_ids:
            assert aws_cloud.invocations[job_id].done.wait(300)
    finally:
        server.stop()
    restarted, _, client = _start(aws_cloud, tmp_path / "again", stack_name=resources.stack_name)
    try:
        jobs = [client.wait_for_job(job_id, timeout_s=60) for job_id in job_ids]
        assert [j["status"] for j in jobs] == ["succeed", "succeed"], jobs
        assert client.list_endpoints(endpoint_name="durable")[0]["endpoint_status"] == "InService"
    finally:
        restarted.stop()


LOCATION = "s3://b/async/out/1.out"


@pytest.mark.parametrize("message, expected", [
    ({"invocationStatus": "Completed", "inferenceId": "j1", "requestParameters": {"inputLocation": "s3://b/in"},
      "responseParameters": {"outputLocation": LOCATION}, "eventName": "InferenceResult", "future": {"x": 1}},
     ("j1", True, "s3://b/in", LOCATION, None)),
    ({"Type": "Notification", "TopicArn": "arn:t", "Message": json.dumps({
        "invocationStatus": "Failed", "inferenceId": "j2", "failureReason": "ClientError: 500",
        "responseParameters": {"failureLocation": LOCATION}})},
     ("j2", False, None, LOCATION, "ClientError: 500")),
    ({"invocationStatus": "Failed", "inferenceId": "j3", "failureReason": "ModelError: timed out"},
     ("j3", False, None, None, "ModelError: timed out")),
])
def test_notifications_are_read_from_their_fields(message, expected):
    result = inference_result(unwrap(message))
    assert (result.job_id, result.succeeded, result.input_location, result.result_location,
            result.failure_reason) == expected


@pytest.mark.parametrize("message", [{}, {"inferenceId": "j"}, {"invocationStatus": "Completed"},
                                     {"Type": "Notification", "Message": "[]"}])
def test_other_messages_are_not_notifications(message):
    with pytest.raises(UnknownEvent):
        inference_result(unwrap(message))
