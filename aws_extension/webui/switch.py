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
from aws_extension.ui.models import ModelRef, missing_models_message, resolve_models
from aws_extension.vocabulary import CheckpointStatus, CheckpointType, Task
from aws_extension.webui import host
from aws_extension.webui.batches import (
    CloudRequest,
    plan_batch_requests,
    plan_requests,
    set_batch,
    set_up_like_the_host,
)
from aws_extension.webui.hooks import ScriptHooks
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


def refresh_endpoints(request: gr.Request = None) -> tuple[Any, str]:
    """The switch's endpoint list, asked with the key of the WebUI user who clicked (gradio passes `request`)."""
    try:
        names = endpoint_names(make_client(host.WebUIConnectionStore().for_user(getattr(request, "username", None))))
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
    """Run `p` on the middleware and return the Processed process_images would, the always-on scripts' hooks
    called where the host calls them; a user error comes back as the host shows one (host.user_error)."""
    hooks = ScriptHooks(p, skipped_titles=[SCRIPT_TITLE])
    hooks.call("before_process")
    try:
        processed = _generate(p, endpoint, hooks)
    except CloudGenerationError as exc:
        return host.user_error(p, str(exc))
    hooks.call("postprocess", processed)
    return processed


class CloudJob:
    """One p on the cloud: its models, settings and client; the images of each batch, requested when needed."""

    def __init__(self, p: Any, client: Any, endpoint: str | None, checkpoint: ModelRef, per_batch: bool):
        self.p, self.client, self.endpoint, self.checkpoint = p, client, endpoint, checkpoint
        self.settings = override_settings_for_cloud(p)
        self.vae = host.selected_vae(dict(getattr(p, "override_settings", None) or {}))
        self.catalogue = client.list_checkpoints(status=[CheckpointStatus.ACTIVE])
        self.models = self.models_for([])  # every model the job's prompts name, checked before anything runs
        # Batch hooks may change a batch's prompts: then each batch is planned after its hooks, else the whole
        # job at once (batches that follow on stay one request).
        self.per_batch = per_batch
        self.planned = [] if per_batch else plan_requests(p)
        self.requests_done = 0
        self.images: list = []
        self.infotexts: list[str] = []
        self.cancelled = False

    def models_for(self, texts: list[str]) -> dict[str, list]:
        wanted = wanted_models(self.p, list(dict.fromkeys(all_prompts(self.p) + texts)), self.checkpoint, self.vae,
                               host.model_folders()[CheckpointType.EMBEDDINGS], host.embedding_sha256)
        models, missing = resolve_models(wanted, self.catalogue)
        if missing:
            raise CloudGenerationError(missing_models_message(missing))
        return models

    def batch(self, n: int) -> tuple[list, list[str]]:
        """Batch n's images and the worker's infotexts (fewer when cancelled or interrupted)."""
        p = self.p
        if self.per_batch:
            texts = [str(t) for t in (*p.prompts, *p.negative_prompts, *(getattr(p, "hr_prompts", None) or []))]
            start = len(self.images)
            self._run(plan_batch_requests(p, n), self.models_for(texts), total=p.n_iter, number=n)
            return self.images[start:], self.infotexts[start:]
        first, last = n * p.batch_size, (n + 1) * p.batch_size
        while len(self.images) < last and self.requests_done < len(self.planned) and not self.cancelled:
            request = self.planned[self.requests_done]
            self._run([request], self.models, total=len(self.planned), number=self.requests_done)
        return self.images[first:last], self.infotexts[first:last]

    def _run(self, requests: list[CloudRequest], models: dict[str, list], total: int, number: int) -> None:
        for request in requests:
            self.requests_done += 1
            if self.cancelled or host.interrupted():
                self.cancelled = True
                return
            body = inference_request(self.p, self.endpoint, models, request.fields(), self.settings, request.init_image)
            try:
                output = run_generation(self.client, body, should_stop=host.interrupted,
                                        on_update=functools.partial(host.report_progress, number=number, total=total))
            except CloudJobCancelled:
                self.cancelled = True
                return
            self.images += output.images
            self.infotexts += list(output.info.get("infotexts") or [""] * len(output.images))


def _generate(p: Any, endpoint: str | None, hooks: ScriptHooks) -> Any:
    """process_images_inner on the cloud: p set up as the host does, its batches in turn with their hooks."""
    try:
        set_up_like_the_host(p)
        # the WebUI user's own key (A1111 sets p.user from the page's gr.Request; None through the API)
        client = make_client(host.WebUIConnectionStore().for_user(getattr(p, "user", None)))
        checkpoint = host.selected_checkpoint(dict(getattr(p, "override_settings", None) or {}))
        host.set_model_fields(p, checkpoint)
        hooks.call("process")  # after the prompts and seeds, as the host: dynamic prompts sets p.all_prompts here
        hooks.refuse_model_hook_scripts()
        job = CloudJob(p, client, endpoint, checkpoint, per_batch=hooks.has_pre_batch_hooks())
        output_images: list = []
        infotexts: list[str] = []
        for n in range(p.n_iter):
            if host.interrupted() or job.cancelled:
                break
            set_batch(p, n)
            hooks.before_batch(n)
            if not p.prompts:
                break
            images, worker_infotexts = job.batch(n)
            if not images:
                break
            save = host.save_samples(p)
            for i, image in enumerate(hooks.after_batch(n, images)):
                p.batch_index = i
                text = worker_infotexts[min(i, len(worker_infotexts) - 1)] if worker_infotexts else ""
                infotexts.append(host.finish_image(p, image, text, n * p.batch_size + i, save))
                output_images.append(image)
    except ApiError as exc:
        raise CloudGenerationError(error_text(exc)) from None
    except ValueError as exc:
        raise CloudGenerationError(str(exc)) from None
    return host.processed_like_the_host(p, output_images, infotexts)


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
