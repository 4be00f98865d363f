"""`sd-aws ui`: the Amazon SageMaker tabs and a txt2img/img2img tab of their own, without a WebUI."""

from __future__ import annotations

from aws_extension.client import default_api_key
from aws_extension.settings import ClientSettings, load
from aws_extension.ui.compat import gr
from aws_extension.ui.connection import ConnectionStore, MemoryConnectionStore
from aws_extension.ui.generate import GenerateTab
from aws_extension.ui.sagemaker_tab import SageMakerTab
from aws_extension.vocabulary import GENERATION_TASKS, Task


def build_app(store: ConnectionStore) -> gr.Blocks:
    with gr.Blocks(analytics_enabled=False, title="SD AWS") as app, gr.Tabs(elem_id="tabs"):
        tabs = {task: GenerateTab(store, task.value) for task in GENERATION_TASKS}
        for task, tab in tabs.items():
            with gr.Tab(task.value, elem_id=f"sd_aws_{task.value}_tab"):
                tab.render()
        with gr.Tab("Amazon SageMaker", elem_id="sd_aws_tab"):
            SageMakerTab(store, txt2img_prompt=tabs[Task.TXT2IMG].prompt).render()
    return app


def serve(host: str = "127.0.0.1", port: int = 7860, api_url: str | None = None,
          api_key: str | None = None) -> int:
    """Serve the standalone UI until interrupted; URL and key default to SD_AWS_API_URL / SD_AWS_API_KEY."""
    settings = load(ClientSettings, api_url=api_url, api_key=api_key)
    app = build_app(MemoryConnectionStore(settings.api_url, settings.api_key or default_api_key()))
    app.queue()
    print(f"sd-aws ui: http://{host}:{port} (middleware {settings.api_url})", flush=True)
    app.launch(server_name=host, server_port=port)
    return 0
