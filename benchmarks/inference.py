"""Inference benchmark: middleware overhead per job, dispatch latency, status polling, throughput.

    cd /work/main && .venv/bin/python benchmarks/inference.py [--jobs 50] [--steps 4] [--size 64]
        [--poll-ms 20] [--records 10000] [--threads 8] [--seconds 5] [--throughput-jobs 40]
        [--workers 1,2] [--worker-env OMP_NUM_THREADS=1] [--skip-overhead] [--skip-polling]
        [--skip-throughput] [--work-dir DIR]

Everything runs on this machine against a real `sd-aws serve` (a subprocess on 127.0.0.1, temp data dir)
and its local endpoints (`sd-aws worker` processes, diffusers engine) with the tiny random-weight model
(`sd-aws make-tiny-model`), txt2img at --size x --size, --steps steps, registered through the API as
`sd-aws up` does it. Run by hand, never in pytest.

1. Overhead (--jobs sequential jobs on one idle worker, after 2 warm-up jobs that fetch the model and
   build the pipeline): end-to-end wall time from the client's POST /inference/v2 to the client seeing
   `succeed` (GET /inference/get-inference-job every --poll-ms), minus the worker's own `timings.run_s`.
   Median and p90, plus the medians of the record's split (queued_s, load_s, run_s, upload_s) and what
   is left (HTTP to and from the worker, completion, the client's polling). The polling interval's
   share is estimated from the polls themselves: the detection delay is on average half a poll cycle.
2. Dispatch latency of the same jobs: `timings.queued_s` = `dispatched_at - created` of the record (the
   dispatcher's claim, time.time() on the server on both sides). Median and p99 (nearest rank).
3. Status polling: --records succeed job records (made by `InferenceService._new_job` then completed as
   `complete()` leaves them) inserted into a fresh data dir's store.sqlite3 through `SQLiteStore.create`
   BEFORE the server starts; then --threads client threads for --seconds each on
   GET /inference/get-inference-job?jobID=<random existing id> and GET /inference/list-inference-jobs?limit=100:
   requests/s, p50/p99 latency and the server's CPU per request.
4. Throughput: --throughput-jobs jobs submitted at once (8 submitting threads) to an endpoint of N
   workers for each N in --workers (a fresh endpoint each time, the previous one deleted; 2 warm-up jobs
   per worker first). jobs/min from the first submit to the client seeing the last job end, and from
   the records (first startTime to last completeTime); CPU seconds used meanwhile by each worker, by the
   middleware and by the whole machine (/proc), to tell what limits it.

--worker-env KEY=VALUE (repeatable) is put in the middleware's environment, which its workers inherit
(e.g. OMP_NUM_THREADS=1 to give each worker's torch one intra-op thread). The temp dir is removed and
every server is stopped on exit (the workers die with the middleware).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from _common import (
    API_KEY,
    REPO,
    closed_loop,
    cpu_seconds,
    machine,
    middleware,
    percentile,
    process_pids,
    system_cpu_seconds,
    temp_dir,
)

from aws_extension.client import MiddlewareClient

MODEL = "tiny-sd.safetensors"
TERMINAL = ("succeed", "failed", "cancelled")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def med_p(values: list[float], q: float) -> str:
    return f"median {ms(statistics.median(values))}, p{q:g} {ms(percentile(values, q))}"


def make_model(out: Path) -> None:
    """The tiny checkpoint, written by `sd-aws make-tiny-model` (torch stays out of this process)."""
    subprocess.run([sys.executable, "-m", "aws_extension", "make-tiny-model", str(out)], cwd=REPO, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)


def job_body(endpoint: str, args: argparse.Namespace, seed: int) -> dict:
    return {"task_type": "txt2img", "models": {"Stable-diffusion": [MODEL]}, "sagemaker_endpoint_name": endpoint,
            "prompt": "a cute panda", "width": args.size, "height": args.size, "steps": args.steps, "seed": seed}


def deploy(client: MiddlewareClient, name: str, count: int) -> None:
    job = client.deploy_endpoint("local", count, endpoint_name=name)
    record = client.wait_for_endpoint(job["EndpointDeploymentJobId"], timeout_s=600, poll_s=0.5)
    if record["endpoint_status"] != "InService":
        raise RuntimeError(f"endpoint {name} is {record['endpoint_status']}: {record.get('error')}")


def wait_all(client: MiddlewareClient, ids: list[str], timeout_s: float, poll_s: float = 0.05) -> dict[str, dict]:
    """Poll the jobs in submission order until every one has ended; returns the final records."""
    deadline = time.monotonic() + timeout_s
    final: dict[str, dict] = {}
    for job_id in ids:
        while True:
            job = client.inference_job(job_id)
            if job["status"] in TERMINAL:
                final[job_id] = job
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
            time.sleep(poll_s)
    failed = [j for j in final.values() if j["status"] != "succeed"]
    if failed:
        raise RuntimeError(f"{len(failed)} jobs did not succeed, e.g. {failed[0]['status']}: {failed[0]['error']}")
    return final


def warm_up(client: MiddlewareClient, endpoint: str, args: argparse.Namespace, count: int) -> None:
    with ThreadPoolExecutor(count) as pool:
        ids = list(pool.map(lambda i: client.create_inference(job_body(endpoint, args, 1000 + i))["inference_id"],
                            range(count)))
    wait_all(client, ids, timeout_s=600)


def parse_time(text: str) -> float:
    from datetime import datetime, timezone

    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


# -- 1 and 2: overhead and dispatch ------------------------------------------------------------------------
def overhead(client: MiddlewareClient, endpoint: str, args: argparse.Namespace) -> None:
    poll_s = args.poll_ms / 1000
    headers = {"x-api-key": API_KEY, "Accept": "application/json"}
    rows = []
    with requests.Session() as session:
        for i in range(args.jobs):
            started = time.perf_counter()
            job_id = client.create_inference(job_body(endpoint, args, i))["inference_id"]
            submitted = time.perf_counter()
            polls, poll_times = 0, []
            while True:
                t0 = time.perf_counter()
                response = session.get(client.api_url + "/inference/get-inference-job", params={"jobID": job_id},
                                       headers=headers, timeout=60)
                response.raise_for_status()
                job = response.json()
                poll_times.append(time.perf_counter() - t0)
                polls += 1
                if job["status"] in TERMINAL:
                    break
                if time.perf_counter() - started > 300:
                    raise RuntimeError(f"job {job_id} still {job['status']} after 300 s")
                time.sleep(poll_s)
            seen = time.perf_counter()
            if job["status"] != "succeed":
                raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
            t = job["timings"]
            rows.append({"e2e": seen - started, "submit": submitted - started, "polls": polls,
                         "poll_get": statistics.median(poll_times), **{k: t.get(k, 0.0) for k in
                                                                     ("queued_s", "load_s", "run_s", "upload_s")}})

    def col(name: str) -> list[float]:
        return [r[name] for r in rows]

    over = [r["e2e"] - r["run_s"] for r in rows]
    other = [r["e2e"] - r["queued_s"] - r["load_s"] - r["run_s"] - r["upload_s"] for r in rows]
    cycle = statistics.median(col("poll_get")) + poll_s
    print(f"\n1. Overhead per job ({args.jobs} sequential jobs, {args.size}x{args.size}, {args.steps} steps, "
          f"one idle worker, polling every {args.poll_ms:g} ms)")
    print(f"    end-to-end (submit -> client sees succeed): {med_p(col('e2e'), 90)}")
    print(f"    worker run_s:                               {med_p(col('run_s'), 90)}")
    print(f"    OVERHEAD e2e - run_s:                       {med_p(over, 90)}, "
          f"min {ms(min(over))}, max {ms(max(over))}")
    print("    split, medians: " + ", ".join(f"{k} {ms(statistics.median(col(k)))}"
                                             for k in ("queued_s", "load_s", "run_s", "upload_s")))
    print(f"    POST /inference/v2 answered in: {med_p(col('submit'), 90)}")
    print(f"    rest (e2e - queued - load - run - upload: POST before `created`, HTTP to/from the worker, "
          f"completion, detection by polling): {med_p(other, 90)}")
    print(f"    polling: {statistics.median(col('polls')):.0f} GETs per job (median), each "
          f"{ms(statistics.median(col('poll_get')))} (median); cycle {ms(cycle)} -> the end is seen on average "
          f"~{ms(cycle / 2)} after it happens (half a cycle), at most ~{ms(cycle)}")
    queued = col("queued_s")
    print(f"\n2. Dispatch latency (timings.queued_s = dispatched_at - created, idle worker, n={len(queued)}): "
          f"{med_p(queued, 99)}, min {ms(min(queued))}, max {ms(max(queued))}")


# -- 3: status polling -----------------------------------------------------------------------------------
def fill_jobs(data_dir: Path, count: int) -> tuple[list[str], float]:
    """`count` succeed txt2img records, shaped as `_new_job` makes them and `complete()` leaves them."""
    from aws_extension.middleware.records import JobModel
    from aws_extension.middleware.services.names import time_text
    from aws_extension.middleware.wiring import build_services
    from aws_extension.settings import MiddlewareSettings, load
    from aws_extension.vocabulary import JobStatus

    services = build_services(load(MiddlewareSettings, data_dir=data_dir))
    model = JobModel(type="Stable-diffusion", name=MODEL, sha256="0" * 64, key=f"models/Stable-diffusion/x/{MODEL}")
    ids = []
    start = time.perf_counter()
    try:
        for i in range(count):
            job = services.jobs._new_job("txt2img", "bench-endpoint", [model], None)
            timings = {"load_s": 0.002, "run_s": 0.25, "upload_s": 0.01, "queued_s": 0.003}
            job.queue_state, job.worker, job.dispatched_at, job.attempts = None, "bench-endpoint/0", job.created + 0.003, 1
            job.complete_time, job.timings, job.status = time_text(job.created + 0.3), timings, JobStatus.SUCCEED
            job.progress, job.image_names = 1.0, ["image_0.png"]
            job.worker_answer = json.dumps({"status": "succeed", "job_id": job.id, "image_count": 1, "info": "{}",
                                            "parameters": {"prompt": f"benchmark record {i}"}, "timings": timings})
            services.jobs.records.create(job)
            ids.append(job.id)
    finally:
        services.store.close()
        services.compute.stop()
    return ids, time.perf_counter() - start


def polling(work: Path, args: argparse.Namespace) -> None:
    data_dir = work / "poll-data"
    ids, fill_s = fill_jobs(data_dir, args.records)
    size = (data_dir / "store.sqlite3").stat().st_size / 1e6
    print(f"\n3. Status polling: {args.records} succeed job records inserted in {fill_s:.1f} s "
          f"({args.records / fill_s:.0f}/s, store {size:.1f} MB + WAL); {args.threads} client threads, "
          f"{args.seconds:g} s each")
    headers = {"x-api-key": API_KEY, "Accept": "application/json"}
    with middleware(data_dir) as server:
        pid = server.process.pid
        rng = random.Random(1)
        routes = {
            "GET /inference/get-inference-job?jobID=<random>":
                lambda n: f"{server.url}/inference/get-inference-job?jobID={rng.choice(ids)}",
            "GET /inference/list-inference-jobs?limit=100":
                lambda n: f"{server.url}/inference/list-inference-jobs?limit=100",
        }
        for name, url_for in routes.items():
            load = os.getloadavg()[0]
            busy0, total0 = system_cpu_seconds()
            result = closed_loop(url_for, headers, args.threads, args.seconds, pid)
            busy1, total1 = system_cpu_seconds()
            lat = result["latencies"]
            print(f"    {name}: {result['rps']:.0f} req/s, p50 {ms(statistics.median(lat))}, "
                  f"p99 {ms(percentile(lat, 99))}, max {ms(max(lat))}, errors {result['errors']}, "
                  f"server CPU {result['server_cpu_per_request_s'] * 1e6:.0f} µs/request, "
                  f"machine busy {(busy1 - busy0) / (total1 - total0) * 100:.0f}% of all cores, load {load:.1f}")


# -- 4: throughput ---------------------------------------------------------------------------------------
def throughput(client: MiddlewareClient, server_pid: int, data_dir: Path, workers: int,
               args: argparse.Namespace) -> dict:
    name = f"bench-tp-{workers}"
    deploy(client, name, workers)
    warm_up(client, name, args, 2 * workers)
    pids = process_pids(str(data_dir / "endpoints" / name))
    cpu0 = {p: cpu_seconds(p) for p in pids}
    server0 = cpu_seconds(server_pid)
    busy0, total0 = system_cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: client.create_inference(job_body(name, args, i))["inference_id"],
                            range(args.throughput_jobs)))
    submitted = time.perf_counter() - started
    final = wait_all(client, ids, timeout_s=1800)
    elapsed = time.perf_counter() - started
    busy1, total1 = system_cpu_seconds()
    worker_cpu = {p: cpu_seconds(p) - cpu0[p] for p in pids}
    server_cpu = cpu_seconds(server_pid) - server0
    first_start = min(parse_time(j["startTime"]) for j in final.values())
    last_end = max(parse_time(j["completeTime"]) for j in final.values())
    runs = [j["timings"]["run_s"] for j in final.values()]
    client.delete_endpoints([name])
    result = {"workers": workers, "elapsed": elapsed, "server_span": last_end - first_start, "submitted": submitted,
              "per_min": args.throughput_jobs / elapsed * 60, "run_med": statistics.median(runs),
              "worker_cpu": worker_cpu, "server_cpu": server_cpu, "machine_busy": busy1 - busy0,
              "machine_total": total1 - total0, "load": os.getloadavg()[0]}
    print(f"    {workers} worker(s): {args.throughput_jobs} jobs in {elapsed:.1f} s -> {result['per_min']:.0f} jobs/min "
          f"(records: first start to last end {result['server_span']:.1f} s -> "
          f"{args.throughput_jobs / result['server_span'] * 60:.0f} jobs/min); submitting took {submitted:.2f} s; "
          f"run_s median {ms(result['run_med'])}")
    cores = os.cpu_count() or 1
    print("        CPU meanwhile: workers " + ", ".join(f"pid {p} {c:.1f} s ({c / elapsed * 100:.0f}% of a core)"
                                                     for p, c in worker_cpu.items())
          + f"; middleware {server_cpu:.1f} s ({server_cpu / elapsed * 100:.0f}% of a core); whole machine "
          f"{result['machine_busy']:.1f} of {result['machine_total']:.1f} core-s busy "
          f"({result['machine_busy'] / result['machine_total'] * 100:.0f}% of {cores} cores); "
          f"load {result['load']:.1f}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="sequential jobs for overhead and dispatch")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="width = height")
    parser.add_argument("--poll-ms", type=float, default=20.0, help="client polling interval in the overhead part")
    parser.add_argument("--records", type=int, default=10_000, help="job records in the store for polling")
    parser.add_argument("--threads", type=int, default=8, help="client threads for polling")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per polling measurement")
    parser.add_argument("--throughput-jobs", type=int, default=40)
    parser.add_argument("--workers", default="1,2", help="worker counts for the throughput part")
    parser.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the middleware and so its workers (repeatable)")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--skip-polling", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--work-dir", default=None, help="where the temp dir goes (default: system temp)")
    args = parser.parse_args()
    env = dict(kv.split("=", 1) for kv in args.worker_env)
    worker_counts = [int(n) for n in args.workers.split(",") if n]

    print(f"machine: {machine()}")
    print(f"command: {' '.join(sys.argv)}")
    with temp_dir("sd-aws-inference-bench-", args.work_dir) as work:
        if not (args.skip_overhead and args.skip_throughput):
            model = work / MODEL
            make_model(model)
            data_dir = work / "data"
            with middleware(data_dir, env) as server:
                client = MiddlewareClient(server.url, API_KEY, timeout_s=120)
                client.upload_checkpoint_files("Stable-diffusion", [model])
                if not args.skip_overhead:
                    deploy(client, "bench-1", 1)
                    warm_up(client, "bench-1", args, 2)
                    overhead(client, "bench-1", args)
                    client.delete_endpoints(["bench-1"])
                if not args.skip_throughput:
                    print(f"\n4. Throughput: {args.throughput_jobs} jobs submitted at once "
                          f"({args.size}x{args.size}, {args.steps} steps){'; env ' + str(env) if env else ''}")
                    results = [throughput(client, server.process.pid, data_dir, n, args) for n in worker_counts]
                    if len(results) > 1:
                        base = results[0]["per_min"]
                        print("    speed-up over " + f"{results[0]['workers']} worker(s): " + ", ".join(
                            f"{r['workers']}: x{r['per_min'] / base:.2f}" for r in results[1:]))
        if not args.skip_polling:
            polling(work, args)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
