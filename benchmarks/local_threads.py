"""Local workers' CPU threads: jobs/min and per-job latency of a local endpoint of 1 and 2 workers, with the
old thread settings (always split cores + OMP_WAIT_POLICY=PASSIVE), the new ones (one worker: every core
but one, default waiting; several: split cores + passive) and torch's defaults, against a bare worker alone.

    cd /work/wt-webui-engine && /work/main/.venv/bin/python benchmarks/local_threads.py [--jobs 30]
        [--throughput-jobs 30] [--size 64] [--steps 20] [--poll-ms 10] [--workers 1,2] [--settings old,new,defaults] [--skip-bare]

Everything runs on this machine with the tiny model (`sd-aws make-tiny-model`), txt2img --size x --size,
--steps steps, Euler a:
- bare: one `sd-aws worker` process (torch's defaults), --jobs sequential `/sdapi/v1/txt2img` calls.
- each setting x worker count: a real `sd-aws serve` (temp data dir) with a local endpoint of N workers, as
  `sd-aws up` makes it; 2 warm-up jobs per worker, then --jobs sequential jobs (end to end: POST
  /inference/v2 until the client, polling every --poll-ms, sees `succeed`; and the worker's `run_s`), then
  --throughput-jobs jobs submitted at once (jobs/min from the first submit to the last job seen ending).
The old settings are reproduced with the new code by putting them in the middleware's environment, which
wins over the chosen ones. Everything started is stopped and the temp dir removed on exit. Not part of pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from _common import API_KEY, machine, middleware, percentile, temp_dir
from inference import MODEL, TERMINAL, deploy, job_body, make_model, wait_all, warm_up

from aws_extension.client import MiddlewareClient
from aws_extension.middleware.compute.local.processes import WorkerProcesses, _usable_cores
from tests.worker.helpers import WorkerProcess


def old_env(workers: int) -> dict[str, str]:
    """What `_thread_env` gave every worker before: the cores split, passive waiting, even for one."""
    threads = str(max(1, _usable_cores() // workers))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}


def defaults_env(workers: int) -> dict[str, str]:
    """torch's defaults (every core, OpenMP's default waiting), whatever the worker count."""
    return {"OMP_NUM_THREADS": str(_usable_cores()), "MKL_NUM_THREADS": str(_usable_cores())}


# setting -> the environment the middleware (and so its workers) gets; "new" = none, the code chooses.
SETTINGS = {"old": old_env, "new": lambda workers: {}, "defaults": defaults_env}


def summary(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"median {statistics.median(ms):.0f} ms, p90 {percentile(ms, 90):.0f} ms"


def bare_worker(work: Path, model: Path, args: argparse.Namespace) -> None:
    models = work / "bare-models"
    (models / "Stable-diffusion").mkdir(parents=True)
    os.link(model, models / "Stable-diffusion" / MODEL)
    worker = WorkerProcess(models, work / "bare-worker.log")
    payload = {"prompt": "a cute panda", "width": args.size, "height": args.size, "steps": args.steps,
               "sampler_name": "Euler a"}
    try:
        worker.ping_statuses_until_healthy()
        latencies = []
        with requests.Session() as session:
            for i in range(args.jobs + 2):
                started = time.perf_counter()
                session.post(f"{worker.url}/sdapi/v1/txt2img", json={**payload, "seed": i},
                             timeout=300).raise_for_status()
                if i >= 2:  # the first two load the pipeline
                    latencies.append(time.perf_counter() - started)
    finally:
        worker.stop()
    print(f"bare worker (torch defaults), {args.jobs} sequential /sdapi/v1/txt2img: {summary(latencies)}, "
          f"{60 / statistics.mean(latencies):.0f} jobs/min", flush=True)


def sequential(client: MiddlewareClient, endpoint: str, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """End-to-end and worker run_s of --jobs jobs one after the other."""
    e2e, runs = [], []
    for i in range(args.jobs):
        started = time.perf_counter()
        job_id = client.create_inference(job_body(endpoint, args, i))["inference_id"]
        while (job := client.inference_job(job_id))["status"] not in TERMINAL:
            time.sleep(args.poll_ms / 1000)
        if job["status"] != "succeed":
            raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
        e2e.append(time.perf_counter() - started)
        runs.append(job["timings"]["run_s"])
    return e2e, runs


def concurrent(client: MiddlewareClient, endpoint: str, args: argparse.Namespace) -> float:
    """jobs/min of --throughput-jobs jobs submitted at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: client.create_inference(job_body(endpoint, args, 500 + i))["inference_id"],
                            range(args.throughput_jobs)))
    wait_all(client, ids, timeout_s=1800, poll_s=0.02)
    return args.throughput_jobs / (time.perf_counter() - started) * 60


def endpoint_leg(work: Path, model: Path, setting: str, workers: int, args: argparse.Namespace) -> None:
    env = SETTINGS[setting](workers)
    data_dir = work / f"data-{setting}-{workers}"
    with middleware(data_dir, env) as server:
        client = MiddlewareClient(server.url, API_KEY, timeout_s=120)
        client.upload_checkpoint_files("Stable-diffusion", [model])
        name = f"bench-{setting}-{workers}"
        deploy(client, name, workers)
        warm_up(client, name, args, 2 * workers)
        load = os.getloadavg()[0]
        e2e, runs = sequential(client, name, args)
        per_min = concurrent(client, name, args)
        client.delete_endpoints([name])
    chosen = env or WorkerProcesses._thread_env(workers)
    print(f"{setting} settings, {workers} worker(s) {chosen or '(torch defaults)'}: sequential end to end "
          f"{summary(e2e)} (worker run_s {summary(runs)}), {60 / statistics.mean(e2e):.0f} jobs/min one at a time; "
          f"{args.throughput_jobs} at once: {per_min:.0f} jobs/min; load {load:.1f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30, help="sequential jobs per leg")
    parser.add_argument("--throughput-jobs", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--poll-ms", type=float, default=10.0, help="client polling of the sequential jobs")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--settings", default="old,new,defaults", help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--skip-bare", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}, {_usable_cores()} usable cores")
    print(f"command: {' '.join(sys.argv)}", flush=True)
    with temp_dir("sd-aws-threads-bench-") as work:
        model = work / MODEL
        make_model(model)
        if not args.skip_bare:
            bare_worker(work, model, args)
        for workers in (int(n) for n in args.workers.split(",") if n):
            for setting in args.settings.split(","):
                endpoint_leg(work, model, setting, workers, args)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
