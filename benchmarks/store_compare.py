"""Store benchmark: the same request mix on SQLiteStore and on DynamoDBStore (moto, in-process).

    cd /work/wt-dynamodb && /work/main/.venv/bin/python benchmarks/store_compare.py [--sizes 1000,10000]
        [--ops 50]

For each size, both stores are filled with that many inference jobs (5 endpoints; 20 jobs per endpoint
queued, the rest ended, as in a long-running deployment), then each operation runs --ops times:
`create` a job, `get` one, `update` with `expect` (a queue claim: queued → running), `list` with a filter
(an endpoint's newest 20 jobs), `list queue` (an endpoint's oldest 8 queued jobs, as `claim_next` reads
them), `count` (an endpoint's backlog, as `JobQueue.backlog`). Printed: ops/s of each store and the
DynamoDB calls per operation (counted with a botocore `before-call` hook), which must not grow with the
size. moto's speed says nothing about DynamoDB's (a network round trip each call, ~5-10 ms); the calls
per operation do.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common  # noqa: F401 - puts this checkout first on sys.path

from aws_extension.middleware.records import JOBS, InferenceJob
from aws_extension.middleware.store.sqlite import SQLiteStore
from aws_extension.middleware.store.typed import Records
from aws_extension.vocabulary import JobStatus

ENDPOINTS = [f"ep-{i}" for i in range(5)]
QUEUED_PER_ENDPOINT = 20


def _job(i: int, queued: bool) -> InferenceJob:
    return InferenceJob(
        id=f"job-{i:07d}", task="txt2img", status=JobStatus.INPROGRESS if queued else JobStatus.SUCCEED,
        endpoint=ENDPOINTS[i % len(ENDPOINTS)], created=1_700_000_000.0 + i * 0.25, start_time="",
        params_key=f"params/{i}.json", output_path=f"out/{i}", queue_state="queued" if queued else None,
        timings={"total": 2.5, "load": 1.0}, image_names=[f"{i}-0.png"])


def _fill(jobs: Records[InferenceJob], size: int) -> None:
    queued_from = size - QUEUED_PER_ENDPOINT * len(ENDPOINTS)
    for i in range(size):
        jobs.create(_job(i, queued=i >= queued_from))


def _mix(jobs: Records[InferenceJob], size: int) -> dict[str, Callable[[int], Any]]:
    claimable = [f"job-{i:07d}" for i in range(size - QUEUED_PER_ENDPOINT * len(ENDPOINTS), size)]
    return {
        "create": lambda n: jobs.create(_job(size + n, queued=False)),
        "get": lambda n: jobs.get(f"job-{(n * 37) % size:07d}"),
        # claim a queued job, then put it back: the queue keeps its length for the reads below
        "update(expect)": lambda n: jobs.update(claimable[(n // 2) % len(claimable)],
                                                {"queue_state": ("running", "queued")[n % 2]},
                                                expect={"queue_state": ("queued", "running")[n % 2]}),
        "list(filter)": lambda n: jobs.page({"endpoint": [ENDPOINTS[n % 5]]}, limit=20),
        "list queue": lambda n: jobs.page({"endpoint": [ENDPOINTS[n % 5]], "queue_state": ["queued"]},
                                          limit=8, oldest_first=True),
        "count": lambda n: jobs.count({"endpoint": [ENDPOINTS[n % 5]], "queue_state": ["queued"]}),
    }


def _run(jobs: Records[InferenceJob], size: int, ops: int, calls: list[str] | None) -> dict[str, tuple[float, float]]:
    """operation → (ops/s, DynamoDB calls per op)."""
    results = {}
    for name, operation in _mix(jobs, size).items():
        before = len(calls) if calls is not None else 0
        start = time.perf_counter()
        for n in range(ops):
            operation(n)
        elapsed = time.perf_counter() - start
        per_op = (len(calls) - before) / ops if calls is not None else 0.0
        results[name] = (ops / elapsed, per_op)
    return results


def _sqlite(size: int, ops: int) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="store-bench-") as work:
        store = SQLiteStore(Path(work) / "store.sqlite3")
        jobs = Records(store, JOBS, InferenceJob)
        _fill(jobs, size)
        try:
            return _run(jobs, size, ops, None)
        finally:
            store.close()


def _dynamodb(size: int, ops: int) -> tuple[dict[str, tuple[float, float]], float]:
    from moto import mock_aws

    from aws_extension.middleware.store.dynamodb import DynamoDBStore

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_SESSION_TOKEN="testing", AWS_DEFAULT_REGION="us-east-1")
    with mock_aws():
        store = DynamoDBStore("bench")
        store.ensure_tables([JOBS])
        jobs = Records(store, JOBS, InferenceJob)
        calls: list[str] = []
        store.client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
        _fill(jobs, size)
        fill_calls = len(calls) / size
        try:
            return _run(jobs, size, ops, calls), fill_calls
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--ops", type=int, default=50)
    args = parser.parse_args()
    print(f"{'items':>6}  {'operation':<15} {'sqlite ops/s':>12} {'moto ops/s':>11} {'DynamoDB calls/op':>18}")
    for size in (int(s) for s in args.sizes.split(",")):
        sqlite = _sqlite(size, args.ops)
        dynamodb, fill_calls = _dynamodb(size, args.ops)
        for name, (sqlite_rate, _) in sqlite.items():
            rate, per_op = dynamodb[name]
            print(f"{size:>6}  {name:<15} {sqlite_rate:>12.0f} {rate:>11.0f} {per_op:>18.2f}")
        print(f"{size:>6}  {'(fill: create)':<15} {'':>12} {'':>11} {fill_calls:>18.2f}")


if __name__ == "__main__":
    main()
