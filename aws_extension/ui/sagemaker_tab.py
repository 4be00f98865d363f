"""The "Amazon SageMaker" tab: Settings, Cloud models, Endpoints, Datasets, Jobs, Training (`training_tab.py`),
Users (`users_tab.py`).

Pure gradio + the client. The handlers are plain methods (the tests call them directly); `render()` lays
out the components in the current gradio context, `build_blocks()` wraps them for the WebUI's tab list.
Each handler runs with the connection of the WebUI user who clicked (`per_user`); the controls a key may not
use are hidden (`gate`), from what the key may do (`access_updates`: on page load and after Save / Test).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from aws_extension.client import ApiError, MiddlewareClient
from aws_extension.ui.compat import gr, uploaded_paths
from aws_extension.ui.connection import (
    Access,
    ConnectionStore,
    Gate,
    error_text,
    is_loopback,
    key_access,
    make_client,
    masked_key,
    normalise_api_url,
    per_user,
)
from aws_extension.ui.follow import follow
from aws_extension.ui.inference import CloudGenerationError, job_outputs, job_status_text
from aws_extension.ui.models import is_model_file, list_model_files
from aws_extension.vocabulary import (
    MODEL_SUFFIXES,
    MODEL_TYPES,
    CheckpointStatus,
    EndpointStatus,
    JobStatus,
    Permission,
)

ALL_TYPES = "All types"
INSTANCE_TYPES = ["ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.4xlarge", "ml.g5.8xlarge", "ml.g5.12xlarge",
                  "ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g4dn.4xlarge", "ml.g4dn.8xlarge", "ml.g4dn.12xlarge",
                  "local"]
INSTANCE_TYPE_NOTE = (
    "Instance type: on a middleware with the AWS backend, the SageMaker instance each worker runs on "
    "(`ml.g5.*`, `ml.g4dn.*`: GPUs). On a local middleware (`sd-aws up`, `SD_AWS_BACKEND=local`) every "
    "instance type is a worker process on the middleware's own machine, on its GPU if it has one, else its "
    "CPU: choose `local` there.")
CHECKPOINT_HEADERS = ["name", "type", "status", "size", "sha256", "created"]
ENDPOINT_HEADERS = ["endpoint", "status", "endpoint status", "instance type", "instances", "autoscaling",
                    "started", "error"]
DATASET_HEADERS = ["dataset", "status", "created", "description"]
JOB_HEADERS = ["job id", "status", "progress", "task", "endpoint", "started", "error"]
PREVIEW_LIMIT = 24  # images shown in a dataset preview
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"
Progress = Callable[..., Any]  # gr.Progress: progress(fraction, desc=...)
HANDLED_ERRORS = (ApiError, CloudGenerationError, OSError, ValueError)


def ok(message: str) -> str:
    return f"Done: {message}"


def failed(exc: Exception | str) -> str:
    return f"Error: {exc if isinstance(exc, str) else error_text(exc)}"


def table(headers: list[str], rows: list[list]) -> dict:
    """A Dataframe value that keeps its headers when empty (a bare [] drops them on gradio 3.41)."""
    return {"headers": headers, "data": rows}


def human_size(size: int | None) -> str:
    if not size:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def when(value: Any) -> str:
    """A record time (Unix seconds, or the seed's "2023-07-04 08:00:35.171309" text) as minutes, UTC."""
    if value in (None, ""):
        return ""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M")
    return str(value)[:16]


class SageMakerTab:
    def __init__(self, store: ConnectionStore, model_folders: dict[str, list[Path]] | None = None,
                 txt2img_prompt: Any = None):
        self.store = store
        self.model_folders = model_folders or {}  # WebUI model folders by type; empty when standalone
        self.txt2img_prompt = txt2img_prompt  # the txt2img prompt box the Training tab adds a LoRA to, if any
        self.gates: list[Gate] = []  # filled by render()
        self._who: Any = None  # the Settings line saying who the key is
        self._access_triggers: list = []  # the events after which what the key may do is asked again
        self._settings_fields: list = []  # the URL and key fields

    # -- what the key may do -----------------------------------------------------------------------------
    def gate(self, permission: Permission, *components: Any) -> None:
        """Show `components` only to a key with `permission`; a note in their place says why (created here,
        in the current layout)."""
        note = gr.Markdown(visible=False, elem_classes=["sd-aws-permission-note"])
        self.gates.append(Gate(permission, list(components), note))

    @per_user
    def access_updates(self) -> list:
        """Who the key is, for the Settings line, then the gates' updates (see `gate`)."""
        try:
            access: Access | None = key_access(self.store)
            who = access.who()
        except ApiError as exc:
            access, who = None, failed(exc)
        return [who, *(update for gate in self.gates for update in gate.updates(access))]

    def _access_outputs(self) -> list:
        return [self._who, *(component for gate in self.gates for component in (*gate.components, gate.note))]

    # -- Settings ------------------------------------------------------------------------------------
    @per_user
    def saved_settings(self) -> tuple[str, Any]:
        """The saved URL and how the saved key is shown (the key field's text is left as it is: a key being
        typed while the page loads stays)."""
        return self.store.api_url(), gr.update(placeholder=masked_key(self.store.api_key()))

    @per_user
    def save_settings(self, api_url: str, api_key: str) -> tuple[str, Any]:
        if not (api_url or "").strip():
            return failed("Enter the middleware's URL, e.g. http://127.0.0.1:8080."), gr.update()
        try:
            url = normalise_api_url(api_url)
        except ApiError as exc:
            return failed(exc), gr.update()
        self.store.save(url, api_key or None)
        added = f" (as {url})" if url != api_url.strip().rstrip("/") else ""
        return (ok(f"Saved{added}; {masked_key(self.store.api_key())}."),
                gr.update(value="", placeholder=masked_key(self.store.api_key())))

    @per_user
    def test_connection(self, api_url: str, api_key: str) -> str:
        """Test the URL in the field, with the key in the field or else the saved key."""
        try:
            client = MiddlewareClient(normalise_api_url(api_url), (api_key or "").strip() or self.store.api_key())
            version = client.healthz().get("version", "?")
            access = Access.of(client.whoami())
        except ApiError as exc:
            return failed(exc)
        whose = f" It is {access.username}'s (roles: {', '.join(access.roles) or 'none'})." if access.username else ""
        return ok(f"Connected to {client.api_url} (sd-aws {version}); the API key is accepted.{whose}")

    # -- Cloud models ----------------------------------------------------------------------------------
    @per_user
    def checkpoint_table(self, type_filter: str) -> tuple[dict, str]:
        try:
            types = None if type_filter in (None, "", ALL_TYPES) else [type_filter]
            records = make_client(self.store).list_checkpoints(types)
        except ApiError as exc:
            return table(CHECKPOINT_HEADERS, []), failed(exc)
        rows = [[", ".join(r.get("name") or []), r.get("type", ""), r.get("status", ""), human_size(r.get("size")),
                 (r.get("sha256") or "")[:10], when(r.get("created"))] for r in records]
        return table(CHECKPOINT_HEADERS, rows), ok(f"{len(rows)} checkpoint(s).")

    def _local_files(self, model_type: str) -> dict[str, Path]:
        folders = self.model_folders.get(model_type, [])
        files: dict[str, Path] = {}
        for path in list_model_files(folders):
            folder = next(f for f in folders if path.is_relative_to(f))
            files[str(path.relative_to(folder))] = path
        return files

    def local_file_choices(self, model_type: str, selected: list[str] | None = None) -> Any:
        """The files in the WebUI's folders now (listed again each time), keeping the selected ones still there."""
        choices = list(self._local_files(model_type))
        return gr.update(choices=choices, value=[name for name in selected or [] if name in choices])

    def _upload(self, model_type: str, paths: list[Path], progress: Progress) -> str:
        if not paths:
            return failed("Choose at least one model file to upload.")
        not_models = [p.name for p in paths if not is_model_file(p)]
        if not_models:
            return failed(f"{', '.join(not_models)} is not a model file (model files end in "
                          f"{', '.join(MODEL_SUFFIXES)}).")
        try:
            client = make_client(self.store)
            done_names, known = [], []
            for path in paths:  # one checkpoint per file, so each gets its own catalogue entry
                progress(0.0, desc=f"Uploading {path.name}")
                record = client.upload_checkpoint_files(
                    model_type, [path], {"message": "uploaded from the Amazon SageMaker tab"},
                    progress=lambda done, total, name=path.name: progress(done / max(total, 1),
                                                                          desc=f"Uploading {name}"))
                if path.name in record["name"]:
                    done_names.append(path.name)
                else:  # the catalogue is content-addressed: the same file under another name is not sent again
                    known.append(f"{path.name} is already there as {', '.join(record['name'])} (the same file)")
        except HANDLED_ERRORS as exc:
            return failed(exc)
        uploaded = [f"Uploaded {', '.join(done_names)} as {model_type}; it is Active in the cloud catalogue."] \
            if done_names else []
        return ok(" ".join([*uploaded, *(f"{line}." for line in known)]))

    @per_user
    def upload_local(self, model_type: str, selected: list[str] | None,
                     progress: Progress = gr.Progress()) -> str:  # gradio injects its tracker
        files = self._local_files(model_type)
        return self._upload(model_type, [files[name] for name in selected or [] if name in files], progress)

    @per_user
    def upload_from_computer(self, model_type: str, files: Any,
                             progress: Progress = gr.Progress()) -> str:
        return self._upload(model_type, uploaded_paths(files), progress)

    @per_user
    def import_by_url(self, model_type: str, urls_text: str, hf_token: str, civitai_token: str):
        """A generator: the import's live status until its checkpoint is Active or Failed."""
        urls = [u.strip() for u in (urls_text or "").splitlines() if u.strip()]
        if not urls:
            yield failed("Enter at least one http(s) URL of a model file.")
            return
        params = {k: v.strip() for k, v in (("hf_token", hf_token), ("civitai_token", civitai_token)) if v and v.strip()}

        def show(record: dict) -> str:
            progress = record.get("progress") or {}
            received = human_size(progress.get("bytes_received")) or "0 B"
            total = human_size(progress.get("bytes_total"))
            return f"Importing: {record.get('status')}, {received}" + (f" of {total}" if total else "")

        try:
            client = make_client(self.store)
            record = client.import_checkpoint(model_type, urls, params)["checkpoint"]
            yield f"Import started (checkpoint {record['id']})."
            final = yield from follow(lambda report: client.wait_for_checkpoint(record["id"], on_update=report), show)
        except HANDLED_ERRORS as exc:
            yield failed(exc)
            return
        if final["status"] == CheckpointStatus.ACTIVE:
            yield ok(f"Imported {', '.join(final.get('name') or [])} as {model_type}.")
        else:
            yield failed(f"The import failed: {final.get('error') or final['status']}")

    # -- Endpoints ---------------------------------------------------------------------------------------
    @per_user
    def endpoint_table(self) -> tuple[dict, Any, str]:
        try:
            records = make_client(self.store).list_endpoints()
        except ApiError as exc:
            return table(ENDPOINT_HEADERS, []), gr.update(), failed(exc)
        rows = [[r.get("endpoint_name"), r.get("status"), r.get("endpoint_status"), r.get("instance_type") or "",
                 r.get("current_instance_count") if r.get("current_instance_count") is not None else "",
                 "on" if r.get("autoscaling") else "off", when(r.get("startTime")), r.get("error") or ""]
                for r in records]
        live = list(dict.fromkeys(r["endpoint_name"] for r in records
                                  if r.get("endpoint_status") not in (EndpointStatus.DELETED,
                                                                      EndpointStatus.DELETING)))
        return table(ENDPOINT_HEADERS, rows), gr.update(choices=live, value=[]), ok(f"{len(live)} endpoint(s).")

    @per_user
    def endpoint_rows(self) -> tuple[dict, Any]:
        """The table and the delete choices, for after an action whose message must stay."""
        rows, choices, _ = self.endpoint_table()
        return rows, choices

    def default_instance_type(self) -> str:
        """`local` on a local backend (the middleware's /healthz says which; if it cannot be asked, a
        middleware on this machine is taken as local), else the smallest GPU type."""
        try:
            client = make_client(self.store)
            client.timeout_s = 3
            backend = client.healthz().get("backend")
        except ApiError:
            backend = None
        if backend is None:  # not reachable now, or a middleware that does not say
            backend = "local" if is_loopback(self.store.api_url()) else "aws"
        return "local" if backend == "local" else INSTANCE_TYPES[0]

    @per_user
    def deploy_endpoint(self, instance_type: str, instance_count: float, autoscaling: bool,
                        min_instances: float, max_instances: float, endpoint_name: str) -> str:
        try:
            job = make_client(self.store).deploy_endpoint(
                instance_type=instance_type, initial_instance_count=int(instance_count),
                endpoint_name=(endpoint_name or "").strip() or None, autoscaling_enabled=bool(autoscaling),
                min_instance_number=int(min_instances) if autoscaling else None,
                max_instance_number=int(max_instances) if autoscaling else None)
        except ApiError as exc:
            return failed(exc)
        return ok(f"Deploying {job['endpoint_name']} ({job['endpoint_status']}); refresh the list to follow it.")

    def ask_delete(self, names: list[str] | None) -> tuple[Any, str]:
        if not names:
            return gr.update(visible=False), failed("Choose the endpoint(s) to delete first.")
        return gr.update(visible=True), f"Confirm: Delete {', '.join(names)}? Jobs queued on it are cancelled."

    @per_user
    def confirm_delete(self, names: list[str] | None) -> tuple[Any, str]:
        try:
            results = make_client(self.store).delete_endpoints(list(names or []))["results"]
        except ApiError as exc:
            return gr.update(visible=False), failed(exc)
        problems = [f"{name}: {result}" for name, result in results.items() if result != "deleted"]
        if problems:
            return gr.update(visible=False), failed(f"Not deleted: {'; '.join(problems)}.")
        return gr.update(visible=False), ok(f"Deleted {', '.join(results)}.")

    # -- Datasets ------------------------------------------------------------------------------------------
    @per_user
    def create_dataset(self, name: str, description: str, files: Any,
                       progress: Progress = gr.Progress()) -> str:
        paths = uploaded_paths(files)
        if not (name or "").strip():
            return failed("Enter a dataset name (letters, digits and '-').")
        images = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            return failed("A dataset needs at least one image (PNG, JPEG, WebP or BMP).")
        # a caption is `<image stem>.txt`, as the trainer reads it beside its image
        stems = {p.stem for p in images}
        captions = [p for p in paths if p.suffix.lower() == CAPTION_SUFFIX and p.stem in stems]
        try:
            result = make_client(self.store).create_dataset_from_files(
                name.strip(), images + captions, (description or "").strip(),
                progress=lambda done, total: progress(done / max(total, 1), desc="Uploading images"))
        except HANDLED_ERRORS as exc:
            return failed(exc)
        kept = len(images) + len(captions)
        with_captions = f" and {len(captions)} caption(s)" if captions else ""
        skipped = f"; skipped {len(paths) - kept} file(s) that are not images" if kept < len(paths) else ""
        return ok(f"Dataset {result.get('datasetName', name)} is {result.get('status', 'Enabled')} "
                  f"with {len(images)} image(s){with_captions}{skipped}.")

    @per_user
    def dataset_table(self) -> tuple[dict, Any, str]:
        try:
            records = make_client(self.store).list_datasets()
        except ApiError as exc:
            return table(DATASET_HEADERS, []), gr.update(), failed(exc)
        rows = [[r.get("datasetName"), r.get("status"), when(r.get("timestamp")), r.get("description") or ""]
                for r in records]
        return table(DATASET_HEADERS, rows), gr.update(choices=[r[0] for r in rows]), ok(f"{len(rows)} dataset(s).")

    @per_user
    def dataset_rows(self) -> tuple[dict, Any]:
        rows, choices, _ = self.dataset_table()
        return rows, choices

    @per_user
    def preview_dataset(self, name: str | None) -> tuple[list, str]:
        if not name:
            return [], failed("Choose a dataset to preview.")
        try:
            client = make_client(self.store)
            files = client.dataset_files(name)
            images = [Image.open(io.BytesIO(client.download(f["preview_url"]))) for f in files[:PREVIEW_LIMIT]
                      if f.get("preview_url")]
        except HANDLED_ERRORS as exc:
            return [], failed(exc)
        more = f" (showing the first {PREVIEW_LIMIT})" if len(files) > PREVIEW_LIMIT else ""
        return images, ok(f"{name}: {len(files)} file(s){more}.")

    # -- Jobs ------------------------------------------------------------------------------------------------
    @per_user
    def job_table(self) -> tuple[dict, Any, str]:
        try:
            jobs = make_client(self.store).list_inference_jobs(limit=50)
        except ApiError as exc:
            return table(JOB_HEADERS, []), gr.update(), failed(exc)
        rows = [[j["InferenceJobId"], j.get("status"), f"{round(100 * float(j.get('progress') or 0))}%",
                 j.get("taskType") or "", j.get("endpoint_name") or "", when(j.get("startTime")),
                 j.get("error") or ""] for j in jobs]
        return table(JOB_HEADERS, rows), gr.update(choices=[r[0] for r in rows]), ok(f"{len(rows)} recent job(s).")

    @per_user
    def show_job(self, job_id: str | None) -> tuple[list, Any, str]:
        if not job_id:
            return [], None, failed("Choose a job to show.")
        try:
            client = make_client(self.store)
            job = client.inference_job(job_id)
            if job["status"] != JobStatus.SUCCEED:
                return [], None, (failed(f"Job {job_id} failed: {job.get('error') or 'no reason given'}")
                                  if job["status"] == JobStatus.FAILED else f"Job {job_id}: {job_status_text(job)}.")
            output = job_outputs(client, job)
        except HANDLED_ERRORS as exc:
            return [], None, failed(exc)
        parameters = {"parameters": output.parameters, "info": output.info}
        return output.images, json.loads(json.dumps(parameters, default=str)), ok(
            f"Job {job_id}: {len(output.images)} image(s).")

    # -- layout ------------------------------------------------------------------------------------------------
    def render(self) -> None:
        """Create the tab's components in the current gradio context."""
        from aws_extension.ui.users_tab import UsersTab  # here: it uses this module's table helpers

        with gr.Tabs(elem_id="sd_aws_tabs"):
            with gr.Tab("Settings", elem_id="sd_aws_settings_tab"):
                self._render_settings()
            with gr.Tab("Cloud models", elem_id="sd_aws_models_tab"):
                self._render_models()
            with gr.Tab("Endpoints", elem_id="sd_aws_endpoints_tab"):
                self._render_endpoints()
            with gr.Tab("Datasets", elem_id="sd_aws_datasets_tab"):
                self._render_datasets()
            with gr.Tab("Jobs", elem_id="sd_aws_jobs_tab"):
                self._render_jobs()
            with gr.Tab("Training", elem_id="sd_aws_training_tab"):
                from aws_extension.ui.training_tab import TrainingTab  # it uses this module's helpers

                self.gate(Permission.TRAIN_ALL, *TrainingTab(self.store, self.txt2img_prompt).render())
            with gr.Tab("Users", elem_id="sd_aws_users_tab"):
                self.gate(Permission.USER_ALL, UsersTab(self.store).render())
        self._wire_access()

    def _wire_access(self) -> None:
        """Ask who the key is when the page loads and after Save / Test connection: the Settings line and the
        gates. On page load the Settings fields also show this WebUI user's own URL and saved key."""
        outputs = self._access_outputs()
        for event in self._access_triggers:
            event.then(self.access_updates, None, outputs)
        page = gr.context.Context.root_block  # the Blocks being built: the WebUI's tab or the standalone app
        if page is not None:
            page.load(self.saved_settings, None, self._settings_fields).then(self.access_updates, None, outputs)

    def build_blocks(self) -> gr.Blocks:
        with gr.Blocks(analytics_enabled=False) as blocks:
            self.render()
        return blocks

    def _render_settings(self) -> None:
        api_url = gr.Textbox(label="API URL", value=self.store.api_url(), placeholder="http://127.0.0.1:8080",
                             elem_id="sd_aws_api_url")
        api_key = gr.Textbox(label="API key", type="password", value="",
                             placeholder=masked_key(self.store.api_key()), elem_id="sd_aws_api_key")
        with gr.Row():
            save = gr.Button("Save", variant="primary", elem_id="sd_aws_save_settings")
            test = gr.Button("Test connection", elem_id="sd_aws_test_connection")
        result = gr.Markdown(elem_id="sd_aws_settings_result")
        self._who = gr.Markdown(elem_id="sd_aws_connected_as")
        self._settings_fields = [api_url, api_key]
        self._access_triggers = [save.click(self.save_settings, [api_url, api_key], [result, api_key]),
                                 test.click(self.test_connection, [api_url, api_key], [result])]

    def _render_models(self) -> None:
        with gr.Row():
            type_filter = gr.Dropdown(label="Type", choices=[ALL_TYPES, *MODEL_TYPES], value=ALL_TYPES,
                                      elem_id="sd_aws_models_type_filter")
            refresh = gr.Button("Refresh", elem_id="sd_aws_models_refresh")
        table = gr.Dataframe(headers=CHECKPOINT_HEADERS, interactive=False, elem_id="sd_aws_models_table")
        status = gr.Markdown(elem_id="sd_aws_models_status")
        for event in (refresh.click, type_filter.change):
            event(self.checkpoint_table, [type_filter], [table, status])
        with gr.Accordion("Upload from the WebUI's model folders", open=bool(self.model_folders),
                          visible=bool(self.model_folders)):
            with gr.Row():
                local_type = gr.Dropdown(label="Type", choices=list(MODEL_TYPES), value=MODEL_TYPES[0],
                                         elem_id="sd_aws_local_type")
                local_files = gr.Dropdown(label="Files", choices=list(self._local_files(MODEL_TYPES[0])),
                                          multiselect=True, elem_id="sd_aws_local_files")
                refresh_local = gr.Button("Refresh files", elem_id="sd_aws_local_refresh",
                                          elem_classes=["sd-aws-tool"])
            upload_local = gr.Button("Upload to the cloud", elem_id="sd_aws_upload_local")
        with gr.Accordion("Upload from your computer", open=not self.model_folders):
            computer_type = gr.Dropdown(label="Type", choices=list(MODEL_TYPES), value=MODEL_TYPES[0],
                                        elem_id="sd_aws_computer_type")
            computer_files = gr.File(label="Model files", file_count="multiple", elem_id="sd_aws_computer_files")
            upload_computer = gr.Button("Upload to the cloud", elem_id="sd_aws_upload_computer")
        with gr.Accordion("Import by URL", open=False):
            url_type = gr.Dropdown(label="Type", choices=list(MODEL_TYPES), value=MODEL_TYPES[0],
                                   elem_id="sd_aws_url_type")
            urls = gr.Textbox(label="URLs (one per line)", lines=2, elem_id="sd_aws_import_urls")
            with gr.Row():
                hf_token = gr.Textbox(label="Hugging Face token (optional, never stored)", type="password")
                civitai_token = gr.Textbox(label="Civitai token (optional, never stored)", type="password")
            import_button = gr.Button("Import", elem_id="sd_aws_import")
        upload_status = gr.Markdown(elem_id="sd_aws_upload_status")
        self.gate(Permission.CHECKPOINT_ALL, upload_local, upload_computer, import_button)
        events = [local_type.change, refresh_local.click]
        events += [local_files.focus] if hasattr(local_files, "focus") else []  # all three have it
        for event in events:  # the folders are listed again whenever the list is used
            event(self.local_file_choices, [local_type, local_files], [local_files])
        upload_local.click(self.upload_local, [local_type, local_files], [upload_status]).then(
            self.checkpoint_table, [type_filter], [table, status])
        upload_computer.click(self.upload_from_computer, [computer_type, computer_files], [upload_status]).then(
            self.checkpoint_table, [type_filter], [table, status])
        import_button.click(self.import_by_url, [url_type, urls, hf_token, civitai_token], [upload_status]).then(
            self.checkpoint_table, [type_filter], [table, status])

    def _render_endpoints(self) -> None:
        with gr.Row():
            instance_type = gr.Dropdown(label="Instance type", choices=INSTANCE_TYPES,
                                        value=self.default_instance_type(), elem_id="sd_aws_instance_type")
            instance_count = gr.Number(label="Instances", value=1, precision=0,
                                       elem_id="sd_aws_instance_count")
            endpoint_name = gr.Textbox(label="Name (optional)", elem_id="sd_aws_endpoint_name")
        with gr.Row():
            autoscaling = gr.Checkbox(label="Autoscaling", value=False, elem_id="sd_aws_autoscaling")
            min_instances = gr.Number(label="Min instances", value=0, precision=0, elem_id="sd_aws_min_instances")
            max_instances = gr.Number(label="Max instances", value=1, precision=0, elem_id="sd_aws_max_instances")
        gr.Markdown(INSTANCE_TYPE_NOTE, elem_id="sd_aws_instance_type_note")
        deploy = gr.Button("Deploy", variant="primary", elem_id="sd_aws_deploy")
        status = gr.Markdown(elem_id="sd_aws_endpoints_status")
        refresh = gr.Button("Refresh", elem_id="sd_aws_endpoints_refresh")
        table = gr.Dataframe(headers=ENDPOINT_HEADERS, interactive=False, elem_id="sd_aws_endpoints_table")
        with gr.Row():
            to_delete = gr.Dropdown(label="Endpoints to delete", choices=[], multiselect=True,
                                    elem_id="sd_aws_endpoints_to_delete")
            delete = gr.Button("Delete", variant="stop", elem_id="sd_aws_delete_endpoints")
        with gr.Row(visible=False) as confirm_row:
            confirm = gr.Button("Yes, delete", variant="stop", elem_id="sd_aws_confirm_delete")
            cancel = gr.Button("Cancel", elem_id="sd_aws_cancel_delete")
        self.gate(Permission.SAGEMAKER_ENDPOINT_ALL, deploy, to_delete, delete)
        deploy.click(self.deploy_endpoint, [instance_type, instance_count, autoscaling, min_instances,
                                            max_instances, endpoint_name], [status]).then(
            self.endpoint_rows, None, [table, to_delete])  # the table only: Deploy's message stays
        refresh.click(self.endpoint_table, None, [table, to_delete, status])
        delete.click(self.ask_delete, [to_delete], [confirm_row, status])
        confirm.click(self.confirm_delete, [to_delete], [confirm_row, status]).then(
            self.endpoint_rows, None, [table, to_delete])
        cancel.click(lambda: (gr.update(visible=False), ""), None, [confirm_row, status])

    def _render_datasets(self) -> None:
        with gr.Row():
            name = gr.Textbox(label="Dataset name", elem_id="sd_aws_dataset_name")
            description = gr.Textbox(label="Description", elem_id="sd_aws_dataset_description")
        images = gr.File(label="Images, and captions as <image name>.txt", file_count="multiple",
                         elem_id="sd_aws_dataset_files")
        create = gr.Button("Create dataset", variant="primary", elem_id="sd_aws_create_dataset")
        status = gr.Markdown(elem_id="sd_aws_datasets_status")
        refresh = gr.Button("Refresh", elem_id="sd_aws_datasets_refresh")
        table = gr.Dataframe(headers=DATASET_HEADERS, interactive=False, elem_id="sd_aws_datasets_table")
        with gr.Row():
            chosen = gr.Dropdown(label="Dataset", choices=[], elem_id="sd_aws_dataset_choice")
            preview = gr.Button("Preview", elem_id="sd_aws_dataset_preview")
        gallery = gr.Gallery(label="Preview", elem_id="sd_aws_dataset_gallery")
        self.gate(Permission.TRAIN_ALL, create)
        create.click(self.create_dataset, [name, description, images], [status]).then(
            self.dataset_rows, None, [table, chosen])  # the table only: Create's message stays
        refresh.click(self.dataset_table, None, [table, chosen, status])
        preview.click(self.preview_dataset, [chosen], [gallery, status])

    def _render_jobs(self) -> None:
        refresh = gr.Button("Refresh", elem_id="sd_aws_jobs_refresh")
        table = gr.Dataframe(headers=JOB_HEADERS, interactive=False, elem_id="sd_aws_jobs_table")
        with gr.Row():
            chosen = gr.Dropdown(label="Job", choices=[], elem_id="sd_aws_job_choice")
            show = gr.Button("Show", elem_id="sd_aws_show_job")
        status = gr.Markdown(elem_id="sd_aws_jobs_status")
        gallery = gr.Gallery(label="Images", elem_id="sd_aws_job_gallery")
        parameters = gr.JSON(label="Parameters", elem_id="sd_aws_job_parameters")
        refresh.click(self.job_table, None, [table, chosen, status])
        show.click(self.show_job, [chosen], [gallery, parameters, status])
