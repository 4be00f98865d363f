"""A WebUI processing object `p` → the models it needs and the /inference/v2 request body."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from PIL import Image

from aws_extension.ui.inference import png_base64
from aws_extension.ui.models import ModelRef, embeddings_in_prompts, list_model_files
from aws_extension.vocabulary import CheckpointType, Task, lora_names, without_hash_suffix

# Attributes of StableDiffusionProcessing* that are /sdapi/v1 parameters of the same name.
COMMON_FIELDS = ("prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
                 "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale",
                 "width", "height", "restore_faces", "tiling", "denoising_strength", "eta", "s_min_uncond",
                 "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings", "do_not_save_samples",
                 "do_not_save_grid")
TXT2IMG_FIELDS = ("enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y",
                  "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
                  "firstphase_width", "firstphase_height")
IMG2IMG_FIELDS = ("resize_mode", "image_cfg_scale", "mask_blur_x", "mask_blur_y", "mask_round", "inpainting_fill",
                  "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert", "initial_noise_multiplier")
CONTROLNET_UNIT_FIELDS = ("enabled", "module", "model", "weight", "image", "resize_mode", "guidance_start",
                          "guidance_end", "control_mode", "pixel_perfect", "processor_res", "threshold_a",
                          "threshold_b", "low_vram")
CONTROLNET_SCRIPT_TITLES = ("controlnet", "controlnet integrated")  # sd-webui-controlnet; Forge's built-in


def task_type(p: Any) -> Task:
    return Task.IMG2IMG if getattr(p, "init_images", None) else Task.TXT2IMG


def script_args_of(p: Any, title: str) -> list | None:
    """The slice of `p.script_args` that belongs to the always-on script titled `title` (case-insensitive)."""
    runner = getattr(p, "scripts", None)
    for script in getattr(runner, "alwayson_scripts", []) if runner else []:
        if script.title().lower() == title.lower() and script.args_from is not None:
            return list(p.script_args[script.args_from:script.args_to])
    return None


def _api_value(value: Any) -> Any:
    """A ControlNet unit value as the API takes it: enums by value, images as base64 PNG."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Image.Image):
        return png_base64(value)
    if hasattr(value, "__array_interface__"):  # numpy arrays, without importing numpy
        return png_base64(Image.fromarray(value))
    if isinstance(value, dict):
        return {key: _api_value(item) for key, item in value.items() if item is not None}
    return value


def controlnet_units(p: Any) -> list[dict]:
    """The enabled ControlNet units of `p`, in the API's form (`alwayson_scripts.controlnet.args`)."""
    units = next((args for title in CONTROLNET_SCRIPT_TITLES if (args := script_args_of(p, title)) is not None), [])
    result = []
    for unit in units:
        values = unit if isinstance(unit, dict) else {f: getattr(unit, f) for f in CONTROLNET_UNIT_FIELDS
                                                      if hasattr(unit, f)}
        if values.get("enabled"):
            result.append({key: _api_value(value) for key, value in values.items() if value is not None})
    return result


def wanted_models(p: Any, prompts: list[str], checkpoint: ModelRef, vae: ModelRef | None,
                  embedding_folders: list[Path], embedding_sha256: Callable[[Path], str | None]) -> list[ModelRef]:
    """Every model the job needs: the checkpoint, the VAE, LoRA in `prompts` (all of p's prompts, the styles
    applied), embeddings (with their sha256, so a renamed copy is found), ControlNet models. (LoRAs are named
    only: A1111 keeps a LoRA's hash of its tensors, not of its file.)"""
    wanted = [checkpoint, *([vae] if vae else [])]
    wanted += [ModelRef(CheckpointType.LORA, name) for name in lora_names(prompts)]
    wanted += [ModelRef(CheckpointType.EMBEDDINGS, path.name, embedding_sha256(path))
               for path in embeddings_in_prompts(prompts, list_model_files(embedding_folders))]
    # ControlNet models are named as A1111 titles them: "control_v11p_sd15_canny [d14c016b]"
    wanted += [ModelRef(CheckpointType.CONTROLNET, without_hash_suffix(unit["model"])) for unit in controlnet_units(p)
               if unit.get("model") not in (None, "", "None")]
    return list(dict.fromkeys(wanted))


def all_prompts(p: Any) -> list[str]:
    """Every prompt text of p once set up (p.all_prompts, ... as process_images_inner sets them)."""
    texts: list[str] = []
    for name in ("all_prompts", "all_negative_prompts", "all_hr_prompts", "all_hr_negative_prompts"):
        texts += [str(text) for text in (getattr(p, name, None) or []) if text]
    return list(dict.fromkeys(texts))


def inference_request(p: Any, endpoint: str | None, models: dict[str, list], fields: dict[str, Any],
                      override_settings: dict[str, Any], init_image: Any = None) -> dict:
    """The /inference/v2 body: routing fields, then every A1111 parameter of `p` at the top level, `fields`
    (this request's prompts, seeds and sizes: the styles already applied, so no styles are sent) over them."""
    task = task_type(p)
    names = COMMON_FIELDS + (IMG2IMG_FIELDS if task == Task.IMG2IMG else TXT2IMG_FIELDS)
    body: dict[str, Any] = {name: getattr(p, name) for name in names if getattr(p, name, None) is not None}
    body.update(fields, task_type=task.value, models=models)
    if endpoint:
        body["sagemaker_endpoint_name"] = endpoint
    settings = dict(override_settings)
    if models.get(CheckpointType.VAE):  # the WebUI's selected VAE; like an API call, the worker applies it from sd_vae
        vae = models[CheckpointType.VAE][0]
        settings.setdefault("sd_vae", vae["name"] if isinstance(vae, dict) else vae)
    body["override_settings"] = settings
    if task == Task.IMG2IMG:
        body["init_images"] = [png_base64(image) for image in ([init_image] if init_image is not None
                                                               else p.init_images)]
        mask = getattr(p, "image_mask", None)
        if mask is not None:
            body["mask"] = png_base64(mask)
            latent_mask = getattr(p, "latent_mask", None)  # the outpainting scripts'; A1111 uses it only with a mask
            if latent_mask is not None:
                body["latent_mask"] = png_base64(latent_mask)
    units = controlnet_units(p)
    if units:
        body["alwayson_scripts"] = {"controlnet": {"args": units}}
    return body
