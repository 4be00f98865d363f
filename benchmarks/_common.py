"""Shared by the middleware benchmarks: start/stop a real `sd-aws serve` (and a bare uvicorn app), sample a
process's RSS from /proc, describe the machine, summarise timings. Not a benchmark itself.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.helpers import SdAwsProcess, free_port, process_pids  # noqa: E402,F401 - after the path is set; re-exported

API_KEY = "bench-key"
MiB = 1024 * 1024

# A bare FastAPI app on uvicorn with the settings `sd-aws serve` uses (one process, log_level warning): the
# floor that GET /inference/test-connection is compared with. A sync `def` route, like test_connection.
_BARE_APP = """
import sys
import uvicorn
from fastapi import FastAPI

app = FastAPI()

@app.get("/bare")
def bare():
    return {"message": "Success"}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", timeout_graceful_shutdown=10)
"""


@contextmanager
def temp_dir(prefix: str, parent: str | None = None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def middleware(data_dir: Path, env: dict[str, str] | None = None) -> Iterator[SdAwsProcess]:
    """A real `sd-aws serve` on 127.0.0.1 with `data_dir`; stopped (SIGTERM, then kill) on exit."""
    port = free_port()
    server = SdAwsProcess(["serve", "--port", str(port), "--data-dir", str(data_dir)], port,
                          env={"SD_AWS_API_KEY": API_KEY, **(env or {})},
                          log_path=data_dir.parent / f"{data_dir.name}-serve.log")
    try:
        yield server.start()
    finally:
        server.stop()


@contextmanager
def bare_server() -> Iterator[tuple[str, int]]:
    """The bare app in its own process; yields its base URL and pid."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-c", _BARE_APP, str(port)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the bare app exited with {process.returncode}: {process.stderr.read()[-2000:]!r}")
            try:
                if requests.get(url + "/bare", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the bare app did not become ready in 60 s")
            time.sleep(0.1)
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()


def _status_kib(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


class RssSampler:
    """Reads VmRSS and VmHWM of `pid` from /proc every `interval_s` in a thread; `peak()` over a phase.

    Use `mark(name)` before a phase and `phase_peak(name)` after it; `current()` reads now.
    """

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, int]] = []  # (monotonic time, VmRSS KiB)
        self.marks: dict[str, tuple[float, float | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), _status_kib(self.pid)["VmRSS"]))
            except (FileNotFoundError, ProcessLookupError, KeyError):
                return  # the process is gone
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def current(self) -> dict[str, int]:
        return _status_kib(self.pid)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.marks[name] = (start, time.monotonic())

    def phase_peak_kib(self, name: str) -> int:
        start, end = self.marks[name]
        values = [rss for t, rss in self.samples if start <= t <= (end or float("inf"))]
        return max(values) if values else 0

    def count(self, name: str) -> int:
        start, end = self.marks[name]
        return sum(1 for t, _ in self.samples if start <= t <= (end or float("inf")))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) so far."""
    times = os.times()
    return times.user + times.system


def mib(kib: int) -> float:
    return kib / 1024


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def latency_summary(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"median {statistics.median(ms):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
            f"min {min(ms):.1f} ms, max {max(ms):.1f} ms (n={len(ms)})")


def machine() -> str:
    load = os.getloadavg()
    try:
        memory = subprocess.run(["free", "-g"], capture_output=True, text=True, check=True).stdout.splitlines()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        memory = "free -g unavailable"
    return (f"nproc {os.cpu_count()}, {memory.split()[1] if memory.startswith('Mem:') else '?'} GiB RAM "
            f"({memory}), Python {platform.python_version()}, load average {load[0]:.2f} {load[1]:.2f} "
            f"{load[2]:.2f} at start")


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores summed (from /proc/stat).

    busy = user + nice + system + irq + softirq + steal; total adds idle and iowait.
    """
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq + steal
    return busy / tick, (busy + idle + iowait) / tick


def closed_loop(url_for: Callable[[int], str], headers: dict[str, str], threads: int, seconds: float,
                server_pid: int | None = None, max_requests: int = 1_000_000) -> dict[str, Any]:
    """`threads` threads, each with its own requests.Session, GET `url_for(i)` back to back for `seconds`.

    `url_for` gets a per-thread request counter (use it, or a random choice, to vary the URL). Returns
    requests/s, the latency of every successful request (s), the error count, and the server's CPU
    seconds per request when `server_pid` is given. Bounded by `seconds` and `max_requests` in all.
    """
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    start_barrier = threading.Barrier(threads + 1)
    stop_at = [0.0]
    per_thread = max(1, max_requests // threads)

    def run(index: int) -> None:
        with requests.Session() as session:
            session.get(url_for(0), headers=headers, timeout=10)  # open the connection before the clock starts
            start_barrier.wait()
            n = 0
            while time.perf_counter() < stop_at[0] and n < per_thread:
                n += 1
                started = time.perf_counter()
                try:
                    ok = session.get(url_for(n), headers=headers, timeout=10).status_code == 200
                except requests.RequestException:
                    ok = False
                if ok:
                    latencies[index].append(time.perf_counter() - started)
                else:
                    errors[index] += 1

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    stop_at[0] = time.perf_counter() + seconds + 60  # provisional, fixed once everyone is connected
    start_barrier.wait()
    cpu = cpu_seconds(server_pid) if server_pid else 0.0
    start = time.perf_counter()
    stop_at[0] = start + seconds
    for worker in workers:
        worker.join(seconds + 30)
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(server_pid) - cpu if server_pid else 0.0
    flat = [t for per in latencies for t in per]
    done = len(flat) + sum(errors)
    return {"rps": len(flat) / elapsed, "latencies": flat, "errors": sum(errors), "elapsed_s": elapsed,
            "server_cpu_per_request_s": cpu / max(1, done) if server_pid else None}
