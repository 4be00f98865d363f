"""The Lambda entry with the event shapes AWS documents (API Gateway REST v1 and HTTP v2 proxy events, SQS,
the EventBridge schedule and SageMaker state changes), on a real app and real services."""

from __future__ import annotations

import base64
import copy
import json

import pytest

from aws_extension.middleware import lambda_entry
from aws_extension.middleware.wiring import build_services
from aws_extension.settings import MiddlewareSettings, load
from aws_extension.vocabulary import MODEL_TYPES

API_KEY = "lambda-test-key"

# AWS's sample events (Lambda developer guide: "Using Lambda with API Gateway", "Using Lambda with Amazon
# SQS", "EventBridge Scheduler/Scheduled events"), with the fields the function reads set per test.
API_GATEWAY_V1 = {
    "resource": "/{proxy+}", "path": "/inference/test-connection", "httpMethod": "GET",
    "headers": {"Accept": "application/json", "Host": "abc123.execute-api.us-east-1.amazonaws.com",
                "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443", "x-api-key": API_KEY},
    "multiValueHeaders": {"Accept": ["application/json"], "Host": ["abc123.execute-api.us-east-1.amazonaws.com"],
                          "X-Forwarded-Proto": ["https"], "X-Forwarded-Port": ["443"], "x-api-key": [API_KEY]},
    "queryStringParameters": None, "multiValueQueryStringParameters": None,
    "pathParameters": {"proxy": "inference/test-connection"}, "stageVariables": None,
    "requestContext": {
        "accountId": "123456789012", "apiId": "abc123", "resourceId": "abc123", "resourcePath": "/{proxy+}",
        "httpMethod": "GET", "path": "/prod/inference/test-connection", "protocol": "HTTP/1.1", "stage": "prod",
        "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "requestTimeEpoch": 1428582896000,
        "identity": {"sourceIp": "203.0.113.10", "userAgent": "sd-aws-test", "cognitoIdentityPoolId": None,
                     "accountId": None, "caller": None, "user": None, "userArn": None},
        "domainName": "abc123.execute-api.us-east-1.amazonaws.com"},
    "body": None, "isBase64Encoded": False,
}
API_GATEWAY_V2 = {
    "version": "2.0", "routeKey": "$default", "rawPath": "/inference/test-connection", "rawQueryString": "",
    "cookies": [], "headers": {"accept": "application/json", "host": "abc123.execute-api.us-east-1.amazonaws.com",
                               "x-forwarded-proto": "https", "x-forwarded-port": "443", "x-api-key": API_KEY},
    "requestContext": {
        "accountId": "123456789012", "apiId": "abc123", "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
        "domainPrefix": "abc123", "http": {"method": "GET", "path": "/inference/test-connection",
                                           "protocol": "HTTP/1.1", "sourceIp": "203.0.113.10",
                                           "userAgent": "sd-aws-test"},
        "requestId": "JKJaXmPLvHcESHA=", "routeKey": "$default", "stage": "$default",
        "time": "10/Mar/2020:00:03:59 +0000", "timeEpoch": 1583798639428},
    "isBase64Encoded": False,
}
SQS_RECORD = {
    "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d", "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
    "body": "{}", "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183",
                                 "SenderId": "AIDAIENQZJOLO23YVJ4VO", "ApproximateFirstReceiveTimestamp": "1545082649185"},
    "messageAttributes": {}, "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3", "eventSource": "aws:sqs",
    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:sd-aws-events", "awsRegion": "us-east-1",
}
SCHEDULED_EVENT = {
    "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
    "source": "aws.events", "account": "123456789012", "time": "2015-10-08T16:53:06Z", "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/sd-aws-reaper"], "detail": {},
}
# An SNS envelope of a SageMaker asynchronous-inference notification (SageMaker developer guide).
INFERENCE_NOTIFICATION = {
    "Type": "Notification", "MessageId": "fa0cb5cd-6ad8-5e76-9f83-33c3c3bd7a1d",
    "TopicArn": "arn:aws:sns:us-east-1:123456789012:sd-aws-inference-success",
    "Message": json.dumps({"awsRegion": "us-east-1", "eventTime": "2022-01-25T22:46:00.608Z",
                           "receivedTime": "2022-01-25T22:46:00.455Z", "invocationStatus": "Completed",
                           "requestParameters": {"contentType": "application/json", "endpointName": "sd-aws-ep",
                                                 "inputLocation": "s3://b/out/j/j_request.json"},
                           "inferenceId": "j", "eventVersion": "1.0", "eventSource": "aws:sagemaker",
                           "eventName": "InferenceResult",
                           "responseParameters": {"contentType": "application/json",
                                                  "outputLocation": "s3://b/sagemaker/async/j.out"}}),
    "Timestamp": "2022-01-25T22:46:00.616Z", "SignatureVersion": "1",
}
ENDPOINT_STATE_CHANGE = {
    "version": "0", "id": "d2921b5a-b0ad-cace-bf88-1c2f6a3b4f9c", "detail-type": "SageMaker Endpoint State Change",
    "source": "aws.sagemaker", "account": "123456789012", "time": "2019-05-31T21:49:54Z", "region": "us-east-1",
    "resources": ["arn:aws:sagemaker:us-east-1:123456789012:endpoint/sd-aws-ep"],
    "detail": {"EndpointName": "sd-aws-ep", "EndpointStatus": "IN_SERVICE",
               "CreationTime": 1559178720000, "LastModifiedTime": 1559178720000},
}


class RecordedCompute:
    """Stands in for SageMakerCompute's event side only (handle_event, reap), recording calls; a message
    whose body says `"fail": true` raises, like a handler that wants it retried."""

    def __init__(self):
        self.events: list[dict] = []
        self.reaps = 0
        self.reports = None

    def attach(self, reports):
        self.reports = reports

    def handle_event(self, message):
        if message.get("fail"):
            raise RuntimeError("try again later")
        self.events.append(message)

    def reap(self):
        self.reaps += 1


class LambdaContext:
    function_name = "sd-aws-api"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:sd-aws-api"

    def __init__(self, remaining_ms: int = 900_000):
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self):
        return self.remaining_ms


@pytest.fixture
def container(tmp_path):
    """The app on local store and blobs, with the compute's event side recorded."""
    services = build_services(load(MiddlewareSettings, data_dir=tmp_path / "data", backend="local"))
    services.compute = RecordedCompute()
    built = lambda_entry.build_container(services, API_KEY)
    assert services.compute.reports is not None  # attached, so what it handles reaches the services
    return built


def _answer(response):
    body = base64.b64decode(response["body"]) if response.get("isBase64Encoded") else response["body"]
    return response["statusCode"], json.loads(body)


@pytest.mark.parametrize("event", [API_GATEWAY_V1, API_GATEWAY_V2], ids=["rest-v1", "http-v2"])
def test_api_gateway_requests_reach_the_app(container, event):
    assert lambda_entry.event_kind(event) == "api"
    status, body = _answer(container.handle(copy.deepcopy(event), LambdaContext()))
    assert status == 200, body
    status, body = _answer(container.handle(_without_key(event), LambdaContext()))
    assert status == 401 and "API key" in body["error"]


@pytest.mark.parametrize("event", [API_GATEWAY_V1, API_GATEWAY_V2], ids=["rest-v1", "http-v2"])
def test_api_gateway_post_with_a_body(container, event):
    started = {"checkpoint_type": MODEL_TYPES[0], "filenames": [{"filename": "a.safetensors", "parts_number": 2}]}
    status, body = _answer(container.handle(_with_request(event, "POST", "/checkpoint", json.dumps(started)),
                                            LambdaContext()))
    assert status == 200, body
    assert len(body["s3PresignUrl"]["a.safetensors"]) == 2
    bad = dict(started, checkpoint_type="NoSuchType")
    status, body = _answer(container.handle(_with_request(event, "POST", "/checkpoint", json.dumps(bad)),
                                            LambdaContext()))
    assert status == 422 and "checkpoint_type" in body["error"]


def test_sqs_records_go_to_handle_event_and_failures_come_back(container):
    recorder = container.services.compute
    good = dict(SQS_RECORD, body=json.dumps(INFERENCE_NOTIFICATION))
    state = dict(SQS_RECORD, messageId="e1", body=json.dumps(ENDPOINT_STATE_CHANGE))
    retry = dict(SQS_RECORD, messageId="r1", body=json.dumps({"fail": True}))
    garbled = dict(SQS_RECORD, messageId="g1", body="{not json")
    event = {"Records": [good, retry, state, garbled]}
    assert lambda_entry.event_kind(event) == "sqs"
    answer = container.handle(event, LambdaContext())
    assert answer == {"batchItemFailures": [{"itemIdentifier": "r1"}, {"itemIdentifier": "g1"}]}
    assert recorder.events == [INFERENCE_NOTIFICATION, ENDPOINT_STATE_CHANGE]


def test_the_schedule_reaps_and_sweeps(container, monkeypatch):
    recorder = container.services.compute
    swept = []
    monkeypatch.setattr(container.services.blobs, "sweep_incomplete_uploads", lambda ttl: swept.append(ttl) or [])
    assert lambda_entry.event_kind(SCHEDULED_EVENT) == "schedule"
    resumed = []
    monkeypatch.setattr(container.services.importer, "resume_stalled", lambda after: resumed.append(after) or [])
    assert container.handle(SCHEDULED_EVENT, LambdaContext()) is None
    assert recorder.reaps == 1 and swept == [container.services.settings.multipart_ttl_s]
    assert resumed == [lambda_entry.STALLED_IMPORT_S]


def test_the_schedule_sweeps_even_when_reaping_fails(container, monkeypatch):
    class FailingReap(RecordedCompute):
        def reap(self):
            raise RuntimeError("SageMaker throttled")
    container.services.compute = FailingReap()  # after the container was built: Container.compute reads it
    swept = []
    monkeypatch.setattr(container.services.blobs, "sweep_incomplete_uploads", lambda ttl: swept.append(ttl) or [])
    with pytest.raises(RuntimeError, match="throttled"):
        container.handle(SCHEDULED_EVENT, LambdaContext())
    assert swept


def test_a_state_change_sent_straight_to_the_function(container):
    recorder = container.services.compute
    assert lambda_entry.event_kind(ENDPOINT_STATE_CHANGE) == "sagemaker"
    container.handle(ENDPOINT_STATE_CHANGE, LambdaContext())
    assert recorder.events == [ENDPOINT_STATE_CHANGE]


def test_an_import_task_runs_an_import_step(container, monkeypatch):
    steps = []
    monkeypatch.setattr(container.services.importer, "run_step",
                        lambda task, remaining_s: steps.append((task, remaining_s)))
    task = {"sd_aws_task": "import", "checkpoint_id": "c1", "tokens": {}}
    assert lambda_entry.event_kind(task) == "import"
    container.handle(task, LambdaContext(remaining_ms=600_000))
    assert steps == [(task, 600.0)]


@pytest.mark.parametrize("event", [{}, {"Records": [{"eventSource": "aws:s3"}]}, [], {"source": "aws.ec2"}])
def test_unknown_events_are_refused(event):
    with pytest.raises(ValueError, match="does not know this event"):
        lambda_entry.event_kind(event)


def test_the_function_refuses_another_backend(monkeypatch, tmp_path):
    monkeypatch.setenv("SD_AWS_BACKEND", "local")
    monkeypatch.setenv("SD_AWS_HOME", str(tmp_path))
    monkeypatch.setattr(lambda_entry, "_container", None)
    with pytest.raises(RuntimeError, match="aws backend"):
        lambda_entry.handler(SCHEDULED_EVENT, LambdaContext())


def _without_key(event):
    event = copy.deepcopy(event)
    for headers in (event.get("headers", {}), event.get("multiValueHeaders") or {}):
        headers.pop("x-api-key", None)
    return event


def _with_request(event, method, path, body):
    event = copy.deepcopy(event)
    if event.get("version") == "2.0":
        event["rawPath"] = path
        event["requestContext"]["http"].update(method=method, path=path)
        event["headers"]["content-type"] = "application/json"
    else:
        event.update(path=path, httpMethod=method, pathParameters={"proxy": path.lstrip("/")})
        event["requestContext"].update(httpMethod=method, path=f"/prod{path}")
        event["headers"]["Content-Type"] = "application/json"
        event["multiValueHeaders"]["Content-Type"] = ["application/json"]
        # The template's REST API has BinaryMediaTypes */*: API Gateway hands every body over base64-encoded.
        event["body"], event["isBase64Encoded"] = base64.b64encode(body.encode()).decode(), True
        return event
    event["body"] = body
    return event


def _stack_contents(session):
    """What exists in the account: tables, buckets, queues, topics and secrets (the cold start adds none)."""
    return (sorted(session.client("dynamodb").list_tables()["TableNames"]),
            sorted(b["Name"] for b in session.client("s3").list_buckets()["Buckets"]),
            sorted(session.client("sqs").list_queues().get("QueueUrls", [])),
            sorted(t["TopicArn"] for t in session.client("sns").list_topics()["Topics"]),
            sorted(s["Name"] for s in session.client("secretsmanager").list_secrets()["SecretList"]))


def _with_key(event, key):
    event = copy.deepcopy(event)
    event["headers"]["x-api-key"] = key
    if "multiValueHeaders" in event:
        event["multiValueHeaders"]["x-api-key"] = [key]
    return event


def _spy(monkeypatch, owner, name, calls):
    """Record each call of `owner.name` and make it (the real method runs)."""
    real = getattr(owner, name)

    def recorded(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)


@pytest.fixture
def function_environment(fresh_account, monkeypatch, tmp_path):
    """The function's environment (template: ApiFunction) on a fresh account of moto's server, and a cold
    container; the stack's name."""
    stack = "sd-lambda"
    for name, value in {"SD_AWS_BACKEND": "aws", "SD_AWS_STACK_NAME": stack, "SD_AWS_HOME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    for name in ("SD_AWS_API_KEY", "SD_AWS_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(lambda_entry, "_container", None)
    return stack


def test_the_function_on_a_stack_made_by_init(function_environment, moto_server, monkeypatch):
    """The real cold start, as in the function: the aws backend's services (DynamoDB, S3, SageMakerCompute on
    moto's server) found from SD_AWS_STACK_NAME alone, the API key read from the stack's secret; then API
    Gateway, SQS and schedule events through `handler`. It creates nothing (the function's role may not)."""
    import boto3
    import requests

    from aws_extension import aws_cli

    resources = aws_cli.init(function_environment, echo=lambda _: None).resources
    session = boto3.session.Session()
    made = _stack_contents(session)
    key = session.client("secretsmanager").get_secret_value(SecretId=resources.api_key_secret)["SecretString"]

    for event in (API_GATEWAY_V1, API_GATEWAY_V2):
        status, body = _answer(lambda_entry.handler(_with_key(event, key), LambdaContext()))
        assert status == 200, body
        # API.md: a wrong key is refused with 403, a missing one with 401.
        status, body = _answer(lambda_entry.handler(_with_key(event, key + "x"), LambdaContext()))
        assert status == 403, body
        status, body = _answer(lambda_entry.handler(_without_key(event), LambdaContext()))
        assert status == 401, body
    assert lambda_entry._container.services.blobs.bucket == resources.bucket

    started = {"checkpoint_type": MODEL_TYPES[0], "filenames": [{"filename": "a.safetensors", "parts_number": 1}]}
    for event in (API_GATEWAY_V1, API_GATEWAY_V2):
        request = _with_key(_with_request(event, "POST", "/checkpoint", json.dumps(started)), key)
        status, body = _answer(lambda_entry.handler(request, LambdaContext()))
        assert status == 200, body
        (url,) = body["s3PresignUrl"]["a.safetensors"]
        assert url.startswith(f"{moto_server}/{resources.bucket}/") and "uploadId=" in url
        assert requests.put(url, data=b"part one", timeout=10).status_code == 200  # moto takes the part

    unknown_job = dict(SQS_RECORD, body=json.dumps(INFERENCE_NOTIFICATION))
    garbled = dict(SQS_RECORD, messageId="g1", body="{not json")
    assert lambda_entry.handler({"Records": [unknown_job, garbled]}, LambdaContext()) == {
        "batchItemFailures": [{"itemIdentifier": "g1"}]}

    calls: list[str] = []
    _spy(monkeypatch, lambda_entry._container.compute, "reap", calls)
    _spy(monkeypatch, lambda_entry._container.services, "sweep", calls)
    assert lambda_entry.handler(SCHEDULED_EVENT, LambdaContext()) is None
    assert calls == ["reap", "sweep"]
    assert _stack_contents(session) == made


def test_the_cold_start_on_a_stack_never_made_creates_nothing(function_environment):
    """Without `init` (or the template) the function fails on its first event, and leaves the account as
    it found it: the wiring finds the stack's resources, it never creates them."""
    import boto3

    with pytest.raises(Exception, match="ResourceNotFoundException"):
        lambda_entry.handler(API_GATEWAY_V2, LambdaContext())
    assert _stack_contents(boto3.session.Session()) == ([], [], [], [], [])
