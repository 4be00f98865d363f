"""Device and precision (SD_AWS_DEVICE, SD_AWS_DTYPE): the settings, every job path in half precision, models
that overflow half precision, and running out of device memory.

This machine has no GPU, so half precision runs on the CPU: bfloat16 and float16 take the same code paths
a CUDA worker takes in float16 (every tensor the engine makes must meet the models' dtype and device).
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from aws_extension.engine.base import EngineError, ModelSet
from aws_extension.engine.checkpoints import load_checkpoint_pipeline
from aws_extension.engine.diffusers_engine import DiffusersEngine
from aws_extension.engine.generate import JobRunner
from aws_extension.engine.pipelines import PipelineCache
from aws_extension.engine.placement import Placement, resolve_placement
from aws_extension.model_files import ARCHITECTURE_METADATA_KEY
from aws_extension.settings import WorkerSettings

BASE = {"prompt": "a (cat:1.2) <lora:tiny-lora:1> tiny-emb", "negative_prompt": "blurry", "seed": 7, "steps": 3,
        "width": 64, "height": 64}


def test_auto_is_the_cpu_in_float32_without_a_gpu():
    assert not torch.cuda.is_available()  # this machine; a GPU machine gets cuda and float16 instead
    assert resolve_placement("auto", "auto") == Placement(torch.device("cpu"), torch.float32)
    assert resolve_placement("cpu", "bfloat16") == Placement(torch.device("cpu"), torch.bfloat16)
    assert str(resolve_placement("cpu", "float16")) == "cpu (float16)"


@pytest.mark.parametrize(("device", "dtype", "message"), [
    ("cuda", "auto", "SD_AWS_DEVICE='cuda', but torch sees no CUDA GPU here"),
    ("cuda:1", "auto", "no CUDA GPU"),
    ("tpu", "auto", "SD_AWS_DEVICE='tpu' is not a device"),
    ("cpu", "float8", "SD_AWS_DTYPE='float8' is not one of auto, float32, float16, bfloat16"),
])
def test_bad_settings_name_the_setting(device, dtype, message):
    with pytest.raises(EngineError, match=message):
        resolve_placement(device, dtype)


def test_a_worker_whose_device_is_missing_says_why(tmp_path):
    with pytest.raises(EngineError, match="no CUDA GPU"):
        DiffusersEngine(WorkerSettings(device="cuda"))


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path) -> ModelSet:
    files = {folder: {path.name: path for path in (tiny_models_dir / folder).iterdir()}
             for folder in ("Lora", "embeddings", "VAE", "ControlNet")}
    return ModelSet(checkpoint=tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors", files=files)


def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _jobs() -> dict[str, tuple[str, dict]]:
    init = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    controlnet = {"controlnet": {"args": [{"model": "tiny-controlnet", "image": _png_b64(init), "module": "none"}]}}
    img2img = {"init_images": [_png_b64(init)], "denoising_strength": 0.7}
    return {
        "txt2img, LoRA, embedding, VAE, CLIP skip": ("txt2img", {"override_settings": {
            "sd_vae": "tiny-vae.safetensors", "CLIP_stop_at_last_layers": 2}}),
        "hires fix (antialiased latent upscale)": ("txt2img", {
            "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent (bicubic antialiased)", "denoising_strength": 0.6}),
        "variation seed, SDE sampler, prompt editing, tiling": ("txt2img", {
            "prompt": "[cat:dog:0.5]", "subseed": 5, "subseed_strength": 0.5, "sampler_name": "DPM++ 2M SDE",
            "tiling": True}),
        "ControlNet": ("txt2img", {"alwayson_scripts": controlnet}),
        "img2img with ControlNet": ("img2img", {**img2img, "alwayson_scripts": controlnet}),
        "inpaint, latent noise fill": ("img2img", {**img2img, "mask": _png_b64(mask), "inpainting_fill": 2}),
        "inpaint, only masked": ("img2img", {**img2img, "mask": _png_b64(mask), "inpaint_full_res": True}),
    }


@pytest.fixture(scope="module")
def full_precision_images(models) -> dict[str, np.ndarray]:
    engine = DiffusersEngine(WorkerSettings(dtype="float32"))
    return {name: _pixels(engine.generate(task, {**BASE, **fields}, models).images[0])
            for name, (task, fields) in _jobs().items()}


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_job_path_runs_in_half_precision_and_matches_float32(dtype, models, full_precision_images):
    engine = DiffusersEngine(WorkerSettings(dtype=dtype))
    pipeline = engine.pipelines.get(models.checkpoint)
    assert {component.dtype for component in (pipeline.unet, pipeline.vae, pipeline.text_encoder)} == {
        getattr(torch, dtype)}
    for name, (task, fields) in _jobs().items():
        image = _pixels(engine.generate(task, {**BASE, **fields}, models).images[0])
        difference = np.abs(image - full_precision_images[name]).mean()
        # the same picture up to rounding: bfloat16 is within 1.5 of float32 on average, while another seed
        # differs by 29-40 (12.5 for the inpainting jobs, which repaint a quarter of the image)
        assert difference < 4, f"{name}: {dtype} differs from float32 by {difference:.1f} on average"


def test_out_of_device_memory_is_a_clear_error_and_the_engine_goes_on(models, monkeypatch):
    engine = DiffusersEngine()
    real_run = JobRunner.run
    monkeypatch.setattr(JobRunner, "run", lambda self: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(EngineError, match="ran out of memory on cpu at 64x64, batch size 2 with hires fix: lower"):
        engine.generate("txt2img", {**BASE, "batch_size": 2, "enable_hr": True, "denoising_strength": 0.5}, models)
    monkeypatch.setattr(JobRunner, "run", real_run)
    assert len(engine.generate("txt2img", BASE, models).images) == 1


def test_a_load_out_of_device_memory_drops_the_idle_pipelines_and_retries(tiny_models_dir, tmp_path):
    checkpoint = tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors"
    other = Path(shutil.copy(checkpoint, tmp_path / "other.safetensors"))
    device_full = [False]

    def loader(path: Path, vae: Path | None):
        if device_full[0]:
            device_full[0] = False
            raise torch.OutOfMemoryError("CUDA out of memory")
        return load_checkpoint_pipeline(path, vae)

    cache = PipelineCache(memory_budget_bytes=10**12, loader=loader)
    cache.get(checkpoint)
    device_full[0] = True
    cache.get(other)
    assert [path.name for path, _ in cache.cached_files()] == ["other.safetensors"]


def _scaled_copy(source: Path, target: Path, keys: tuple[str, ...], factor: float) -> Path:
    """`source` with the tensors `keys` multiplied by `factor`: weights that still fit in float16, whose
    activations do not (what makes some real VAEs and merged checkpoints fail in half precision)."""
    tensors = load_file(str(source))
    for key in keys:
        tensors[key] = tensors[key] * factor
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata={ARCHITECTURE_METADATA_KEY: "sd1-tiny"})
    return target


def test_a_vae_that_overflows_float16_runs_in_float32_for_the_job(models, tmp_path):
    vae = _scaled_copy(models.files["VAE"]["tiny-vae.safetensors"], tmp_path / "VAE" / "overflowing-vae.safetensors",
                       ("decoder.conv_in.weight", "decoder.conv_in.bias", "encoder.conv_in.weight",
                        "encoder.conv_in.bias"), 3e5)
    with_vae = ModelSet(models.checkpoint, {**models.files, "VAE": {vae.name: vae}})
    fields = {"override_settings": {"sd_vae": vae.name}}
    init = {"init_images": [_png_b64(Image.new("RGB", (64, 64), (200, 80, 40)))], "denoising_strength": 0.5}
    full, half = DiffusersEngine(WorkerSettings(dtype="float32")), DiffusersEngine(WorkerSettings(dtype="float16"))
    for task, extra in (("txt2img", {}), ("img2img", init)):  # decoding, and encoding the init image
        expected = _pixels(full.generate(task, {**BASE, **fields, **extra}, with_vae).images[0])
        image = _pixels(half.generate(task, {**BASE, **fields, **extra}, with_vae).images[0])
        assert image.std() > 10 and np.abs(image - expected).mean() < 4, task  # not black, the float32 picture
    assert half.pipelines.get(models.checkpoint, vae).vae.dtype == torch.float16  # the cached VAE is back


def test_a_unet_that_overflows_float16_is_a_clear_error(models, tmp_path):
    checkpoint = _scaled_copy(models.checkpoint, tmp_path / "overflowing.safetensors",
                              ("model.diffusion_model.input_blocks.0.0.weight",
                               "model.diffusion_model.input_blocks.0.0.bias"), 3e5)
    engine = DiffusersEngine(WorkerSettings(dtype="float16"))
    with pytest.raises(EngineError, match="UNet produced only NaNs in float16: .* SD_AWS_DTYPE=float32"):
        engine.generate("txt2img", {**BASE, "prompt": "a cat"}, ModelSet(checkpoint))
