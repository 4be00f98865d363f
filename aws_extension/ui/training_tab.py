"""The Training tab: a LoRA or a DreamBooth checkpoint trained in the cloud from a dataset, followed while it trains.

Pure gradio + the client. The user picks an Active Stable-diffusion checkpoint; the training base (`/model`) it
needs is made or reused behind the scenes (`training_base`). A job is followed by polling `GET /train/{id}`:
with a `gr.Timer` where gradio has one (4.40+), else (3.41, A1111) by a generator that ends with the job.
A finished LoRA is offered as `<lora:NAME:1>`, added to a txt2img prompt box when the host gives one.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from aws_extension.client import ApiError, MiddlewareClient
from aws_extension.training import MAX_LORA_RANK, MAX_RESOLUTION, RESOLUTION_MULTIPLE, TrainingConfig
from aws_extension.ui.compat import gr
from aws_extension.ui.connection import ConnectionStore, as_user, make_client, per_user
from aws_extension.ui.sagemaker_tab import (
    HANDLED_ERRORS,
    INSTANCE_TYPES,
    Progress,
    SageMakerTab,
    failed,
    ok,
    table,
    when,
)
from aws_extension.vocabulary import (
    CheckpointStatus,
    CheckpointType,
    DatasetStatus,
    TrainingModelStatus,
    TrainingStatus,
    model_stem,
)

LORA, DREAMBOOTH = "LoRA", "DreamBooth"
TRAIN_TYPES = {LORA: CheckpointType.LORA.value, DREAMBOOTH: CheckpointType.STABLE_DIFFUSION.value}
TYPE_LABELS = {value: label for label, value in TRAIN_TYPES.items()}
DEFAULTS = TrainingConfig()
LEARNING_RATES = {LORA: DEFAULTS.lora_learning_rate, DREAMBOOTH: DEFAULTS.learning_rate}
JOB_HEADERS = ["job id", "type", "status", "steps", "model", "dataset", "started", "error"]
JOB_LIST_LIMIT = 30
POLL_S = 2.0
SAMPLE_CACHE_SIZE = 64  # sample images kept decoded, so a poll downloads only the new ones
HAS_TIMER = hasattr(gr, "Timer")  # gradio 4.40+; 3.41 (A1111) follows a job with a generator instead
FINISHED = (TrainingStatus.COMPLETE, TrainingStatus.FAIL, TrainingStatus.STOPPED)


def base_model_name(checkpoint_name: str) -> str:
    """A training model's name (letters, digits and '-') for a checkpoint file name."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", model_stem(checkpoint_name)).strip("-")[:63] or "base"


def training_base(client: MiddlewareClient, checkpoint_name: str) -> str:
    """The id of a `Complete` training model of the Active Stable-diffusion checkpoint `checkpoint_name`: one
    made earlier (without EMA extraction), else a new one, prepared and waited for. ApiError with the reason."""
    sd = CheckpointType.STABLE_DIFFUSION.value
    checkpoint = next((r for r in client.list_checkpoints([sd], [CheckpointStatus.ACTIVE.value])
                       if checkpoint_name in (r.get("name") or [])), None)
    if checkpoint is None:
        raise ApiError(0, f"{checkpoint_name} is not an Active Stable-diffusion checkpoint any more: press Refresh.")
    usable = [m for m in client.list_training_models()
              if m.get("checkpoint_id") == checkpoint["id"] and m["status"] != TrainingModelStatus.FAIL
              and not (m.get("params", {}).get("create_model_params") or {}).get("extract_ema")]
    model = next((m for m in usable if m["status"] == TrainingModelStatus.COMPLETE), usable[0] if usable else None)
    if model is None:
        model = client.create_training_model(checkpoint["id"], base_model_name(checkpoint_name))
    if model["status"] == TrainingModelStatus.COMPLETE:
        return model["id"]
    if model["status"] == TrainingModelStatus.INITIALED:
        client.prepare_training_model(model["id"])
    return client.wait_for_training_model(model["id"])["id"]


def with_lora(prompt: str | None, lora: str) -> str:
    """`prompt` with `lora` appended as A1111's extra-network cards add it (after a space); unchanged when the
    prompt already has it."""
    prompt = prompt or ""
    if lora in prompt:
        return prompt
    return f"{prompt}{'' if not prompt or prompt[-1].isspace() else ' '}{lora}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def whole(value: Any, label: str, low: int = 0) -> int:
    """A Number field's value as a whole number ≥ `low`; ValueError naming the field (a cleared field is None)."""
    if value is None or float(value) != int(value) or int(value) < low:
        raise ValueError(f"{label} must be a whole number of at least {low}.")
    return int(value)


def progress_text(job: dict, model_file: str = "") -> str:
    """One line about a job: where it is, its step, loss, speed and ETA, or why it ended (Markdown); a Complete
    job names the file of its model (`model_file`)."""
    status = job["status"]
    steps = f"step {job.get('step') or 0} / {job.get('total_steps') or '?'}"
    loss = f"loss {job['loss']:.4f}" if job.get("loss") is not None else ""
    head = f"Job {job['id']} ({TYPE_LABELS.get(job.get('trainType'), job.get('trainType'))}): **{status}**"
    if status == TrainingStatus.TRAINING and job.get("queue_position") is not None:
        return f"{head}, waiting for a training slot (position {job['queue_position'] + 1})."
    if status == TrainingStatus.TRAINING:
        speed = f"{job['steps_per_s']:.2f} steps/s" if job.get("steps_per_s") else ""
        eta = f"ETA {duration(job.get('eta_s'))}" if job.get("eta_s") is not None else ""
        return f"{head}, " + ", ".join(part for part in (steps, loss, speed, eta) if part) + "."
    if status == TrainingStatus.COMPLETE:
        model = f"`{model_file}`" if model_file else "its model"
        return f"{head}, {steps}" + (f", {loss}" if loss else "") + f"; {model} is Active in the cloud catalogue."
    if status == TrainingStatus.FAIL:
        return f"{head}: {job.get('error') or 'no reason given'}"
    if status == TrainingStatus.STOPPED:
        return f"{head} at {steps}; Resume continues from its saved state."
    return f"{head}; press Start."


@dataclass
class JobView:
    progress: str
    samples: list[Image.Image]
    lora: str  # `<lora:NAME:1>` of a Complete LoRA job, else ""
    following: bool  # the job may still change: keep polling


class TrainingTab:
    def __init__(self, store: ConnectionStore, txt2img_prompt: Any = None):
        self.store = store
        self.txt2img_prompt = txt2img_prompt  # the host's txt2img prompt box, if there is one
        self.datasets = SageMakerTab(store)  # its dataset upload, shared with the Datasets tab
        self._samples: OrderedDict[str, Image.Image] = OrderedDict()
        self._model_files: dict[str, str] = {}  # checkpoint id → its file name
        self._following: dict[str | None, object] = {}  # session → its newest follow (gradio 3.41)
        self._lock = threading.Lock()

    # -- choices -------------------------------------------------------------------------------------
    @per_user
    def choices(self, base: str | None, dataset: str | None) -> tuple[Any, Any, str]:
        """Active Stable-diffusion checkpoints and Enabled datasets, keeping the chosen ones still there."""
        try:
            client = make_client(self.store)
            bases = [name for r in client.list_checkpoints([CheckpointType.STABLE_DIFFUSION.value],
                                                           [CheckpointStatus.ACTIVE.value]) for name in r["name"]]
            datasets = [r["datasetName"] for r in client.list_datasets([DatasetStatus.ENABLED.value])]
        except ApiError as exc:
            return gr.update(), gr.update(), failed(exc)
        message = ok(f"{len(bases)} base model(s), {len(datasets)} dataset(s).")
        if not bases:
            message = failed("No Active Stable-diffusion checkpoint: upload one in Amazon SageMaker → Cloud models.")
        return (gr.update(choices=bases, value=base if base in bases else (bases[0] if bases else None)),
                gr.update(choices=datasets, value=dataset if dataset in datasets else None), message)

    def type_changed(self, train_type: str) -> tuple[Any, Any]:
        """The learning rate's default for the type, and the rank only for LoRA."""
        return gr.update(value=LEARNING_RATES.get(train_type, DEFAULTS.lora_learning_rate)), \
            gr.update(visible=train_type == LORA)

    @per_user
    def upload_dataset(self, name: str, files: Any, progress: Progress = gr.Progress()) -> tuple[Any, str]:
        """Create an Enabled dataset from images and their `<image>.txt` captions; it becomes the chosen one."""
        message = self.datasets.create_dataset(name, "uploaded from the Training tab", files, progress=progress)
        if not message.startswith("Done:"):
            return gr.update(), message
        try:
            names = [r["datasetName"] for r in make_client(self.store).list_datasets([DatasetStatus.ENABLED.value])]
        except ApiError as exc:
            return gr.update(), failed(exc)
        return gr.update(choices=names, value=name.strip()), message

    # -- start, stop, resume -------------------------------------------------------------------------
    def config_params(self, train_type: str, instance_prompt: str, instance_token: str, class_prompt: str,
                      class_images: Any, steps: Any, learning_rate: Any, rank: Any, resolution: Any,
                      model_name: str, preview_prompt: str, preview_every: Any) -> dict:
        """The `config_params` of POST /train for the form; the middleware checks every range."""
        concept: dict[str, Any] = {"instance_prompt": (instance_prompt or "").strip(),
                                   "instance_token": (instance_token or "").strip(),
                                   "class_prompt": (class_prompt or "").strip(),
                                   "num_class_images_per": whole(class_images, "Class images per image")}
        if (preview_prompt or "").strip():
            concept["save_sample_prompt"] = preview_prompt.strip()
        if learning_rate is None:
            raise ValueError("Enter a learning rate, e.g. 0.0001.")
        config: dict[str, Any] = {"concepts_list": [concept], "max_train_steps": whole(steps, "Steps", 1),
                                  "resolution": whole(resolution, "Resolution", 1),
                                  "save_preview_every": whole(preview_every, "Preview every")}
        if (model_name or "").strip():
            config["model_name"] = model_name.strip()
        if train_type == LORA:
            config.update(lora_learning_rate=float(learning_rate), lora_unet_rank=whole(rank, "Rank", 1))
        else:
            config["learning_rate"] = float(learning_rate)
        return config

    @per_user
    def start(self, base: str | None, train_type: str, dataset: str | None, instance_prompt: str,
              instance_token: str, class_prompt: str, class_images: Any, steps: Any, learning_rate: Any, rank: Any,
              resolution: Any, instance_type: str, model_name: str, preview_prompt: str,
              preview_every: Any) -> Generator[tuple[str, Any], None, None]:
        """A generator of (status, job id): the base made or reused, the job created and started."""
        if not base:
            yield failed("Choose a base model: an Active Stable-diffusion checkpoint (press Refresh; upload one in "
                         "Cloud models)."), gr.update()
            return
        if not dataset:
            yield failed("Choose a dataset, or upload images (and their captions) below."), gr.update()
            return
        if not (instance_prompt or "").strip() and not (instance_token or "").strip():
            yield failed("Enter an instance prompt, e.g. \"a photo of sks dog\": the caption of images without a "
                         ".txt caption."), gr.update()
            return
        try:
            config = self.config_params(train_type, instance_prompt, instance_token, class_prompt, class_images,
                                        steps, learning_rate, rank, resolution, model_name, preview_prompt,
                                        preview_every)
            client = make_client(self.store)
            yield f"Preparing the training base from {base}…", gr.update()
            model_id = training_base(client, base)
            job = client.create_training(TRAIN_TYPES[train_type], model_id,
                                         {"dataset_name": dataset, "training_instance_type": instance_type}, config)
            job = client.start_training(job["id"])
        except HANDLED_ERRORS as exc:
            yield failed(exc), gr.update()
            return
        yield ok(f"Started {train_type} job {job['id']}: {job['total_steps']} steps on {dataset}."), job["id"]

    @per_user
    def stop(self, job_id: str) -> str:
        if not job_id:
            return failed("No job is shown: start one or show one from the list.")
        try:
            job = make_client(self.store).stop_training(job_id)
        except ApiError as exc:
            return failed(exc)
        if job["status"] == TrainingStatus.STOPPED:
            return ok(f"Stopped job {job_id} at step {job.get('step') or 0}; Resume continues from there.")
        return ok(f"Stopping job {job_id}: it is saving its state.")

    @per_user
    def resume(self, job_id: str) -> str:
        if not job_id:
            return failed("No job is shown: show a Stopped job from the list.")
        try:
            job = make_client(self.store).start_training(job_id)
        except ApiError as exc:
            return failed(exc)
        return ok(f"Resumed job {job_id} from step {job.get('step') or 0}.")

    # -- following a job -------------------------------------------------------------------------------
    def _sample(self, client: MiddlewareClient, url: str) -> Image.Image:
        key = url.split("?", 1)[0]  # the signature changes with every answer, the image does not
        with self._lock:
            if key in self._samples:
                self._samples.move_to_end(key)
                return self._samples[key]
        image = Image.open(io.BytesIO(client.download(url)))
        image.load()
        with self._lock:
            self._samples[key] = image
            while len(self._samples) > SAMPLE_CACHE_SIZE:
                self._samples.popitem(last=False)
        return image

    def _model_file(self, client: MiddlewareClient, job: dict) -> str:
        """The file name of a Complete job's checkpoint (the name a prompt or a model list uses), else ""."""
        checkpoint_id = job.get("checkpoint_id")
        if job["status"] != TrainingStatus.COMPLETE or not checkpoint_id:
            return ""
        if checkpoint_id not in self._model_files:
            self._model_files[checkpoint_id] = client.get_checkpoint(checkpoint_id)["name"][0]
        return self._model_files[checkpoint_id]

    def view(self, job_id: str | None) -> JobView:
        """The job as it is now: its progress line, its samples so far, its LoRA call when it is done."""
        if not job_id:
            return JobView("", [], "", False)
        try:
            client = make_client(self.store)
            job = client.training_job(job_id)
            samples = [self._sample(client, url) for url in job.get("samples") or []]
            model_file = self._model_file(client, job)
        except HANDLED_ERRORS as exc:
            return JobView(failed(exc), [], "", False)
        lora = f"<lora:{model_stem(model_file)}:1>" if model_file and job["trainType"] == CheckpointType.LORA else ""
        return JobView(progress_text(job, model_file), samples, lora, job["status"] not in FINISHED)

    def _shown(self, view: JobView) -> tuple[str, list, str, Any, Any]:
        """The view's outputs; the job list is read again once the job has ended (else left as it is)."""
        rows, choices = (gr.update(), gr.update()) if view.following else self.job_rows()
        return view.progress, view.samples, view.lora, rows, choices

    @per_user
    def tick(self, job_id: str | None) -> tuple[Any, ...]:
        """One poll (gradio 4.40+): the view, and the timer on while the job may still change."""
        view = self.view(job_id)
        return (*self._shown(view), gr.update(active=view.following))

    def follow_job(self, job_id: str | None, request: gr.Request = None) -> Generator[tuple[Any, ...], None, None]:
        """Poll until the job ends (gradio 3.41): a newer follow in the same page ends this one."""
        session = getattr(request, "session_hash", None)
        tab = as_user(self, getattr(request, "username", None))  # the clicking WebUI user's connection
        mine = object()
        self._following[session] = mine
        try:
            while True:
                view = tab.view(job_id)
                yield self._shown(view)
                if not view.following or self._following.get(session) is not mine:
                    return
                time.sleep(POLL_S)
        finally:
            if self._following.get(session) is mine:
                del self._following[session]

    def add_lora_to_prompt(self, lora: str, prompt: str) -> tuple[Any, str]:
        if not lora:
            return gr.update(), failed("No finished LoRA is shown: show a Complete LoRA job first.")
        if lora in (prompt or ""):
            return gr.update(), ok(f"The txt2img prompt already has `{lora}`.")
        return gr.update(value=with_lora(prompt, lora)), ok(f"Added `{lora}` to the txt2img prompt.")

    # -- the job list ------------------------------------------------------------------------------------
    @per_user
    def job_table(self) -> tuple[dict, Any, str]:
        try:
            jobs = make_client(self.store).list_trainings()[:JOB_LIST_LIMIT]
        except ApiError as exc:
            return table(JOB_HEADERS, []), gr.update(), failed(exc)
        rows = [[j["id"], TYPE_LABELS.get(j.get("trainType"), j.get("trainType")), j["status"],
                 f"{j.get('step') or 0} / {j.get('total_steps') or '?'}", j.get("modelName") or "",
                 j.get("dataset_name") or "", when(j.get("start_time") or j.get("created")), j.get("error") or ""]
                for j in jobs]
        return table(JOB_HEADERS, rows), gr.update(choices=[r[0] for r in rows]), ok(f"{len(rows)} training job(s).")

    @per_user
    def job_rows(self) -> tuple[dict, Any]:
        """The list and its choices, for after an action whose message must stay."""
        rows, choices, _ = self.job_table()
        return rows, choices

    # -- layout ------------------------------------------------------------------------------------------------
    def render(self) -> list[Any]:
        """Lays out the tab; returns the buttons that change something (the caller shows them only to keys
        with `train:all`)."""
        with gr.Row():
            base = gr.Dropdown(label="Base model (Active Stable-diffusion checkpoint)", choices=[],
                               elem_id="sd_aws_train_base")
            dataset = gr.Dropdown(label="Dataset (Enabled)", choices=[], elem_id="sd_aws_train_dataset")
            refresh = gr.Button("Refresh", elem_id="sd_aws_train_refresh")
        with gr.Accordion("Upload images with captions as a new dataset", open=False):
            upload_name = gr.Textbox(label="Dataset name", elem_id="sd_aws_train_upload_name")
            upload_files = gr.File(label="Images, and captions as <image name>.txt", file_count="multiple",
                                   elem_id="sd_aws_train_upload_files")
            upload = gr.Button("Upload dataset", elem_id="sd_aws_train_upload")
        with gr.Row():
            train_type = gr.Radio(label="Training", choices=list(TRAIN_TYPES), value=LORA, elem_id="sd_aws_train_type")
            instance_type = gr.Dropdown(label="Instance type", choices=INSTANCE_TYPES,
                                        value=self.datasets.default_instance_type(),
                                        elem_id="sd_aws_train_instance_type")
            model_name = gr.Textbox(label="Model name (optional)", elem_id="sd_aws_train_model_name")
        with gr.Row():
            instance_prompt = gr.Textbox(label="Instance prompt", placeholder="a photo of sks dog",
                                         elem_id="sd_aws_train_instance_prompt")
            instance_token = gr.Textbox(label="Instance token", placeholder="sks", elem_id="sd_aws_train_instance_token")
        with gr.Row():
            class_prompt = gr.Textbox(label="Class prompt (prior preservation)", placeholder="a photo of a dog",
                                      elem_id="sd_aws_train_class_prompt")
            class_images = gr.Number(label="Class images per image (0: none)", value=0, precision=0,
                                     elem_id="sd_aws_train_class_images")
        with gr.Row():
            steps = gr.Number(label="Steps", value=1000, precision=0, elem_id="sd_aws_train_steps")
            learning_rate = gr.Number(label="Learning rate", value=LEARNING_RATES[LORA],
                                      elem_id="sd_aws_train_learning_rate")
            rank = gr.Slider(label="Rank (LoRA)", minimum=1, maximum=min(MAX_LORA_RANK, 256), step=1,
                             value=DEFAULTS.lora_unet_rank, elem_id="sd_aws_train_rank")
            resolution = gr.Slider(label="Resolution", minimum=RESOLUTION_MULTIPLE, maximum=MAX_RESOLUTION,
                                   step=RESOLUTION_MULTIPLE, value=DEFAULTS.resolution, elem_id="sd_aws_train_resolution")
        with gr.Row():
            preview_prompt = gr.Textbox(label="Preview prompt (empty: the instance prompt)",
                                        elem_id="sd_aws_train_preview_prompt")
            preview_every = gr.Number(label="Preview every (steps; 0: none)", value=0, precision=0,
                                      elem_id="sd_aws_train_preview_every")
        with gr.Row():
            start = gr.Button("Start", variant="primary", elem_id="sd_aws_train_start")
            stop = gr.Button("Stop", variant="stop", elem_id="sd_aws_train_stop")
            resume = gr.Button("Resume", elem_id="sd_aws_train_resume")
        status = gr.Markdown(elem_id="sd_aws_train_status")
        job_id = gr.Textbox(label="Job", interactive=False, elem_id="sd_aws_train_job_id")
        progress = gr.Markdown(elem_id="sd_aws_train_progress")
        samples = gr.Gallery(label="Samples", columns=4, elem_id="sd_aws_train_samples")
        with gr.Row():
            lora = gr.Textbox(label="LoRA for a prompt" + ("" if self.txt2img_prompt else " (copy it into your prompt)"),
                              interactive=False, elem_id="sd_aws_train_lora")
            use_lora = gr.Button("Add to the txt2img prompt", visible=self.txt2img_prompt is not None,
                                 elem_id="sd_aws_train_use_lora")
        with gr.Row():
            refresh_jobs = gr.Button("Refresh jobs", elem_id="sd_aws_train_jobs_refresh")
            chosen = gr.Dropdown(label="Job", choices=[], elem_id="sd_aws_train_job_choice")
            show = gr.Button("Show", elem_id="sd_aws_train_show")
        jobs = gr.Dataframe(headers=JOB_HEADERS, interactive=False, elem_id="sd_aws_train_jobs")

        view = [progress, samples, lora, jobs, chosen]
        if HAS_TIMER:
            timer = gr.Timer(POLL_S, active=False)
            timer.tick(self.tick, [job_id], [*view, timer])

            def follow(event):
                return event.then(self.tick, [job_id], [*view, timer])
        else:
            def follow(event):
                return event.then(self.follow_job, [job_id], view)

        refresh.click(self.choices, [base, dataset], [base, dataset, status])
        train_type.change(self.type_changed, [train_type], [learning_rate, rank])
        upload.click(self.upload_dataset, [upload_name, upload_files], [dataset, status])
        started = start.click(self.start, [base, train_type, dataset, instance_prompt, instance_token, class_prompt,
                                           class_images, steps, learning_rate, rank, resolution, instance_type,
                                           model_name, preview_prompt, preview_every], [status, job_id])
        follow(started)
        started.then(self.job_rows, None, [jobs, chosen])
        # queue=False: on gradio 3.41 a followed job holds the standalone app's one queue worker
        stop.click(self.stop, [job_id], [status], queue=False).then(self.job_rows, None, [jobs, chosen], queue=False)
        resumed = resume.click(self.resume, [job_id], [status])
        follow(resumed)
        resumed.then(self.job_rows, None, [jobs, chosen])
        refresh_jobs.click(self.job_table, None, [jobs, chosen, status])
        follow(show.click(lambda choice: choice or "", [chosen], [job_id]))
        if self.txt2img_prompt is not None:
            use_lora.click(self.add_lora_to_prompt, [lora, self.txt2img_prompt], [self.txt2img_prompt, status])
        return [upload, start, stop, resume]

    def build_blocks(self) -> gr.Blocks:
        with gr.Blocks(analytics_enabled=False) as blocks:
            self.render()
        return blocks
