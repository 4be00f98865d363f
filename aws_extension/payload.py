"""Check an A1111 `/sdapi/v1/txt2img|img2img` payload before it runs: at the middleware's door, and first
thing in the diffusers engine (`engine/params.py` calls `validate_payload`, so there is one copy of the rules).

Standard library only: the middleware imports this module and never imports the engine (torch, diffusers,
PIL, pydantic).

What the validator checks, for the fields of the task (`TXT2IMG_DEFAULTS`, `IMG2IMG_DEFAULTS`):
- shapes and types: a number is a JSON number (a bool, a numeric string, NaN or an infinity is not;
  Infinity only for s_tmax, which A1111 itself sets to it); a
  whole number where A1111 has an int (an integral float such as 512.0 passes, as A1111 takes it; 512.5
  does not); true/false (or 0/1, as A1111's int flags); strings; lists of strings; objects;
- ranges: steps, sizes, batch_size, n_iter and prompt lengths within the worker's limits (`PayloadLimits`),
  strengths in 0..1, seeds in -1..2^32-1, cfg_scale, eta, mask blur, inpainting_fill, resize modes, the
  hires fix's second-pass size, more init images than batch_size, ...;
- names every engine must know: samplers, schedules, hires upscalers (`SAMPLER_NAMES`, `SCHEDULER_NAMES`,
  `HIRES_UPSCALERS`; the diffusers engine's samplers and latent upscalers are exactly these);
- `override_settings` (an object; known keys with the right types) and `alwayson_scripts` (an object of
  `{name: {"args": [...]}}`; each ControlNet unit an object whose known keys have the right types).
The hires fields (`hr_*`) and the hires size are checked only with `enable_hr`, as the engine and A1111
read them only then (strictly, `hr_checkpoint_name` must be neutral either way, as the engine always had it).

What stays with an engine (it needs torch, PIL or the engine's own knowledge):
- whether an image (init image, mask, ControlNet image) decodes, and whether the mask has the init image's size;
- ControlNet preprocessors (`module`) and the ranges of their settings (`processor_res`, thresholds), and
  the ControlNet models themselves; a txt2img unit without an image (the engine names the unit's module
  first when it has none of that name);
- whether the LoRA, embeddings, VAE and ControlNet files a payload names exist (the worker's ModelSet);
- defaults, random seeds and the structures the engine runs on.

Strictness: `strict_fields=True` (the default) is the payload of the diffusers engine. Unknown fields are
refused ("unknown field for txt2img"), fields the engine cannot honour must hold their neutral value
(`NEUTRAL_ONLY_FIELDS`: restore_faces, styles, scripts, ...), samplers, schedules, latent upscalers,
`override_settings` keys and ControlNet unit keys must be ones it has, the sampler/schedule combinations it
cannot run are refused, and always-on scripts other than ControlNet must be off (all their args empty or
false). Local workers run the diffusers engine, so the middleware validates strictly.
`strict_fields=False` is for payloads a real WebUI runs (`--engine webui` forwards them to A1111, which has
more samplers, upscalers, scripts, settings and fields): only the shapes, types and ranges above are checked;
unknown fields, names, scripts, settings and ControlNet keys pass, and the neutral-only fields need only have
the right type.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from aws_extension.settings import WorkerSettings
from aws_extension.vocabulary import GENERATION_TASKS, Task

# -- names ---------------------------------------------------------------------------------------------------

# A1111 1.10's sampler names and A1111 < 1.9's " Karras" names, as the diffusers engine has them.
SAMPLER_NAMES: tuple[str, ...] = (
    "Euler a", "Euler", "LMS", "LMS Karras", "Heun", "DPM2", "DPM2 Karras", "DPM2 a", "DPM2 a Karras",
    "DPM++ 2S a", "DPM++ 2S a Karras", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras",
    "DPM++ 2M SDE Heun", "DPM++ 2M SDE Heun Karras", "DPM++ 3M SDE", "DPM++ 3M SDE Karras", "DPM++ SDE",
    "DPM++ SDE Karras", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM",
)
# Samplers whose sigma schedule cannot be chosen (A1111's timestep samplers): only "Automatic".
FIXED_SCHEDULE_SAMPLERS: tuple[str, ...] = ("DDIM", "DDIM CFG++", "PLMS", "UniPC")
# Samplers that take an eta (the payload's, else the eta_ancestral / eta_ddim setting).
ETA_SAMPLERS: tuple[str, ...] = (
    "Euler a", "DPM2 a", "DPM2 a Karras", "DPM++ 2S a", "DPM++ 2S a Karras", "DPM++ SDE", "DPM++ SDE Karras",
    "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ 2M SDE Heun", "DPM++ 2M SDE Heun Karras", "DPM++ 3M SDE",
    "DPM++ 3M SDE Karras", "DPM fast", "DPM adaptive", "DDIM", "DDIM CFG++",
)
# A1111 1.9+'s `scheduler` field (matched case-insensitively); "Automatic" keeps the sampler's own schedule.
SCHEDULER_NAMES: tuple[str, ...] = (
    "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Simple",
    "Normal", "DDIM",
)
RANDN_SOURCES: tuple[str, ...] = ("GPU", "CPU", "NV")
# hires fix upscalers: A1111's latent upscale modes (an empty or null hr_upscaler is "Latent").
HIRES_UPSCALERS: tuple[str, ...] = (
    "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)", "Latent (nearest)",
    "Latent (nearest-exact)",
)
USE_SAME_SAMPLER, USE_SAME_SCHEDULER = "Use same sampler", "Use same scheduler"
CONTROLNET_RESIZE_MODES: tuple[str, ...] = ("Just Resize", "Crop and Resize", "Resize and Fill")

MIN_SIZE = 64
MAX_SEED = 2**32 - 1

# -- the fields --------------------------------------------------------------------------------------------

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
TASK_DEFAULTS: dict[str, dict[str, Any]] = {Task.TXT2IMG: TXT2IMG_DEFAULTS, Task.IMG2IMG: IMG2IMG_DEFAULTS}
# The middleware's routing fields: not checked here (the middleware strips callback_url and run; the
# other three reach the worker with the payload).
ROUTING_FIELDS = ("task_type", "models", "sagemaker_endpoint_name")

# Fields this API adds to A1111's: a real WebUI's /sdapi/v1 cannot take them (the outpainting scripts' latent
# mask is `p.latent_mask` inside the WebUI, not an API field).
NOT_IN_A1111_API = ("latent_mask",)
# What the diffusers engine does with each field. Fields that change what the engine makes:
HONOURED_FIELDS = (
    "prompt", "negative_prompt", "seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w",
    "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height",
    "tiling", "eta", "denoising_strength", "override_settings", "disable_extra_networks", "alwayson_scripts",
    "s_churn", "s_noise", "s_tmin", "s_tmax",
    "enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_sampler_name",
    "hr_scheduler", "hr_prompt", "hr_negative_prompt",
    "init_images", "resize_mode", "mask", "mask_blur", "mask_blur_x", "mask_blur_y", "mask_round", "inpainting_fill",
    "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert", "initial_noise_multiplier",
    "latent_mask",
)
# Fields with no effect on the images the engine makes, as in A1111 for an API call (saving, UI state,
# GPU memory modes, the routing fields) or only for model kinds the engine does not load (Flux's
# distilled CFG, instruct-pix2pix's image CFG).
NO_OP_FIELDS = (
    "do_not_save_samples", "do_not_save_grid", "override_settings_restore_afterwards", "send_images",
    "save_images", "comments", "force_task_id", "firstphase_width", "firstphase_height",
    "include_init_images", "image_cfg_scale", "distilled_cfg_scale", *ROUTING_FIELDS,
)
# Fields refused (strictly) unless they hold their neutral value: the engine cannot do what they ask.
NEUTRAL_ONLY_FIELDS: dict[str, tuple[Any, ...]] = {
    "restore_faces": (False, None),
    "styles": ([], None),
    "script_name": (None, ""),
    "script_args": ([], None),
    "s_min_uncond": (0, 0.0, None),
    "refiner_checkpoint": (None, "", "None"),
    "hr_checkpoint_name": (None, "", "Use same checkpoint"),
    "firstpass_image": (None, ""),
    "infotext": (None, ""),
}
# refiner_switch_at only acts together with a refiner checkpoint.
DEPENDENT_NO_OP_FIELDS = ("refiner_switch_at",)


# -- errors and limits ---------------------------------------------------------------------------------------

class PayloadError(ValueError):
    """A payload field that is wrong: `field` is its dotted path, the message starts with it and says what
    is allowed (`steps: must be a whole number from 1 to 150, got 0`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[type[PayloadError], tuple[str, str]]:  # pickles (worker processes, queues)
        return type(self), (self.field, self.problem)


@dataclass(frozen=True)
class PayloadLimits:
    """The worker's limits on a job (WorkerSettings' fields of the same names)."""

    max_width: int
    max_height: int
    max_steps: int
    max_batch_size: int
    max_n_iter: int
    max_prompt_chars: int

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> PayloadLimits:
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})


# A bound of a range: a number, the name of a PayloadLimits field, or none.
Bound = Union[int, float, str, None]


@dataclass(frozen=True)
class _Context:
    task: str
    limits: PayloadLimits
    strict: bool

    def bound(self, bound: Bound) -> float | None:
        return getattr(self.limits, bound) if isinstance(bound, str) else bound


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _json_number(value: Any, whole: bool, infinite: bool = False) -> int | float | None:
    """`value` if it is a finite JSON number (whole when asked; or an infinity when allowed), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and math.isinf(value):
        return value if infinite else None
    if isinstance(value, float) and (math.isnan(value) or (whole and not value.is_integer())):
        return None
    return value


# -- rules: one check of one value ---------------------------------------------------------------------------

class Rule:
    def check(self, field: str, value: Any, ctx: _Context) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Rule):
    whole: bool = False
    low: Bound = None
    high: Bound = None
    nullable: bool = False
    note: str = ""  # what the values mean
    infinite: bool = False  # an infinity is a value (A1111's s_tmax)

    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if value is None and self.nullable:
            return
        low, high = ctx.bound(self.low), ctx.bound(self.high)
        number = _json_number(value, self.whole, self.infinite)
        if number is None or (low is not None and number < low) or (high is not None and number > high):
            raise PayloadError(field, f"must be {self.allowed(low, high)}, got {_shown(value)}")

    def allowed(self, low: float | None, high: float | None) -> str:
        span = ""
        if low is not None and high is not None:
            span = f" from {_plain(low)} to {_plain(high)}"
        elif low is not None:
            span = f" of at least {_plain(low)}"
        elif high is not None:
            span = f" of at most {_plain(high)}"
        return ("a whole number" if self.whole else "a number") + span + self.note + (" or null" * self.nullable)


@dataclass(frozen=True)
class Flag(Rule):
    nullable: bool = False

    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if isinstance(value, bool) or (type(value) is int and value in (0, 1)) or (value is None and self.nullable):
            return
        raise PayloadError(field, f"must be true or false, got {_shown(value)}")


@dataclass(frozen=True)
class Text(Rule):
    max_chars: Bound = None
    what: str = "a string"
    nullable: bool = True

    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if value is None and self.nullable:
            return
        if not isinstance(value, str):
            raise PayloadError(field, f"must be {self.what}{' or null' * self.nullable}, got {_shown(value)}")
        limit = ctx.bound(self.max_chars)
        if limit is not None and len(value) > limit:
            raise PayloadError(field, f"is {len(value)} characters long; the limit is {_plain(limit)}")


@dataclass(frozen=True)
class TextOrWhole(Rule):
    """A name or its index (ControlNet's resize and control modes)."""

    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if not isinstance(value, str) and _json_number(value, whole=True) is None:
            raise PayloadError(field, f"must be a name or its index (a whole number), got {_shown(value)}")


@dataclass(frozen=True)
class Listing(Rule):
    """A list (or null); `strings`: of strings."""

    strings: bool = False

    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if value is None or (isinstance(value, list) and not (self.strings and _has_non_string(value))):
            return
        raise PayloadError(field, f"must be a list{' of strings' * self.strings} or null, got {_shown(value)}")


def _has_non_string(values: list[Any]) -> bool:
    return any(not isinstance(item, str) for item in values)


@dataclass(frozen=True)
class Object(Rule):
    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if value is not None and not isinstance(value, dict):
            raise PayloadError(field, f"must be an object or null, got {_shown(value)}")


@dataclass(frozen=True)
class Known(Rule):
    """Strictly: one of `names` (None and "" mean the field's default). `problem` is formatted with
    `value` and `names`."""

    names: tuple[Any, ...]
    problem: str

    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if ctx.strict and value is not None and value != "" and value not in self.names:
            raise PayloadError(field, self.problem.format(value=value, names=", ".join(map(str, self.names))))


@dataclass(frozen=True)
class ControlImage(Rule):
    """A ControlNet unit's image: base64 (or a data URL), or sd-webui-controlnet's {"image", "mask"}."""

    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if value is None or isinstance(value, str):
            return
        if not (isinstance(value, dict) and value.get("image") and isinstance(value["image"], str)
                and isinstance(value.get("mask"), (str, type(None)))):
            raise PayloadError(field, 'must be a base64-encoded image (a string, or {"image": ..., "mask": ...}), '
                               f"got {_shown(value)}")
        if ctx.strict and value.get("mask"):
            raise PayloadError(field, "a mask on a ControlNet image is not supported (send the image alone)")


@dataclass(frozen=True)
class InitImages(Rule):
    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if value is None:
            return  # required: _check_img2img says so
        if not isinstance(value, list):
            raise PayloadError(field, f"must be a non-empty list of base64-encoded images (strings), got {_shown(value)}")
        for index, image in enumerate(value):
            if not isinstance(image, str) or not image:
                raise PayloadError(f"{field}[{index}]", "must be a base64-encoded image (a string, or a data: "
                                   f"URL), got {_shown(image)}")


def _apply(rules: tuple[Rule, ...], field: str, value: Any, ctx: _Context) -> None:
    for rule in rules:
        rule.check(field, value, ctx)


# -- override_settings ---------------------------------------------------------------------------------------

_SETTING_FACTOR = (Number(low=0, nullable=True),)
# Keys the engine honours (A1111's options of the same names), then keys without effect on it, then keys
# it refuses unless they hold A1111's default.
OVERRIDE_SETTINGS_RULES: dict[str, tuple[Rule, ...]] = {
    "CLIP_stop_at_last_layers": (Number(whole=True, low=1, high=12, nullable=True),),
    "sd_vae": (Text(what="a VAE file name (a string)"),),
    "randn_source": (Text(), Known(RANDN_SOURCES, "{value!r} is not one of {names}")),
    "eta_noise_seed_delta": (Number(whole=True, low=0, high=2**32 - 1, nullable=True),),
    "eta_ancestral": (Number(low=0, high=1, nullable=True),),
    "eta_ddim": (Number(low=0, high=1, nullable=True),),
    "s_churn": _SETTING_FACTOR,
    "s_tmin": _SETTING_FACTOR,
    "s_tmax": (Number(low=0, nullable=True, infinite=True, note=" (0: infinity)"),),
    "s_noise": _SETTING_FACTOR,
    "sigma_min": (Number(low=0, nullable=True, note=" (0: the model's)"),),
    "sigma_max": (Number(low=0, nullable=True, note=" (0: the model's)"),),
    "rho": (Number(low=0, nullable=True, note=" (0: the schedule's own)"),),
    "always_discard_next_to_last_sigma": (Flag(nullable=True),),
    "sgm_noise_multiplier": (Flag(nullable=True),),
    "k_sched_type": (Text(), Known(SCHEDULER_NAMES, "{value!r} is not one of {names}")),
    "emphasis": (Text(), Known(("Original", "No norm", "Ignore", "None"), "{value!r} is not one of {names}")),
    "comma_padding_backtrack": (Number(whole=True, low=0, high=74, nullable=True),),
    "enable_emphasis": (Flag(nullable=True),),
    "uni_pc_variant": (Text(), Known(("bh1", "bh2", "vary_coeff"), "{value!r} is not one of {names}")),
    "uni_pc_skip_type": (Text(), Known(("time_uniform", "time_quadratic", "logSNR"), "{value!r} is not one of {names}")),
    "uni_pc_order": (Number(whole=True, low=1, high=50, nullable=True),),
    "uni_pc_lower_order_final": (Flag(nullable=True),),
    "ddim_discretize": (Text(), Known(("uniform", "quad"), "{value!r} is not one of {names}")),
    "sd_model_checkpoint": (Text(),),
    "samples_format": (Text(),),
    "save_images_add_number": (Flag(nullable=True),),
}
OVERRIDE_SETTINGS_HONOURED = (
    "CLIP_stop_at_last_layers", "sd_vae", "randn_source", "eta_noise_seed_delta", "eta_ancestral", "eta_ddim",
    "s_churn", "s_tmin", "s_tmax", "s_noise", "sigma_min", "sigma_max", "rho", "always_discard_next_to_last_sigma",
    "sgm_noise_multiplier", "k_sched_type", "emphasis", "comma_padding_backtrack", "enable_emphasis",
    "uni_pc_variant", "uni_pc_skip_type", "uni_pc_order", "uni_pc_lower_order_final",
    "ddim_discretize",  # honoured as A1111 1.10 honours it: its timestep samplers never read it
)
OVERRIDE_SETTINGS_NO_OP = ("sd_model_checkpoint", "samples_format", "save_images_add_number")


@dataclass(frozen=True)
class OverrideSettings(Rule):
    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise PayloadError(field, f'must be an object of settings ({{"sd_vae": ...}}), got {_shown(value)}')
        for key, setting in value.items():
            rules = OVERRIDE_SETTINGS_RULES.get(key)
            if rules is not None:
                _apply(rules, f"{field}.{key}", setting, ctx)
            elif ctx.strict:
                raise PayloadError(f"{field}.{key}", "this setting is not supported by the engine; supported: "
                                   f"{', '.join(OVERRIDE_SETTINGS_RULES)}")


# -- alwayson_scripts and ControlNet ---------------------------------------------------------------------------

_UNIT_FLAG = Flag(nullable=True)
_FRACTION = Number(low=0, high=1)
# Keys of a ControlNet unit (sd-webui-controlnet's API), with their types.
CONTROLNET_UNIT_RULES: dict[str, tuple[Rule, ...]] = {
    "enabled": (_UNIT_FLAG,),
    "module": (Text(),),
    "model": (Text(),),
    "weight": (Number(low=0, high=2),),
    "image": (ControlImage(),),
    "input_image": (ControlImage(),),
    "resize_mode": (TextOrWhole(), Known((*CONTROLNET_RESIZE_MODES, 0, 1, 2), "{value!r} is not one of {names}")),
    "guidance_start": (_FRACTION,),
    "guidance_end": (_FRACTION,),
    "control_mode": (TextOrWhole(), Known(("Balanced", 0), '{value!r} is not supported (only "Balanced")')),
    "loopback": (_UNIT_FLAG, Known((False,), "is not supported (only false)")),
    "processor_res": (Number(whole=True, nullable=True),),  # the range depends on the module: the engine's
    "threshold_a": (Number(nullable=True),),
    "threshold_b": (Number(nullable=True),),
    "pixel_perfect": (_UNIT_FLAG,),
    # only for preprocessors other than "none", or for the UI
    "low_vram": (_UNIT_FLAG,),
    "is_ui": (_UNIT_FLAG,),
    "input_mode": (Text(),),
    "batch_images": (),
    "output_dir": (Text(),),
    "save_detected_map": (_UNIT_FLAG,),
    "hr_option": (TextOrWhole(),),
}
CONTROLNET_NO_OP_KEYS = ("low_vram", "is_ui", "input_mode", "batch_images", "output_dir", "save_detected_map",
                         "hr_option")


def script_args(field: str, script: Any, what: str = "the script's arguments") -> list[Any]:
    """The args of one always-on script, `{"args": [...]}` (null or no args: none)."""
    if script is None:
        return []
    if not isinstance(script, dict):
        raise PayloadError(field, f'must be an object {{"args": [...]}}, got {_shown(script)}')
    args = script.get("args")
    if args is not None and not isinstance(args, list):
        raise PayloadError(f"{field}.args", f"must be a list of {what}, got {_shown(args)}")
    return args or []


@dataclass(frozen=True)
class AlwaysOnScripts(Rule):
    def check(self, field: str, value: Any, ctx: _Context) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise PayloadError(field, f'must be an object {{"script name": {{"args": [...]}}}}, got {_shown(value)}')
        for name, script in value.items():
            script_field = f"{field}.{name.lower()}"
            controlnet = name.lower() == "controlnet"
            args = script_args(script_field, script, "ControlNet units" if controlnet else "the script's arguments")
            if controlnet:
                _check_controlnet_units(f"{script_field}.args", args, ctx)
            elif ctx.strict and any(args):
                # A script whose arguments are all empty/false is off (Forge sends its built-ins like that).
                raise PayloadError(script_field, "this script is not available on the engine (only controlnet; "
                                   "another script must be off: all its args empty or false)")


def _check_controlnet_units(field: str, units: list[Any], ctx: _Context) -> None:
    for index, unit in enumerate(units):
        name = f"{field}[{index}]"
        if not isinstance(unit, dict):
            raise PayloadError(name, f"must be an object (a ControlNet unit), got {_shown(unit)}")
        _UNIT_FLAG.check(f"{name}.enabled", unit.get("enabled"), ctx)
        if unit.get("enabled", True):  # a disabled unit is not read
            _check_controlnet_unit(name, unit, ctx)


def _check_controlnet_unit(name: str, unit: dict[str, Any], ctx: _Context) -> None:
    for key, value in unit.items():
        rules = CONTROLNET_UNIT_RULES.get(key)
        if rules is not None:
            _apply(rules, f"{name}.{key}", value, ctx)
        elif ctx.strict:
            raise PayloadError(f"{name}.{key}", "is not a known ControlNet unit field; known: "
                               f"{', '.join(CONTROLNET_UNIT_RULES)}")
    if ctx.strict:
        _check_controlnet_unit_use(name, unit)


def _check_controlnet_unit_use(name: str, unit: dict[str, Any]) -> None:
    if unit.get("model") in (None, "", "None"):
        raise PayloadError(f"{name}.model", "an enabled unit needs a ControlNet model")
    start, end = unit.get("guidance_start", 0.0), unit.get("guidance_end", 1.0)
    if start >= end:
        raise PayloadError(f"{name}.guidance_start", f"must be below guidance_end ({start} >= {end})")
    # A txt2img unit without an image is the engine's to refuse (`.image`), after its check of the unit's
    # module: a unit with an unavailable module is refused by `.module` first, as before this validator.


# -- the field table -----------------------------------------------------------------------------------------

_PROMPT = (Text(max_chars="max_prompt_chars"),)
_SEED = (Number(whole=True, low=-1, high=MAX_SEED),)
_FLAG = (Flag(),)
_TEXT = (Text(),)
_STRENGTH = (Number(low=0, high=1, nullable=True),)
_FACTOR = (Number(low=0, nullable=True),)
_CFG = Number(low=0, high=30, nullable=True)

FIELD_RULES: dict[str, tuple[Rule, ...]] = {
    "prompt": _PROMPT,
    "negative_prompt": _PROMPT,
    "styles": (Listing(strings=True),),
    "seed": _SEED,
    "subseed": _SEED,
    "subseed_strength": (_FRACTION,),
    "seed_resize_from_h": (Number(whole=True, low=-1, high="max_height"),),
    "seed_resize_from_w": (Number(whole=True, low=-1, high="max_width"),),
    "sampler_name": _TEXT,  # names: _check_sampler (sampler_index is read only without sampler_name)
    "sampler_index": _TEXT,
    "scheduler": _TEXT,
    "batch_size": (Number(whole=True, low=1, high="max_batch_size"),),
    "n_iter": (Number(whole=True, low=1, high="max_n_iter"),),
    "steps": (Number(whole=True, low=1, high="max_steps"),),
    "cfg_scale": (Number(low=0, high=30),),
    "width": (Number(whole=True, low=MIN_SIZE, high="max_width", note=" (rounded down to a multiple of 8)"),),
    "height": (Number(whole=True, low=MIN_SIZE, high="max_height", note=" (rounded down to a multiple of 8)"),),
    "restore_faces": (Flag(nullable=True),),
    "tiling": (Flag(nullable=True),),
    "do_not_save_samples": _FLAG,
    "do_not_save_grid": _FLAG,
    "eta": _STRENGTH,
    "denoising_strength": _STRENGTH,
    "s_min_uncond": _FACTOR,
    "s_churn": _FACTOR,
    "s_tmax": (Number(low=0, nullable=True, infinite=True, note=" (or Infinity, A1111's own value)"),),
    "s_tmin": _FACTOR,
    "s_noise": _FACTOR,
    "override_settings": (OverrideSettings(),),
    "override_settings_restore_afterwards": _FLAG,
    "refiner_checkpoint": _TEXT,
    "refiner_switch_at": _STRENGTH,
    "disable_extra_networks": _FLAG,
    "firstpass_image": _TEXT,
    "comments": (Object(),),
    "enable_hr": _FLAG,
    "firstphase_width": (Number(whole=True, low=0),),
    "firstphase_height": (Number(whole=True, low=0),),
    "hr_scale": (Number(low=1, high=8),),
    "hr_upscaler": _TEXT,  # names: _check_hires
    "hr_second_pass_steps": (Number(whole=True, low=0, high="max_steps", note=" (0: the first pass's steps)"),),
    "hr_resize_x": (Number(whole=True, low=0, high="max_width", note=" (0: from hr_scale)"),),
    "hr_resize_y": (Number(whole=True, low=0, high="max_height", note=" (0: from hr_scale)"),),
    "hr_checkpoint_name": _TEXT,
    "hr_sampler_name": _TEXT,
    "hr_scheduler": _TEXT,
    "hr_prompt": _PROMPT,
    "hr_negative_prompt": _PROMPT,
    "force_task_id": _TEXT,
    "script_name": _TEXT,
    "script_args": (Listing(),),
    "send_images": _FLAG,
    "save_images": _FLAG,
    "alwayson_scripts": (AlwaysOnScripts(),),
    "infotext": _TEXT,
    "distilled_cfg_scale": (_CFG,),
    # img2img
    "init_images": (InitImages(),),
    "resize_mode": (
        Number(whole=True, low=0, high=3, note=" (0 just resize, 1 crop and resize, 2 resize and fill, "
               "3 just resize (latent upscale))"),
        Known((0, 1, 2), "{value} is not supported; valid: 0 (just resize), 1 (crop and resize), 2 (resize and fill)"),
    ),
    "image_cfg_scale": (_CFG,),
    "mask": (Text(what="a base64-encoded image (a string)"),),
    # The UI's slider stops at 64; the outpainting scripts set up to 4x that (outpainting_mk_2: mask_blur * 4).
    "mask_blur": (Number(whole=True, low=0, high=256, nullable=True),),
    "mask_blur_x": (Number(whole=True, low=0, high=256),),
    "mask_blur_y": (Number(whole=True, low=0, high=256),),
    "mask_round": _FLAG,
    "inpainting_fill": (Number(whole=True, low=0, high=3, note=" (0 fill, 1 original, 2 latent noise, "
                               "3 latent nothing)"),),
    "inpaint_full_res": _FLAG,
    "inpaint_full_res_padding": (Number(whole=True, low=0, high=1024),),
    "inpainting_mask_invert": _FLAG,
    "initial_noise_multiplier": (Number(low=0, high=2, nullable=True),),
    # The mask of the latents (and of inpainting_fill "fill") where it differs from the image mask's: the
    # outpainting scripts' p.latent_mask. Its size is checked by the engine (it decodes it).
    "latent_mask": (Text(what="a base64-encoded image (a string)"),),
    "include_init_images": _FLAG,
}


# -- what several fields decide together -------------------------------------------------------------------

def effective_sampler(payload: dict[str, Any]) -> tuple[str, str]:
    """The sampler a payload asks for and the field that names it (A1111: sampler_name, else sampler_index)."""
    if payload.get("sampler_name"):
        return payload["sampler_name"], "sampler_name"
    return payload.get("sampler_index") or "Euler a", "sampler_index"


def hires_sampler(payload: dict[str, Any], sampler: str) -> str:
    name = payload.get("hr_sampler_name") or sampler
    return sampler if name == USE_SAME_SAMPLER else name


def hires_schedule(payload: dict[str, Any], schedule: str) -> str:
    name = payload.get("hr_scheduler") or schedule
    return schedule if name == USE_SAME_SCHEDULER else name


def canonical_schedule(name: str) -> str | None:
    """A known schedule's spelling in SCHEDULER_NAMES (names match case-insensitively); None if unknown."""
    return next((known for known in SCHEDULER_NAMES if known.lower() == name.lower()), None)


def snap_size(value: int) -> int:
    """The engine's image size for a width or height: rounded down to a multiple of 8."""
    return value - value % 8


def hires_target(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> tuple[int, int, int, int]:
    """A1111's StableDiffusionProcessingTxt2Img.calculate_target_resolution: the size the latent is upscaled
    to, and how much is then cropped on each axis (in latent pixels, 8 image pixels each)."""
    if resize_x == 0 and resize_y == 0:
        return int(width * scale), int(height * scale), 0, 0
    if resize_y == 0:
        return resize_x, resize_x * height // width, 0, 0
    if resize_x == 0:
        return resize_y * width // height, resize_y, 0, 0
    if width / height < resize_x / resize_y:
        target_width, target_height = resize_x, resize_x * height // width
    else:
        target_width, target_height = resize_y * width // height, resize_y
    return target_width, target_height, (target_width - resize_x) // 8, (target_height - resize_y) // 8


def _check_sampler_name(field: str, sampler: str) -> None:
    if sampler not in SAMPLER_NAMES:
        raise PayloadError(field, f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLER_NAMES)}")


def _check_schedule(field: str, sampler: str, schedule: str) -> None:
    known = canonical_schedule(schedule)
    if known is None:
        raise PayloadError(field, f"unsupported schedule {schedule!r}; valid: {', '.join(SCHEDULER_NAMES)}")
    if known != "Automatic" and sampler in FIXED_SCHEDULE_SAMPLERS:
        raise PayloadError(field, f"sampler {sampler!r} has no {known} schedule (only Automatic)")


def _check_sampler(payload: dict[str, Any], ctx: _Context) -> None:
    if not ctx.strict:
        return
    sampler, field = effective_sampler(payload)
    _check_sampler_name(field, sampler)
    _check_schedule("scheduler", sampler, payload["scheduler"] or "Automatic")
    eta = payload["eta"]
    if eta is not None and sampler not in ETA_SAMPLERS and eta != 1.0:
        raise PayloadError("eta", f"sampler {sampler!r} takes no eta; samplers with an eta: {', '.join(ETA_SAMPLERS)}")


def _check_hires(payload: dict[str, Any], ctx: _Context) -> None:
    if ctx.task != Task.TXT2IMG or not payload["enable_hr"]:
        return
    if ctx.strict:
        upscaler = payload["hr_upscaler"] or "Latent"
        if upscaler not in HIRES_UPSCALERS:
            raise PayloadError("hr_upscaler", f"{upscaler!r} is not supported; the latent upscalers are: "
                               f"{', '.join(HIRES_UPSCALERS)}")
        sampler = hires_sampler(payload, effective_sampler(payload)[0])
        _check_sampler_name("hr_sampler_name", sampler)
        _check_schedule("hr_scheduler", sampler, hires_schedule(payload, payload["scheduler"] or "Automatic"))
    width, height, *_ = hires_target(snap_size(int(payload["width"])), snap_size(int(payload["height"])),
                                     payload["hr_scale"], int(payload["hr_resize_x"]), int(payload["hr_resize_y"]))
    limits = ctx.limits
    if width > limits.max_width or height > limits.max_height:
        raise PayloadError("hr_scale", f"hires size {width}x{height} exceeds the limit "
                           f"{limits.max_width}x{limits.max_height}")


def _check_img2img(payload: dict[str, Any], ctx: _Context) -> None:
    if ctx.task != Task.IMG2IMG:
        return
    images = payload["init_images"]
    if not images:
        raise PayloadError("init_images", "img2img needs at least one base64 image in init_images")
    if len(images) > payload["batch_size"]:
        # A1111: several init images make one batch of that many images.
        raise PayloadError("init_images", f"{len(images)} images but batch_size is {payload['batch_size']} "
                           "(at most batch_size images)")
    if ctx.strict and payload["latent_mask"] and not payload["mask"]:  # A1111 ignores it then, silently
        raise PayloadError("latent_mask", "applies only together with a mask (send the mask too, or no latent_mask)")


_CROSS_CHECKS: tuple[Callable[[dict[str, Any], _Context], None], ...] = (_check_sampler, _check_hires, _check_img2img)


# -- the validator -------------------------------------------------------------------------------------------

def _is_read(key: str, payload: dict[str, Any]) -> bool:
    """The hires fields are read only with enable_hr (by the engine, as by A1111)."""
    return not key.startswith("hr_") or bool(payload.get("enable_hr"))


def _check_field(key: str, value: Any, ctx: _Context, read: bool = True) -> None:
    if read:
        _apply(FIELD_RULES.get(key, ()), key, value, ctx)
    neutral = NEUTRAL_ONLY_FIELDS.get(key)
    if ctx.strict and neutral is not None and value not in neutral:
        raise PayloadError(key, f"{_shown(value)} is not supported by this engine (only {neutral[0]!r})")


def validate_payload(task: str, payload: dict[str, Any], limits: PayloadLimits, strict_fields: bool = True) -> None:
    """Raise PayloadError for the first problem of `payload` (an A1111 `task` payload, without the
    middleware's routing fields callback_url and run); see the module's docstring for what is checked."""
    if task not in GENERATION_TASKS:
        raise PayloadError("task", f"unknown task {task!r}; valid: {', '.join(GENERATION_TASKS)}")
    if not isinstance(payload, dict):
        raise PayloadError("payload", f"must be a JSON object, got {_shown(payload)}")
    defaults = TASK_DEFAULTS[task]
    unknown = sorted(set(payload) - set(defaults))
    if unknown and strict_fields:
        raise PayloadError(unknown[0], f"unknown field for {task}")
    ctx = _Context(Task(task), limits, strict_fields)
    for key, value in payload.items():
        if key in defaults:
            _check_field(key, value, ctx, _is_read(key, payload))
    merged = {**defaults, **payload}
    for check in _CROSS_CHECKS:
        check(merged, ctx)
