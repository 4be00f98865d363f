"""The cloud switch on txt2img and img2img.

An always-on script shows "Generate on cloud" and an endpoint dropdown. `ProcessImagesPatch` wraps
`modules.processing.process_images` (and every module that imported it by name): with the switch on
for a `p`, the job goes to the middleware and a real `Processed` comes back; with it off, the original
runs untouched. `on_script_unloaded` restores the original everywhere.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import modules.processing
from modules import scripts

from aws_extension.client import ApiError
from aws_extension.ui.compat import gr
from aws_extension.ui.connection import error_text, make_client
from aws_extension.ui.inference import (
    CloudGenerationError,
    CloudJobCancelled,
    endpoint_names,
    run_generation,
)
from aws_extension.ui.models import missing_models_message, resolve_models
from aws_extension.vocabulary import CheckpointStatus, CheckpointType, Task
from aws_extension.webui import host
from aws_extension.webui.batches import plan_requests, set_up_like_the_host
from aws_extension.webui.image_settings import override_settings_for_cloud
from aws_extension.webui.request import (
    all_prompts,
    inference_request,
    script_args_of,
    wanted_models,
)

SCRIPT_TITLE = "Amazon SageMaker"  # API name: alwayson_scripts["amazon sagemaker"] = {"args": [on, endpoint]}
_ORIGINAL = "__sd_aws_original__"  # set on the wrapper: the process_images it wraps


class CloudSwitchScript(scripts.Script):
    def title(self) -> str:
        return SCRIPT_TITLE

    def show(self, is_img2img: bool) -> Any:
        return scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> list:
        tab = (Task.IMG2IMG if is_img2img else Task.TXT2IMG).value
        with gr.Accordion("Amazon SageMaker", open=False, elem_id=f"sd_aws_{tab}_accordion"):
            with gr.Row():
                enabled = gr.Checkbox(label="Generate on cloud", value=False, elem_id=f"sd_aws_{tab}_enabled")
                endpoint = gr.Dropdown(label="Endpoint (empty: the least busy InService one)", choices=[],
                                       value=None, elem_id=f"sd_aws_{tab}_endpoint")
                refresh = gr.Button("Refresh endpoints", elem_id=f"sd_aws_{tab}_refresh", elem_classes=["sd-aws-tool"])
            status = gr.Markdown(elem_id=f"sd_aws_{tab}_status")
        refresh.click(refresh_endpoints, None, [endpoint, status])
        return [enabled, endpoint]


def refresh_endpoints() -> tuple[Any, str]:
    try:
        names = endpoint_names(make_client(host.WebUIConnectionStore()))
    except ApiError as exc:
        return gr.update(), f"Error: {error_text(exc)}"
    if not names:
        return gr.update(choices=[], value=None), "Error: No endpoint is InService: deploy one in the Amazon SageMaker tab."
    return gr.update(choices=names, value=names[0]), f"Done: {len(names)} endpoint(s) InService."


def cloud_switch(p: Any) -> tuple[bool, str | None]:
    """(on, endpoint) from the always-on script's slice of `p.script_args` (UI and alwayson_scripts alike)."""
    args = script_args_of(p, SCRIPT_TITLE) or []
    return bool(args[0]) if args else False, (args[1] or None) if len(args) > 1 else None


def generate_on_cloud(p: Any, endpoint: str | None) -> Any:
    """Run `p` on the middleware and return the Processed process_images would; a user error comes back as
    the host shows one (host.user_error)."""
    try:
        return _generate(p, endpoint)
    except CloudGenerationError as exc:
        return host.user_error(p, str(exc))


def _generate(p: Any, endpoint: str | None) -> Any:
    try:
        set_up_like_the_host(p)
        client = make_client(host.WebUIConnectionStore())
        override_settings = dict(getattr(p, "override_settings", None) or {})
        settings = override_settings_for_cloud(p)
        checkpoint = host.selected_checkpoint(override_settings)
        host.set_model_fields(p, checkpoint)
        wanted = wanted_models(p, all_prompts(p), checkpoint, host.selected_vae(override_settings),
                               host.model_folders()[CheckpointType.EMBEDDINGS], host.embedding_sha256)
        models, missing = resolve_models(wanted, client.list_checkpoints(status=[CheckpointStatus.ACTIVE]))
        if missing:
            raise CloudGenerationError(missing_models_message(missing))
        output_images, infotexts = _run_requests(p, client, endpoint, models, settings)
    except ApiError as exc:
        raise CloudGenerationError(error_text(exc)) from None
    except ValueError as exc:
        raise CloudGenerationError(str(exc)) from None
    return host.processed_like_the_host(p, output_images, infotexts)


def _run_requests(p: Any, client: Any, endpoint: str | None, models: dict[str, list],
                  settings: dict[str, Any]) -> tuple[list, list[str]]:
    """Each planned request in turn, until done or interrupted: the images and the worker's infotexts."""
    planned = plan_requests(p)
    output_images: list = []
    infotexts: list[str] = []
    for number, request in enumerate(planned):
        if host.interrupted():
            break
        body = inference_request(p, endpoint, models, request.fields(), settings, request.init_image)
        try:
            output = run_generation(client, body, should_stop=host.interrupted,
                                    on_update=functools.partial(host.report_progress, number=number, total=len(planned)))
        except CloudJobCancelled:
            break
        output_images += output.images
        infotexts += list(output.info.get("infotexts") or [""] * len(output.images))
    return output_images, infotexts


class ProcessImagesPatch:
    """Owns the wrapping of process_images: install at script load, uninstall on unload."""

    @staticmethod
    def _modules() -> Iterator[ModuleType]:
        """Every module that may hold process_images by name: imported ones and loaded script modules."""
        seen: set[int] = set()
        script_modules = [data.module for data in getattr(scripts, "scripts_data", [])]
        for module in [*list(sys.modules.values()), *script_modules]:
            if isinstance(module, ModuleType) and id(module) not in seen:
                seen.add(id(module))
                yield module

    @staticmethod
    def _rebind(old: Callable, new: Callable) -> None:
        for module in ProcessImagesPatch._modules():
            if vars(module).get("process_images") is old:  # vars(): never trigger a lazy module's __getattr__
                module.process_images = new

    def install(self) -> None:
        current = modules.processing.process_images
        if hasattr(current, _ORIGINAL):
            return  # already wrapped (loaded twice without an unload)

        @functools.wraps(current)
        def process_images(p: Any) -> Any:
            on, endpoint = cloud_switch(p)
            return generate_on_cloud(p, endpoint) if on else current(p)

        setattr(process_images, _ORIGINAL, current)
        self._rebind(current, process_images)

    def uninstall(self) -> None:
        wrapper = modules.processing.process_images
        original = getattr(wrapper, _ORIGINAL, None)
        if original is not None:
            self._rebind(wrapper, original)
