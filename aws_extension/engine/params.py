"""Validate and normalise an A1111 `/sdapi/v1/txt2img|img2img` payload; A1111's seed and noise semantics.

Every field A1111 accepts is listed here as honoured, a no-op (A1111 itself does nothing with it on an
API call, or it only matters for hardware/UI), or refused unless it has its neutral value. Unknown fields
are refused. Errors are `EngineError`s whose message starts with the field name.
"""

from __future__ import annotations

import base64
import binascii
import io
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from aws_extension.engine.base import EngineError
from aws_extension.engine.preprocessors import ALIASES as PREPROCESSOR_ALIASES
from aws_extension.engine.preprocessors import PREPROCESSORS, Preprocessor
from aws_extension.engine.samplers import ETA_SAMPLERS, SamplerSpec, resolve_sampler
from aws_extension.settings import WorkerSettings

# The defaults of the seed API's "Parameters" block (/inference/v2), which are A1111's API defaults.
TXT2IMG_DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "styles": [],
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_h": 0,
    "seed_resize_from_w": 0,
    "sampler_name": None,
    "sampler_index": "Euler a",
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 28,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": None,
    "denoising_strength": None,
    "s_min_uncond": 0.0,
    "s_churn": 0.0,
    "s_tmax": 1.0,
    "s_tmin": 0.0,
    "s_noise": 1.0,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "disable_extra_networks": False,
    "firstpass_image": None,
    "comments": None,
    "enable_hr": False,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2.0,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_checkpoint_name": None,
    "hr_sampler_name": None,
    "hr_scheduler": None,
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "force_task_id": None,
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "infotext": None,
    "distilled_cfg_scale": None,
    # Routing fields of /inference/v2 that reach the worker with the payload; the middleware uses them.
    "task_type": None,
    "models": None,
    "sagemaker_endpoint_name": None,
}
IMG2IMG_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in TXT2IMG_DEFAULTS.items() if not k.startswith(("hr_", "enable_hr", "firstphase_"))},
    "denoising_strength": 0.75,
    "init_images": None,
    "resize_mode": 0,
    "image_cfg_scale": None,
    "mask": None,
    "mask_blur": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "mask_round": True,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None,
    "latent_mask": None,
    "include_init_images": False,
}

# Fields that change what the engine makes.
HONOURED_FIELDS = (
    "prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w",
    "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height",
    "tiling", "eta", "denoising_strength", "override_settings", "disable_extra_networks", "alwayson_scripts",
    "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_sampler_name",
    "hr_scheduler", "hr_prompt", "hr_negative_prompt",
    "init_images", "resize_mode", "mask", "mask_blur", "mask_blur_x", "mask_blur_y", "mask_round", "inpainting_fill",
    "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert", "initial_noise_multiplier",
)
# Fields with no effect on the images this engine makes, as in A1111 for an API call (saving, UI state,
# GPU memory modes, the routing fields) or only for model kinds this engine does not load (Flux's
# distilled CFG, instruct-pix2pix's image CFG).
NO_OP_FIELDS = (
    "do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards", "send_images",
    "save_images", "comments", "force_task_id", "firstphase_width", "firstphase_height",
    "include_init_images", "image_cfg_scale", "distilled_cfg_scale", "task_type", "models",
    "sagemaker_endpoint_name",
)
# Fields refused unless they hold their neutral value: the engine cannot do what they ask.
NEUTRAL_ONLY_FIELDS: dict[str, tuple[Any, ...]] = {
    "restore_faces": (False, None),
    "styles": ([], None),
    "script_name": (None, ""),
    "script_args": ([], None),
    "s_min_uncond": (0, 0.0, None),
    "s_churn": (0, 0.0, None),
    "s_noise": (1, 1.0, None),
    "refiner_checkpoint": (None, "", "None"),
    "hr_checkpoint_name": (None, "", "Use same checkpoint"),
    "firstpass_image": (None, ""),
    "infotext": (None, ""),
    "latent_mask": (None, ""),
}
# s_tmin/s_tmax/refiner_switch_at only act together with s_churn > 0 / a refiner checkpoint.
DEPENDENT_NO_OP_FIELDS = ("s_tmin", "s_tmax", "refiner_switch_at")

# override_settings keys: honoured ones, and ones without effect here.
OVERRIDE_SETTINGS_HONOURED = ("CLIP_stop_at_last_layers", "sd_vae")
OVERRIDE_SETTINGS_NO_OP = ("sd_model_checkpoint", "samples_format", "save_images_add_number")
# ControlNet unit keys that only matter for preprocessors other than "none", or for the UI.
CONTROLNET_NO_OP_KEYS = (
    "low_vram", "is_ui", "input_mode", "batch_images", "output_dir", "save_detected_map", "hr_option",
)
CONTROLNET_RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {  # A1111 name → (interpolate mode, antialias)
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# img2img resize_mode: 0 just resize, 1 crop and resize, 2 resize and fill (3 = latent upscale: refused).
IMG2IMG_RESIZE_MODES = (0, 1, 2)
# inpainting_fill: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
INPAINTING_FILLS = (0, 1, 2, 3)
MIN_SIZE = 64
HIRES_DEFAULT_DENOISING = 0.7  # the WebUI's default for hires fix when the payload has none
RANDOM_SEED_LIMIT = 4294967294  # A1111 draws random seeds below this
MAX_SEED = 2**32 - 1


@dataclass
class ControlNetUnit:
    index: int
    model: str
    image: Image.Image
    weight: float
    guidance_start: float
    guidance_end: float
    resize_mode: str
    preprocessor: Preprocessor


@dataclass
class HiresFix:
    upscaler: str
    upscale_mode: tuple[str, bool]
    scale: float
    resize_x: int
    resize_y: int
    steps: int  # second-pass steps asked for (0 = the first pass's steps)
    denoising_strength: float
    prompt: str
    negative_prompt: str
    sampler: str
    sampler_spec: SamplerSpec
    target_width: int  # the latent is upscaled to this, then cropped by truncate_x/y (in latent pixels)
    target_height: int
    truncate_x: int
    truncate_y: int

    @property
    def width(self) -> int:
        return self.target_width - self.truncate_x * 8

    @property
    def height(self) -> int:
        return self.target_height - self.truncate_y * 8


@dataclass
class Img2ImgInputs:
    init_images: list[Image.Image]
    resize_mode: int
    mask: Image.Image | None
    mask_blur_x: int
    mask_blur_y: int
    mask_round: bool
    inpainting_fill: int
    inpaint_full_res: bool
    inpaint_full_res_padding: int
    inpainting_mask_invert: bool
    initial_noise_multiplier: float


@dataclass
class GenerationParams:
    task: str
    prompt: str
    negative_prompt: str
    seed: int
    subseed: int
    subseed_strength: float
    seed_resize_from_w: int
    seed_resize_from_h: int
    sampler: str
    sampler_spec: SamplerSpec
    schedule: str
    batch_size: int
    n_iter: int
    steps: int
    cfg_scale: float
    width: int
    height: int
    tiling: bool
    eta: float | None
    clip_skip: int
    sd_vae: str | None
    denoising_strength: float | None
    disable_extra_networks: bool
    hires: HiresFix | None = None
    img2img: Img2ImgInputs | None = None
    controlnet: list[ControlNetUnit] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # the request with defaults, as A1111 echoes

    @property
    def all_seeds(self) -> list[int]:
        """A1111: each image gets seed + i, unless variation seeds are on (then the subseed counts up)."""
        count = self.batch_size * self.n_iter
        return [self.seed + (i if self.subseed_strength == 0 else 0) for i in range(count)]

    @property
    def all_subseeds(self) -> list[int]:
        return [self.subseed + i for i in range(self.batch_size * self.n_iter)]


def _fail(field_name: str, message: str) -> EngineError:
    return EngineError(f"{field_name}: {message}", field_name)


def _number(payload: dict[str, Any], key: str, kind: type, low: float | None = None, high: float | None = None) -> Any:
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise _fail(key, f"must be a number, got {value!r}") from None
        else:
            raise _fail(key, f"must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise _fail(key, f"must be a whole number, got {value!r}")
    value = kind(value)
    if low is not None and value < low:
        raise _fail(key, f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise _fail(key, f"must be at most {high}, got {value}")
    return value


def _string(payload: dict[str, Any], key: str, max_chars: int | None = None) -> str:
    value = payload[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(key, f"must be a string, got {type(value).__name__}")
    if max_chars is not None and len(value) > max_chars:
        raise _fail(key, f"is {len(value)} characters long; the limit is {max_chars}")
    return value


def _bool(payload: dict[str, Any], key: str) -> bool:
    value = payload[key]
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise _fail(key, f"must be true or false, got {value!r}")
    return bool(value)


def decode_image(value: Any, field_name: str) -> Image.Image:
    """A base64 image as A1111 accepts it (optionally a `data:image/...;base64,` URL) → RGB(A) PIL image."""
    if not isinstance(value, str) or not value:
        raise _fail(field_name, "must be a base64-encoded image")
    if value.startswith("data:image/"):
        value = value.split(",", 1)[-1]
    try:
        data = base64.b64decode(value, validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (binascii.Error, ValueError):
        raise _fail(field_name, "is not valid base64") from None
    except (UnidentifiedImageError, OSError):
        raise _fail(field_name, "is not a readable image (PNG, JPEG, WebP, ...)") from None
    return image


def resolve_seed(seed: int) -> int:
    """A1111: -1 (or any negative seed) → a random seed."""
    return int(random.randrange(RANDOM_SEED_LIMIT)) if seed < 0 else seed


def _round_to_8(payload: dict[str, Any], key: str, cap: int) -> int:
    value = _number(payload, key, int, MIN_SIZE, cap)
    return value - value % 8


def _hires(payload: dict[str, Any], width: int, height: int, sampler: str, schedule: str, settings: WorkerSettings) -> HiresFix:
    upscaler = payload["hr_upscaler"] or "Latent"
    if upscaler not in LATENT_UPSCALE_MODES:
        raise _fail(
            "hr_upscaler",
            f"{upscaler!r} is not supported; the latent upscalers are: {', '.join(LATENT_UPSCALE_MODES)}",
        )
    scale = _number(payload, "hr_scale", float, 1.0, 8.0)
    resize_x = _number(payload, "hr_resize_x", int, 0, settings.max_width)
    resize_y = _number(payload, "hr_resize_y", int, 0, settings.max_height)
    truncate_x = truncate_y = 0
    # A1111's StableDiffusionProcessingTxt2Img.calculate_target_resolution.
    if resize_x == 0 and resize_y == 0:
        target_width, target_height = int(width * scale), int(height * scale)
    elif resize_y == 0:
        target_width, target_height = resize_x, resize_x * height // width
    elif resize_x == 0:
        target_width, target_height = resize_y * width // height, resize_y
    else:
        if width / height < resize_x / resize_y:
            target_width, target_height = resize_x, resize_x * height // width
        else:
            target_width, target_height = resize_y * width // height, resize_y
        truncate_x = (target_width - resize_x) // 8
        truncate_y = (target_height - resize_y) // 8
    if target_width > settings.max_width or target_height > settings.max_height:
        raise _fail("hr_scale", f"hires size {target_width}x{target_height} exceeds the limit "
                    f"{settings.max_width}x{settings.max_height}")
    hr_sampler = payload["hr_sampler_name"] or sampler
    if hr_sampler == "Use same sampler":
        hr_sampler = sampler
    hr_schedule = payload["hr_scheduler"] or schedule
    if hr_schedule == "Use same scheduler":
        hr_schedule = schedule
    denoising = payload["denoising_strength"]
    return HiresFix(
        upscaler=upscaler,
        upscale_mode=LATENT_UPSCALE_MODES[upscaler],
        scale=scale,
        resize_x=resize_x,
        resize_y=resize_y,
        steps=_number(payload, "hr_second_pass_steps", int, 0, settings.max_steps),
        denoising_strength=HIRES_DEFAULT_DENOISING if denoising is None else _number(payload, "denoising_strength", float, 0.0, 1.0),
        prompt=_string(payload, "hr_prompt", settings.max_prompt_chars),
        negative_prompt=_string(payload, "hr_negative_prompt", settings.max_prompt_chars),
        sampler=hr_sampler,
        sampler_spec=resolve_sampler(hr_sampler, hr_schedule, "hr_sampler_name"),
        target_width=target_width,
        target_height=target_height,
        truncate_x=truncate_x,
        truncate_y=truncate_y,
    )


def _img2img(payload: dict[str, Any]) -> Img2ImgInputs:
    init_images = payload["init_images"]
    if not isinstance(init_images, list) or not init_images:
        raise _fail("init_images", "img2img needs at least one base64 image in init_images")
    images = [decode_image(value, f"init_images[{i}]") for i, value in enumerate(init_images)]
    resize_mode = _number(payload, "resize_mode", int)
    if resize_mode not in IMG2IMG_RESIZE_MODES:
        raise _fail("resize_mode", f"{resize_mode} is not supported; valid: 0 (just resize), 1 (crop and "
                    "resize), 2 (resize and fill)")
    mask = None
    if payload["mask"]:
        mask = decode_image(payload["mask"], "mask")
        if mask.size != images[0].size:
            raise _fail("mask", f"is {mask.width}x{mask.height} but init_images[0] is "
                        f"{images[0].width}x{images[0].height}; they must be the same size")
    blur_x = blur_y = None
    if payload["mask_blur"] is not None:
        blur_x = blur_y = _number(payload, "mask_blur", int, 0, 64)
    fill = _number(payload, "inpainting_fill", int)
    if fill not in INPAINTING_FILLS:
        raise _fail("inpainting_fill", f"{fill} is not one of 0 (fill), 1 (original), 2 (latent noise), "
                    "3 (latent nothing)")
    multiplier = payload["initial_noise_multiplier"]
    return Img2ImgInputs(
        init_images=images,
        resize_mode=resize_mode,
        mask=mask,
        mask_blur_x=blur_x if blur_x is not None else _number(payload, "mask_blur_x", int, 0, 64),
        mask_blur_y=blur_y if blur_y is not None else _number(payload, "mask_blur_y", int, 0, 64),
        mask_round=_bool(payload, "mask_round"),
        inpainting_fill=fill,
        inpaint_full_res=_bool(payload, "inpaint_full_res"),
        inpaint_full_res_padding=_number(payload, "inpaint_full_res_padding", int, 0, 1024),
        inpainting_mask_invert=_bool(payload, "inpainting_mask_invert"),
        initial_noise_multiplier=1.0 if multiplier is None else _number(payload, "initial_noise_multiplier", float, 0.0, 2.0),
    )


def _controlnet_units(scripts: dict[str, Any], init_image: Any = None) -> list[ControlNetUnit]:
    """Enabled units; a unit without an image uses img2img's first init image, as the extension does."""
    controlnet = scripts.get("controlnet") or {}
    if not isinstance(controlnet, dict) or not isinstance(controlnet.get("args", []), list):
        raise _fail("alwayson_scripts.controlnet", "must be {\"args\": [unit, ...]}")
    units = []
    for index, unit in enumerate(controlnet.get("args", [])):
        name = f"alwayson_scripts.controlnet.args[{index}]"
        if not isinstance(unit, dict):
            raise _fail(name, "must be an object")
        if not unit.get("enabled", True):
            continue
        preprocessor = _preprocessor(unit, name)
        model = unit.get("model")
        if not model or model == "None":
            raise _fail(f"{name}.model", "an enabled unit needs a ControlNet model")
        control_mode = unit.get("control_mode", "Balanced")
        if control_mode not in ("Balanced", 0):
            raise _fail(f"{name}.control_mode", f"{control_mode!r} is not supported (only \"Balanced\")")
        if unit.get("loopback"):
            raise _fail(f"{name}.loopback", "is not supported")
        resize_mode = unit.get("resize_mode", "Crop and Resize")
        if isinstance(resize_mode, int) and 0 <= resize_mode < len(CONTROLNET_RESIZE_MODES):
            resize_mode = CONTROLNET_RESIZE_MODES[resize_mode]
        if resize_mode not in CONTROLNET_RESIZE_MODES:
            raise _fail(f"{name}.resize_mode", f"{resize_mode!r} is not one of {', '.join(CONTROLNET_RESIZE_MODES)}")
        image = unit.get("image", unit.get("input_image")) or init_image
        if isinstance(image, dict):
            if image.get("mask"):
                raise _fail(f"{name}.image", "a mask on a ControlNet image is not supported")
            image = image.get("image")
        known = {"enabled", "module", "model", "weight", "image", "input_image", "resize_mode", "guidance_start",
                 "guidance_end", "control_mode", "loopback", "processor_res", "threshold_a", "threshold_b",
                 "pixel_perfect", *CONTROLNET_NO_OP_KEYS}
        unknown = sorted(set(unit) - known)
        if unknown:
            raise _fail(f"{name}.{unknown[0]}", "is not a known ControlNet unit field")
        numbers = {key: unit.get(key, default) for key, default in
                   (("weight", 1.0), ("guidance_start", 0.0), ("guidance_end", 1.0))}
        weight = _number(numbers, "weight", float, 0.0, 2.0)
        start = _number(numbers, "guidance_start", float, 0.0, 1.0)
        end = _number(numbers, "guidance_end", float, 0.0, 1.0)
        if start >= end:
            raise _fail(f"{name}.guidance_start", f"must be below guidance_end ({start} >= {end})")
        units.append(ControlNetUnit(
            index=index,
            model=str(model),
            image=decode_image(image, f"{name}.image"),
            weight=weight,
            guidance_start=start,
            guidance_end=end,
            resize_mode=resize_mode,
            preprocessor=preprocessor,
        ))
    return units


def _preprocessor(unit: dict[str, Any], name: str) -> Preprocessor:
    """The unit's module and its settings; -1 (the API's default) and absent mean the module's default."""
    module = unit.get("module") or "none"
    module = PREPROCESSOR_ALIASES.get(module, module)
    if module not in PREPROCESSORS:
        raise _fail(f"{name}.module", f"preprocessor {module!r} is not available; use one of "
                    f"{', '.join(PREPROCESSORS)}, or send a preprocessed control image with module \"none\"")
    defaults = dict(zip(("processor_res", "threshold_a", "threshold_b"), PREPROCESSORS[module]))
    values: dict[str, Any] = {}
    for key, default in defaults.items():
        raw = unit.get(key, -1)
        if default is None or raw in (None, -1):
            values[key] = default
        elif key == "processor_res":
            values[key] = _number({f"{name}.{key}": raw}, f"{name}.{key}", int, 64, 2048)
        else:
            values[key] = _number({f"{name}.{key}": raw}, f"{name}.{key}", float, 1, 255)
    pixel_perfect = _bool({f"{name}.pixel_perfect": unit.get("pixel_perfect", False)}, f"{name}.pixel_perfect")
    return Preprocessor(module, pixel_perfect=pixel_perfect, **values)


def _first_init_image(payload: dict[str, Any]) -> Any:
    init_images = payload.get("init_images")
    return init_images[0] if isinstance(init_images, list) and init_images else None


def _check_scripts(scripts: Any) -> dict[str, Any]:
    if scripts in (None, {}):
        return {}
    if not isinstance(scripts, dict):
        raise _fail("alwayson_scripts", "must be an object")
    normalised = {key.lower(): value for key, value in scripts.items()}
    for name, script in normalised.items():
        if name == "controlnet":
            continue
        args = script.get("args") if isinstance(script, dict) else script
        # A script whose arguments are all empty/false is off (Forge sends its built-ins like that);
        # any other would change the result.
        if any(args if isinstance(args, list) else [args]):
            raise _fail(f"alwayson_scripts.{name}", "this script is not available on the engine")
    return normalised


def _override_settings(payload: dict[str, Any]) -> tuple[int, str | None]:
    overrides = payload["override_settings"] or {}
    if not isinstance(overrides, dict):
        raise _fail("override_settings", "must be an object")
    for key in overrides:
        if key not in OVERRIDE_SETTINGS_HONOURED and key not in OVERRIDE_SETTINGS_NO_OP:
            raise _fail(f"override_settings.{key}", "this setting is not supported by the engine; supported: "
                        f"{', '.join(OVERRIDE_SETTINGS_HONOURED + OVERRIDE_SETTINGS_NO_OP)}")
    clip_skip = 1
    if overrides.get("CLIP_stop_at_last_layers") is not None:
        clip_skip = _number(overrides, "CLIP_stop_at_last_layers", int, 1, 12)
    vae = overrides.get("sd_vae")
    if vae in ("Automatic", "None", ""):
        vae = None
    if vae is not None and not isinstance(vae, str):
        raise _fail("override_settings.sd_vae", "must be a VAE file name")
    return clip_skip, vae


def normalise_payload(task: str, payload: dict[str, Any], settings: WorkerSettings) -> GenerationParams:
    """Check every field of `payload` and return what the engine will do (seeds resolved)."""
    if task not in ("txt2img", "img2img"):
        raise _fail("task", f"unknown task {task!r}; valid: txt2img, img2img")
    if not isinstance(payload, dict):
        raise _fail("payload", "must be a JSON object")
    defaults = TXT2IMG_DEFAULTS if task == "txt2img" else IMG2IMG_DEFAULTS
    unknown = sorted(set(payload) - set(defaults))
    if unknown:
        raise _fail(unknown[0], f"unknown field for {task}")
    merged = {**defaults, **payload}

    for key, neutral in NEUTRAL_ONLY_FIELDS.items():
        if key in merged and merged[key] not in neutral:
            raise _fail(key, f"{merged[key]!r} is not supported by this engine (only {neutral[0]!r})")
    sampler = merged["sampler_name"] or merged["sampler_index"] or "Euler a"
    schedule = merged["scheduler"] or "Automatic"
    sampler_field = "sampler_name" if merged["sampler_name"] else "sampler_index"
    sampler_spec = resolve_sampler(sampler, schedule, sampler_field)
    eta = None if merged["eta"] is None else _number(merged, "eta", float, 0.0, 1.0)
    if eta is not None and sampler not in ETA_SAMPLERS and eta != 1.0:
        raise _fail("eta", f"only the DDIM sampler takes eta; {sampler!r} uses A1111's default (1)")
    clip_skip, sd_vae = _override_settings(merged)
    scripts = _check_scripts(merged["alwayson_scripts"])

    width = _round_to_8(merged, "width", settings.max_width)
    height = _round_to_8(merged, "height", settings.max_height)
    steps = _number(merged, "steps", int, 1, settings.max_steps)
    seed = resolve_seed(_number(merged, "seed", int, -1, MAX_SEED))
    subseed = resolve_seed(_number(merged, "subseed", int, -1, MAX_SEED))
    params = GenerationParams(
        task=task,
        prompt=_string(merged, "prompt", settings.max_prompt_chars),
        negative_prompt=_string(merged, "negative_prompt", settings.max_prompt_chars),
        seed=seed,
        subseed=subseed,
        subseed_strength=_number(merged, "subseed_strength", float, 0.0, 1.0),
        seed_resize_from_w=_number(merged, "seed_resize_from_w", int, -1, settings.max_width),
        seed_resize_from_h=_number(merged, "seed_resize_from_h", int, -1, settings.max_height),
        sampler=sampler,
        sampler_spec=sampler_spec,
        schedule=schedule,
        batch_size=_number(merged, "batch_size", int, 1, settings.max_batch_size),
        n_iter=_number(merged, "n_iter", int, 1, settings.max_n_iter),
        steps=steps,
        cfg_scale=_number(merged, "cfg_scale", float, 0.0, 30.0),
        width=width,
        height=height,
        tiling=_bool(merged, "tiling"),
        eta=eta,
        clip_skip=clip_skip,
        sd_vae=sd_vae,
        denoising_strength=None,
        disable_extra_networks=_bool(merged, "disable_extra_networks"),
        controlnet=_controlnet_units(scripts, _first_init_image(merged) if task == "img2img" else None),
    )
    if task == "txt2img" and _bool(merged, "enable_hr"):
        params.hires = _hires(merged, width, height, sampler, schedule, settings)
        params.denoising_strength = params.hires.denoising_strength
    if task == "img2img":
        params.img2img = _img2img(merged)
        # A1111: several init images make one batch of that many images.
        image_count = len(params.img2img.init_images)
        if image_count > params.batch_size:
            raise _fail("init_images", f"{image_count} images but batch_size is {params.batch_size}")
        if image_count > 1:
            params.batch_size = image_count
        if merged["denoising_strength"] is None:
            merged["denoising_strength"] = IMG2IMG_DEFAULTS["denoising_strength"]
        params.denoising_strength = _number(merged, "denoising_strength", float, 0.0, 1.0)
    params.parameters = {
        **merged, "seed": seed, "subseed": subseed, "sampler_name": sampler,
        **({"init_images": None, "mask": None} if task == "img2img" else {}),
    }
    return params


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of noise (rows = dim 1 after flattening), kept bug-for-bug."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def initial_noise(
    shape: tuple[int, int, int],
    seeds: list[int],
    subseeds: list[int],
    subseed_strength: float,
    seed_resize_from_w: int = 0,
    seed_resize_from_h: int = 0,
) -> torch.Tensor:
    """A1111's `create_random_tensors` on the CPU: one seeded noise per image, variation seeds, seed resize.

    `shape` is (channels, latent height, latent width); returns [len(seeds), *shape].
    """
    channels, height, width = shape
    resized = seed_resize_from_w > 0 and seed_resize_from_h > 0
    noise_shape = (channels, seed_resize_from_h // 8, seed_resize_from_w // 8) if resized else shape
    noises = []
    for seed, subseed in zip(seeds, subseeds):
        noise = _randn(seed, noise_shape)
        if subseed_strength != 0:
            noise = slerp(subseed_strength, noise, _randn(subseed, noise_shape))
        if noise_shape != shape:
            # The noise of the other size is pasted centred into the noise of this size.
            full = _randn(seed, shape)
            dx = (width - noise_shape[2]) // 2
            dy = (height - noise_shape[1]) // 2
            w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
            h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
            tx, ty = max(dx, 0), max(dy, 0)
            sx, sy = max(-dx, 0), max(-dy, 0)
            full[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
            noise = full
        noises.append(noise)
    return torch.stack(noises)
