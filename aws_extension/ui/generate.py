"""The standalone app's own txt2img / img2img tab: generate on a chosen endpoint, for users without a WebUI."""

from __future__ import annotations

from typing import Any

from aws_extension.client import ApiError
from aws_extension.payload import SAMPLER_NAMES
from aws_extension.ui.compat import gr
from aws_extension.ui.connection import ConnectionStore, make_client
from aws_extension.ui.follow import follow
from aws_extension.ui.inference import (
    CloudGenerationError,
    endpoint_names,
    job_status_text,
    png_base64,
    run_generation,
)
from aws_extension.ui.models import ModelRef, missing_models_message, resolve_models
from aws_extension.ui.sagemaker_tab import HANDLED_ERRORS, failed, ok
from aws_extension.vocabulary import CheckpointStatus, CheckpointType, Task, lora_names

# A1111 1.10 offers the names without " Karras" (the schedule is its own choice); the old names still work.
SAMPLERS = [name for name in SAMPLER_NAMES if not name.endswith(" Karras")]


class GenerateTab:
    def __init__(self, store: ConnectionStore, task_type: str):
        self.store = store
        self.task_type = Task(task_type)  # txt2img or img2img
        self.prompt: gr.Textbox | None = None  # set by render(); the Training tab adds a LoRA to it

    def choices(self) -> tuple[Any, Any, str]:
        """InService endpoints and Active Stable-diffusion checkpoints, for the two dropdowns."""
        try:
            client = make_client(self.store)
            endpoints = endpoint_names(client)
            checkpoints = [name for r in client.list_checkpoints([CheckpointType.STABLE_DIFFUSION],
                                                                 [CheckpointStatus.ACTIVE]) for name in r["name"]]
        except ApiError as exc:
            return gr.update(), gr.update(), failed(exc)
        message = ok(f"{len(endpoints)} endpoint(s) InService, {len(checkpoints)} checkpoint(s).")
        if not endpoints:
            message = failed("No endpoint is InService: deploy one in Amazon SageMaker → Endpoints.")
        return (gr.update(choices=endpoints, value=endpoints[0] if endpoints else None),
                gr.update(choices=checkpoints, value=checkpoints[0] if checkpoints else None), message)

    def build_request(self, endpoint: str, checkpoint: str, prompt: str, negative_prompt: str, sampler: str,
                      steps: float, cfg_scale: float, width: float, height: float, seed: float, batch_size: float,
                      init_image: Any = None, denoising_strength: float = 0.75) -> dict:
        body: dict[str, Any] = {
            "task_type": self.task_type.value, "models": {CheckpointType.STABLE_DIFFUSION.value: [checkpoint]},
            "sagemaker_endpoint_name": endpoint, "prompt": prompt or "", "negative_prompt": negative_prompt or "",
            "sampler_name": sampler, "steps": int(steps), "cfg_scale": float(cfg_scale), "width": int(width),
            "height": int(height), "seed": int(seed), "batch_size": int(batch_size), "n_iter": 1,
        }
        if self.task_type == Task.IMG2IMG:
            body["init_images"] = [png_base64(init_image)]
            body["denoising_strength"] = float(denoising_strength)
        return body

    def generate(self, endpoint: str | None, checkpoint: str | None, prompt: str, negative_prompt: str,
                 sampler: str, steps: float, cfg_scale: float, width: float, height: float, seed: float,
                 batch_size: float, init_image: Any = None, denoising_strength: float = 0.75):
        """A generator of (gallery, infotext, job id, status) while the job runs and once it is done."""
        if not endpoint:
            yield [], "", "", failed("Choose an InService endpoint (press Refresh after deploying one).")
            return
        if not checkpoint:
            yield [], "", "", failed("Choose a checkpoint; upload one in Amazon SageMaker → Cloud models.")
            return
        if self.task_type == Task.IMG2IMG and init_image is None:
            yield [], "", "", failed("Add an input image for img2img.")
            return
        body = self.build_request(endpoint, checkpoint, prompt, negative_prompt, sampler, steps, cfg_scale, width,
                                  height, seed, batch_size, init_image, denoising_strength)
        try:
            client = make_client(self.store)
            loras = [ModelRef(CheckpointType.LORA, name) for name in lora_names([prompt])]
            if loras:
                resolved, missing = resolve_models(loras, client.list_checkpoints([CheckpointType.LORA],
                                                                                  [CheckpointStatus.ACTIVE]))
                if missing:
                    raise CloudGenerationError(missing_models_message(missing))
                body["models"].update(resolved)
            yield [], "", "", "Sending the job…"
            output = yield from follow(
                lambda report: run_generation(client, body, on_update=report),
                lambda job: (gr.update(), gr.update(), job["InferenceJobId"], f"Job {job_status_text(job)}"))
        except HANDLED_ERRORS as exc:
            yield gr.update(), gr.update(), gr.update(), failed(exc)
            return
        infotexts = output.info.get("infotexts") or [""]
        yield (output.images, infotexts[0], output.job["InferenceJobId"],
               ok(f"{len(output.images)} image(s), seed {output.info.get('seed', '?')}."))

    def cancel(self, job_id: str) -> str:
        if not job_id:
            return failed("No job is running.")
        try:
            make_client(self.store).cancel_inference(job_id)
        except ApiError as exc:
            return failed(exc)
        return ok(f"Cancelling job {job_id}.")

    def render(self) -> None:
        prefix = f"sd_aws_{self.task_type.value}"
        with gr.Row():
            endpoint = gr.Dropdown(label="Endpoint", choices=[], elem_id=f"{prefix}_endpoint")
            checkpoint = gr.Dropdown(label="Checkpoint", choices=[], elem_id=f"{prefix}_checkpoint")
            refresh = gr.Button("Refresh", elem_id=f"{prefix}_refresh")
        prompt = self.prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}_prompt")
        negative_prompt = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_negative_prompt")
        init_image, denoising = None, None
        if self.task_type == Task.IMG2IMG:
            with gr.Row():
                init_image = gr.Image(label="Input image", type="pil", elem_id=f"{prefix}_init_image")
                denoising = gr.Slider(label="Denoising strength", minimum=0.0, maximum=1.0, step=0.01, value=0.75,
                                      elem_id=f"{prefix}_denoising")
        with gr.Row():
            sampler = gr.Dropdown(label="Sampler", choices=SAMPLERS, value=SAMPLERS[0], elem_id=f"{prefix}_sampler")
            steps = gr.Slider(label="Steps", minimum=1, maximum=150, step=1, value=20, elem_id=f"{prefix}_steps")
            cfg_scale = gr.Slider(label="CFG scale", minimum=1, maximum=30, step=0.5, value=7,
                                  elem_id=f"{prefix}_cfg")
        with gr.Row():
            width = gr.Slider(label="Width", minimum=64, maximum=2048, step=8, value=512, elem_id=f"{prefix}_width")
            height = gr.Slider(label="Height", minimum=64, maximum=2048, step=8, value=512,
                               elem_id=f"{prefix}_height")
            seed = gr.Number(label="Seed (-1: random)", value=-1, precision=0, elem_id=f"{prefix}_seed")
            batch_size = gr.Slider(label="Batch size", minimum=1, maximum=8, step=1, value=1,
                                   elem_id=f"{prefix}_batch_size")
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
            cancel = gr.Button("Cancel", elem_id=f"{prefix}_cancel")
        status = gr.Markdown(elem_id=f"{prefix}_status")
        gallery = gr.Gallery(label="Images", elem_id=f"{prefix}_gallery")
        infotext = gr.Textbox(label="Generation parameters", interactive=False, elem_id=f"{prefix}_infotext")
        job_id = gr.Textbox(label="Job id", interactive=False, elem_id=f"{prefix}_job_id")
        inputs = [endpoint, checkpoint, prompt, negative_prompt, sampler, steps, cfg_scale, width, height, seed,
                  batch_size]
        if init_image is not None:
            inputs += [init_image, denoising]
        refresh.click(self.choices, None, [endpoint, checkpoint, status])
        generate.click(self.generate, inputs, [gallery, infotext, job_id, status])
        # queue=False: gradio 3.41's single queue worker is busy with the running generation
        cancel.click(self.cancel, [job_id], [status], queue=False)
