"""Normalise an A1111 `/sdapi/v1/txt2img|img2img` payload into what the engine runs; A1111's seed and noise
semantics.

The payload is first checked by `aws_extension.payload.validate_payload` (strictly: the fields, types,
ranges and names of this engine; every field A1111 accepts is listed there as honoured, a no-op, or refused
unless it has its neutral value, and unknown fields are refused). What needs the engine is checked here:
images decode and the mask fits the init image, ControlNet preprocessors exist and their settings are in
range. Errors are `EngineError`s whose message starts with the field name.
"""

from __future__ import annotations

import base64
import binascii
import io
import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from aws_extension.engine.base import EngineError
from aws_extension.engine.k_pass import DDIM_ETA_FUNCTIONS, ETA_FUNCTIONS, EXTRA_PARAMS, ScheduleSettings
from aws_extension.engine.k_samplers import Options
from aws_extension.engine.preprocessors import ALIASES as PREPROCESSOR_ALIASES
from aws_extension.engine.preprocessors import PREPROCESSORS, Preprocessor
from aws_extension.engine.prompt import Emphasis
from aws_extension.engine.samplers import SamplerSpec, resolve_sampler
from aws_extension.engine.timestep_samplers import check_unipc_order, unipc_pass_steps
from aws_extension.payload import (
    CONTROLNET_RESIZE_MODES,
    IMG2IMG_DEFAULTS,
    TASK_DEFAULTS,
    PayloadError,
    PayloadLimits,
    effective_sampler,
    hires_sampler,
    hires_schedule,
    hires_target,
    script_args,
    snap_size,
    validate_payload,
)
from aws_extension.settings import WorkerSettings

LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {  # A1111 name → (interpolate mode, antialias)
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}  # its keys are aws_extension.payload.HIRES_UPSCALERS
# The ranges of a ControlNet preprocessor's settings (checked only for the settings its module uses).
PREPROCESSOR_RANGES: dict[str, tuple[int, int]] = {"processor_res": (64, 2048), "threshold_a": (1, 255),
                                                   "threshold_b": (1, 255)}
HIRES_DEFAULT_DENOISING = 0.7  # the WebUI's default for hires fix when the payload has none
RANDOM_SEED_LIMIT = 4294967294  # A1111 draws random seeds below this


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
    # A1111's p.latent_mask (the outpainting scripts): used as it is, instead of the mask made from `mask`,
    # for inpainting_fill "fill" and for the latents; the overlay still comes from `mask`.
    latent_mask: Image.Image | None = None


@dataclass(frozen=True)
class SamplingSettings:
    """The override settings that change sampling (A1111's options of the same names)."""

    randn_source: str = "CPU"  # the engine's default; A1111's is "GPU" (engine.noise.NoiseSource)
    eta_noise_seed_delta: int = 0
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0: infinity
    s_noise: float = 1.0
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    sgm_noise_multiplier: bool = False
    uni_pc: dict[str, Any] = field(default_factory=dict)  # the uni_pc_* settings given (names of `Options`)

    def sampler_settings(self, function: str, eta: float | None) -> dict[str, Any]:
        """What A1111 gives sampler `function` that is not its default: eta (the payload's, else eta_ancestral,
        or eta_ddim for DDIM), the `EXTRA_PARAMS` it takes (with the names of `Options`), UniPC's settings."""
        given: dict[str, Any] = {}
        if function in ETA_FUNCTIONS:
            given["eta"] = self.eta_ancestral if eta is None else eta
        elif function in DDIM_ETA_FUNCTIONS:
            given["eta"] = self.eta_ddim if eta is None else eta
        elif function == "unipc":
            given.update(self.uni_pc)
        defaults = Options()
        for name in EXTRA_PARAMS.get(function, ()):
            value = getattr(self, name) or (float("inf") if name == "s_tmax" else 0.0)
            if value != getattr(defaults, name):
                given[name] = value
        return given

    def options(self, function: str, eta: float | None, solver_type: str) -> Options:
        return Options(solver_type=solver_type, **self.sampler_settings(function, eta))


def _sampling_settings(overrides: dict[str, Any], payload: dict[str, Any]) -> SamplingSettings:
    """The override settings, with the payload's s_churn/s_tmin/s_tmax/s_noise where A1111 reads them
    (an override setting of the same name wins, as in A1111's `Sampler.initialize`)."""
    def pick(key: str, default: Any) -> Any:
        value = overrides.get(key)
        return default if value is None else value

    def from_payload(key: str, default: float) -> float:
        value = payload.get(key)
        return float(pick(key, default if value is None else value))

    return SamplingSettings(
        randn_source=pick("randn_source", "CPU"),
        eta_noise_seed_delta=int(pick("eta_noise_seed_delta", 0)),
        eta_ancestral=float(pick("eta_ancestral", 1.0)),
        eta_ddim=float(pick("eta_ddim", 0.0)),
        s_churn=from_payload("s_churn", 0.0), s_tmin=from_payload("s_tmin", 0.0),
        s_tmax=from_payload("s_tmax", 0.0) if from_payload("s_tmax", 0.0) != float("inf") else 0.0,
        s_noise=from_payload("s_noise", 1.0),
        schedule=ScheduleSettings(float(pick("sigma_min", 0.0)), float(pick("sigma_max", 0.0)), float(pick("rho", 0.0)),
                                  bool(pick("always_discard_next_to_last_sigma", False))),
        sgm_noise_multiplier=bool(pick("sgm_noise_multiplier", False)),
        uni_pc={key: kind(overrides[key]) for key, kind in (("uni_pc_variant", str), ("uni_pc_skip_type", str),
                                                            ("uni_pc_order", int), ("uni_pc_lower_order_final", bool))
                if overrides.get(key) is not None},
    )


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
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    emphasis: Emphasis = field(default_factory=Emphasis)
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


def _hires(payload: dict[str, Any], width: int, height: int, sampler: str, schedule: str) -> HiresFix:
    upscaler = payload["hr_upscaler"] or "Latent"
    scale = float(payload["hr_scale"])
    resize_x, resize_y = int(payload["hr_resize_x"]), int(payload["hr_resize_y"])
    target_width, target_height, truncate_x, truncate_y = hires_target(width, height, scale, resize_x, resize_y)
    hr_sampler = hires_sampler(payload, sampler)
    denoising = payload["denoising_strength"]
    return HiresFix(
        upscaler=upscaler,
        upscale_mode=LATENT_UPSCALE_MODES[upscaler],
        scale=scale,
        resize_x=resize_x,
        resize_y=resize_y,
        steps=int(payload["hr_second_pass_steps"]),
        denoising_strength=HIRES_DEFAULT_DENOISING if denoising is None else float(denoising),
        prompt=_text(payload["hr_prompt"]),
        negative_prompt=_text(payload["hr_negative_prompt"]),
        sampler=hr_sampler,
        sampler_spec=resolve_sampler(hr_sampler, hires_schedule(payload, schedule), "hr_sampler_name"),
        target_width=target_width,
        target_height=target_height,
        truncate_x=truncate_x,
        truncate_y=truncate_y,
    )


def _mask(payload: dict[str, Any], init_image: Image.Image) -> Image.Image | None:
    if not payload["mask"]:
        return None
    mask = decode_image(payload["mask"], "mask")
    if mask.size != init_image.size:
        raise _fail("mask", f"is {mask.width}x{mask.height} but init_images[0] is "
                    f"{init_image.width}x{init_image.height}; they must be the same size")
    return mask


def _latent_mask(payload: dict[str, Any], width: int, height: int) -> Image.Image | None:
    """The latent mask, when there is a mask (without one, A1111 ignores it; the payload check refuses that).
    With inpainting_fill "fill" A1111 fills the image (width x height by then) through it: the same size."""
    if not payload["latent_mask"] or not payload["mask"]:
        return None
    latent_mask = decode_image(payload["latent_mask"], "latent_mask")
    if int(payload["inpainting_fill"]) == 0 and latent_mask.size != (width, height):
        raise _fail("latent_mask", f"is {latent_mask.width}x{latent_mask.height} but the image is {width}x{height}; "
                    "with inpainting_fill 0 (fill) they must be the same size")
    return latent_mask


def _img2img(payload: dict[str, Any], width: int, height: int) -> Img2ImgInputs:
    images = [decode_image(value, f"init_images[{i}]") for i, value in enumerate(payload["init_images"])]
    blur = payload["mask_blur"]  # sets both mask_blur_x and mask_blur_y
    multiplier = payload["initial_noise_multiplier"]
    return Img2ImgInputs(
        init_images=images,
        resize_mode=int(payload["resize_mode"]),
        mask=_mask(payload, images[0]),
        latent_mask=_latent_mask(payload, width, height),
        mask_blur_x=int(payload["mask_blur_x"] if blur is None else blur),
        mask_blur_y=int(payload["mask_blur_y"] if blur is None else blur),
        mask_round=bool(payload["mask_round"]),
        inpainting_fill=int(payload["inpainting_fill"]),
        inpaint_full_res=bool(payload["inpaint_full_res"]),
        inpaint_full_res_padding=int(payload["inpaint_full_res_padding"]),
        inpainting_mask_invert=bool(payload["inpainting_mask_invert"]),
        initial_noise_multiplier=1.0 if multiplier is None else float(multiplier),
    )


def _controlnet_units(payload: dict[str, Any]) -> list[ControlNetUnit]:
    """Enabled units; a unit without an image uses img2img's first init image, as the extension does."""
    scripts = {key.lower(): value for key, value in (payload["alwayson_scripts"] or {}).items()}
    units = script_args("alwayson_scripts.controlnet", scripts.get("controlnet"))
    init_image = (payload.get("init_images") or [None])[0]
    return [_controlnet_unit(index, unit, init_image) for index, unit in enumerate(units) if unit.get("enabled", True)]


def _controlnet_unit(index: int, unit: dict[str, Any], init_image: Any) -> ControlNetUnit:
    name = f"alwayson_scripts.controlnet.args[{index}]"
    preprocessor = _preprocessor(unit, name)
    image = unit.get("image", unit.get("input_image")) or init_image
    if isinstance(image, dict):
        image = image.get("image")
    resize_mode = unit.get("resize_mode", "Crop and Resize")
    if not isinstance(resize_mode, str):
        resize_mode = CONTROLNET_RESIZE_MODES[int(resize_mode)]
    return ControlNetUnit(
        index=index,
        model=str(unit["model"]),
        image=decode_image(image, f"{name}.image"),
        weight=float(unit.get("weight", 1.0)),
        guidance_start=float(unit.get("guidance_start", 0.0)),
        guidance_end=float(unit.get("guidance_end", 1.0)),
        resize_mode=resize_mode,
        preprocessor=preprocessor,
    )


def _preprocessor(unit: dict[str, Any], name: str) -> Preprocessor:
    """The unit's module and its settings; -1 (the API's default) and absent mean the module's default."""
    module = unit.get("module") or "none"
    module = PREPROCESSOR_ALIASES.get(module, module)
    if module not in PREPROCESSORS:
        raise _fail(f"{name}.module", f"preprocessor {module!r} is not available; use one of "
                    f"{', '.join(PREPROCESSORS)}, or send a preprocessed control image with module \"none\"")
    values = {key: _preprocessor_setting(f"{name}.{key}", unit.get(key, -1), default)
              for key, default in zip(PREPROCESSOR_RANGES, PREPROCESSORS[module])}
    return Preprocessor(module, pixel_perfect=bool(unit.get("pixel_perfect")), **values)


def _preprocessor_setting(field_name: str, raw: Any, default: float | None) -> float | None:
    """One setting of a preprocessor: the module's default unless set; None where the module has none."""
    if default is None or raw in (None, -1):
        return default
    low, high = PREPROCESSOR_RANGES[field_name.rsplit(".", 1)[-1]]
    if not low <= raw <= high:
        raise _fail(field_name, f"must be from {low} to {high} for this preprocessor, got {raw}")
    return int(raw) if field_name.endswith("processor_res") else float(raw)


def _override_settings(overrides: dict[str, Any] | None) -> tuple[int, str | None]:
    """clip skip and the VAE of `override_settings` ("Automatic"/"None": the checkpoint's own)."""
    overrides = overrides or {}
    clip_skip = overrides.get("CLIP_stop_at_last_layers")
    vae = overrides.get("sd_vae")
    return 1 if clip_skip is None else int(clip_skip), None if vae in ("Automatic", "None", "") else vae


def _emphasis(overrides: dict[str, Any]) -> Emphasis:
    """`emphasis` (or the older `enable_emphasis`: false is "None") and `comma_padding_backtrack`."""
    mode = overrides.get("emphasis") or ("None" if overrides.get("enable_emphasis") is False else "Original")
    backtrack = overrides.get("comma_padding_backtrack")
    return Emphasis(mode, Emphasis.comma_padding_backtrack if backtrack is None else int(backtrack))


def _validated(task: str, payload: dict[str, Any], settings: WorkerSettings) -> dict[str, Any]:
    """`payload` with the task's defaults, once aws_extension.payload finds nothing wrong with it."""
    try:
        validate_payload(task, payload, PayloadLimits.from_settings(settings))
    except PayloadError as error:
        raise EngineError(str(error), error.field) from None
    return {**TASK_DEFAULTS[task], **payload}


def normalise_payload(task: str, payload: dict[str, Any], settings: WorkerSettings) -> GenerationParams:
    """Check every field of `payload` and return what the engine will do (seeds resolved).

    Shapes, types, ranges and names are aws_extension.payload's checks; here are the engine's own (images
    decode, ControlNet preprocessors), the defaults and the seeds.
    """
    merged = _validated(task, payload, settings)
    sampler, sampler_field = effective_sampler(merged)
    schedule = merged["scheduler"] or (merged["override_settings"] or {}).get("k_sched_type") or "Automatic"
    clip_skip, sd_vae = _override_settings(merged["override_settings"])
    params = GenerationParams(
        task=task,
        prompt=_text(merged["prompt"]),
        negative_prompt=_text(merged["negative_prompt"]),
        seed=resolve_seed(int(merged["seed"])),
        subseed=resolve_seed(int(merged["subseed"])),
        subseed_strength=float(merged["subseed_strength"]),
        seed_resize_from_w=int(merged["seed_resize_from_w"]),
        seed_resize_from_h=int(merged["seed_resize_from_h"]),
        sampler=sampler,
        sampler_spec=resolve_sampler(sampler, schedule, sampler_field),
        schedule=schedule,
        batch_size=int(merged["batch_size"]),
        n_iter=int(merged["n_iter"]),
        steps=int(merged["steps"]),
        cfg_scale=float(merged["cfg_scale"]),
        width=snap_size(int(merged["width"])),
        height=snap_size(int(merged["height"])),
        tiling=bool(merged["tiling"]),
        eta=_optional_float(merged["eta"]),
        clip_skip=clip_skip,
        sd_vae=sd_vae,
        denoising_strength=None,
        disable_extra_networks=bool(merged["disable_extra_networks"]),
        controlnet=_controlnet_units(merged),
        sampling=_sampling_settings(merged["override_settings"] or {}, merged),
        emphasis=_emphasis(merged["override_settings"] or {}),
    )
    if task == "txt2img" and merged["enable_hr"]:
        params.hires = _hires(merged, params.width, params.height, sampler, schedule)
        params.denoising_strength = params.hires.denoising_strength
    if task == "img2img":
        _add_img2img(params, merged)
    params.parameters = {**merged, "seed": params.seed, "subseed": params.subseed, "sampler_name": sampler}
    if task == "img2img":
        params.parameters.update(init_images=None, mask=None, latent_mask=None)
    _check_unipc_order(params)
    return params


def _check_unipc_order(params: GenerationParams) -> None:
    """A UniPC pass needs at least uni_pc_order steps (A1111 fails it); refused before any work."""
    order = int(params.sampling.uni_pc.get("uni_pc_order", 3))
    discard = params.sampling.schedule.always_discard
    if params.sampler_spec.k_function == "unipc":
        strength = params.denoising_strength if params.img2img is not None else None
        if strength is None or strength > 0:
            check_unipc_order(order, unipc_pass_steps(params.steps, discard, strength))
    hires = params.hires
    if hires is not None and hires.sampler_spec.k_function == "unipc" and hires.denoising_strength > 0:
        steps = hires.steps or params.steps
        total = int(steps / min(hires.denoising_strength, 0.999))  # A1111's setup_img2img_steps
        check_unipc_order(order, unipc_pass_steps(total, discard, hires_steps=steps))


def _text(value: str | None) -> str:
    return value or ""


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _add_img2img(params: GenerationParams, merged: dict[str, Any]) -> None:
    params.img2img = _img2img(merged, params.width, params.height)
    # A1111: several init images make one batch of that many images (never more than batch_size).
    if len(params.img2img.init_images) > 1:
        params.batch_size = len(params.img2img.init_images)
    if merged["denoising_strength"] is None:
        merged["denoising_strength"] = IMG2IMG_DEFAULTS["denoising_strength"]
    params.denoising_strength = float(merged["denoising_strength"])
