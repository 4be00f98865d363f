"""URL imports under Lambda: each step streams into a multipart upload and invokes the function again before
its time is up; the next step resumes from the uploaded parts with a Range request, so any size completes."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from aws_extension.middleware.blobs.local import LocalBlobStore
from aws_extension.middleware.blobs.s3 import S3BlobStore, ensure_bucket
from aws_extension.middleware.services.checkpoints import CheckpointService
from aws_extension.middleware.services.model_import import (
    STEP_MARGIN_S,
    LambdaRunner,
    ModelImporter,
    ThreadRunner,
    default_runner,
)
from aws_extension.middleware.store.sqlite import SQLiteStore
from aws_extension.settings import MiddlewareSettings, load
from tests.middleware.conftest import fake_lora

PART = 256 * 1024


class RangeServer:
    """A real HTTP server on 127.0.0.1 serving one file, honouring `Range: bytes=N-` unless told not to."""

    def __init__(self, body: bytes, honour_range: bool = True):
        self.body, self.honour_range, self.ranges = body, honour_range, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                wanted = self.headers.get("Range")
                server.ranges.append(wanted)
                match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
                start = int(match.group(1)) if match and server.honour_range else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.body) - 1}/{len(server.body)}")
                self.send_header("Content-Length", str(len(server.body) - start))
                self.end_headers()
                self.wfile.write(server.body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/lora.safetensors"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class InvocationQueue:
    """Stands in for Lambda's asynchronous invocations: launches are queued, the test runs them as steps."""

    resumable = True

    def __init__(self):
        self.tasks = []

    def launch(self, importer, checkpoint_id, tokens):
        self.tasks.append({"sd_aws_task": "import", "checkpoint_id": checkpoint_id, "tokens": tokens})

    def stop(self, timeout_s):
        pass


@pytest.fixture(params=["local", "s3"])
def importer(request, tmp_path):
    """An importer on the local store, or on S3BlobStore against moto's server (S3 keeps its 5 MiB part
    minimum, so the parts are bigger there)."""
    part = PART if request.param == "local" else 5 * 2**20
    settings = load(MiddlewareSettings, data_dir=tmp_path, import_allow_private_addresses=True,
                    multipart_min_part_bytes=part, import_part_bytes=part, import_max_bytes=64 * 2**20)
    limits = {"signed_url_ttl_s": 60, "min_part_bytes": part, "max_parts": 10_000, "max_part_bytes": 2**30,
              "max_put_bytes": 2**30}
    if request.param == "local":
        blobs = LocalBlobStore(tmp_path / "blobs", b"secret", public_url="http://127.0.0.1:1", **limits)
    else:
        moto_server = request.getfixturevalue("moto_server")
        client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        bucket = f"imports-{uuid.uuid4().hex[:12]}"
        ensure_bucket(client, bucket, 86400)
        blobs = S3BlobStore(bucket, client=client, **limits)
    checkpoints = CheckpointService(SQLiteStore(tmp_path / "store.sqlite3"), blobs, max_parts=10_000,
                                    max_files=4, completion_wait_s=5)
    return ModelImporter(checkpoints, settings, runner=InvocationQueue())


def _run_steps(importer, remaining_s):
    steps = 0
    while importer.runner.tasks:
        importer.run_step(importer.runner.tasks.pop(0), remaining_s=remaining_s)
        steps += 1
    return steps


@pytest.mark.parametrize("honour_range", [True, False], ids=["resumes-with-range", "server-without-range"])
def test_an_import_completes_over_several_steps(importer, tmp_path, honour_range):
    part = importer.settings.import_part_bytes
    body = fake_lora(tmp_path / "lora.safetensors", padding_bytes=3 * part).read_bytes()
    server = RangeServer(body, honour_range=honour_range)
    try:
        record = importer.start("Lora", [server.url], {"sha256": hashlib.sha256(body).hexdigest()})
        assert importer.runner.tasks[0]["checkpoint_id"] == record.id
        # Every step's deadline is now: each uploads one part, then hands over to the next invocation.
        if honour_range:
            steps = _run_steps(importer, remaining_s=STEP_MARGIN_S)
            assert steps == -(-len(body) // part)
            assert server.ranges[0] is None and server.ranges[1:] == [f"bytes={n * part}-" for n in range(1, steps)]
        else:  # a server that answers 200 to a Range: the step starts the file over, so give it the time
            importer.run_step(importer.runner.tasks.pop(0), remaining_s=STEP_MARGIN_S)  # one part, then out of time
            assert _run_steps(importer, remaining_s=600) == 1
            assert server.ranges == [None, f"bytes={part}-"]
    finally:
        server.stop()
    final = importer.checkpoints.get(record.id)
    assert final.status == "Active", final.error
    (file,) = final.files
    assert file.sha256 == hashlib.sha256(body).hexdigest() and file.size == len(body) and file.upload_id is None
    assert importer.checkpoints.blobs.read(file.key) == body


def test_a_step_on_a_finished_import_does_nothing(importer, tmp_path):
    body = fake_lora(tmp_path / "lora.safetensors").read_bytes()
    server = RangeServer(body)
    try:
        record = importer.start("Lora", [server.url], {})
        task = importer.runner.tasks[0]
        _run_steps(importer, remaining_s=600)
        assert importer.checkpoints.get(record.id).status == "Active"
        importer.run_step(task, remaining_s=600)  # Lambda may deliver an asynchronous invocation twice
    finally:
        server.stop()
    assert server.ranges == [None] and not importer.runner.tasks


def test_a_wrong_declared_sha256_fails_with_the_reason(importer, tmp_path):
    body = fake_lora(tmp_path / "lora.safetensors", padding_bytes=2 * importer.settings.import_part_bytes).read_bytes()
    server = RangeServer(body)
    try:
        record = importer.start("Lora", [server.url], {"sha256": "0" * 64})
        _run_steps(importer, remaining_s=600)
    finally:
        server.stop()
    final = importer.checkpoints.get(record.id)
    assert final.status == "Failed" and "declared" in final.error


def test_the_lambda_runner_invokes_the_function_asynchronously():
    class LambdaClient:
        def __init__(self):
            self.calls = []

        def invoke(self, **arguments):
            self.calls.append(arguments)
            return {"StatusCode": 202}

    client = LambdaClient()
    LambdaRunner("sd-aws-api", client).launch(None, "c1", {"hf_token": "t"})
    (call,) = client.calls
    assert call["FunctionName"] == "sd-aws-api" and call["InvocationType"] == "Event"
    assert json.loads(call["Payload"]) == {"sd_aws_task": "import", "checkpoint_id": "c1", "tokens": {"hf_token": "t"}}


def test_the_runner_is_lambda_only_under_lambda_on_the_aws_backend(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert isinstance(default_runner(load(MiddlewareSettings, data_dir=tmp_path, backend="aws")), ThreadRunner)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sd-aws-api")
    assert isinstance(default_runner(load(MiddlewareSettings, data_dir=tmp_path, backend="local")), ThreadRunner)
    runner = default_runner(load(MiddlewareSettings, data_dir=tmp_path, backend="aws"))
    assert isinstance(runner, LambdaRunner) and runner.function_name == "sd-aws-api"


def test_the_reaper_relaunches_imports_that_stopped_moving(importer, tmp_path):
    body = fake_lora(tmp_path / "lora.safetensors", padding_bytes=2 * importer.settings.import_part_bytes).read_bytes()
    server = RangeServer(body)
    try:
        stalled = importer.start("Lora", [server.url], {})
        moving = importer.start("Lora", [server.url + "?b"], {})
        importer.runner.tasks.clear()  # both chains of steps were lost
        for record_id, age in ((stalled.id, 3600), (moving.id, 10)):
            importer.checkpoints.records.update(record_id, {"created": time.time() - age})
        assert importer.resume_stalled(1800) == [stalled.id]
        assert _run_steps(importer, remaining_s=600) == 1
    finally:
        server.stop()
    assert importer.checkpoints.get(stalled.id).status == "Active"
    assert importer.checkpoints.get(moving.id).status == "Initialed"
