"""The worker's HTTP surface: SageMaker's `/ping` and `/invocations`, and A1111's `/sdapi/v1/*`.

HTTP only; the work is in `runtime`, `invocations` and the engine. Job routes are plain `def` routes, so
FastAPI runs them in its thread pool and `/ping` and `/progress` keep answering while a job runs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from aws_extension.vocabulary import CheckpointType, Task, model_stem
from aws_extension.worker.errors import error_message, http_status
from aws_extension.worker.invocations import execute_invocation
from aws_extension.worker.runtime import WorkerRuntime
from aws_extension.worker.webui_engine import FOLDER_FLAGS


def _sdapi_call(call: Callable[[], Any]) -> Any:
    """`call()`, or its exception as an error in the shape the WebUI's API answers with."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the client gets one sentence (worker.errors), the log the trace
        message = error_message(exc)
        return JSONResponse({"error": type(exc).__name__, "detail": message, "body": "", "errors": message},
                            status_code=http_status(exc))


def create_app(runtime: WorkerRuntime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start_engine()
        yield

    app = FastAPI(title="sd-aws worker", lifespan=lifespan)

    @app.get("/ping")
    async def ping() -> JSONResponse:
        body: dict[str, Any] = {"status": runtime.status}
        if runtime.engine_error:
            body["error"] = runtime.engine_error
        elif not runtime.ready:
            body["stage"] = runtime.stage
        return JSONResponse(body, status_code=200 if runtime.ready else 503)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Always 200 (liveness); what start-up did and does (`/ping` is SageMaker's readiness)."""
        return runtime.health()

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        body = await request.body()
        status, answer = await run_in_threadpool(execute_invocation, runtime, body)
        return JSONResponse(answer, status_code=status)

    def generation_route(task: str) -> Callable[[dict[str, Any]], Any]:
        def route(payload: dict[str, Any] = Body(...)) -> Any:
            def run() -> dict[str, Any]:
                result = runtime.generate(task, payload)
                return {"images": [base64.b64encode(png).decode() for png in result.images],
                        "parameters": result.parameters, "info": json.dumps(result.info)}

            return _sdapi_call(run)

        return route

    for task in (Task.TXT2IMG, Task.IMG2IMG):
        app.post(f"/sdapi/v1/{task}")(generation_route(task))

    @app.get("/sdapi/v1/progress")
    def progress() -> dict[str, Any]:
        return runtime.jobs.progress_report()

    @app.post("/sdapi/v1/interrupt")
    def interrupt(job_id: str | None = None) -> dict[str, Any]:
        return {"interrupted": runtime.jobs.interrupt(job_id)}

    @app.get("/sdapi/v1/samplers")
    def samplers() -> Any:
        return _sdapi_call(lambda: [{"name": s, "aliases": [], "options": {}} for s in runtime.engine.samplers()])

    @app.get("/sdapi/v1/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        return [{"title": name, "model_name": model_stem(name), "hash": None, "sha256": None,
                 "filename": str(path), "config": None}
                for name, path in runtime.models.by_type(CheckpointType.STABLE_DIFFUSION).items()]

    @app.get("/sdapi/v1/loras")
    def loras() -> list[dict[str, Any]]:
        return [{"name": model_stem(name), "alias": model_stem(name), "path": str(path), "metadata": {}}
                for name, path in runtime.models.by_type(CheckpointType.LORA).items()]

    @app.get("/sdapi/v1/embeddings")
    def embeddings() -> dict[str, Any]:
        loaded = {model_stem(name): {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                     "shape": None, "vectors": None}
                  for name in runtime.models.by_type(CheckpointType.EMBEDDINGS)}
        return {"loaded": loaded, "skipped": {}}

    @app.get("/sdapi/v1/hypernetworks")
    def hypernetworks() -> list[dict[str, Any]]:
        return [{"name": model_stem(name), "path": str(path)}
                for name, path in runtime.models.by_type(CheckpointType.HYPERNETWORKS).items()]

    @app.get("/sdapi/v1/sd-vae")
    def sd_vae() -> list[dict[str, Any]]:
        return [{"model_name": name, "filename": str(path)} for name, path in runtime.models.by_type(CheckpointType.VAE).items()]

    @app.get("/sdapi/v1/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        """The folders this worker scans, under A1111's flag names (A1111 answers every flag; these are the
        ones that locate models), so a webui-engine worker in front of this one places a job's models where
        this one looks."""
        root = runtime.models.root.resolve()
        folders = {flag: str(root / model_type) for model_type, (flag, _) in FOLDER_FLAGS.items()}
        return {"data_dir": str(root.parent), "models_dir": str(root), **folders, "api": True, "nowebui": True}

    @app.get("/sdapi/v1/options")
    def get_options() -> dict[str, Any]:
        return runtime.options()

    @app.post("/sdapi/v1/options")
    def set_options(changes: dict[str, Any] = Body(...)) -> Any:
        return _sdapi_call(lambda: runtime.set_options(changes))

    def refresh() -> None:
        runtime.models.refresh()

    for what in ("checkpoints", "loras", "embeddings", "vae", "hypernetworks"):
        app.post(f"/sdapi/v1/refresh-{what}")(refresh)

    return app
