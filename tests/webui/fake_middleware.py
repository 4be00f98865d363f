"""A real HTTP server on 127.0.0.1 that answers like the middleware's catalogue, endpoint and inference
routes and records every request: the far side of the switch's "p → request → Processed" unit."""

from __future__ import annotations

import io
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from PIL import Image, PngImagePlugin


def png_with_infotext(color: tuple[int, int, int], infotext: str, size: tuple[int, int] = (64, 64)) -> bytes:
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", infotext)
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG", pnginfo=pnginfo)
    return buffer.getvalue()


def color_of(prompt: str) -> tuple[int, int, int]:
    """Each prompt gets its own colour, so a test can tell whose images came back."""
    digest = uuid.uuid5(uuid.NAMESPACE_DNS, prompt).bytes
    return digest[0], digest[1], digest[2]


class FakeMiddleware:
    def __init__(self, catalogue: list[dict], endpoints: list[dict], polls_before_done: int = 2,
                 fail_with: str | None = None):
        self.catalogue, self.endpoints = catalogue, endpoints
        self.polls_before_done, self.fail_with = polls_before_done, fail_with
        self.requests: list[tuple[str, str, dict | None]] = []  # (method, path, json body)
        self.jobs: dict[str, dict] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: object, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with server.lock:
                    server.requests.append((method, self.path, body))
                status, answer, content_type = server.route(method, self.path, body)
                self._answer(status, answer, content_type)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeMiddleware:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def inference_bodies(self) -> list[dict]:
        return [body for method, path, body in self.requests if method == "POST" and path == "/inference/v2"]

    def route(self, method: str, path: str, body: dict | None) -> tuple[int, object, str]:
        url = urlparse(path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        json_type = "application/json"
        if url.path == "/checkpoints":
            return 200, {"statusCode": 200, "checkpoints": self.catalogue}, json_type
        if url.path == "/endpoints":
            name = query.get("endpoint_name")
            return 200, [e for e in self.endpoints if not name or e["endpoint_name"] == name], json_type
        if url.path == "/inference/v2" and method == "POST":
            job_id = str(uuid.uuid4())
            with self.lock:
                self.jobs[job_id] = {"InferenceJobId": job_id, "status": "inprogress", "progress": 0.0,
                                     "queue_position": 1, "error": None, "image_names": [], "polls": 0,
                                     "request": body}
            return 200, {"inference_id": job_id, "status": "inprogress", "endpoint_name": "ep",
                         "output_path": f"out/{job_id}"}, json_type
        if url.path.endswith("/cancel"):
            job = self.jobs[url.path.split("/")[3]]
            job["status"] = "cancelled"
            return 200, self._public(job), json_type
        job = self.jobs.get(query.get("jobID", ""))
        if url.path == "/inference/get-inference-job" and job:
            if job["status"] == "inprogress":
                job["polls"] += 1
                job["queue_position"] = 0
                job["progress"] = min(1.0, job["polls"] / self.polls_before_done)
                if job["polls"] >= self.polls_before_done:
                    job["status"] = "failed" if self.fail_with else "succeed"
                    job["error"] = self.fail_with
            return 200, self._public(job), json_type
        if url.path == "/inference/get-inference-job-image-output" and job:
            count = job["request"].get("batch_size", 1) * job["request"].get("n_iter", 1)
            return 200, [f"{self.url}/blob/{job['InferenceJobId']}/{i}.png" for i in range(count)], json_type
        if url.path == "/inference/get-inference-job-param-output" and job:
            return 200, [f"{self.url}/blob/{job['InferenceJobId']}/param.json"], json_type
        if url.path.startswith("/blob/"):
            job = self.jobs[url.path.split("/")[2]]
            request, seeds = job["request"], self._seeds(job)
            if url.path.endswith("param.json"):
                info = {"seed": seeds[0], "all_seeds": seeds, "subseed": 7, "all_subseeds": [7] * len(seeds),
                        "all_prompts": [request["prompt"]] * len(seeds),
                        "all_negative_prompts": [request.get("negative_prompt", "")] * len(seeds),
                        "infotexts": [self._infotext(request, seed) for seed in seeds]}
                return 200, {"parameters": request, "info": json.dumps(info), "endpoint_name": "ep",
                             "inference_id": job["InferenceJobId"]}, json_type
            index = int(url.path.rsplit("/", 1)[1].split(".")[0])
            return 200, png_with_infotext(color_of(request["prompt"]), self._infotext(request, seeds[index])), "image/png"
        return 404, {"statusCode": 404, "error": f"no route {url.path}"}, json_type

    @staticmethod
    def _seeds(job: dict) -> list[int]:
        request = job["request"]
        first = request.get("seed", -1) if request.get("seed", -1) != -1 else 1234
        return [first + i for i in range(request.get("batch_size", 1) * request.get("n_iter", 1))]

    @staticmethod
    def _infotext(request: dict, seed: int) -> str:
        return f"{request['prompt']}\nSteps: {request.get('steps')}, Seed: {seed}"

    @staticmethod
    def _public(job: dict) -> dict:
        return {k: v for k, v in job.items() if k not in ("polls", "request")}
