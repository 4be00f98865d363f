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

JSON = "application/json"


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
        if url.path == "/checkpoints":
            return 200, {"statusCode": 200, "checkpoints": self.catalogue}, JSON
        if url.path == "/endpoints":
            name = query.get("endpoint_name")
            return 200, [e for e in self.endpoints if not name or e["endpoint_name"] == name], JSON
        if url.path == "/healthz":
            return 200, {"status": "ok", "version": "0.1.0"}, JSON
        if url.path == "/inference/v2" and method == "POST":
            return self._create_job(body or {})
        if url.path.endswith("/cancel"):
            job = self.jobs[url.path.split("/")[3]]
            job["status"] = "cancelled"
            return 200, self._public(job), JSON
        if url.path.startswith("/blob/"):
            return self._blob(url.path)
        job = self.jobs.get(query.get("jobID", ""))
        if job and url.path.startswith("/inference/get-inference-job"):
            return self._job_route(url.path, job)
        return 404, {"statusCode": 404, "error": f"no route {url.path}"}, JSON

    def _create_job(self, body: dict) -> tuple[int, object, str]:
        """POST /inference/v2: refuses, as the middleware's payload check does, a setting the engine ignores."""
        from aws_extension.payload import OVERRIDE_SETTINGS_HONOURED, OVERRIDE_SETTINGS_NO_OP

        for key in body.get("override_settings") or {}:
            if key not in OVERRIDE_SETTINGS_HONOURED + OVERRIDE_SETTINGS_NO_OP:
                return 400, {"statusCode": 400, "error": f"override_settings.{key}: this setting is not supported "
                                                         "by the engine"}, JSON
        job_id = str(uuid.uuid4())
        with self.lock:
            self.jobs[job_id] = {"InferenceJobId": job_id, "status": "inprogress", "progress": 0.0,
                                 "queue_position": 1, "error": None, "image_names": [], "polls": 0, "request": body}
        return 200, {"inference_id": job_id, "status": "inprogress", "endpoint_name": "ep",
                     "output_path": f"out/{job_id}"}, JSON

    def _job_route(self, path: str, job: dict) -> tuple[int, object, str]:
        if path == "/inference/get-inference-job":
            if job["status"] == "inprogress":
                job["polls"] += 1
                job["queue_position"] = 0
                job["progress"] = min(1.0, job["polls"] / self.polls_before_done)
                if job["polls"] >= self.polls_before_done:
                    job["status"] = "failed" if self.fail_with else "succeed"
                    job["error"] = self.fail_with
            return 200, self._public(job), JSON
        if path == "/inference/get-inference-job-image-output":
            count = job["request"].get("batch_size", 1) * job["request"].get("n_iter", 1)
            return 200, [f"{self.url}/blob/{job['InferenceJobId']}/{i}.png" for i in range(count)], JSON
        if path == "/inference/get-inference-job-param-output":
            return 200, [f"{self.url}/blob/{job['InferenceJobId']}/param.json"], JSON
        return 404, {"statusCode": 404, "error": f"no route {path}"}, JSON

    def _blob(self, path: str) -> tuple[int, object, str]:
        job = self.jobs[path.split("/")[2]]
        request, seeds = job["request"], self._seeds(job)
        if path.endswith("param.json"):
            info = {"seed": seeds[0], "all_seeds": seeds, "subseed": 7, "all_subseeds": [7] * len(seeds),
                    "all_prompts": [request["prompt"]] * len(seeds),
                    "all_negative_prompts": [request.get("negative_prompt", "")] * len(seeds),
                    "infotexts": [self._infotext(request, seed) for seed in seeds]}
            return 200, {"parameters": request, "info": json.dumps(info), "endpoint_name": "ep",
                         "inference_id": job["InferenceJobId"]}, JSON
        index = int(path.rsplit("/", 1)[1].split(".")[0])
        size = (request.get("width", 64), request.get("height", 64))
        return 200, png_with_infotext(color_of(request["prompt"]), self._infotext(request, seeds[index]), size), "image/png"

    @staticmethod
    def _seeds(job: dict) -> list[int]:
        """A1111's all_seeds for one request: seed + i, or the seed itself with a variation strength."""
        request = job["request"]
        first = request.get("seed", -1) if request.get("seed", -1) != -1 else 1234
        step = 0 if request.get("subseed_strength") else 1
        return [first + i * step for i in range(request.get("batch_size", 1) * request.get("n_iter", 1))]

    @staticmethod
    def _infotext(request: dict, seed: int) -> str:
        """The infotext the engine writes: A1111's keys and order, its own version under "Version"."""
        sha256 = (request.get("models", {}).get("Stable-diffusion") or [{}])[0]
        sha256 = sha256.get("sha256", "") if isinstance(sha256, dict) else ""
        negative = f"\nNegative prompt: {request['negative_prompt']}" if request.get("negative_prompt") else ""
        clip_skip = (request.get("override_settings") or {}).get("CLIP_stop_at_last_layers", 1)
        params = {"Steps": request.get("steps"), "Sampler": request.get("sampler_name"),
                  "CFG scale": request.get("cfg_scale"), "Seed": seed,
                  "Size": f"{request.get('width')}x{request.get('height')}", "Model hash": sha256[:10] or None,
                  "Model": "tiny", "Denoising strength": request.get("denoising_strength")
                  if request["task_type"] == "img2img" else None,
                  "Clip skip": clip_skip if clip_skip > 1 else None, "Version": "sd-aws 0.1.0"}
        line = ", ".join(f"{key}: {value}" for key, value in params.items() if value is not None)
        return f"{request['prompt']}{negative}\n{line}"

    @staticmethod
    def _public(job: dict) -> dict:
        return {k: v for k, v in job.items() if k not in ("polls", "request")}
