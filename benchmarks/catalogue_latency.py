"""Middleware benchmark: GET /checkpoints latency with a big catalogue, and the cost of the API layer.

    cd /work/main && .venv/bin/python benchmarks/catalogue_latency.py [--records 10000] [--kinds Lora,VAE,...]
        [--requests 50] [--threads 8] [--seconds 5] [--rounds 3] [--breakdown] [--work-dir DIR]

What it does:
1. Fills a fresh data dir's store (store.sqlite3) with --records checkpoint records BEFORE the server
   starts, through the store API (`SQLiteStore.create`, one transaction each, as the server writes them).
   Each record is made by `CheckpointService.new_record` and then given what a completed upload adds
   (`Active`, per-file sha256/size, parts_number, upload_id), so it is shaped exactly like a real one.
   The types cycle through --kinds (default all six), so `?types=Lora` matches one record in six.
2. Starts a real `sd-aws serve` (a subprocess on 127.0.0.1) on that data dir and times --requests
   sequential `GET /checkpoints` (after 3 warm-up requests), then `?types=Lora`, then
   `GET /inference/get-lora-list` (the WebUI's LoRA dropdown, served from the same catalogue):
   median and p99 (nearest rank: with 50 requests, p99 is the slowest one).
3. Requests/s of `GET /inference/test-connection` on that server against `GET /bare` of a bare FastAPI
   app on uvicorn with the same settings (one process, log_level warning) in its own subprocess: --threads
   client threads, one requests.Session each, for --seconds per measurement; --rounds alternating rounds
   (app, bare, app, bare...), so that other load on the machine hits both. Median of each, and the ratio;
   also each server's CPU time per request (from /proc/<pid>/stat), which other load disturbs far less
   than requests/s does.
4. With --breakdown: the GET /checkpoints pipeline run in this process on the same store, stage by
   stage (store read + JSON decode, listed_checkpoint, FastAPI's response validation + serialization),
   then the top functions of a cProfile of one pass.

All load goes to 127.0.0.1 only, bounded in threads and time. The clients share the machine's cores
with the server: on a 2-core machine requests/s is a comparison, not a capacity figure.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import secrets
import statistics
import sys
import time
from pathlib import Path

import requests
from _common import API_KEY, bare_server, closed_loop, latency_summary, machine, middleware, temp_dir

from aws_extension.middleware.services.checkpoints import ACTIVE, TABLE, listed_checkpoint
from aws_extension.middleware.wiring import build_services
from aws_extension.settings import MiddlewareSettings, load
from aws_extension.vocabulary import MODEL_TYPES


def fill_store(data_dir: Path, count: int, kinds: tuple[str, ...] = MODEL_TYPES) -> float:
    """`count` Active checkpoint records, shaped as a completed upload leaves them; returns seconds taken."""
    services = build_services(load(MiddlewareSettings, data_dir=data_dir))
    start = time.perf_counter()
    try:
        for i in range(count):
            kind = kinds[i % len(kinds)]
            filename = f"bench-{kind.lower()}-{i:05d}.safetensors"
            record = services.checkpoints.new_record(kind, [filename], {"description": f"benchmark record {i}"},
                                                     source="upload")
            size = 1_000_000 + i
            digest = secrets.token_hex(32)
            files = [{**record["files"][0], "parts_number": 1, "upload_id": secrets.token_hex(16),
                      "sha256": digest, "size": size}]
            record.update(status=ACTIVE, files=files, completing=None, error=None, names=[filename], name=filename,
                          sha256=digest, size=size)
            services.store.create(TABLE, record)
    finally:
        services.store.close()
    return time.perf_counter() - start


def time_gets(session: requests.Session, url: str, count: int) -> tuple[list[float], int, int]:
    """`count` sequential GETs after 3 warm-ups; returns (seconds each, entries, bytes) of the last answer."""
    headers = {"x-api-key": API_KEY}
    for _ in range(3):
        session.get(url, headers=headers, timeout=60).raise_for_status()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        response = session.get(url, headers=headers, timeout=60)
        response.raise_for_status()
        body = response.content
        times.append(time.perf_counter() - start)
    answer = response.json()
    return times, len(answer["checkpoints"] if isinstance(answer, dict) else answer), len(body)


def requests_per_second(url: str, headers: dict[str, str], threads: int, seconds: float,
                        server_pid: int) -> tuple[float, int, float]:
    """Closed loop on one URL (see `closed_loop`): (requests/s, errors, server CPU microseconds per request)."""
    result = closed_loop(lambda _n: url, headers, threads, seconds, server_pid)
    return result["rps"], result["errors"], result["server_cpu_per_request_s"] * 1e6


def breakdown(data_dir: Path, repeats: int = 5) -> None:
    """The GET /checkpoints pipeline, stage by stage, in this process (same code the route runs)."""
    from aws_extension.middleware.routes.checkpoints import router

    services = build_services(load(MiddlewareSettings, data_dir=data_dir))
    route = next(r for r in router.routes if getattr(r, "path", None) == "/checkpoints")

    def one_pass(stages: dict[str, list[float]]) -> None:
        t0 = time.perf_counter()
        records = services.checkpoints.list([], [])
        t1 = time.perf_counter()
        body = {"statusCode": 200, "checkpoints": [listed_checkpoint(r) for r in records]}
        t2 = time.perf_counter()
        # What FastAPI's serialize_response does with the route's `-> dict` answer: validate it against the
        # response field, then dump it to JSON (its fast path for the default response class).
        field = route.response_field
        value, errors = field.validate(body, {}, loc=("response",))
        assert not errors, errors
        field.serialize_json(value, by_alias=True)
        t3 = time.perf_counter()
        for name, seconds in (("store.list pages + json.loads", t1 - t0), ("listed_checkpoint x N", t2 - t1),
                              ("FastAPI validate + serialize", t3 - t2), ("total", t3 - t0)):
            stages.setdefault(name, []).append(seconds)

    try:
        stages: dict[str, list[float]] = {}
        for _ in range(repeats):
            one_pass(stages)
        print(f"breakdown of GET /checkpoints (all records), median of {repeats} passes in this process:")
        for name, values in stages.items():
            print(f"    {name:32s} {statistics.median(values) * 1000:8.1f} ms")
        profiler = cProfile.Profile()
        profiler.enable()
        one_pass({})
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        print("cProfile of one pass (by own time):")
        print("\n".join("    " + line for line in out.getvalue().splitlines() if line.strip())[:4000])
    finally:
        services.store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000, help="checkpoint records in the store")
    parser.add_argument("--kinds", default=",".join(MODEL_TYPES),
                        help="checkpoint types the records cycle through (default: all six)")
    parser.add_argument("--requests", type=int, default=50, help="timed GET /checkpoints per variant")
    parser.add_argument("--threads", type=int, default=8, help="client threads for requests/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per requests/s measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating requests/s rounds (default 3)")
    parser.add_argument("--breakdown", action="store_true", help="also time the route's stages in-process")
    parser.add_argument("--work-dir", default=None, help="where the temp dir goes (default: system temp)")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    with temp_dir("sd-aws-catalogue-bench-", args.work_dir) as work:
        data_dir = work / "data"
        kinds = tuple(k for k in args.kinds.split(",") if k)
        unknown = set(kinds) - set(MODEL_TYPES)
        if unknown or not kinds:
            parser.error(f"--kinds: use types among {', '.join(MODEL_TYPES)}")
        fill_s = fill_store(data_dir, args.records, kinds)
        print(f"store: {args.records} Active checkpoint records ({', '.join(kinds)} in turn) inserted in {fill_s:.1f} s "
              f"({args.records / fill_s:.0f} records/s), {(data_dir / 'store.sqlite3').stat().st_size / 1e6:.1f} MB "
              "(+ WAL)")

        with middleware(data_dir) as server, requests.Session() as session:
            for path in ("/checkpoints", "/checkpoints?types=Lora", "/inference/get-lora-list"):
                times, entries, size = time_gets(session, server.url + path, args.requests)
                print(f"GET {path:28s} {entries:6d} entries, {size / 1e6:5.2f} MB: {latency_summary(times)}")
            with bare_server() as (bare_url, bare_pid):
                # Both servers are up; the measurements alternate, so a change in the machine's load hits both.
                app_runs, bare_runs = [], []
                for round_number in range(1, args.rounds + 1):
                    app_runs.append(requests_per_second(f"{server.url}/inference/test-connection",
                                                        {"x-api-key": API_KEY}, args.threads, args.seconds,
                                                        server.process.pid))
                    bare_runs.append(requests_per_second(f"{bare_url}/bare", {}, args.threads, args.seconds, bare_pid))
                    print(f"round {round_number}: test-connection {app_runs[-1][0]:6.0f} req/s "
                          f"({app_runs[-1][2]:.0f} us server CPU/req), bare {bare_runs[-1][0]:6.0f} req/s "
                          f"({bare_runs[-1][2]:.0f} us server CPU/req)", flush=True)
        rps_app, rps_bare = (statistics.median(r[0] for r in runs) for runs in (app_runs, bare_runs))
        cpu_app, cpu_bare = (statistics.median(r[2] for r in runs) for runs in (app_runs, bare_runs))
        print(f"GET /inference/test-connection (sd-aws serve): {rps_app:7.0f} req/s, {cpu_app:5.0f} us server CPU/req "
              f"(medians of {args.rounds}; {sum(r[1] for r in app_runs)} errors)")
        print(f"GET /bare (bare FastAPI on uvicorn):           {rps_bare:7.0f} req/s, {cpu_bare:5.0f} us server CPU/req "
              f"(medians of {args.rounds}; {sum(r[1] for r in bare_runs)} errors)")
        print(f"ratio sd-aws / bare: requests/s {rps_app / rps_bare:.2f}, server CPU per request {cpu_app / cpu_bare:.2f} "
              f"({args.threads} client threads, {args.seconds:g} s per measurement)", flush=True)

        if args.breakdown:
            breakdown(data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
