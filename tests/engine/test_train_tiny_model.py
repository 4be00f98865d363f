"""`make-tiny-model --learnable`: the tiny model that can show learning. Its VAE reconstructs colour, its
latents have about unit variance (× scaling factor), and the prompt changes the image clearly; the default
tiny model is not it (its tensors tell them apart)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from aws_extension.engine.base import ModelSet
from aws_extension.engine.checkpoints import inspect_model_file, load_checkpoint_pipeline
from aws_extension.engine.diffusers_engine import DiffusersEngine
from aws_extension.engine.tiny import LEARNABLE_ARCHITECTURE, LEARNABLE_COLOURS, write_tiny_model


@pytest.fixture(scope="module")
def pipe(learnable_checkpoint):
    return load_checkpoint_pipeline(learnable_checkpoint)


def test_it_is_its_own_architecture(learnable_checkpoint, tiny_models_dir):
    assert inspect_model_file(learnable_checkpoint).architecture == LEARNABLE_ARCHITECTURE
    assert inspect_model_file(tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors").architecture == "sd1-tiny"


@pytest.mark.parametrize("name", ["red", "green", "blue", "grey"])
def test_the_vae_reconstructs_a_colour(pipe, name):
    rgb = torch.tensor(LEARNABLE_COLOURS[name], dtype=torch.float32)
    with torch.no_grad():
        pixels = (rgb / 127.5 - 1).view(1, 3, 1, 1).expand(1, 3, 64, 64)
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.sample()).sample
    assert ((decoded + 1) * 127.5 - rgb.view(1, 3, 1, 1)).abs().max() < 0.5  # under half a level of 255


def test_the_vae_keeps_an_image_at_its_latent_resolution(pipe):
    generator = torch.Generator().manual_seed(3)
    blocks = torch.rand(1, 3, 8, 8, generator=generator) * 2 - 1  # one colour per 8×8 block
    pixels = blocks.repeat_interleave(8, 2).repeat_interleave(8, 3)
    with torch.no_grad():
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample
    assert (decoded - pixels).abs().max() < 1e-3


def test_latents_have_about_unit_variance(pipe):
    generator = torch.Generator().manual_seed(4)
    colours = torch.rand(64, 3, 1, 1, generator=generator) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(colours.expand(64, 3, 64, 64)).latent_dist.mean * pipe.vae.config.scaling_factor
    assert 0.7 < float(latents.std()) < 1.3


def _image(checkpoint, prompt: str, seed: int) -> np.ndarray:
    payload = {"prompt": prompt, "steps": 20, "cfg_scale": 3, "width": 64, "height": 64, "seed": seed,
               "sampler_name": "Euler"}
    png = DiffusersEngine().generate("txt2img", payload, ModelSet(checkpoint)).images[0]
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.float64)


def test_the_prompt_changes_the_image_clearly(learnable_checkpoint):
    for seed in (0, 1):
        red, blue = _image(learnable_checkpoint, "red", seed), _image(learnable_checkpoint, "blue", seed)
        assert np.abs(red - blue).mean() > 20  # of 255; the default tiny model: below 0.1
        assert red[..., 0].mean() - red[..., 2].mean() > blue[..., 0].mean() - blue[..., 2].mean()


def test_the_build_is_deterministic_and_refuses_extras(tmp_path, learnable_checkpoint):
    again = tmp_path / "again.safetensors"
    write_tiny_model(again, learnable=True)
    assert again.read_bytes() == learnable_checkpoint.read_bytes()
    with pytest.raises(ValueError, match="--extras"):
        write_tiny_model(tmp_path / "x.safetensors", extras_dir=tmp_path / "extras", learnable=True)
