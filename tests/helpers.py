"""Running real servers in tests: a free loopback port, an `sd-aws` subprocess, a tiny file server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SdAwsProcess:
    """`python -m aws_extension <args>` on 127.0.0.1, waited for until `ready_path` answers 200."""

    def __init__(self, args: list[str], port: int, env: dict[str, str] | None = None,
                 ready_path: str = "/healthz", log_path: Path | None = None):
        self.args, self.port, self.ready_path = args, port, ready_path
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout_s: float = 60) -> SdAwsProcess:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, "-m", "aws_extension", *self.args], env=self.env,
                                        stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sd-aws {self.args[0]} exited with {self.process.returncode}: {self.log()}")
            try:
                if requests.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"sd-aws {self.args[0]} did not become ready: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None


def process_pids(marker: str, word: str = " worker ") -> list[int]:
    """PIDs of the processes whose command line holds both `word` and `marker` (e.g. a worker's models folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if word in cmdline and marker in cmdline:
                pids.append(int(proc.name))
    return sorted(pids)


def start_middleware(data_dir: Path, api_key: str = "test-key", env: dict[str, str] | None = None) -> SdAwsProcess:
    port = free_port()
    return SdAwsProcess(["serve", "--port", str(port), "--data-dir", str(data_dir)], port,
                        env={"SD_AWS_API_KEY": api_key, **(env or {})},
                        log_path=data_dir.parent / f"{data_dir.name}-serve.log").start()


class FileServer:
    """A real HTTP server on 127.0.0.1 serving `routes`; counts hits per path.

    A route is `(status, headers, body)` or a function of the hit number returning one; a body is bytes
    or an iterable of byte chunks (sent one by one, for slow or broken downloads).
    """

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]):
        self.routes = routes
        self.hits: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                route = server.routes.get(self.path, (404, {}, b"not found"))
                status, headers, body = route(server.hits[self.path]) if callable(route) else route
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if isinstance(body, bytes) and "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for chunk in [body] if isinstance(body, bytes) else body:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a test killed it): nothing to do

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
