"""What the extension reads from and writes to the WebUI: settings, the API key file, model folders,
the selected checkpoint and VAE, the progress state, saving images."""

from __future__ import annotations

import os
from pathlib import Path

from modules import images, paths, sd_models, sd_vae, shared

from aws_extension.settings import ClientSettings, load
from aws_extension.ui.models import ModelRef
from aws_extension.vocabulary import CheckpointType

SETTINGS_SECTION = ("sd_aws", "Amazon SageMaker (sd-aws)")
API_URL_OPTION = "sd_aws_api_url"
API_KEY_OPTION = "sd_aws_api_key"  # only a way in: its value moves to the key file and never stays in config.json
KEY_FILE_NAME = "sd_aws_api_key"
NO_VAE = ("Automatic", "None", "", None)


def key_file() -> Path:
    return Path(paths.data_path) / KEY_FILE_NAME


def write_api_key(api_key: str) -> None:
    """Store the key readable by its owner only (0600), also when the file already existed."""
    path = key_file()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(api_key.strip())
    os.chmod(path, 0o600)


def move_api_key_option_to_file() -> None:
    """`onchange` of the settings' key field: keep the typed key in the key file, blank in the options."""
    typed = (shared.opts.data.get(API_KEY_OPTION) or "").strip()
    if typed:
        write_api_key(typed)
    shared.opts.data[API_KEY_OPTION] = ""


class WebUIConnectionStore:
    """URL: --sd-aws-api-url, else the WebUI setting, else SD_AWS_API_URL (no localhost default inside a WebUI:
    an unset URL says so). Key: --sd-aws-api-key, else the 0600 key file, else SD_AWS_API_KEY."""

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
    return ModelRef(CheckpointType.STABLE_DIFFUSION, Path(info.filename).name, getattr(info, "sha256", None) or None)


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


def report_progress(job: dict) -> None:
    """Drive the WebUI's progress bar (one job of 100 steps) from a cloud job record."""
    state = shared.state
    state.job_count, state.job_no, state.sampling_steps = 1, 0, 100
    state.sampling_step = round(100 * float(job.get("progress") or 0))
    queued = job.get("queue_position")
    state.textinfo = f"Cloud job: queued (position {queued})" if queued else "Cloud job: running"


def interrupted() -> bool:
    return bool(shared.state.interrupted)


def save_outputs(p, output_images: list, seeds: list[int], prompts: list[str], infotexts: list[str]) -> None:
    """Save like process_images does: samples unless the request said not to, a grid when asked."""
    opts = shared.opts
    if opts.data.get("samples_save", True) and not p.do_not_save_samples:
        for image, seed, prompt, infotext in zip(output_images, seeds, prompts, infotexts):
            images.save_image(image, p.outpath_samples, "", seed, prompt, opts.data.get("samples_format", "png"),
                              info=infotext, p=p)


def grid_of(p, output_images: list, seed: int, prompt: str, infotext: str):
    """The grid process_images would show first and save, or None when the WebUI makes none."""
    opts = shared.opts
    return_grid, save_grid = opts.data.get("return_grid", True), opts.data.get("grid_save", True)
    if len(output_images) < 2 or not (return_grid or save_grid):
        return None
    grid = images.image_grid(output_images, p.batch_size)
    if save_grid and not p.do_not_save_grid:
        images.save_image(grid, p.outpath_grids, "grid", seed, prompt, opts.data.get("grid_format", "png"),
                          info=infotext, p=p, grid=True)
    return grid if return_grid else None
