"""Helpers of the worker tests: a file server for model URLs and uploads, and real worker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

WORKER_START_TIMEOUT_S = 180


class FileServer:
    """A real HTTP server on 127.0.0.1: GET serves the files given to `serve`, PUT stores what it receives.

    It counts GETs per path, so a test can tell whether a worker downloaded a file again.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.uploads: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()
        self.get_delay_s = 0.0  # a slow server makes concurrent downloads overlap
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.gets[self.path] += 1
                time.sleep(server.get_delay_s)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                server.uploads[self.path] = self.rfile.read(length)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def serve(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url + path

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerProcess:
    """A real `sd-aws worker` process on 127.0.0.1; its log goes to a file (read it when a test fails)."""

    def __init__(self, models_dir: Path, log_path: Path, *extra_args: str, env: dict[str, str] | None = None,
                 port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "SD_AWS_HOME": str(log_path.parent / "home"),
                    **(env or {})}
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aws_extension", "worker", "--port", str(self.port),
             "--models-dir", str(models_dir), *extra_args],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def first_ping_status(self) -> int:
        """The status of the first /ping the process answers."""
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            try:
                return requests.get(f"{self.url}/ping", timeout=5).status_code
            except requests.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError(f"worker did not answer /ping after {WORKER_START_TIMEOUT_S} s:\n{self.log()}")

    def ping_statuses_until_healthy(self) -> list[int]:
        """The /ping status codes seen from the first answer until 200."""
        statuses: list[int] = []
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            try:
                statuses.append(requests.get(f"{self.url}/ping", timeout=5).status_code)
            except requests.ConnectionError:
                time.sleep(0.05)
                continue
            if statuses[-1] == 200:
                return statuses
            time.sleep(0.1)
        raise TimeoutError(f"worker not healthy after {WORKER_START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
