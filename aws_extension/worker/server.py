"""`sd-aws worker`: run the worker's HTTP server until stopped."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from aws_extension.settings import WorkerSettings, load


def serve(host: str, port: int, models_dir: Path, engine: str = "diffusers", webui_url: str | None = None,
          webui_models_dir: Path | None = None, model_cache_dir: Path | None = None) -> int:
    """Serve on host:port until stopped; returns the process exit code.

    `webui_models_dir` (webui engine; default: the setting SD_AWS_WEBUI_MODELS_DIR) is the WebUI's
    models/ folder, where each job's models are linked before the WebUI is asked to use them.
    """
    import uvicorn

    from aws_extension.worker.app import create_app
    from aws_extension.worker.runtime import WorkerRuntime

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if engine == "webui" and not webui_url:
        print("sd-aws worker: --engine webui needs --webui-url", file=sys.stderr)
        return 2
    settings = load(WorkerSettings, webui_models_dir=webui_models_dir, model_cache_dir=model_cache_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    runtime = WorkerRuntime(models_dir, settings, engine_name=engine, webui_url=webui_url,
                            webui_models_dir=settings.webui_models_dir)
    # uvicorn shuts down cleanly on SIGTERM, then raises the signal again for the previous handler: make that
    # one a no-op, so the process exits 0 and its caller's clean-up runs (sagemaker.serve stops its WebUI).
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.run(create_app(runtime), host=host, port=port, log_level="info", access_log=False)
    return 0
