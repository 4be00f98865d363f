"""The AWS backend in tests: moto's server on 127.0.0.1, SageMaker's asynchronous inference emulated by a
real worker process, a stack's resources, and `sd-aws serve --backend aws` against them.

moto answers every AWS call (DynamoDB, S3, SNS, SQS, Secrets Manager, SageMaker's control plane) but not
InvokeEndpointAsync as SageMaker does it (see ../shared/notes/aws.md). `AsyncInference` replaces moto's
handler: it checks the endpoint exists, reads the endpoint config's S3 output and failure paths and SNS
topics, runs the request object through a real `sd-aws worker` (each worker is an instance with one
concurrent invocation, taking the oldest waiting one), writes the worker's answer to `<S3OutputPath>/<uuid>.out` (or
`<S3FailurePath>/<uuid>-error.out` for a non-2xx answer) and publishes SageMaker's notification to the
success or error topic, which moto delivers to the subscribed events queue. In manual mode (`holding()`)
invocations wait until the test runs, fails or drops them. Endpoints come InService at once in moto; the
emulation also sends the EventBridge "SageMaker Endpoint State Change" event to the stack's events queue,
as the stack's rule does.

Every stack has its own name, so its tables, bucket, topics and queue are its own on the one moto server
of the session: stacks never see each other's state. A stack's resources are made by `sd-aws aws init`'s
code (`aws_cli.init`), as users make them.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import requests
from botocore.config import Config

from aws_extension.middleware.aws_resources import StackResources
from tests.helpers import SdAwsProcess, free_port


def atomic_moto_dynamodb_writes() -> list[tuple[Any, str, Any]]:
    """moto checks a write's condition and applies it without a lock, so two threads (or two requests to its
    threaded server) can both pass the same condition: 8 racing claims get 2-3 winners. DynamoDB applies each
    write atomically; so does moto with these replacements (owner, name, function) of its backend's writes."""
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    replacements = []
    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        original = DynamoDBBackend.__dict__[name]

        def locked(self, *args, _original=original, **kwargs):
            with lock:
                return _original(self, *args, **kwargs)

        replacements.append((DynamoDBBackend, name, locked))
    return replacements

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
               "AWS_REGION": REGION}
INSTANCE_TYPE = "ml.g5.xlarge"


@dataclass
class Invocation:
    endpoint_name: str  # SageMaker's name
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str
    success_topic: str | None
    error_topic: str | None
    invocation_timeout_s: int | None
    request_ttl_s: int | None
    done: threading.Event


def split_s3(location: str) -> tuple[str, str]:
    bucket, key = location.removeprefix("s3://").split("/", 1)
    return bucket, key


class MotoSession:
    """What the code takes as a boto3 session (`client`, `region_name`), on moto's server: the test process
    keeps its environment (no AWS_ENDPOINT_URL) for the in-process `mock_aws()` tests."""

    region_name = REGION

    def __init__(self, endpoint_url: str):
        self.endpoint_url = endpoint_url

    def client(self, service: str, **options: Any) -> Any:
        options.setdefault("region_name", REGION)
        if service == "s3":
            options.setdefault("config", Config(signature_version="s3v4"))
        return boto3.client(service, endpoint_url=self.endpoint_url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", **options)


class AsyncInference:
    """SageMaker's asynchronous inference on moto's server, run by a real worker at `worker_url`."""

    def __init__(self, endpoint_url: str):
        self.endpoint_url = endpoint_url
        self.session = MotoSession(endpoint_url)
        self.worker_urls: list[str] = []
        self.invocations: dict[str, Invocation] = {}
        self.held: list[str] = []
        self.events_queues: dict[str, str] = {}  # stack name → its events queue URL
        self._manual = False
        self._lock = threading.Lock()
        self._work: queue.Queue[Invocation | None] = queue.Queue()
        self._undo: list[tuple[Any, str, Any]] = []

    def client(self, service: str) -> Any:
        return self.session.client(service)

    # -- moto's handlers, replaced ------------------------------------------------------------------------
    def install(self) -> None:
        from moto.sagemaker.models import FakeEndpointConfig, SageMakerModelBackend
        from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

        fake = self
        original_create = SageMakerModelBackend.create_endpoint

        def invoke_endpoint_async(response: Any) -> Any:
            return fake._accept(response)

        def create_endpoint(backend: Any, endpoint_name: str, *args: Any, **kwargs: Any) -> Any:
            endpoint = original_create(backend, endpoint_name, *args, **kwargs)
            tags = {tag["Key"]: tag["Value"] for tag in endpoint.tags}
            threading.Timer(0.2, fake.send_state_change, (endpoint_name, endpoint.arn, "IN_SERVICE", tags)).start()
            return endpoint

        for owner, name, value in ((SageMakerRuntimeResponse, "invoke_endpoint_async", invoke_endpoint_async),
                                   (SageMakerModelBackend, "create_endpoint", create_endpoint),
                                   # moto's list of instance types lacks the GPU ones SageMaker offers
                                   (FakeEndpointConfig, "validate_instance_type", lambda self, instance_type: None),
                                   *atomic_moto_dynamodb_writes()):
            self._undo.append((owner, name, owner.__dict__[name]))
            setattr(owner, name, value)

    def serve(self, worker_urls: list[str]) -> None:
        """Run invocations on these workers, one at a time each."""
        self.worker_urls = worker_urls
        for url in worker_urls:
            threading.Thread(target=self._run_forever, args=(url,), name=f"fake-instance-{url}", daemon=True).start()

    def uninstall(self) -> None:
        for owner, name, value in reversed(self._undo):
            setattr(owner, name, value)
        for _ in self.worker_urls:
            self._work.put(None)

    def _accept(self, response: Any) -> Any:
        from moto.sagemaker.models import sagemaker_backends

        name = unquote(response.path.split("/")[2])
        backend = sagemaker_backends[response.current_account][response.region]
        endpoint = backend.endpoints.get(name)
        if endpoint is None:
            return 400, {"status": 400, "X-Amzn-ErrorType": "ValidationError"}, json.dumps(
                {"__type": "ValidationError", "message": f"Endpoint {name} of account {ACCOUNT} not found."})
        config = backend.endpoint_configs[endpoint.endpoint_config_name].async_inference_config or {}
        output = config.get("OutputConfig") or {}
        if not output.get("S3OutputPath"):
            return 400, {"status": 400, "X-Amzn-ErrorType": "ValidationError"}, json.dumps(
                {"__type": "ValidationError", "message": f"Endpoint {name} is not an asynchronous endpoint."})
        notify = output.get("NotificationConfig") or {}
        headers = response.headers
        result_id = str(uuid.uuid4())
        invocation = Invocation(
            endpoint_name=name, inference_id=headers.get("X-Amzn-SageMaker-Inference-Id") or str(uuid.uuid4()),
            input_location=headers["X-Amzn-SageMaker-InputLocation"],
            output_location=f"{output['S3OutputPath'].rstrip('/')}/{result_id}.out",
            failure_location=f"{(output.get('S3FailurePath') or output['S3OutputPath']).rstrip('/')}/{result_id}-error.out",
            success_topic=notify.get("SuccessTopic"), error_topic=notify.get("ErrorTopic"),
            invocation_timeout_s=_int_or_none(headers.get("X-Amzn-SageMaker-InvocationTimeoutSeconds")),
            request_ttl_s=_int_or_none(headers.get("X-Amzn-SageMaker-RequestTTLSeconds")), done=threading.Event())
        with self._lock:
            self.invocations[invocation.inference_id] = invocation
            if self._manual:
                self.held.append(invocation.inference_id)
            else:
                self._work.put(invocation)
        return 202, {"status": 202, "X-Amzn-SageMaker-OutputLocation": invocation.output_location,
                     "X-Amzn-SageMaker-FailureLocation": invocation.failure_location}, json.dumps(
            {"InferenceId": invocation.inference_id, "OutputLocation": invocation.output_location})

    # -- running invocations ------------------------------------------------------------------------------
    def _run_forever(self, worker_url: str) -> None:
        while (invocation := self._work.get()) is not None:
            try:
                self.run(invocation, worker_url)
            except Exception as exc:  # noqa: BLE001 - a broken run is a failed invocation, as on SageMaker
                self.finish(invocation, 500, f"the emulated instance failed: {exc!r}".encode())

    def run(self, invocation: Invocation, worker_url: str) -> None:
        """What an instance does: POST the request object's bytes to the worker, then `finish`."""
        bucket, key = split_s3(invocation.input_location)
        body = self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            answer = requests.post(f"{worker_url}/invocations", data=body, timeout=invocation.invocation_timeout_s
                                   or 3600, headers={"Content-Type": "application/json"})
        except requests.Timeout:
            self.finish(invocation, 408, b"", "ModelError: the invocation timed out")
            return
        self.finish(invocation, answer.status_code, answer.content)

    def finish(self, invocation: Invocation, status: int, body: bytes, reason: str | None = None) -> None:
        """Write the answer where SageMaker does and publish its notification."""
        succeeded = 200 <= status < 300
        location = invocation.output_location if succeeded else invocation.failure_location
        bucket, key = split_s3(location)
        self.client("s3").put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        notification: dict[str, Any] = {
            "awsRegion": REGION, "eventTime": now, "receivedTime": now,
            "invocationStatus": "Completed" if succeeded else "Failed",
            "requestParameters": {"accept": "application/json", "contentType": "application/json",
                                  "endpointName": invocation.endpoint_name, "inputLocation": invocation.input_location},
            "responseParameters": {"contentType": "application/json",
                                   ("outputLocation" if succeeded else "failureLocation"): location},
            "inferenceId": invocation.inference_id, "eventVersion": "1.0", "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult"}
        if not succeeded:
            notification["failureReason"] = reason or (
                f"ClientError: Received client error ({status}) from primary with message. See the SageMaker "
                "Endpoint logs in your account for more information.")
        topic = invocation.success_topic if succeeded else invocation.error_topic
        if topic:
            self.client("sns").publish(TopicArn=topic, Message=json.dumps(notification))
        invocation.done.set()

    @contextmanager
    def holding(self) -> Iterator[AsyncInference]:
        """Manual mode: invocations wait in `held` until the test runs (`release`), finishes or drops them."""
        self._manual = True
        try:
            yield self
        finally:
            self._manual = False
            with self._lock:
                held, self.held = self.held, []
            for inference_id in held:  # whatever the test left runs, as SageMaker would
                self._work.put(self.invocations[inference_id])

    def release(self, inference_id: str) -> None:
        with self._lock:
            self.held.remove(inference_id)
        self._work.put(self.invocations[inference_id])

    def drop(self, inference_id: str) -> None:
        """SageMaker loses it: no answer, no notification."""
        with self._lock:
            self.held.remove(inference_id)

    def wait_for(self, inference_id: str, timeout_s: float = 30) -> Invocation:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if inference_id in self.invocations:
                return self.invocations[inference_id]
            time.sleep(0.05)
        raise AssertionError(f"InvokeEndpointAsync was not called for {inference_id}")

    def request_of(self, inference_id: str) -> dict[str, Any]:
        """The request object of an invocation, as the worker reads it."""
        bucket, key = split_s3(self.invocations[inference_id].input_location)
        return json.loads(self.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())

    # -- EventBridge ------------------------------------------------------------------------------------
    def send_state_change(self, sagemaker_name: str, arn: str, status: str, tags: dict[str, str],
                          reason: str | None = None) -> None:
        """The event EventBridge delivers to the events queue of the endpoint's stack."""
        stack = next((s for s in self.events_queues if sagemaker_name.startswith(s + "--")), None)
        if stack is None:
            return
        detail: dict[str, Any] = {"EndpointName": sagemaker_name, "EndpointStatus": status, "EndpointArn": arn,
                                  "EndpointConfigName": sagemaker_name, "Tags": tags}
        if reason:
            detail["FailureReason"] = reason
        event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "SageMaker Endpoint State Change",
                 "source": "aws.sagemaker", "account": ACCOUNT, "time": datetime.now(timezone.utc).isoformat(),
                 "region": REGION, "resources": [detail["EndpointArn"]], "detail": detail}
        self.client("sqs").send_message(QueueUrl=self.events_queues[stack], MessageBody=json.dumps(event))


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value else None


def create_stack_resources(fake: AsyncInference, stack_name: str, api_key: str | None = None) -> StackResources:
    """A stack's resources as users make them: `sd-aws aws init` (its function, on moto's server). `api_key`:
    the value the test sets the stack's API key secret to (default: the one `init` generated)."""
    from aws_extension.aws_cli import init

    made = init(stack_name, multipart_ttl_s=24 * 3600, echo=lambda _: None, session=fake.session)
    if api_key is not None:
        fake.client("secretsmanager").put_secret_value(SecretId=made.resources.api_key_secret, SecretString=api_key)
    fake.events_queues[stack_name] = made.queue_url
    return made.resources


def stack_secret(fake: AsyncInference, secret_id: str) -> str:
    """A secret of a stack on moto's server, read as the middleware reads it."""
    from aws_extension.middleware.wiring import stack_secret as read_secret

    return read_secret(fake.session, secret_id)


def aws_env(fake: AsyncInference, stack_name: str) -> dict[str, str]:
    """The environment of `sd-aws serve --backend aws` on this stack (its key comes from Secrets Manager)."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": fake.endpoint_url, "SD_AWS_BACKEND": "aws",
            "SD_AWS_STACK_NAME": stack_name, "SD_AWS_API_KEY": "", "SD_AWS_WEBHOOK_SECRET": "",
            "SD_AWS_SAGEMAKER_POLL_WAIT_S": "1", "SD_AWS_WORKER_IMAGE": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/worker:test"}


def start_aws_middleware(fake: AsyncInference, data_dir: Path, api_key: str, env: dict[str, str] | None = None,
                         stack_name: str | None = None) -> tuple[SdAwsProcess, StackResources]:
    """A new stack's resources (unless `stack_name` names one made already), then `sd-aws serve --backend aws`
    on them; its API key is the stack's secret."""
    stack_name = stack_name or f"t{uuid.uuid4().hex[:10]}"
    if stack_name in fake.events_queues:
        from aws_extension.aws_cli import stack_of

        resources = stack_of(stack_name, session=fake.session)[1]
    else:
        resources = create_stack_resources(fake, stack_name, api_key)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = SdAwsProcess(["serve", "--backend", "aws", "--port", str(port), "--data-dir", str(data_dir)], port,
                          env={**aws_env(fake, stack_name), **(env or {})},
                          log_path=data_dir.parent / f"{data_dir.name}-serve.log").start()
    return server, resources


class SageMakerTrainingFake:
    """SageMaker's training jobs on moto's server, run by the real `sd-aws sagemaker train` entry point.

    moto's training jobs complete at once and write nothing, and it has no StopTrainingJob. This fake replaces
    CreateTrainingJob's backend call: the job is `InProgress`, its channels (manifest files or S3 prefixes)
    and its CheckpointConfig prefix are downloaded from moto's S3 into a temporary SageMaker root
    (`SD_AWS_SAGEMAKER_ROOT`), the trainer runs there as a process (the container), `checkpoints/` is synced
    to the checkpoint prefix while it runs and at its end, `model/` becomes `model.tar.gz` at the job's
    ModelArtifacts location, and the state (Completed; Failed with `output/failure` as FailureReason;
    Stopped) is set on moto's record and sent as the EventBridge "SageMaker Training Job State Change" event
    to the stack's events queue. StopTrainingJob sends the trainer SIGTERM (Stopping, then Stopped).
    `holding()`: new jobs stay InProgress without running, for tests of lost jobs (`vanish`)."""

    def __init__(self, inference: AsyncInference, root: Path, env: dict[str, str] | None = None):
        self.inference = inference
        self.root = root
        self.env = env or {}
        self.jobs: dict[str, Any] = {}  # name → moto's FakeTrainingJob
        self.processes: dict[str, Any] = {}
        self.resumed_from: dict[str, int | None] = {}  # name → the saved step it found in its checkpoints
        self.backends: dict[str, Any] = {}  # name → moto's SageMaker backend holding it
        self._synced: dict[str, dict[str, tuple[int, int]]] = {}  # name → checkpoint file → (mtime, size) uploaded
        self._hold = False
        self._undo: list[tuple[Any, str, Any]] = []

    def client(self, service: str) -> Any:
        return self.inference.client(service)

    def install(self) -> None:
        from moto.core.responses import EmptyResult
        from moto.sagemaker.models import SageMakerModelBackend
        from moto.sagemaker.responses import SageMakerResponse

        fake = self
        original_create = SageMakerModelBackend.create_training_job

        def create_training_job(backend: Any, training_job_name: str, *args: Any, **kwargs: Any) -> Any:
            if training_job_name in backend.training_jobs:
                from moto.sagemaker.exceptions import ValidationError

                raise ValidationError(message=f"Training job {training_job_name} already exists")
            job = original_create(backend, training_job_name, *args, **kwargs)
            job.training_job_status, job.secondary_status = "InProgress", "Starting"
            job.training_end_time = None
            fake.jobs[training_job_name] = job
            fake.backends[training_job_name] = backend
            if not fake._hold:
                threading.Thread(target=fake._run, args=(job,), name=f"fake-training-{training_job_name}",
                                 daemon=True).start()
            return job

        def stop_training_job(response: Any) -> Any:
            name = response._get_param("TrainingJobName")
            backend = response.sagemaker_backend
            if name not in backend.training_jobs:
                from moto.sagemaker.exceptions import ValidationError

                raise ValidationError(message=f"Could not find training job '{name}'.")
            fake.stop(name)
            return EmptyResult()

        for owner, name, value in ((SageMakerModelBackend, "create_training_job", create_training_job),
                                   (SageMakerResponse, "stop_training_job", stop_training_job)):
            self._undo.append((owner, name, owner.__dict__.get(name)))
            setattr(owner, name, value)

    def uninstall(self) -> None:
        for owner, name, value in reversed(self._undo):
            if value is None:
                delattr(owner, name)
            else:
                setattr(owner, name, value)
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()

    @contextmanager
    def holding(self) -> Iterator[SageMakerTrainingFake]:
        self._hold = True
        try:
            yield self
        finally:
            self._hold = False

    def vanish(self, name: str) -> None:
        """The training job is gone from SageMaker (deleted outside sd-aws), with no event."""
        self.jobs.pop(name)
        self.backends[name].training_jobs.pop(name, None)

    def stop(self, name: str) -> None:
        job = self.jobs[name]
        if job.training_job_status != "InProgress":
            return
        job.training_job_status, job.secondary_status = "Stopping", "Stopping"
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            process.send_signal(15)
        elif process is None:  # not started (held): stopped at once
            self._end(job, "Stopped", "Stopped")

    # -- a container ------------------------------------------------------------------------------------
    def _run(self, job: Any) -> None:
        import subprocess
        import sys

        name = job.training_job_name
        root = self.root / name
        try:
            self._lay_out(job, root)
            env = {**os.environ, **self.env, "SD_AWS_SAGEMAKER_ROOT": str(root), "HF_HUB_OFFLINE": "1",
                   "SD_AWS_DEVICE": "cpu", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            with open(root / "train.log", "ab") as log_file:
                process = subprocess.Popen([sys.executable, "-m", "aws_extension", "sagemaker", "train"], env=env,
                                           stdout=log_file, stderr=subprocess.STDOUT, cwd=root)
            self.processes[name] = process
            job.secondary_status = "Training"
            while process.poll() is None:
                time.sleep(0.3)
                self._sync_checkpoints(job, root)
            self._sync_checkpoints(job, root)
            progress = json.loads((root / "output" / "progress.json").read_text()) \
                if (root / "output" / "progress.json").is_file() else {}
            failure = root / "output" / "failure"
            if job.training_job_status == "Stopping":
                self._end(job, "Stopped", "Stopped")
            elif process.returncode == 0 and progress.get("status") == "Complete":
                self._upload_model(job, root)
                self._end(job, "Completed", "Completed")
            else:
                reason = failure.read_text().strip() if failure.is_file() else \
                    f"AlgorithmError: the container exited with status {process.returncode}"
                self._end(job, "Failed", "Failed", reason)
        except Exception as exc:  # noqa: BLE001 - as SageMaker would, the job fails with the reason
            self._end(job, "Failed", "Failed", f"InternalServerError: the emulated instance failed: {exc!r}")

    def _lay_out(self, job: Any, root: Path) -> None:
        s3 = self.client("s3")
        (root / "input" / "config").mkdir(parents=True, exist_ok=True)
        (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(job.hyper_parameters))
        for channel in job.input_data_config:
            source = channel["DataSource"]["S3DataSource"]
            folder = root / "input" / "data" / channel["ChannelName"]
            folder.mkdir(parents=True, exist_ok=True)
            bucket, key = split_s3(source["S3Uri"])
            if source["S3DataType"] == "ManifestFile":
                prefix, *names = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                base_bucket, base_key = split_s3(prefix["prefix"])
                objects = [(base_bucket, base_key + n, n) for n in names]
            else:
                listed = s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
                objects = [(bucket, o["Key"], o["Key"][len(key):].lstrip("/")) for o in listed]
            for object_bucket, object_key, relative in objects:
                target = folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(object_bucket, object_key, str(target))
        bucket, prefix = split_s3(job.checkpoint_config["S3Uri"])
        checkpoints = root / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
            target = checkpoints / o["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, o["Key"], str(target))
        latest = checkpoints / "latest.json"
        self.resumed_from[job.training_job_name] = json.loads(latest.read_text())["step"] if latest.is_file() else None
        self._synced[job.training_job_name] = {}

    def _sync_checkpoints(self, job: Any, root: Path) -> None:
        """What SageMaker's checkpoint sync does: new and changed files of checkpoints/ to the S3 prefix."""
        bucket, prefix = split_s3(job.checkpoint_config["S3Uri"])
        s3 = self.client("s3")
        for path in sorted((root / "checkpoints").rglob("*")):
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced while we looked
                continue
            if not path.is_file() or path.name.endswith(".tmp"):
                continue
            relative = str(path.relative_to(root / "checkpoints"))
            synced = self._synced[job.training_job_name]
            if synced.get(relative) == (stat.st_mtime_ns, stat.st_size):
                continue
            try:
                s3.put_object(Bucket=bucket, Key=prefix + relative, Body=path.read_bytes())
            except FileNotFoundError:
                continue
            synced[relative] = (stat.st_mtime_ns, stat.st_size)

    def _upload_model(self, job: Any, root: Path) -> None:
        import io
        import tarfile

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted((root / "model").iterdir()):
                tar.add(path, arcname=path.name)
        bucket, key = split_s3(job.model_artifacts["S3ModelArtifacts"])
        self.client("s3").put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())

    def _end(self, job: Any, status: str, secondary: str, reason: str | None = None) -> None:
        job.training_job_status, job.secondary_status = status, secondary
        if reason:
            job.failure_reason = reason
        self.send_state_change(job)

    def send_state_change(self, job: Any) -> None:
        """The event the stack's rule delivers to its events queue (DescribeTrainingJob's fields, tags as a map)."""
        name = job.training_job_name
        stack = next((s for s in self.inference.events_queues if name.startswith(s + "--")), None)
        if stack is None:
            return
        detail: dict[str, Any] = {
            "TrainingJobName": name, "TrainingJobArn": job.arn, "TrainingJobStatus": job.training_job_status,
            "SecondaryStatus": job.secondary_status, "ModelArtifacts": job.model_artifacts,
            "HyperParameters": job.hyper_parameters, "Tags": {t["Key"]: t["Value"] for t in job.tags}}
        if getattr(job, "failure_reason", None):
            detail["FailureReason"] = job.failure_reason
        event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": "SageMaker Training Job State Change",
                 "source": "aws.sagemaker", "account": ACCOUNT, "time": datetime.now(timezone.utc).isoformat(),
                 "region": REGION, "resources": [job.arn], "detail": detail}
        self.client("sqs").send_message(QueueUrl=self.inference.events_queues[stack], MessageBody=json.dumps(event))
