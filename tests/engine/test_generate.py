"""DiffusersEngine on the tiny model: every honoured field changes the result as it should, refused fields
and bad input give an EngineError naming the field, and the engine keeps working afterwards."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aws_extension.engine.base import EngineError, Interrupted, ModelSet, Progress
from aws_extension.engine.diffusers_engine import DiffusersEngine
from aws_extension.engine.infotext import parse_infotext, read_png_infotext
from aws_extension.engine.samplers import sampler_names

BASE = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "seed": 42, "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def engine() -> DiffusersEngine:
    return DiffusersEngine()


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path) -> ModelSet:
    files = {
        folder: {path.name: path for path in (tiny_models_dir / folder).iterdir()}
        for folder in ("Lora", "embeddings", "VAE", "ControlNet")
    }
    return ModelSet(checkpoint=tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors", files=files)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _gradient(width: int = 64, height: int = 64) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)),
                                     np.full((height, width), 128, np.uint8)], axis=-1))


def _run(engine: DiffusersEngine, models: ModelSet, task: str = "txt2img", **fields):
    return engine.generate(task, {**BASE, **fields}, models)


def test_same_seed_same_image_other_seed_other_image(engine, models) -> None:
    first = _run(engine, models)
    again = _run(engine, models)
    other = _run(engine, models, seed=43)
    assert first.images[0] == again.images[0]
    assert first.images[0] != other.images[0]
    assert Image.open(io.BytesIO(first.images[0])).size == (64, 64)


def test_random_seed_is_reported(engine, models) -> None:
    result = _run(engine, models, seed=-1)
    assert 0 <= result.info["seed"] < 4294967294 and result.info["all_seeds"] == [result.info["seed"]]
    assert result.parameters["seed"] == result.info["seed"]
    assert f"Seed: {result.info['seed']}," in result.info["infotexts"][0]


# Samplers that draw noise while sampling: the seed must make them reproducible too.
STOCHASTIC_SAMPLERS = ("Euler a", "DPM2 a", "DPM++ 2M SDE", "DPM++ SDE Karras")


@pytest.mark.parametrize("sampler", sampler_names())
def test_every_sampler_runs(engine, models, sampler: str) -> None:
    steps = 3 if sampler == "UniPC" else 2  # UniPC's default order, 3, needs 3 steps (A1111 fails with fewer)
    first = _run(engine, models, sampler_name=sampler, steps=steps)
    assert f"Sampler: {sampler.removesuffix(' Karras')}, Schedule type: " in first.info["infotexts"][0]
    if sampler in STOCHASTIC_SAMPLERS:
        assert first.images[0] == _run(engine, models, sampler_name=sampler, steps=steps).images[0]


def test_unipc_with_fewer_steps_than_its_order_is_refused_before_sampling(engine, models) -> None:
    with pytest.raises(EngineError, match="uni_pc_order: UniPC order \\(3\\) must be < sampling steps \\(2 in"):
        _run(engine, models, sampler_name="UniPC", steps=2)
    _run(engine, models, sampler_name="UniPC", steps=2, override_settings={"uni_pc_order": 2})
    with pytest.raises(EngineError, match="\\(1 in this pass\\)"):  # img2img: int(0.3 × 5) = 1 step
        _run(engine, models, task="img2img", sampler_name="UniPC", steps=5, denoising_strength=0.3,
             init_images=[_b64_png(_gradient())])


def test_sampling_settings_change_the_image_and_are_in_the_infotext(engine, models) -> None:
    def run(sampler: str = "Euler a", **overrides) -> tuple[bytes, dict[str, str]]:
        result = _run(engine, models, sampler_name=sampler, steps=3, override_settings=overrides)
        return _pixels(result.images[0]).tobytes(), parse_infotext(result.info["infotexts"][0])

    plain, plain_info = run()
    assert (plain_info["Sampler"], plain_info["Schedule type"], plain_info["RNG"]) == ("Euler a", "Automatic", "CPU")
    assert "ENSD" not in plain_info and "Eta" not in plain_info
    nv, nv_info = run(randn_source="NV", eta_noise_seed_delta=31337, eta_ancestral=0.5)
    assert nv != plain and (nv_info["RNG"], nv_info["ENSD"], nv_info["Eta"]) == ("NV", "31337", "0.5")
    gpu, gpu_info = run(randn_source="GPU")  # on a CPU worker: NV, what an NVIDIA GPU draws
    assert gpu == run(randn_source="NV")[0] and "RNG" not in gpu_info
    assert run(eta_noise_seed_delta=31337)[0] != plain  # ENSD reseeds the ancestral noise
    assert run("Euler", eta_noise_seed_delta=31337)[0] == run("Euler")[0]  # and changes nothing without it
    karras, karras_info = run("DPM++ 2M Karras", rho=5.5, sigma_max=10.5)
    assert (karras_info["Sampler"], karras_info["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert (karras_info["Schedule rho"], karras_info["Schedule max sigma"]) == ("5.5", "10.5")
    assert karras != run("DPM++ 2M")[0]
    churned, churned_info = run("Euler", s_churn=0.5)
    assert churned != run("Euler")[0] and churned_info["Sigma churn"] == "0.5"
    assert run("Euler", always_discard_next_to_last_sigma=True)[1]["Discard penultimate sigma"] == "True"
    assert run("Euler", k_sched_type="Karras")[1]["Schedule type"] == "Karras"


def test_restart_and_every_schedule_run(engine, models) -> None:
    images = {_run(engine, models, sampler_name="Restart", steps=20, scheduler=schedule).images[0]
              for schedule in ("Automatic", "Exponential")}
    assert len(images) == 2
    for schedule in ("Uniform", "Polyexponential", "SGM Uniform", "KL Optimal", "Simple", "Normal", "DDIM"):
        info = parse_infotext(_run(engine, models, sampler_name="Euler", scheduler=schedule).info["infotexts"][0])
        assert info["Schedule type"] == schedule


def test_prompt_editing_and_alternation(engine, models) -> None:
    cat, dog = "a photo of a cat", "a photo of a dog"

    def pixels(prompt: str, negative_prompt: str = BASE["negative_prompt"]) -> bytes:
        # LMS: its last step mixes in the first step's derivative, so the first step's prompt shows (the
        # tiny model's prompts barely move the latents, and most samplers end on the last denoised latents)
        return _pixels(_run(engine, models, prompt=prompt, negative_prompt=negative_prompt,
                            sampler_name="LMS", steps=3).images[0]).tobytes()

    plain_cat, plain_dog = pixels(cat), pixels(dog)
    assert pixels(f"[{cat}:{dog}:0]") == plain_dog
    # A1111 picks the prompt with its count of model calls (0 first) and `count <= 1`: cat for calls 0 and 1
    switched = pixels(f"[{cat}:{dog}:1]")
    assert switched not in (plain_cat, plain_dog)
    assert pixels(f"[{cat}:{dog}:2]") == plain_cat  # calls 0, 1, 2 are all <= 2: A1111 never switches
    assert pixels(f"[{cat}|{dog}]") == switched  # [(1, cat), (2, dog), (3, cat)] read at 0, 1, 2: cat, cat, dog
    assert pixels(cat, "[blurry:ugly:1]") not in (plain_cat, pixels(cat, "ugly"))


def test_variation_seed(engine, models) -> None:
    plain = _run(engine, models, subseed=7)
    varied = _run(engine, models, subseed=7, subseed_strength=0.5)
    assert plain.images[0] != varied.images[0]
    assert varied.images[0] == _run(engine, models, subseed=7, subseed_strength=0.5).images[0]
    assert varied.info["subseed"] == 7 and varied.info["subseed_strength"] == 0.5
    parsed = parse_infotext(varied.info["infotexts"][0])
    assert (parsed["Variation seed"], parsed["Variation seed strength"]) == ("7", "0.5")


def test_batch_size_and_n_iter(engine, models) -> None:
    result = _run(engine, models, batch_size=2, n_iter=2)
    assert len(result.images) == 4 and result.info["all_seeds"] == [42, 43, 44, 45]
    assert len(result.info["infotexts"]) == 4 and "Seed: 45," in result.info["infotexts"][3]
    # Each image depends only on its own seed: image 2 of the job equals a single image with seed 43.
    assert np.abs(_pixels(result.images[1]) - _pixels(_run(engine, models, seed=43).images[0])).max() <= 1


def test_lora_weight_zero_is_no_lora_and_weight_one_changes_the_image(engine, models) -> None:
    plain = _run(engine, models)
    zero = _run(engine, models, prompt=BASE["prompt"] + " <lora:tiny-lora:0>")
    one = _run(engine, models, prompt=BASE["prompt"] + " <lora:tiny-lora:1>")
    assert np.array_equal(_pixels(zero.images[0]), _pixels(plain.images[0]))
    assert one.images[0] != plain.images[0]
    assert "Lora hashes: " in one.info["infotexts"][0] and "<lora:tiny-lora:1>" in one.info["prompt"]
    assert _run(engine, models).images[0] == plain.images[0]  # the LoRA was removed after the job


def test_embedding_is_used_by_name(engine, models) -> None:
    prompt = "a photo of tiny-emb"
    with_embedding = _run(engine, models, prompt=prompt)
    without = engine.generate("txt2img", {**BASE, "prompt": prompt}, ModelSet(models.checkpoint, {}))
    assert with_embedding.images[0] != without.images[0]
    assert "TI hashes: " in with_embedding.info["infotexts"][0]
    assert engine.generate("txt2img", {**BASE, "prompt": prompt}, ModelSet(models.checkpoint, {})).images[0] == without.images[0]


def test_vae_override_and_clip_skip_and_tiling(engine, models) -> None:
    plain = _run(engine, models)
    vae = _run(engine, models, override_settings={"sd_vae": "tiny-vae.safetensors"})
    assert vae.images[0] != plain.images[0] and "VAE: tiny-vae" in vae.info["infotexts"][0]
    assert _run(engine, models, override_settings={"sd_vae": "tiny-vae"}).images[0] == vae.images[0]
    skipped = _run(engine, models, override_settings={"CLIP_stop_at_last_layers": 2})
    assert skipped.images[0] != plain.images[0] and "Clip skip: 2" in skipped.info["infotexts"][0]
    tiled = _run(engine, models, tiling=True)
    assert tiled.images[0] != plain.images[0]
    assert _run(engine, models).images[0] == plain.images[0]  # tiling was undone


def test_controlnet_unit(engine, models) -> None:
    plain = _run(engine, models)

    def with_unit(**unit_fields):
        unit = {"enabled": True, "module": "none", "model": "tiny-controlnet [0123abcd]", "weight": 1.0,
                "image": _b64_png(_gradient(32, 48)), "resize_mode": "Crop and Resize", **unit_fields}
        return _run(engine, models, alwayson_scripts={"controlnet": {"args": [unit]}})

    full = with_unit()
    assert full.images[0] != plain.images[0] and "ControlNet 0: " in full.info["infotexts"][0]
    assert np.array_equal(_pixels(with_unit(weight=0.0).images[0]), _pixels(plain.images[0]))
    assert with_unit(guidance_start=0.5).images[0] not in (full.images[0], plain.images[0])
    with pytest.raises(EngineError) as error:
        with_unit(model="missing-controlnet")
    assert error.value.field == "alwayson_scripts.controlnet.args[0].model"


def test_hires_fix(engine, models) -> None:
    result = _run(engine, models, enable_hr=True, hr_scale=2, hr_upscaler="Latent (bicubic)",
                  hr_second_pass_steps=2, denoising_strength=0.5, hr_prompt="a photo of a dog")
    assert Image.open(io.BytesIO(result.images[0])).size == (128, 128)
    parsed = parse_infotext(read_png_infotext(result.images[0]) or "")
    assert (parsed["Size-1"], parsed["Hires upscale"], parsed["Hires upscaler"]) == ("64", "2.0", "Latent (bicubic)")
    assert parsed["Hires prompt"] == "a photo of a dog" and parsed["Denoising strength"] == "0.5"
    resized = _run(engine, models, enable_hr=True, hr_resize_x=96, hr_resize_y=80)
    assert Image.open(io.BytesIO(resized.images[0])).size == (96, 80)


def test_img2img(engine, models) -> None:
    init = _b64_png(_gradient(80, 80))
    low = _run(engine, models, "img2img", init_images=[init], denoising_strength=0.3)
    high = _run(engine, models, "img2img", init_images=[init], denoising_strength=0.9)
    assert Image.open(io.BytesIO(low.images[0])).size == (64, 64)
    assert low.images[0] != high.images[0]
    assert low.images[0] == _run(engine, models, "img2img", init_images=[init], denoising_strength=0.3).images[0]
    assert "Denoising strength: 0.3" in low.info["infotexts"][0] and low.parameters["init_images"] is None


def test_inpaint_keeps_the_unmasked_area(engine, models) -> None:
    original = _gradient()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    fields = {"init_images": [_b64_png(original)], "mask": _b64_png(mask), "mask_blur": 0, "denoising_strength": 0.75}
    whole = _run(engine, models, "img2img", inpaint_full_res=False, inpainting_fill=1, **fields)
    pixels, reference = _pixels(whole.images[0]), np.asarray(original, dtype=np.int16)
    assert np.array_equal(pixels[:16], reference[:16]) and np.array_equal(pixels[48:], reference[48:])
    assert np.abs(pixels[20:44, 20:44] - reference[20:44, 20:44]).mean() > 5
    alpha_mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    alpha_mask.paste((0, 0, 0, 255), (16, 16, 48, 48))  # WebUI canvases send the drawn area as alpha
    from_alpha = _run(engine, models, "img2img", inpaint_full_res=False, inpainting_fill=1,
                      **{**fields, "mask": _b64_png(alpha_mask)})
    assert from_alpha.images[0] == whole.images[0]
    for fill in (0, 2, 3):
        filled = _run(engine, models, "img2img", inpaint_full_res=False, inpainting_fill=fill, **fields)
        assert filled.images[0] != whole.images[0]
    only_masked = _run(engine, models, "img2img", inpaint_full_res=True, inpaint_full_res_padding=4,
                       **{**fields, "init_images": [_b64_png(_gradient(96, 96))], "mask": _b64_png(mask.resize((96, 96)))})
    assert Image.open(io.BytesIO(only_masked.images[0])).size == (96, 96)
    assert "Masked content: original" in whole.info["infotexts"][0]


def test_progress_and_interrupt(engine, models) -> None:
    reports: list[Progress] = []
    engine.generate("txt2img", {**BASE, "n_iter": 2, "steps": 3}, models, progress=reports.append)
    assert [r.step for r in reports] == [1, 2, 3, 4, 5, 6] and reports[-1].total_steps == 6
    assert reports[-1].job_no == 1 and reports[-1].job_count == 2

    cancel = threading.Event()

    def stop_after_first_step(progress: Progress) -> None:
        cancel.set()

    with pytest.raises(Interrupted):
        engine.generate("txt2img", {**BASE, "steps": 10}, models, progress=stop_after_first_step, cancel=cancel)
    assert len(_run(engine, models).images) == 1


@pytest.mark.parametrize(
    ("task", "fields", "field"),
    [
        ("txt2img", {"sampler_name": "Euler z"}, "sampler_name"),
        ("txt2img", {"width": 0}, "width"),
        ("txt2img", {"width": 100000}, "width"),
        ("txt2img", {"steps": 0}, "steps"),
        ("txt2img", {"steps": 10_000}, "steps"),
        ("txt2img", {"batch_size": 0}, "batch_size"),
        ("txt2img", {"prompt": "cat " * 2500}, "prompt"),
        ("txt2img", {"prompt": "a <lora:no-such-lora:0.5>"}, "prompt"),
        ("txt2img", {"prompt": "a cat AND a dog"}, "prompt"),
        ("txt2img", {"restore_faces": True}, "restore_faces"),
        ("txt2img", {"styles": ["s"]}, "styles"),
        ("txt2img", {"script_name": "prompt matrix"}, "script_name"),
        ("txt2img", {"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),
        ("txt2img", {"override_settings": {"sd_vae": "missing.safetensors"}}, "override_settings.sd_vae"),
        ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 5}}, "override_settings.CLIP_stop_at_last_layers"),
        ("txt2img", {"alwayson_scripts": {"controlnet": {"args": [{"module": "openpose", "model": "tiny-controlnet"}]}}},
         "alwayson_scripts.controlnet.args[0].module"),
        ("img2img", {"init_images": ["%%% not base64"]}, "init_images[0]"),
        ("img2img", {"init_images": [_b64_png(_gradient())], "mask": _b64_png(Image.new("L", (32, 32)))}, "mask"),
    ],
)
def test_bad_input_is_refused_and_the_engine_still_works(engine, models, task: str, fields: dict, field: str) -> None:
    with pytest.raises(EngineError) as error:
        engine.generate(task, {**BASE, **fields}, models)
    assert error.value.field == field and field in str(error.value)
    assert len(_run(engine, models, steps=1).images) == 1


def test_merge_delegates_and_the_result_generates(engine, models, tmp_path) -> None:
    merged = tmp_path / "merged.safetensors"
    engine.merge(models.checkpoint, models.checkpoint, None, "Weighted sum", 0.5, False, merged)
    result = engine.generate("txt2img", {**BASE, "steps": 1}, ModelSet(merged))
    assert result.info["sd_model_name"] == "merged" and len(result.images) == 1
