"""Helpers of the worker tests: a file server for model URLs and uploads, real worker processes, and a WebUI
stand-in with A1111's folders and model lists."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
    """A real `sd-aws worker` process on 127.0.0.1; its log goes to a file (read it when a test fails).

    `command` runs another sd-aws command that serves the worker's API instead (`sagemaker serve ...`)."""

    def __init__(self, models_dir: Path | None, log_path: Path, *extra_args: str, env: dict[str, str] | None = None,
                 port: int | None = None, command: tuple[str, ...] = ("worker",)):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "SD_AWS_HOME": str(log_path.parent / "home"),
                    **(env or {})}
        self._log = log_path.open("wb")
        models = ["--models-dir", str(models_dir)] if models_dir else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "aws_extension", *command, "--port", str(self.port), *models, *extra_args],
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


class A1111StandIn:
    """A WebUI stand-in faithful to A1111 v1.10.1 where the webui engine depends on it: its folder layout
    (`embeddings/` at the root, `models/Stable-diffusion|Lora|VAE|ControlNet|hypernetworks`), its
    `GET /sdapi/v1/cmd-flags`, and its lists (`sd-models`, `loras`, `sd-vae`, `hypernetworks`, `embeddings`
    with `loaded`/`skipped`), which only change on the matching `POST refresh-*` (A1111 caches its scans;
    it has no refresh route for hypernetworks). An embedding whose vectors are not `vector_size` wide is
    `skipped`, as A1111 does when it does not fit the loaded model.

    Generation, options, progress, interrupt and samplers are passed to `backend_url`, a real sd-aws worker
    run on `backend_models_dir()` (links to the folders the stand-in scans), so the job runs with what the
    WebUI was given where it looks, and nothing else. `flags` overrides cmd-flags entries.
    """

    OWN_ROUTES = ("cmd-flags", "sd-models", "loras", "sd-vae", "hypernetworks", "embeddings")

    def __init__(self, root: Path, backend_url: str, port: int, flags: dict[str, str | None] | None = None,
                 vector_size: int = 32):
        self.root, self.backend_url, self.vector_size = root, backend_url.rstrip("/"), vector_size
        self.flags: dict[str, str | None] = {
            "data_dir": str(root), "models_dir": None, "ckpt_dir": None, "vae_dir": None,
            "embeddings_dir": str(root / "embeddings"), "hypernetwork_dir": str(root / "models" / "hypernetworks"),
            "lora_dir": str(root / "models" / "Lora"), "lyco_dir_backcompat": str(root / "models" / "LyCORIS"),
            "controlnet_dir": None, "api": True, "nowebui": False, **(flags or {})}
        for folder in ("Stable-diffusion", "Lora", "VAE", "ControlNet", "hypernetworks"):
            (root / "models" / folder).mkdir(parents=True, exist_ok=True)
        Path(self.flags["embeddings_dir"] or root / "embeddings").mkdir(parents=True, exist_ok=True)
        self.lists: dict[str, Any] = {}
        for route in ("refresh-checkpoints", "refresh-loras", "refresh-vae", "refresh-embeddings"):
            self._rescan(route)
        self.lists["hypernetworks"] = self._files(Path(self.flags["hypernetwork_dir"] or ""), "path",
                                                  name_key="name")
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                stand_in._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                stand_in._handle(self, "POST")

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def backend_models_dir(self) -> Path:
        """A models folder for the backend worker whose type folders are links to the stand-in's."""
        folder = self.root / ".backend-models"
        folder.mkdir(exist_ok=True)
        for model_type, (flag, default) in {"Stable-diffusion": ("ckpt_dir", "Stable-diffusion"),
                                            "Lora": ("lora_dir", "Lora"), "VAE": ("vae_dir", "VAE"),
                                            "ControlNet": ("controlnet_dir", "ControlNet"),
                                            "hypernetworks": ("hypernetwork_dir", "hypernetworks")}.items():
            (folder / model_type).symlink_to(self._folder(flag, default), target_is_directory=True)
        (folder / "embeddings").symlink_to(Path(self.flags["embeddings_dir"] or ""), target_is_directory=True)
        return folder

    def _folder(self, flag: str, default: str) -> Path:
        return Path(self.flags.get(flag) or self.root / "models" / default)

    @staticmethod
    def _files(folder: Path, path_key: str, name_key: str) -> list[dict[str, Any]]:
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".ckpt", ".pt")
                       and not p.name.startswith(".")) if folder.is_dir() else []
        return [{name_key: p.stem if name_key != "title" else p.relative_to(folder).as_posix(), path_key: str(p)}
                for p in paths]

    def _rescan(self, route: str) -> None:
        if route == "refresh-checkpoints":
            self.lists["sd-models"] = [{**entry, "model_name": Path(entry["title"]).stem, "hash": None,
                                        "sha256": None, "config": None}
                                       for entry in self._files(self._folder("ckpt_dir", "Stable-diffusion"),
                                                                "filename", "title")]
        elif route == "refresh-loras":
            self.lists["loras"] = [{**entry, "alias": entry["name"], "metadata": {}}
                                   for entry in self._files(self._folder("lora_dir", "Lora"), "path", "name")]
        elif route == "refresh-vae":
            self.lists["sd-vae"] = [{"model_name": Path(e["title"]).name, "filename": e["filename"]}
                                    for e in self._files(self._folder("vae_dir", "VAE"), "filename", "title")]
        elif route == "refresh-embeddings":
            self.lists["embeddings"] = self._scan_embeddings()

    def _scan_embeddings(self) -> dict[str, dict[str, Any]]:
        from aws_extension.model_files import read_safetensors_file

        answer: dict[str, dict[str, Any]] = {"loaded": {}, "skipped": {}}
        for entry in self._files(Path(self.flags["embeddings_dir"] or ""), "path", "name"):
            shapes = read_safetensors_file(Path(entry["path"])).shapes()
            shape = next(iter(shapes.values()), (0,))
            fits = shape[-1] == self.vector_size
            answer["loaded" if fits else "skipped"][entry["name"]] = {
                "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": shape[-1],
                "vectors": shape[0] if len(shape) > 1 else 1}
        return answer

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        route = request.path.removeprefix("/sdapi/v1/").split("?")[0]
        body = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        if method == "GET" and route in self.OWN_ROUTES:
            self._answer(request, 200, json.dumps(self.flags if route == "cmd-flags" else self.lists[route]).encode())
            return
        try:
            answer = requests.request(method, self.backend_url + request.path, data=body or None,
                                      headers={"Content-Type": "application/json"}, timeout=600)
        except requests.RequestException:
            self._answer(request, 502, b'{"detail": "backend down"}')
            return
        if method == "POST" and route.startswith("refresh-"):
            self._rescan(route)
        self._answer(request, answer.status_code, answer.content)

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
