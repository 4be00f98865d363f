"""Payload validation, A1111 seeds and noise, sampler names (no model needed)."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image

from aws_extension.engine.base import EngineError
from aws_extension.engine.k_pass import SAMPLER_FUNCTIONS
from aws_extension.engine.noise import ImageNoise, slerp
from aws_extension.engine.params import normalise_payload
from aws_extension.engine.preprocessors import Preprocessor
from aws_extension.engine.samplers import SAMPLERS, resolve_sampler, sampler_names
from aws_extension.settings import WorkerSettings

SETTINGS = WorkerSettings()


def _png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 40, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_defaults_are_the_seed_api_defaults() -> None:
    params = normalise_payload("txt2img", {"prompt": "a cat"}, SETTINGS)
    assert (params.steps, params.cfg_scale, params.width, params.height) == (28, 7.0, 512, 512)
    assert params.sampler == "Euler a" and params.batch_size == 1 and params.n_iter == 1
    assert 0 <= params.seed < 4294967294 and params.hires is None and params.clip_skip == 1


def test_seeds_follow_a1111() -> None:
    params = normalise_payload("txt2img", {"seed": 10, "subseed": 3, "batch_size": 2, "n_iter": 2}, SETTINGS)
    assert params.all_seeds == [10, 11, 12, 13]
    varied = normalise_payload("txt2img", {"seed": 10, "subseed": 3, "subseed_strength": 0.5, "batch_size": 3}, SETTINGS)
    assert varied.all_seeds == [10, 10, 10] and varied.all_subseeds == [3, 4, 5]


def test_width_and_height_round_down_to_multiples_of_8() -> None:
    params = normalise_payload("txt2img", {"width": 100, "height": 71}, SETTINGS)
    assert (params.width, params.height) == (96, 64)


@pytest.mark.parametrize(
    ("task", "payload", "field"),
    [
        ("txt2img", {"sampler_name": "Nope"}, "sampler_name"),
        ("txt2img", {"width": 0}, "width"),
        ("txt2img", {"width": 100000}, "width"),
        ("txt2img", {"height": 100000}, "height"),
        ("txt2img", {"steps": 0}, "steps"),
        ("txt2img", {"steps": 151}, "steps"),
        ("txt2img", {"batch_size": 0}, "batch_size"),
        ("txt2img", {"n_iter": 0}, "n_iter"),
        ("txt2img", {"prompt": "a" * 10_000}, "prompt"),
        ("txt2img", {"negative_prompt": 5}, "negative_prompt"),
        ("txt2img", {"cfg_scale": "high"}, "cfg_scale"),
        ("txt2img", {"restore_faces": True}, "restore_faces"),
        ("txt2img", {"styles": ["my style"]}, "styles"),
        ("txt2img", {"script_name": "x/y/z plot"}, "script_name"),
        ("txt2img", {"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),
        ("txt2img", {"enable_hr": True, "hr_scale": 100}, "hr_scale"),
        ("txt2img", {"s_min_uncond": 0.5}, "s_min_uncond"),
        ("txt2img", {"sampler_name": "Euler", "eta": 0.3}, "eta"),
        ("txt2img", {"sampler_name": "DDIM", "scheduler": "Exponential"}, "scheduler"),
        ("txt2img", {"unknown_field": 1}, "unknown_field"),
        ("txt2img", {"init_images": [_png(8, 8)]}, "init_images"),
        ("txt2img", {"override_settings": {"sd_hypernetwork": "x"}}, "override_settings.sd_hypernetwork"),
        ("txt2img", {"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts.adetailer"),
        ("txt2img", {"alwayson_scripts": {"controlnet": {"args": [
            {"module": "depth_midas", "model": "m", "image": _png(8, 8)}]}}}, "alwayson_scripts.controlnet.args[0].module"),
        ("txt2img", {"alwayson_scripts": {"controlnet": {"args": [{"module": "canny", "model": "m", "image": _png(8, 8),
                                                                   "threshold_a": 0}]}}},
         "alwayson_scripts.controlnet.args[0].threshold_a"),
        ("txt2img", {"alwayson_scripts": {"controlnet": {"args": [{"module": "canny", "model": "m", "image": _png(8, 8),
                                                                   "processor_res": 32}]}}},
         "alwayson_scripts.controlnet.args[0].processor_res"),
        ("txt2img", {"alwayson_scripts": {"controlnet": {"args": [
            {"module": "none", "model": "m", "image": "@@@"}]}}}, "alwayson_scripts.controlnet.args[0].image"),
        ("img2img", {}, "init_images"),
        ("img2img", {"init_images": ["not base64!"]}, "init_images[0]"),
        ("img2img", {"init_images": [base64.b64encode(b"not an image").decode()]}, "init_images[0]"),
        ("img2img", {"init_images": [_png(64, 64)], "mask": _png(32, 64)}, "mask"),
        ("img2img", {"init_images": [_png(64, 64)], "denoising_strength": 2}, "denoising_strength"),
        ("img2img", {"init_images": [_png(64, 64)], "inpainting_fill": 7}, "inpainting_fill"),
        ("img2img", {"init_images": [_png(64, 64)], "resize_mode": 3}, "resize_mode"),
        ("img2img", {"init_images": [_png(64, 64)], "enable_hr": True}, "enable_hr"),
    ],
)
def test_bad_input_names_the_field(task: str, payload: dict, field: str) -> None:
    with pytest.raises(EngineError) as error:
        normalise_payload(task, payload, SETTINGS)
    assert error.value.field == field
    assert str(error.value).startswith(field)


def test_no_op_and_neutral_fields_are_accepted() -> None:
    payload = {
        "styles": [], "restore_faces": False, "send_images": True, "save_images": False, "do_not_save_samples": True,
        "do_not_save_grid": True, "override_settings_restore_afterwards": True, "script_args": [],
        "sampler_index": "Euler a", "script_name": None, "s_tmax": 1.0, "s_tmin": 0.0, "s_noise": 1.0,
        "firstphase_width": 0, "firstphase_height": 0, "alwayson_scripts": {"extra options": {"args": []}, "Never OOM Integrated": {"args": [False, False]}},
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_vae": "tiny-vae.safetensors"},
        "task_type": "txt2img", "models": {"Stable-diffusion": ["x.safetensors"]}, "sagemaker_endpoint_name": "e",
    }
    params = normalise_payload("txt2img", payload, SETTINGS)
    assert params.clip_skip == 2 and params.sd_vae == "tiny-vae.safetensors"


def test_hires_target_size_follows_a1111() -> None:
    base = {"width": 64, "height": 96, "enable_hr": True}
    scaled = normalise_payload("txt2img", {**base, "hr_scale": 1.5}, SETTINGS).hires
    assert scaled and (scaled.width, scaled.height) == (96, 144) and scaled.denoising_strength == 0.7
    by_x = normalise_payload("txt2img", {**base, "hr_resize_x": 128}, SETTINGS).hires
    assert by_x and (by_x.width, by_x.height) == (128, 192)
    cropped = normalise_payload("txt2img", {**base, "hr_resize_x": 128, "hr_resize_y": 128}, SETTINGS).hires
    assert cropped and (cropped.target_width, cropped.target_height) == (128, 192)
    assert (cropped.width, cropped.height) == (128, 128)


def test_controlnet_unit_is_parsed() -> None:
    unit = {"enabled": True, "module": "none", "model": "tiny-controlnet [abc123]", "weight": 0.5,
            "image": _png(64, 64), "guidance_start": 0.1, "guidance_end": 0.8, "resize_mode": "Just Resize",
            "low_vram": False, "processor_res": 512, "pixel_perfect": False, "is_ui": True}
    disabled = {"enabled": False, "module": "canny"}
    params = normalise_payload("txt2img", {"alwayson_scripts": {"controlnet": {"args": [disabled, unit]}}}, SETTINGS)
    (parsed,) = params.controlnet
    assert (parsed.index, parsed.weight, parsed.guidance_start, parsed.guidance_end) == (1, 0.5, 0.1, 0.8)
    assert parsed.image.size == (64, 64)
    assert parsed.preprocessor == Preprocessor("none")  # processor_res means nothing without a preprocessor


def test_controlnet_preprocessor_settings_and_defaults() -> None:
    def preprocessor(**fields) -> Preprocessor:
        unit = {"model": "m", "image": _png(64, 64), **fields}
        return normalise_payload("txt2img", {"alwayson_scripts": {"controlnet": {"args": [unit]}}}, SETTINGS
                                 ).controlnet[0].preprocessor

    # the API's -1 and absent fields are the module's defaults (canny: 512, 100, 200)
    assert preprocessor(module="canny", processor_res=-1, threshold_a=-1) == Preprocessor("canny", 512, 100, 200)
    assert preprocessor(module="canny", processor_res=256, threshold_a=50, threshold_b=150, pixel_perfect=True) == \
        Preprocessor("canny", 256, 50, 150, pixel_perfect=True)
    assert preprocessor(module="invert (from white bg & black line)", threshold_a=50) == Preprocessor("invert")
    with pytest.raises(EngineError, match="'openpose' is not available; use one of none, canny, invert"):
        preprocessor(module="openpose")


def initial_noise(shape: tuple[int, int, int], seeds: list[int], subseeds: list[int], strength: float,
                  **resize: int) -> torch.Tensor:
    return ImageNoise(shape, seeds, subseeds, strength, **resize).first()


def test_noise_is_seeded_and_variation_seeds_interpolate() -> None:
    shape = (4, 8, 8)
    first = initial_noise(shape, [1, 2], [0, 0], 0.0)
    assert first.shape == (2, 4, 8, 8)
    assert torch.equal(first[0], torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(initial_noise(shape, [2], [0], 0.0)[0], first[1])
    varied = initial_noise(shape, [1], [5], 0.3)[0]
    assert not torch.equal(varied, first[0])
    fully = initial_noise(shape, [1], [5], 1.0)[0]
    assert torch.allclose(fully, torch.randn(shape, generator=torch.Generator().manual_seed(5)), atol=1e-5)
    a, b = torch.ones(4, 2, 2), torch.ones(4, 2, 2)
    assert torch.equal(slerp(0.5, a, b), a)


def test_seed_resize_keeps_the_centre_of_the_other_size() -> None:
    noise = initial_noise((4, 8, 8), [7], [0], 0.0, seed_resize_from_w=32, seed_resize_from_h=32)[0]
    small = torch.randn((4, 4, 4), generator=torch.Generator().manual_seed(7))
    assert torch.equal(noise[:, 2:6, 2:6], small)


def test_every_sampler_runs_in_the_engines_loop_and_unknown_names_list_the_valid_ones() -> None:
    from aws_extension.engine.timestep_samplers import SAMPLER_FUNCTIONS as TIMESTEP_FUNCTIONS

    for name in sampler_names():
        spec = resolve_sampler(name)
        assert spec.k_function in SAMPLER_FUNCTIONS or spec.k_function in TIMESTEP_FUNCTIONS
    assert resolve_sampler("Euler", "Karras").sigmas == "karras"
    assert resolve_sampler("DPM++ 2M SDE").sigmas == "exponential"
    assert resolve_sampler("Euler a").sigmas is None  # Automatic: uniform timesteps
    with pytest.raises(EngineError, match="valid samplers: Euler a, Euler, LMS"):
        resolve_sampler("Euler b")


def test_controlnet_unit_without_image_uses_the_init_image_in_img2img() -> None:
    unit = {"module": "none", "model": "tiny-controlnet"}
    params = normalise_payload("img2img", {"init_images": [_png(48, 40)],
                                           "alwayson_scripts": {"controlnet": {"args": [unit]}}}, SETTINGS)
    assert params.controlnet[0].image.size == (48, 40)
    with pytest.raises(EngineError) as error:
        normalise_payload("txt2img", {"alwayson_scripts": {"controlnet": {"args": [unit]}}}, SETTINGS)
    assert error.value.field == "alwayson_scripts.controlnet.args[0].image"


def test_schedule_names_are_case_insensitive() -> None:
    assert normalise_payload("txt2img", {"sampler_name": "Euler", "scheduler": "karras"}, SETTINGS).sampler_spec.sigmas == "karras"


def test_automatic_schedule_is_a1111_1_10s_default() -> None:
    assert resolve_sampler("DPM++ 2M").sigmas == "karras" and resolve_sampler("DPM++ SDE").sigmas == "karras"
    assert resolve_sampler("DPM++ 2M SDE").sigmas == "exponential" and resolve_sampler("Euler").sigmas is None
    assert resolve_sampler("Euler", "Exponential").sigmas == "exponential"
    with pytest.raises(EngineError) as error:
        resolve_sampler("DDIM", "Karras")
    assert error.value.field == "scheduler"


def test_every_known_field_is_classified_once() -> None:
    from aws_extension.payload import (
        DEPENDENT_NO_OP_FIELDS,
        HONOURED_FIELDS,
        IMG2IMG_DEFAULTS,
        NEUTRAL_ONLY_FIELDS,
        NO_OP_FIELDS,
        TXT2IMG_DEFAULTS,
    )

    classified = [*HONOURED_FIELDS, *NO_OP_FIELDS, *NEUTRAL_ONLY_FIELDS, *DEPENDENT_NO_OP_FIELDS]
    assert len(classified) == len(set(classified))
    assert set(classified) == set(TXT2IMG_DEFAULTS) | set(IMG2IMG_DEFAULTS)


def test_seed_range() -> None:
    assert normalise_payload("txt2img", {"seed": 2**32 - 1}, SETTINGS).seed == 2**32 - 1
    for bad in (2**32, -2, 1.5):
        with pytest.raises(EngineError) as error:
            normalise_payload("txt2img", {"seed": bad}, SETTINGS)
        assert error.value.field == "seed"


def test_the_torch_free_names_are_the_engines() -> None:
    from aws_extension.engine.params import LATENT_UPSCALE_MODES
    from aws_extension.engine.samplers import SCHEDULES
    from aws_extension.payload import FIXED_SCHEDULE_SAMPLERS, HIRES_UPSCALERS, SAMPLER_NAMES, SCHEDULER_NAMES

    assert tuple(SAMPLERS) == SAMPLER_NAMES and sampler_names() == list(SAMPLER_NAMES)
    assert tuple(SCHEDULES) == SCHEDULER_NAMES
    assert tuple(LATENT_UPSCALE_MODES) == HIRES_UPSCALERS
    assert tuple(name for name, spec in SAMPLERS.items() if not spec.schedule_choice) == FIXED_SCHEDULE_SAMPLERS


def test_payload_errors_become_engine_errors_with_the_same_field_and_words() -> None:
    with pytest.raises(EngineError) as error:
        normalise_payload("txt2img", {"steps": 0}, SETTINGS)
    assert (error.value.field, str(error.value)) == ("steps", "steps: must be a whole number from 1 to 150, got 0")
    limited = WorkerSettings(max_steps=20)
    with pytest.raises(EngineError, match="from 1 to 20"):
        normalise_payload("txt2img", {"steps": 21}, limited)


def test_numbers_may_be_integral_floats_and_flags_zero_or_one() -> None:
    params = normalise_payload("txt2img", {"steps": 20.0, "width": 128.0, "batch_size": 2.0, "tiling": 0}, SETTINGS)
    assert (params.steps, params.width, params.batch_size, params.tiling) == (20, 128, 2, False)
    assert type(params.steps) is int and type(params.width) is int


def test_img2img_inputs_are_normalised() -> None:
    params = normalise_payload("img2img", {"init_images": [_png(64, 64), _png(64, 64)], "batch_size": 4,
                                           "mask": _png(64, 64), "mask_blur": 3, "inpainting_fill": 1,
                                           "initial_noise_multiplier": 1.5}, SETTINGS)
    inputs = params.img2img
    assert inputs and inputs.mask is not None and (inputs.mask_blur_x, inputs.mask_blur_y) == (3, 3)
    assert (inputs.inpainting_fill, inputs.initial_noise_multiplier, params.batch_size) == (1, 1.5, 2)
    assert params.denoising_strength == 0.75 and params.parameters["denoising_strength"] == 0.75
    with pytest.raises(EngineError) as error:
        normalise_payload("img2img", {"init_images": [_png(64, 64)] * 2}, SETTINGS)
    assert error.value.field == "init_images"
