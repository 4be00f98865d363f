"""The torch-free validator of A1111 txt2img/img2img payloads (aws_extension.payload)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aws_extension.payload import (
    CONTROLNET_NO_OP_KEYS,
    CONTROLNET_UNIT_RULES,
    FIELD_RULES,
    IMG2IMG_DEFAULTS,
    OVERRIDE_SETTINGS_HONOURED,
    OVERRIDE_SETTINGS_NO_OP,
    OVERRIDE_SETTINGS_RULES,
    ROUTING_FIELDS,
    TXT2IMG_DEFAULTS,
    PayloadError,
    PayloadLimits,
    validate_payload,
)
from aws_extension.settings import WorkerSettings

LIMITS = PayloadLimits.from_settings(WorkerSettings())
IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
DATA_URL = "data:image/png;base64," + IMAGE
UNIT = {"enabled": True, "module": "none", "model": "control_v11p_sd15_canny [d14c016b]", "image": IMAGE}


def _unit(**fields: Any) -> dict[str, Any]:
    return {"alwayson_scripts": {"controlnet": {"args": [{**UNIT, **fields}]}}}


def _img2img(**fields: Any) -> dict[str, Any]:
    return {"init_images": [IMAGE], **fields}


def _hires(**fields: Any) -> dict[str, Any]:
    return {"enable_hr": True, **fields}


# Wrong shapes, types and ranges: refused by every engine (strict or not). (task, payload, field, words)
MALFORMED = [
    ("txt2img", {"steps": 0}, "steps", "steps: must be a whole number from 1 to 150, got 0"),
    ("txt2img", {"steps": 151}, "steps", "from 1 to 150"),
    ("txt2img", {"steps": 20.5}, "steps", "whole number"),
    ("txt2img", {"steps": "20"}, "steps", "got '20'"),
    ("txt2img", {"steps": True}, "steps", "got True"),
    ("txt2img", {"sampler_name": 5}, "sampler_name", "must be a string"),
    ("txt2img", {"scheduler": ["Karras"]}, "scheduler", "must be a string"),
    ("txt2img", {"batch_size": "two"}, "batch_size", "must be a whole number from 1 to 8, got 'two'"),
    ("txt2img", {"batch_size": 1e9}, "batch_size", "from 1 to 8"),
    ("txt2img", {"batch_size": 0}, "batch_size", "from 1 to 8"),
    ("txt2img", {"n_iter": 10**9}, "n_iter", "from 1 to 100"),
    ("txt2img", {"n_iter": None}, "n_iter", "whole number"),
    ("txt2img", {"width": 10**6}, "width", "from 64 to 2048"),
    ("txt2img", {"width": 63}, "width", "from 64 to 2048"),
    ("txt2img", {"height": 2056}, "height", "from 64 to 2048"),
    ("txt2img", {"seed": "abc"}, "seed", "from -1 to 4294967295"),
    ("txt2img", {"seed": 2**32}, "seed", "from -1 to 4294967295"),
    ("txt2img", {"seed": -2}, "seed", "from -1"),
    ("txt2img", {"subseed": 1.5}, "subseed", "whole number"),
    ("txt2img", {"subseed_strength": 1.5}, "subseed_strength", "from 0 to 1"),
    ("txt2img", {"seed_resize_from_w": 4096}, "seed_resize_from_w", "from -1 to 2048"),
    ("txt2img", {"cfg_scale": float("nan")}, "cfg_scale", "a number from 0 to 30, got nan"),
    ("txt2img", {"cfg_scale": float("inf")}, "cfg_scale", "a number from 0 to 30, got inf"),
    ("txt2img", {"cfg_scale": float("-inf")}, "cfg_scale", "from 0 to 30"),
    ("txt2img", {"cfg_scale": 31}, "cfg_scale", "from 0 to 30"),
    ("txt2img", {"s_tmax": float("nan")}, "s_tmax", "of at least 0 (or Infinity"),
    ("txt2img", {"s_tmin": float("inf")}, "s_tmin", "of at least 0 or null"),
    ("txt2img", {"cfg_scale": "high"}, "cfg_scale", "a number"),
    ("txt2img", {"prompt": 5}, "prompt", "must be a string"),
    ("txt2img", {"prompt": "a" * 8001}, "prompt", "the limit is 8000"),
    ("txt2img", {"negative_prompt": ["blurry"]}, "negative_prompt", "must be a string"),
    ("txt2img", {"denoising_strength": 2}, "denoising_strength", "from 0 to 1"),
    ("txt2img", {"eta": "0"}, "eta", "from 0 to 1 or null"),
    ("txt2img", {"tiling": "no"}, "tiling", "true or false"),
    ("txt2img", {"do_not_save_grid": 2}, "do_not_save_grid", "true or false"),
    ("txt2img", {"styles": "my style"}, "styles", "a list of strings"),
    ("txt2img", {"styles": [1]}, "styles", "a list of strings"),
    ("txt2img", {"script_args": "x"}, "script_args", "must be a list"),
    ("txt2img", {"comments": "x"}, "comments", "must be an object"),
    ("txt2img", {"override_settings": "x"}, "override_settings", "must be an object"),
    ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 13}},
     "override_settings.CLIP_stop_at_last_layers", "from 1 to 12"),
    ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": "2"}},
     "override_settings.CLIP_stop_at_last_layers", "whole number"),
    ("txt2img", {"override_settings": {"sd_vae": 5}}, "override_settings.sd_vae", "a VAE file name"),
    ("txt2img", {"alwayson_scripts": "x"}, "alwayson_scripts", "must be an object"),
    ("txt2img", {"alwayson_scripts": {"ADetailer": [True]}}, "alwayson_scripts.adetailer", '{"args": [...]}'),
    ("txt2img", {"alwayson_scripts": {"ADetailer": {"args": "x"}}}, "alwayson_scripts.adetailer.args",
     "must be a list"),
    ("txt2img", {"alwayson_scripts": {"controlnet": {"args": 5}}}, "alwayson_scripts.controlnet.args",
     "must be a list of ControlNet units"),
    ("txt2img", {"alwayson_scripts": {"controlnet": {"args": [5]}}}, "alwayson_scripts.controlnet.args[0]",
     "must be an object (a ControlNet unit)"),
    ("txt2img", {"alwayson_scripts": {"ControlNet": {"args": [{"enabled": "yes"}]}}},
     "alwayson_scripts.controlnet.args[0].enabled", "true or false"),
    ("txt2img", _unit(weight="1"), "alwayson_scripts.controlnet.args[0].weight", "from 0 to 2"),
    ("txt2img", _unit(weight=3), "alwayson_scripts.controlnet.args[0].weight", "from 0 to 2"),
    ("txt2img", _unit(guidance_end=1.5), "alwayson_scripts.controlnet.args[0].guidance_end", "from 0 to 1"),
    ("txt2img", _unit(processor_res="512"), "alwayson_scripts.controlnet.args[0].processor_res", "whole number"),
    ("txt2img", _unit(threshold_a=True), "alwayson_scripts.controlnet.args[0].threshold_a", "a number"),
    ("txt2img", _unit(resize_mode=None), "alwayson_scripts.controlnet.args[0].resize_mode", "a name or its index"),
    ("txt2img", _unit(image=5), "alwayson_scripts.controlnet.args[0].image", "base64-encoded image"),
    ("txt2img", _unit(image={"mask": IMAGE}), "alwayson_scripts.controlnet.args[0].image", "base64-encoded image"),
    ("txt2img", _unit(model=["m"]), "alwayson_scripts.controlnet.args[0].model", "must be a string"),
    ("txt2img", _hires(hr_scale=100), "hr_scale", "from 1 to 8"),
    ("txt2img", _hires(width=1024, height=512, hr_scale=4), "hr_scale", "exceeds the limit 2048x2048"),
    ("txt2img", _hires(width=512, height=1024, hr_resize_x=2048), "hr_scale", "size 2048x4096 exceeds"),
    ("txt2img", _hires(hr_second_pass_steps=151), "hr_second_pass_steps", "from 0 to 150"),
    ("txt2img", _hires(hr_resize_x=-1), "hr_resize_x", "from 0 to 2048"),
    ("txt2img", _hires(hr_prompt="a" * 8001), "hr_prompt", "the limit is 8000"),
    ("txt2img", {"enable_hr": "yes"}, "enable_hr", "true or false"),
    ("img2img", {"init_images": "abc"}, "init_images", "non-empty list of base64-encoded images"),
    ("img2img", {"init_images": []}, "init_images", "at least one base64 image"),
    ("img2img", {}, "init_images", "at least one base64 image"),
    ("img2img", {"init_images": [IMAGE, 5]}, "init_images[1]", "base64-encoded image"),
    ("img2img", {"init_images": [""]}, "init_images[0]", "base64-encoded image"),
    ("img2img", _img2img(init_images=[IMAGE, IMAGE]), "init_images", "batch_size is 1"),
    ("img2img", _img2img(denoising_strength=2), "denoising_strength", "from 0 to 1"),
    ("img2img", _img2img(mask=5), "mask", "a base64-encoded image"),
    ("img2img", _img2img(mask_blur=257), "mask_blur", "from 0 to 256"),
    ("img2img", _img2img(mask_blur_x=-1), "mask_blur_x", "from 0 to 256"),
    ("img2img", _img2img(mask=IMAGE, latent_mask=5), "latent_mask", "a base64-encoded image"),
    ("img2img", _img2img(inpainting_fill=7), "inpainting_fill", "from 0 to 3 (0 fill, 1 original"),
    ("img2img", _img2img(inpainting_mask_invert=2), "inpainting_mask_invert", "true or false"),
    ("img2img", _img2img(resize_mode=5), "resize_mode", "from 0 to 3"),
    ("img2img", _img2img(initial_noise_multiplier=3), "initial_noise_multiplier", "from 0 to 2"),
    ("img2img", _img2img(inpaint_full_res_padding=2000), "inpaint_full_res_padding", "from 0 to 1024"),
    ("img2img", _img2img(image_cfg_scale="x"), "image_cfg_scale", "from 0 to 30 or null"),
    ("hires", {}, "task", "valid: txt2img, img2img"),
    ("txt2img", ["prompt"], "payload", "must be a JSON object"),
    ("txt2img", {"override_settings": {"uni_pc_order": 0}}, "override_settings.uni_pc_order", "from 1 to 50"),
]

# What the diffusers engine cannot do, refused only strictly. (task, payload, field, words)
NOT_FOR_THIS_ENGINE = [
    ("img2img", _img2img(latent_mask=IMAGE), "latent_mask", "only together with a mask"),
    ("txt2img", {"sampler_name": "Nope"}, "sampler_name", "valid samplers: Euler a, Euler, LMS"),
    ("txt2img", {"sampler_index": "DDIM CFG"}, "sampler_index", "unknown sampler 'DDIM CFG'"),
    ("txt2img", {"scheduler": "Beta"}, "scheduler", "valid: Automatic, Uniform, Karras, Exponential"),
    ("txt2img", {"sampler_name": "DDIM", "scheduler": "Karras"}, "scheduler", "has no Karras schedule"),
    ("txt2img", {"sampler_name": "UniPC", "scheduler": "Exponential"}, "scheduler", "'UniPC' has no Exponential"),
    ("txt2img", {"sampler_name": "Euler", "eta": 0.3}, "eta", "sampler 'Euler' takes no eta; samplers with an eta: Euler a"),
    ("txt2img", {"unknown_field": 1}, "unknown_field", "unknown field for txt2img"),
    ("txt2img", {"init_images": [IMAGE]}, "init_images", "unknown field for txt2img"),
    ("img2img", _img2img(enable_hr=True), "enable_hr", "unknown field for img2img"),
    ("txt2img", {"restore_faces": True}, "restore_faces", "not supported by this engine (only False)"),
    ("txt2img", {"styles": ["my style"]}, "styles", "(only [])"),
    ("txt2img", {"script_name": "x/y/z plot"}, "script_name", "(only None)"),
    ("txt2img", {"s_min_uncond": 0.5}, "s_min_uncond", "not supported by this engine"),
    ("txt2img", {"override_settings": {"uni_pc_variant": "bh3"}}, "override_settings.uni_pc_variant", "'bh3' is not one of"),
    ("txt2img", {"override_settings": {"emphasis": "Loud"}}, "override_settings.emphasis", "'Loud' is not one of"),
    ("txt2img", {"override_settings": {"randn_source": "TPU"}}, "override_settings.randn_source", "'TPU' is not one of"),
    ("txt2img", {"hr_checkpoint_name": "other.safetensors"}, "hr_checkpoint_name", "not supported"),
    ("txt2img", _hires(hr_upscaler="R-ESRGAN 4x+"), "hr_upscaler", "the latent upscalers are: Latent, "),
    ("txt2img", _hires(hr_sampler_name="Nope"), "hr_sampler_name", "valid samplers"),
    ("txt2img", _hires(hr_sampler_name="DDIM", hr_scheduler="Karras"), "hr_scheduler", "'DDIM' has no Karras schedule"),
    ("txt2img", {"override_settings": {"sd_hypernetwork": "x"}}, "override_settings.sd_hypernetwork",
     "supported: CLIP_stop_at_last_layers, sd_vae, randn_source"),
    ("txt2img", {"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts.adetailer",
     "not available on the engine (only controlnet"),
    ("txt2img", _unit(guidance_start=0.9, guidance_end=0.5), "alwayson_scripts.controlnet.args[0].guidance_start",
     "must be below guidance_end"),
    ("txt2img", _unit(model="None"), "alwayson_scripts.controlnet.args[0].model", "needs a ControlNet model"),
    ("txt2img", _unit(foo=1), "alwayson_scripts.controlnet.args[0].foo", "known: enabled, module, model"),
    ("txt2img", _unit(resize_mode="Stretch"), "alwayson_scripts.controlnet.args[0].resize_mode",
     "is not one of Just Resize, Crop and Resize, Resize and Fill"),
    ("txt2img", _unit(control_mode="My prompt is more important"),
     "alwayson_scripts.controlnet.args[0].control_mode", 'only "Balanced"'),
    ("txt2img", _unit(loopback=True), "alwayson_scripts.controlnet.args[0].loopback", "not supported (only false)"),
    ("txt2img", _unit(image={"image": IMAGE, "mask": IMAGE}), "alwayson_scripts.controlnet.args[0].image",
     "a mask on a ControlNet image is not supported"),
    ("img2img", _img2img(resize_mode=3), "resize_mode", "valid: 0 (just resize), 1 (crop and resize)"),
]


def _refused(task: str, payload: Any, strict_fields: bool = True) -> PayloadError:
    with pytest.raises(PayloadError) as error:
        validate_payload(task, payload, LIMITS, strict_fields=strict_fields)
    return error.value


@pytest.mark.parametrize(("task", "payload", "field", "words"), MALFORMED + NOT_FOR_THIS_ENGINE)
def test_a_bad_field_is_named_with_what_is_allowed(task: str, payload: Any, field: str, words: str) -> None:
    error = _refused(task, payload)
    assert error.field == field
    assert str(error).startswith(f"{field}: ") and words in str(error), str(error)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(("task", "payload", "field", "words"), MALFORMED)
def test_malformed_payloads_are_refused_for_any_engine(task: str, payload: Any, field: str, words: str) -> None:
    assert _refused(task, payload, strict_fields=False).field == field


@pytest.mark.parametrize(("task", "payload", "field", "words"), NOT_FOR_THIS_ENGINE)
def test_what_a_webui_can_do_passes_when_not_strict(task: str, payload: Any, field: str, words: str) -> None:
    validate_payload(task, payload, LIMITS, strict_fields=False)


SEED_API_EXAMPLE = {"task_type": "txt2img", "models": {"Stable-diffusion": ["v1-5-pruned-emaonly.safetensors"]},
                    "sagemaker_endpoint_name": "infer-endpoint-cb821ea", "prompt": "a cute panda",
                    "denoising_strength": 0.75}
FULL_TXT2IMG = {
    "prompt": "a lighthouse <lora:tiny-lora:0.8>", "negative_prompt": "blurry", "styles": [], "seed": 4294967295,
    "subseed": -1, "subseed_strength": 0.2, "seed_resize_from_h": -1, "seed_resize_from_w": 0,
    "sampler_name": "DPM++ 2M", "sampler_index": "Euler a", "scheduler": "karras", "batch_size": 2, "n_iter": 3,
    "steps": 30, "cfg_scale": 6.5, "width": 500, "height": 768.0, "restore_faces": False, "tiling": False,
    "do_not_save_samples": True, "do_not_save_grid": True, "eta": None, "denoising_strength": 0.55,
    "s_min_uncond": 0, "s_churn": 0, "s_tmax": float("inf"), "s_tmin": 0, "s_noise": 1,
    "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "vae-ft-mse.safetensors",
                          "sd_model_checkpoint": "x.safetensors"},
    "override_settings_restore_afterwards": True, "refiner_checkpoint": "None", "refiner_switch_at": 0.8,
    "disable_extra_networks": False, "firstpass_image": None, "comments": {}, "enable_hr": True,
    "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2, "hr_upscaler": "Latent (bicubic antialiased)",
    "hr_second_pass_steps": 10, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": "Use same checkpoint",
    "hr_sampler_name": "Use same sampler", "hr_scheduler": "Use same scheduler", "hr_prompt": "",
    "hr_negative_prompt": "", "force_task_id": None, "script_name": "", "script_args": [], "send_images": True,
    "save_images": False, "alwayson_scripts": {"Never OOM Integrated": {"args": [False, False]}, "extra options": {}},
    "infotext": None, "distilled_cfg_scale": 3.5, "task_type": "txt2img", "models": None,
    "sagemaker_endpoint_name": None,
}
IMG2IMG_WITH_MASK = {
    "prompt": "a red door", "init_images": [DATA_URL, IMAGE], "batch_size": 2, "mask": IMAGE, "mask_blur": 4,
    "mask_round": False, "inpainting_fill": 1, "inpaint_full_res": 0, "inpaint_full_res_padding": 32,
    "inpainting_mask_invert": 1, "resize_mode": 2, "denoising_strength": 0.6, "initial_noise_multiplier": 1.0,
    "image_cfg_scale": 1.5, "include_init_images": False, "latent_mask": None, "sampler_name": "DDIM", "eta": 0.3,
}
CONTROLNET_UNITS = {"alwayson_scripts": {"ControlNet": {"args": [
    {**UNIT, "weight": 0.8, "guidance_start": 0.1, "guidance_end": 0.9, "resize_mode": 1, "control_mode": 0,
     "processor_res": -1, "threshold_a": -1, "threshold_b": 200, "pixel_perfect": True, "low_vram": False},
    {"enabled": True, "module": "canny", "model": "m", "image": {"image": IMAGE, "mask": None},
     "resize_mode": "Just Resize", "control_mode": "Balanced", "is_ui": True, "input_mode": "simple"},
    {"enabled": False, "module": "openpose", "weight": "anything: a disabled unit is not read"},
]}}}


@pytest.mark.parametrize(("task", "payload"), [
    ("txt2img", SEED_API_EXAMPLE),
    ("txt2img", {}),
    ("txt2img", TXT2IMG_DEFAULTS),
    ("img2img", {**IMG2IMG_DEFAULTS, "init_images": [IMAGE]}),
    ("txt2img", FULL_TXT2IMG),
    ("txt2img", {**FULL_TXT2IMG, "hr_resize_x": 1024, "hr_resize_y": 1024, "hr_scale": 1}),
    ("txt2img", {"enable_hr": False, "hr_upscaler": "R-ESRGAN 4x+", "hr_sampler_name": "Restart",
                 "hr_scale": "x", "hr_resize_x": 10**6, "hr_prompt": 5}),  # hires fields are read only with enable_hr
    ("img2img", IMG2IMG_WITH_MASK),
    ("txt2img", CONTROLNET_UNITS),
    ("img2img", _img2img(alwayson_scripts={"controlnet": {"args": [{"module": "none", "model": "m"}]}})),
    ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "tiny-vae.safetensors"}}),
    ("txt2img", {"override_settings": None, "alwayson_scripts": None, "styles": None, "prompt": None}),
    ("txt2img", {"width": 2048, "height": 64, "steps": 150, "batch_size": 8, "n_iter": 100, "seed": -1,
                 "prompt": "a" * 8000, "cfg_scale": 0, "sampler_name": "DPM++ SDE Karras", "scheduler": "Automatic"}),
])
def test_good_payloads_pass(task: str, payload: dict[str, Any]) -> None:
    validate_payload(task, payload, LIMITS)
    validate_payload(task, payload, LIMITS, strict_fields=False)


def test_a_webui_payload_passes_when_not_strict() -> None:
    webui = {**FULL_TXT2IMG, "sampler_name": "Restart", "scheduler": "Align Your Steps", "restore_faces": True,
             "hr_upscaler": "4x-UltraSharp", "styles": ["cinematic"], "new_webui_field": {"anything": 1},
             "override_settings": {"sd_hypernetwork": "h", "CLIP_stop_at_last_layers": 1},
             "alwayson_scripts": {"ADetailer": {"args": [True, {"ad_model": "face_yolov8n.pt"}]},
                                  "controlnet": {"args": [{**UNIT, "union_control_type": "Canny",
                                                           "control_mode": "ControlNet is more important"}]}}}
    validate_payload("txt2img", webui, LIMITS, strict_fields=False)
    assert _refused("txt2img", webui).field == "new_webui_field"


def test_limits_come_from_the_worker_settings() -> None:
    settings = WorkerSettings(max_width=1024, max_height=768, max_steps=40, max_batch_size=2, max_n_iter=3,
                              max_prompt_chars=10)
    limits = PayloadLimits.from_settings(settings)
    assert limits == PayloadLimits(1024, 768, 40, 2, 3, 10)
    for field, value in (("width", 1032), ("height", 776), ("steps", 41), ("batch_size", 3), ("n_iter", 4),
                         ("prompt", "a" * 11)):
        with pytest.raises(PayloadError) as error:
            validate_payload("txt2img", {field: value}, limits)
        assert error.value.field == field
    with pytest.raises(PayloadError, match="exceeds the limit 1024x768"):
        validate_payload("txt2img", {"enable_hr": True, "width": 512, "height": 512}, limits)


def test_the_first_problem_is_reported() -> None:
    assert _refused("txt2img", {"zzz": 1, "aaa": 2, "steps": 0}).field == "aaa"  # unknown fields first, sorted
    assert _refused("txt2img", {"steps": 0, "width": 0}).field == "steps"  # then the payload's order


def test_every_field_has_its_rules() -> None:
    fields = set(TXT2IMG_DEFAULTS) | set(IMG2IMG_DEFAULTS)
    assert set(FIELD_RULES) | set(ROUTING_FIELDS) == fields and not set(FIELD_RULES) & set(ROUTING_FIELDS)
    assert tuple(OVERRIDE_SETTINGS_RULES) == OVERRIDE_SETTINGS_HONOURED + OVERRIDE_SETTINGS_NO_OP
    assert set(CONTROLNET_NO_OP_KEYS) < set(CONTROLNET_UNIT_RULES)


def test_an_error_pickles_with_its_field() -> None:
    error = pickle.loads(pickle.dumps(_refused("txt2img", {"steps": 0})))
    assert (error.field, error.problem, str(error)) == ("steps", "must be a whole number from 1 to 150, got 0",
                                                        "steps: must be a whole number from 1 to 150, got 0")


def test_importing_the_validator_imports_no_heavy_package() -> None:
    code = ("import sys, aws_extension.payload as p; print(p.__file__); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'PIL', 'pydantic', 'diffusers', "
            "'numpy', 'fastapi'}))")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60,
                            check=True)
    module_file, heavy = result.stdout.splitlines()
    assert Path(module_file).resolve() == root / "aws_extension" / "payload.py"
    assert heavy == "[]"
