"""What the extension reads from and writes to the WebUI: settings, the API key file, model folders,
the selected checkpoint and VAE, the progress state, user errors, and a Processed made by the host's rules."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from modules import hashes, images, paths, processing, sd_models, sd_vae, shared

from aws_extension.client import ApiError
from aws_extension.settings import ClientSettings, load
from aws_extension.ui.connection import normalise_api_url
from aws_extension.ui.models import ModelRef
from aws_extension.vocabulary import CheckpointType
from aws_extension.webui.infotext import grid_infotext, host_infotext

SETTINGS_CATEGORY = ("sd_aws", "Amazon SageMaker")  # the heading in the Settings page's list (v1.7+ categories)
SETTINGS_SECTION = ("sd_aws", "Amazon SageMaker")  # the page under it
API_URL_OPTION = "sd_aws_api_url"
API_KEY_OPTION = "sd_aws_api_key"  # only a way in: its value moves to the key file and never stays in config.json
KEY_FILE_NAME = "sd_aws_api_key"
USERS_FOLDER_NAME = "sd_aws_users"  # with --gradio-auth: one 0600 settings file per WebUI user
NO_VAE = ("Automatic", "None", "", None)


def key_file() -> Path:
    return Path(paths.data_path) / KEY_FILE_NAME


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600), also when it already existed, replaced whole (a reader
    never sees half of it)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def write_api_key(api_key: str) -> None:
    """Store the WebUI's shared key readable by its owner only (0600)."""
    write_private(key_file(), api_key.strip())


def gradio_auth_enabled() -> bool:
    """Whether people log in to this WebUI (--gradio-auth or --gradio-auth-path): each then has their own key."""
    cmd = shared.cmd_opts
    return bool(getattr(cmd, "gradio_auth", None) or getattr(cmd, "gradio_auth_path", None))


def user_settings_file(username: str) -> Path:
    """The settings file of WebUI user `username`: named by a hash of the name, so no name can reach outside
    the folder or collide with another on a case-insensitive disk."""
    digest = hashlib.sha256(username.encode()).hexdigest()[:32]
    return Path(paths.data_path) / USERS_FOLDER_NAME / f"{digest}.json"


def move_api_key_option_to_file() -> None:
    """`onchange` of the settings' key field: keep the typed key in the key file, blank in the options."""
    typed = (shared.opts.data.get(API_KEY_OPTION) or "").strip()
    if typed:
        write_api_key(typed)
    shared.opts.data[API_KEY_OPTION] = ""


def normalise_api_url_option() -> None:
    """`onchange` of the settings' URL field: keep it with its scheme ("127.0.0.1:8080" → "http://..."); a
    value that is no URL stays as typed, and every call then says what is wrong with it."""
    typed = shared.opts.data.get(API_URL_OPTION) or ""
    try:
        shared.opts.data[API_URL_OPTION] = normalise_api_url(typed)
    except ApiError as exc:
        print(f"Amazon SageMaker: {exc.message}", file=sys.stderr)


class WebUIConnectionStore:
    """The WebUI's shared connection. URL: --sd-aws-api-url, else the WebUI setting, else SD_AWS_API_URL (no
    localhost default inside a WebUI: an unset URL says so). Key: --sd-aws-api-key, else the 0600 key file, else
    SD_AWS_API_KEY. With --gradio-auth, `for_user(name)` is that user's own (`UserConnectionStore`)."""

    def api_url(self) -> str:
        return (getattr(shared.cmd_opts, "sd_aws_api_url", None) or shared.opts.data.get(API_URL_OPTION)
                or (load(ClientSettings).api_url if os.environ.get("SD_AWS_API_URL") else ""))

    def api_key(self) -> str | None:
        flag = getattr(shared.cmd_opts, "sd_aws_api_key", None)
        if flag:
            return flag
        path = key_file()
        return (path.read_text().strip() or None) if path.is_file() else load(ClientSettings).api_key

    def save(self, api_url: str, api_key: str | None) -> None:
        shared.opts.set(API_URL_OPTION, api_url.strip())
        shared.opts.save(shared.config_filename)
        if api_key is not None and api_key.strip():
            write_api_key(api_key)

    def for_user(self, username: str | None) -> WebUIConnectionStore | UserConnectionStore:
        return UserConnectionStore(username) if username and gradio_auth_enabled() else self


class UserConnectionStore:
    """One WebUI user's connection (--gradio-auth), in their own 0600 file: their key only — never the shared
    key, which would show them everyone's jobs — and their URL, else the WebUI's."""

    def __init__(self, username: str):
        self.username = username
        self.path = user_settings_file(username)

    def _saved(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def api_url(self) -> str:
        return self._saved().get("api_url") or WebUIConnectionStore().api_url()

    def api_key(self) -> str | None:
        return self._saved().get("api_key") or None

    def save(self, api_url: str, api_key: str | None) -> None:
        saved = self._saved()
        settings = {"username": self.username, "api_url": api_url.strip(),
                    "api_key": api_key.strip() if api_key is not None and api_key.strip() else saved.get("api_key")}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path, json.dumps(settings))

    def for_user(self, username: str | None) -> WebUIConnectionStore | UserConnectionStore:
        return WebUIConnectionStore().for_user(username)


def model_folders() -> dict[str, list[Path]]:
    """The WebUI's model folders by catalogue type (the command-line overrides first)."""
    cmd, models = shared.cmd_opts, Path(paths.models_path)

    def folders(flag: str | None, default: Path) -> list[Path]:
        value = getattr(cmd, flag, None) if flag else None
        return [Path(value)] if value else [default]

    # (type, its command-line flag, its default folder); the WebUI's folders are named after the types
    layout = ((CheckpointType.STABLE_DIFFUSION, "ckpt_dir", models), (CheckpointType.LORA, "lora_dir", models),
              (CheckpointType.EMBEDDINGS, "embeddings_dir", Path(paths.data_path)),
              (CheckpointType.HYPERNETWORKS, "hypernetwork_dir", models), (CheckpointType.CONTROLNET, None, models),
              (CheckpointType.VAE, "vae_dir", models))
    return {model_type.value: folders(flag, parent / model_type.value) for model_type, flag, parent in layout}


def selected_checkpoint(override_settings: dict) -> ModelRef:
    """The checkpoint the WebUI would generate with (a per-request override first), with its sha256 if known."""
    title = override_settings.get("sd_model_checkpoint") or shared.opts.data.get("sd_model_checkpoint")
    info = sd_models.get_closet_checkpoint_match(title) if title else None
    if info is None:
        raise ValueError("No checkpoint is selected in the WebUI: choose one in the checkpoint dropdown.")
    if not info.sha256:  # the cloud catalogue is found by content: A1111 hashes it (once, into its cache)
        info.calculate_shorthash()
    return ModelRef(CheckpointType.STABLE_DIFFUSION, Path(info.filename).name, info.sha256 or None)


def embedding_sha256(path: Path) -> str | None:
    """An embedding file's sha256 as A1111 keeps it (computed when it loads embeddings; `--no-hashing`: None)."""
    return hashes.sha256(str(path), f"textual_inversion/{path.stem}")


def selected_vae(override_settings: dict) -> ModelRef | None:
    name = override_settings.get("sd_vae", shared.opts.data.get("sd_vae", "Automatic"))
    if name in NO_VAE:
        return None
    path = sd_vae.vae_dict.get(name)
    return ModelRef(CheckpointType.VAE, Path(path).name if path else name)


def apply_styles(prompt: str, negative_prompt: str, styles: list[str] | None) -> tuple[str, str]:
    if not styles:
        return prompt, negative_prompt
    return (shared.prompt_styles.apply_styles_to_prompt(prompt, styles),
            shared.prompt_styles.apply_negative_styles_to_prompt(negative_prompt, styles))


def report_progress(job: dict, number: int = 0, total: int = 1) -> None:
    """Drive the WebUI's progress bar from cloud job `number` of `total` (each job 100 steps)."""
    state = shared.state
    state.job_count, state.job_no, state.sampling_steps = total, number, 100
    state.sampling_step = round(100 * float(job.get("progress") or 0))
    queued = job.get("queue_position")
    where = f" {number + 1} of {total}" if total > 1 else ""
    state.textinfo = f"Cloud job{where}: queued (position {queued})" if queued else f"Cloud job{where}: running"


def interrupted() -> bool:
    return bool(shared.state.interrupted or getattr(shared.state, "stopping_generation", False))


def set_model_fields(p: Any, checkpoint: ModelRef) -> None:
    """What process_images_inner reads from the loaded model, for the Processed and the scripts' infotexts."""
    p.sd_model_name = Path(checkpoint.name).stem
    p.sd_model_hash = checkpoint.sha256[:10] if checkpoint.sha256 else None


def user_error(p: Any, message: str) -> Any:
    """A generation the user must change, as the host shows one: an API caller gets an HTTP 400 with the
    message (the API prints no traceback for an HTTPException); the UI gets a Processed with no images and
    the message as its info and comment, and the job stops (scripts that loop on process_images end, as
    after Interrupt) — nothing goes through the host's traceback printing."""
    if getattr(p, "is_api", False):
        raise HTTPException(status_code=400, detail=message)
    print(f"Amazon SageMaker: {message}", file=sys.stderr)
    if hasattr(p, "comment"):
        p.comment(message)
    shared.state.interrupted = True
    return processing.Processed(p, [], -1, message)


def save_samples(p: Any) -> bool:
    save = getattr(p, "save_samples", None)  # v1.6+: samples_save, do_not_save_samples, interrupted or not
    return bool(save()) if callable(save) else bool(getattr(shared.opts, "samples_save", True)
                                                     and not p.do_not_save_samples)


def _wants_grid(p: Any, image_count: int) -> bool:
    """process_images_inner's rule: a grid when shown or saved, not refused by p, not of a single image."""
    opts = shared.opts
    unwanted_because_of_count = image_count < 2 and getattr(opts, "grid_only_if_multiple", True)
    return (bool(getattr(opts, "return_grid", True) or getattr(opts, "grid_save", True))
            and not p.do_not_save_grid and not unwanted_because_of_count)


def _add_grid(p: Any, output_images: list, infotexts: list[str]) -> int:
    """Show and/or save the grid as process_images_inner does; the index of the first image."""
    opts = shared.opts
    if not output_images or not _wants_grid(p, len(output_images)):
        return 0
    grid = images.image_grid(output_images, p.batch_size)
    text = grid_infotext(infotexts[0], p)
    if getattr(opts, "grid_save", True):
        images.save_image(grid, p.outpath_grids, "grid", p.all_seeds[0], p.all_prompts[0],
                          getattr(opts, "grid_format", "png"), info=text, p=p, grid=True)
    if not getattr(opts, "return_grid", True):
        return 0
    if getattr(opts, "enable_pnginfo", True):
        grid.info["parameters"] = text
    output_images.insert(0, grid)
    infotexts.insert(0, text)
    return 1


def finish_image(p: Any, image: Any, worker_infotext: str, index: int, save: bool) -> str:
    """Image `index` of the job, `p.batch_index` of its batch (p's per-batch fields on it), as
    process_images_inner ends it: its host infotext, saved with it when `save` (the batch's
    `p.save_samples()`), the infotext in its PNG info."""
    text = host_infotext(worker_infotext, p, index)
    if save:
        i = p.batch_index
        images.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i],
                          getattr(shared.opts, "samples_format", "png"), info=text, p=p)
    if getattr(shared.opts, "enable_pnginfo", True):
        image.info["parameters"] = text
    return text


def processed_like_the_host(p: Any, output_images: list, infotexts: list[str]) -> Any:
    """The Processed process_images_inner returns for these finished images (`finish_image`): the grid by the
    host's rules."""
    if not infotexts:
        infotexts.append("The cloud job was cancelled." if interrupted() else "")
    first = _add_grid(p, output_images, infotexts)
    return processing.Processed(p, output_images, seed=p.all_seeds[0], info=infotexts[0], subseed=p.all_subseeds[0],
                                index_of_first_image=first, infotexts=infotexts)
