"""AWS calls per API route on the aws backend, at two table sizes, and what a month costs.

    HF_HUB_OFFLINE=1 /work/main/.venv/bin/python benchmarks/aws_calls.py [--sizes 10,500]   (from the checkout's root)

For each size N: moto's `ThreadedMotoServer` on 127.0.0.1, a new stack made by `sd-aws aws init`'s code
(`tests/aws_stack.create_stack_resources`), SageMaker's asynchronous inference emulated by
`tests/aws_stack.AsyncInference` in manual mode (no worker process: invocations are held, then finished by
hand with a one-image worker answer, so the completion handler runs). Every table is filled with N records
(checkpoints, datasets, endpoints, inference jobs) in the store's own encoding (`bulk_create`), then the middleware is built
in-process (`wiring.build_services` + `app.create_app`, FastAPI's TestClient) on a boto3 session whose
clients carry a botocore `before-call` hook. Each call is charged to the route whose request made it (a
contextvar set by an ASGI wrapper); calls of background threads (SQS poller, reaper, deployment) are
charged to "background". A list route's count depends on its page size (one Query per page), not on N;
a size past DynamoDB's 1 MB per Query page (`--sizes 10,4000`) shows the routes that read a whole table.

moto's speed says nothing about AWS's; the counts do. The prices in PRICES are published figures as
remembered at the date given: re-check them on the pages named before relying on the totals.
"""

from __future__ import annotations

import argparse
import contextvars
import io
import json
import logging
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import _common  # noqa: F401 - puts this checkout first on sys.path

from aws_extension.middleware.records import (
    CHECKPOINTS,
    DATASETS,
    ENDPOINTS,
    JOBS,
    Checkpoint,
    CheckpointFile,
    Dataset,
    Endpoint,
    InferenceJob,
)
from aws_extension.middleware.store.typed import encode
from aws_extension.vocabulary import (
    CheckpointStatus,
    DatasetStatus,
    DeploymentStatus,
    EndpointStatus,
    JobStatus,
)
from tests.aws_stack import INSTANCE_TYPE, AsyncInference, MotoSession, aws_env, create_stack_resources

API_KEY = "bench-key"
ROUTE = contextvars.ContextVar("route", default="background")
CALLS: dict[str, Counter] = defaultdict(Counter)  # route → Counter of "service.Operation"


class CountingSession(MotoSession):
    """MotoSession whose clients count every call, by the route in ROUTE."""

    def client(self, service: str, **options: Any) -> Any:
        client = super().client(service, **options)

        def count(model: Any, **_: Any) -> None:
            CALLS[ROUTE.get()][f"{service}.{model.name}"] += 1

        client.meta.events.register("before-call", count)
        return client


NEXT_ROUTE = ["background"]  # the name of the next request (requests are sent one at a time)


def routed(app: Any) -> Any:
    """An ASGI wrapper naming the request's route in ROUTE, in the request's own context (contextvars follow
    into Starlette's threadpool; threads the request starts do not inherit them, so they count as background)."""

    async def wrapper(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            ROUTE.set(NEXT_ROUTE[0])
        await app(scope, receive, send)

    return wrapper


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 80, 40)).save(out, format="PNG")
    return out.getvalue()


def bulk_create(store: Any, table: Any, records: list[Any]) -> None:
    """What `store.create` writes for each record (the store's own encoding, a checkpoint's posting items
    too), in BatchWriteItems of 25: moto copies every table for each transaction, so filling thousands of
    records one `create` at a time would take hours. The filler's records have no unique value, and each
    checkpoint its own keywords."""
    writes: list[dict[str, Any]] = []
    for record in records:
        item = store._encoded(table, encode(record))
        writes.append({"PutRequest": {"Item": item}})
        if table.keywords:
            writes += [{"PutRequest": {"Item": {"id": {"S": store._posting_id(word)}, "_kind": {"S": "keyword"},
                                                "_ids": {"SS": [record.id]}}}}
                       for word in json.loads(item["_kw"]["S"])]
    for start in range(0, len(writes), 25):
        request = {store.table_name(table): writes[start:start + 25]}
        while request:
            request = store.client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}


def fill(store: Any, blobs: Any, n: int, endpoint_name: str) -> str:
    """N records in each table; returns the file name of an Active Stable-diffusion checkpoint (whose file
    is in the bucket: a job's submission checks it is there)."""
    now = time.time()
    made: dict[Any, list[Any]] = {CHECKPOINTS: [], DATASETS: [], ENDPOINTS: [], JOBS: []}
    for i in range(n):
        cid = str(uuid.uuid4())
        made[CHECKPOINTS].append(Checkpoint(
            id=cid, type="Stable-diffusion", status=CheckpointStatus.ACTIVE, created=now - i, source="upload",
            s3_location=f"s3://b/models/Stable-diffusion/{cid}", sha256=f"{i:064x}", size=1,
            files=[CheckpointFile(filename=f"model-{i}.safetensors", key=f"models/Stable-diffusion/{cid}/model-{i}.safetensors",
                                  sha256=f"{i:064x}", size=1)]))
        if i == 0:
            with blobs.writer(f"models/Stable-diffusion/{cid}/model-0.safetensors") as out:
                out.write(b"0")
        made[DATASETS].append(Dataset(id=f"ds-{i}", name=f"ds-{i}", status=DatasetStatus.ENABLED, created=now - i,
                                      s3=f"s3://b/dataset/ds-{i}"))
        made[ENDPOINTS].append(Endpoint(
            id=str(uuid.uuid4()), endpoint_name=f"old-{i}", deployment_status=DeploymentStatus.DELETED,
            endpoint_status=EndpointStatus.DELETED, created=now - 1000 - i, start_time="2026-01-01 00:00:00.000000",
            instance_type=INSTANCE_TYPE, initial_instance_count=1, min_instance_number=0, max_instance_number=1))
        jid = str(uuid.uuid4())
        made[JOBS].append(InferenceJob(
            id=jid, task="txt2img", status=JobStatus.SUCCEED, endpoint=endpoint_name, created=now - 1000 - i,
            start_time="2026-01-01 00:00:00.000000", params_key=f"params/{jid}.json", output_path=f"out/{jid}",
            image_names=[f"{jid}-0.png"], complete_time="2026-01-01 00:00:05.000000"))
    for table, records in made.items():
        bulk_create(store, table, records)
    return "model-0.safetensors"


def measure(fake: AsyncInference, n: int) -> dict[str, Counter]:
    from fastapi.testclient import TestClient

    from aws_extension.middleware.app import create_app
    from aws_extension.middleware.wiring import build_services
    from aws_extension.settings import MiddlewareSettings, load

    ROUTE.set("benchmark itself")  # this thread's own reads (filling, waiting) are not the middleware's
    CALLS.clear()
    stack = f"bench{n}-{uuid.uuid4().hex[:6]}"
    create_stack_resources(fake, stack, API_KEY)
    env = {**aws_env(fake, stack), "SD_AWS_API_KEY": API_KEY}
    settings = load(MiddlewareSettings, environ=env)
    services = build_services(settings, CountingSession(fake.endpoint_url))
    CALLS.clear()  # the build's own calls (STS, secrets) are once per process, not per request
    results: dict[str, Counter] = {}
    h = {"x-api-key": API_KEY}

    with TestClient(routed(create_app(services, API_KEY))) as client:
        def call(name: str, method: str, path: str, expect: tuple[int, ...] = (200,), **kw: Any) -> Any:
            CALLS.pop(name, None)
            NEXT_ROUTE[0] = name
            answer = client.request(method, path, headers=h, **kw)
            NEXT_ROUTE[0] = "untracked request"
            if answer.status_code not in expect:
                print(f"  ! {name}: HTTP {answer.status_code} {answer.text[:200]}")
            results[name] = Counter(CALLS.get(name, Counter()))
            return answer

        # a live endpoint, InService before the filler's jobs name it
        background_before = Counter(CALLS["background"])
        made = call("POST /endpoints", "POST", "/endpoints", json={
            "instance_type": INSTANCE_TYPE, "initial_instance_count": 1, "endpoint_name": "live",
            "autoscaling_enabled": True, "min_instance_number": 0, "max_instance_number": 1}).json()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if call("GET /endpoints", "GET", "/endpoints").json()[0]["endpoint_status"] == "InService":
                break
            time.sleep(0.3)
        time.sleep(1)  # the scaling target and alarms follow InService
        results["endpoint deployment (background)"] = Counter(CALLS["background"]) - background_before
        model = fill(services.store, services.blobs, n, "live")

        ROUTE.set("reaper (one scheduled run)")
        services.compute.reap()
        ROUTE.set("benchmark itself")
        results["reaper (one scheduled run)"] = Counter(CALLS["reaper (one scheduled run)"])
        call("GET /inference/test-connection", "GET", "/inference/test-connection")
        call("GET /endpoints", "GET", "/endpoints")
        call("GET /inference/get-endpoint-deployment-job", "GET",
             f"/inference/get-endpoint-deployment-job?jobID={made['EndpointDeploymentJobId']}")
        call("GET /checkpoints", "GET", "/checkpoints?status=Active&types=Stable-diffusion")
        call("GET /inference/get-lora-list", "GET", "/inference/get-lora-list")
        created = call("POST /checkpoint", "POST", "/checkpoint", json={
            "checkpoint_type": "Lora", "filenames": [{"filename": "tiny.safetensors", "parts_number": 1}],
            "params": {}}).json()
        header = json.dumps({"lora_unet_down_blocks_0.lora_down.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        body = len(header).to_bytes(8, "little") + header + b"\0\0\0\0"
        import requests

        part = requests.put(created["s3PresignUrl"]["tiny.safetensors"][0], data=body, timeout=30)
        background_before = Counter(CALLS["background"])
        call("PUT /checkpoint", "PUT", "/checkpoint", expect=(200, 202), json={
            "checkpoint_id": created["checkpoint"]["id"], "status": "Active",
            "multi_parts_tags": {"tiny.safetensors": [{"ETag": part.headers["ETag"], "PartNumber": 1}]}})
        deadline = time.monotonic() + 30
        while (time.monotonic() < deadline
               and services.checkpoints.records.get(created["checkpoint"]["id"]).status != CheckpointStatus.ACTIVE):
            time.sleep(0.2)
        results["checkpoint completion (background)"] = Counter(CALLS["background"]) - background_before
        call("GET /datasets", "GET", "/datasets")
        call("POST /dataset", "POST", "/dataset", json={
            "dataset_name": "new-ds", "content": [{"filename": "a.png", "name": "a", "type": "image"}], "params": {}})
        call("GET /dataset/{name}/data", "GET", "/dataset/ds-0/data")
        call("GET /inference/generate-s3-presigned-url-for-uploading", "GET",
             "/inference/generate-s3-presigned-url-for-uploading?key=uploads/a.png")

        with fake.holding():
            job = {"task_type": "txt2img", "models": {"Stable-diffusion": [model]}, "prompt": "a cat",
                   "steps": 2, "width": 64, "height": 64, "sagemaker_endpoint_name": "live"}
            first = call("POST /inference/v2", "POST", "/inference/v2", json=job).json()["inference_id"]
            invocation = fake.wait_for(first)
            call("GET /inference/get-inference-job", "GET", f"/inference/get-inference-job?jobID={first}")
            call("GET /inference/list-inference-jobs", "GET", "/inference/list-inference-jobs?limit=100")
            # a filter the index does not serve (endpoint's index, status filtered): pages read until 100 match
            call("GET /inference/list-inference-jobs?endpoint&status", "GET",
                 "/inference/list-inference-jobs?endpoint=live&status=inprogress&limit=100")
            second = call("POST /inference/v2 (2nd)", "POST", "/inference/v2", json=job).json()["inference_id"]
            fake.wait_for(second)
            call("PUT /inference/v2/{id}/cancel", "PUT", f"/inference/v2/{second}/cancel")
            # the completion: SageMaker writes the answer and notifies; the poller (background) handles it
            background_before = Counter(CALLS["background"])
            fake.held.remove(first)
            # what the worker does on the instance: PUT the image to the request's URL, answer, notify
            requests.put(fake.request_of(first)["output"]["image_urls"][0], data=png(), timeout=30)
            fake.finish(invocation, 200, json.dumps({"status": "succeed", "job_id": first, "image_count": 1,
                                                     "info": "{}", "parameters": {}}).encode())
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and services.jobs.queue.jobs.get(first).status != JobStatus.SUCCEED:
                time.sleep(0.2)
            time.sleep(0.5)
            results["completion (SQS handler)"] = Counter(CALLS["background"]) - background_before
            done = services.jobs.queue.jobs.get(first)
            if done.status != JobStatus.SUCCEED:
                print(f"  ! the completion left the job {done.status}: {done.error}")
            call("GET /inference/get-inference-job (done)", "GET", f"/inference/get-inference-job?jobID={first}")
            call("GET /inference/get-inference-job-image-output", "GET",
                 f"/inference/get-inference-job-image-output?jobID={first}")
            if second in fake.held:
                fake.drop(second)
        background_before = Counter(CALLS["background"])
        call("DELETE /endpoints", "DELETE", "/endpoints", json={"delete_endpoint_list": ["live"]})
        deadline = time.monotonic() + 60  # until the record is Deleted (its jobs ended), then the stragglers
        while (time.monotonic() < deadline and services.endpoints.get(made["EndpointDeploymentJobId"]).endpoint_status
               != EndpointStatus.DELETED):
            time.sleep(0.2)
        time.sleep(1)
        results["endpoint deletion (background)"] = Counter(CALLS["background"]) - background_before
    return results


# Public us-east-1 prices (USD), as published on the pages named, remembered as of 2026-12 (the figures have
# stood since 2023-2024): RE-CHECK them on those pages before quoting a total.
PRICES = {
    "dynamodb_write_per_m": (0.625, "Amazon DynamoDB pricing, on-demand (after the Nov 2024 cut), per million WRU"),
    "dynamodb_read_per_m": (0.125, "Amazon DynamoDB pricing, on-demand, per million RRU"),
    "s3_put_per_k": (0.005, "Amazon S3 pricing, S3 Standard PUT/COPY/POST/LIST per 1,000"),
    "s3_get_per_k": (0.0004, "Amazon S3 pricing, S3 Standard GET/SELECT per 1,000"),
    "s3_gb_month": (0.023, "Amazon S3 pricing, S3 Standard first 50 TB per GB-month"),
    "sqs_per_m": (0.40, "Amazon SQS pricing, standard queue per million requests (first 1M/month free)"),
    "sns_per_m": (0.50, "Amazon SNS pricing, standard topic publishes per million (SQS deliveries free)"),
    "lambda_per_m": (0.20, "AWS Lambda pricing, per million requests"),
    "lambda_gb_s": (0.0000166667, "AWS Lambda pricing, x86 per GB-second"),
    "apigw_per_m": (3.50, "Amazon API Gateway pricing, REST API first 333M per million"),
    "secret_month": (0.40, "AWS Secrets Manager pricing, per secret per month"),
    "secrets_per_10k": (0.05, "AWS Secrets Manager pricing, per 10,000 API calls"),
    "sagemaker_g5_xlarge_h": (1.408, "Amazon SageMaker AI pricing, real-time/async inference ml.g5.xlarge per hour"),
    "cw_alarm_month": (0.10, "Amazon CloudWatch pricing, standard-resolution alarm metric per month"),
    "sts_per_m": (0.0, "AWS STS: GetCallerIdentity has no charge"),
}
SECONDS_PER_IMAGE = 6.0  # assumed: SD 1.5, 512x512, 20 steps on an A10G (ml.g5.xlarge), incl. S3 I/O
POLLS_PER_IMAGE = 6  # assumed: the extension polls get-inference-job about once per second while it runs
IMAGE_MB = 0.5  # one PNG
LAMBDA_GB, LAMBDA_S_PER_REQUEST = 1.0, 0.15  # assumed: 1 GB function, 150 ms per request
SECRETS = 2  # the API key and webhook secrets
# one autoscaled endpoint kept at 0 instances: our HasBacklogWithoutCapacity alarm plus the 2 alarms AWS makes
# for the target-tracking policy (moto makes only ours: 1 PutMetricAlarm below)
ALARMS = 3
SCHEDULED_INVOCATIONS = 30 * 24 * 12  # the reaper every 5 minutes, idle or not (an assumption of the template)
# Lambda's SQS event source mapping long-polls the events queue while idle: AWS runs ~5 pollers, each a
# 20 s ReceiveMessage (an estimate; AWS does not publish the number). Within SQS's 1M free requests a month.
IDLE_SQS_RECEIVES = 5 * 3 * 60 * 24 * 30


def per_image_calls(results: dict[str, Counter]) -> Counter:
    """What one image costs in AWS calls: txt2img create, the polls, the completion, the image URLs."""
    total = Counter(results["POST /inference/v2"])
    for _ in range(POLLS_PER_IMAGE):
        total.update(results["GET /inference/get-inference-job"])
    total.update(results["completion (SQS handler)"])
    total.update(results["GET /inference/get-inference-job (done)"])
    total.update(results["GET /inference/get-inference-job-image-output"])
    return total


def month_cost(images: int, calls: Counter, reaper: Counter) -> dict[str, float]:
    price = {name: value for name, (value, _) in PRICES.items()}
    by = Counter()
    for op, count in calls.items():
        service, name = op.split(".", 1)
        by[service, name] += count * images
    ddb_w = sum(c for (s, n), c in by.items() if s == "dynamodb" and n in (
        "PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"))
    ddb_r = sum(c for (s, _), c in by.items() if s == "dynamodb") - ddb_w
    s3_put = sum(c for (s, n), c in by.items() if s == "s3" and n in (
        "PutObject", "CopyObject", "ListObjectsV2", "CreateMultipartUpload", "CompleteMultipartUpload", "UploadPart"))
    s3_get = sum(c for (s, _), c in by.items() if s == "s3") - s3_put
    sqs = sum(c for (s, _), c in by.items() if s == "sqs")
    sns = sum(c for (s, _), c in by.items() if s == "sns")
    secrets = sum(c for (s, _), c in by.items() if s == "secretsmanager")
    requests_per_image = 1 + POLLS_PER_IMAGE + 2  # API Gateway + Lambda: create, polls, done, images
    lambda_requests = images * (requests_per_image + 1) + SCHEDULED_INVOCATIONS  # + the SQS completion
    for op, count in reaper.items():  # the scheduled reaper runs whether or not there are images
        by[tuple(op.split(".", 1))] += count * SCHEDULED_INVOCATIONS
    # 1 KiB items: one read/write request unit per call (a Query of a page counts one RRU per 4 KB read: a
    # lower bound); SageMaker also writes the answer (PUT) and reads the request (GET) per image.
    return {
        "DynamoDB": ddb_w / 1e6 * price["dynamodb_write_per_m"] + ddb_r / 1e6 * price["dynamodb_read_per_m"],
        "S3 requests": (s3_put + images) / 1e3 * price["s3_put_per_k"] + (s3_get + images) / 1e3 * price["s3_get_per_k"],
        "S3 storage (images kept 1 month)": images * IMAGE_MB / 1024 * price["s3_gb_month"],
        "SQS + SNS (incl. idle polling)": (sqs + IDLE_SQS_RECEIVES) / 1e6 * price["sqs_per_m"]
                                          + (sns + images) / 1e6 * price["sns_per_m"],
        "API Gateway REST": images * requests_per_image / 1e6 * price["apigw_per_m"],
        "Lambda": lambda_requests / 1e6 * price["lambda_per_m"]
                  + lambda_requests * LAMBDA_GB * LAMBDA_S_PER_REQUEST * price["lambda_gb_s"],
        "Secrets Manager": SECRETS * price["secret_month"] + secrets / 1e4 * price["secrets_per_10k"],
        "CloudWatch alarms": ALARMS * price["cw_alarm_month"],
        "SageMaker ml.g5.xlarge (min 0)": images * SECONDS_PER_IMAGE / 3600 * price["sagemaker_g5_xlarge_h"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,500")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    fake = AsyncInference(f"http://{host}:{port}")
    fake.install()
    try:
        runs = {n: measure(fake, n) for n in sizes}
    finally:
        fake.uninstall()
        server.stop()

    print(f"\nAWS calls per request (moto {__import__('moto').__version__}; tables filled with N records each)\n")
    print(f"| route | calls by service.operation (N={sizes[-1]}) | " + " | ".join(f"N={n}" for n in sizes) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in sizes) + " |")
    grows = []
    for route in runs[sizes[-1]]:
        counts = [sum(runs[n].get(route, Counter()).values()) for n in sizes]
        detail = ", ".join(f"{op} {c}" for op, c in sorted(runs[sizes[-1]][route].items()))
        print(f"| {route} | {detail or '-'} | " + " | ".join(str(c) for c in counts) + " |")
        # background windows also catch the poller's idle 1 s ReceiveMessage calls: those are not the work's
        work = [sum(c for op, c in runs[n].get(route, Counter()).items() if op != "sqs.ReceiveMessage"
                    or route.startswith("GET ")) for n in sizes]
        if len(set(work)) > 1:
            grows.append((route, work))
    print("\nroutes whose count (idle SQS polls aside) changes with N: "
          + (", ".join(f"{r} {c}" for r, c in grows) or "none"))

    calls = per_image_calls(runs[sizes[-1]])
    print(f"\nAWS calls per image (create + {POLLS_PER_IMAGE} polls + completion + done + images): "
          + ", ".join(f"{op} {c}" for op, c in sorted(calls.items())) + f" = {sum(calls.values())}")
    images_list = (0, 1_000, 100_000)
    costs = {images: month_cost(images, calls, runs[sizes[-1]]["reaper (one scheduled run)"]) for images in images_list}
    print(f"\nOne month in us-east-1, USD (assumed {SECONDS_PER_IMAGE:.0f} s/image on ml.g5.xlarge, "
          f"{IMAGE_MB} MB/image, Lambda {LAMBDA_GB:.0f} GB x {LAMBDA_S_PER_REQUEST} s/request)\n")
    print("| item | " + " | ".join(f"{i:,} images" for i in images_list) + " |")
    print("| --- | " + " | ".join("---:" for _ in images_list) + " |")
    for item in costs[0]:
        print(f"| {item} | " + " | ".join(f"{costs[i][item]:.2f}" for i in images_list) + " |")
    print("| **total** | " + " | ".join(f"**{sum(costs[i].values()):.2f}**" for i in images_list) + " |")
    print("\nPrices used (re-check on the pages named; remembered as of 2026-12):")
    for name, (value, source) in PRICES.items():
        print(f"- {name} = {value}: {source}")


if __name__ == "__main__":
    main()
