"""The latent mask (A1111's p.latent_mask, set by the outpainting scripts): StableDiffusionProcessingImg2Img.init
repaints in the latents, and fills with inpainting_fill "fill", where the latent mask says, while the overlay
and everything else still come from the image mask."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aws_extension.engine.base import EngineError, ModelSet
from aws_extension.engine.diffusers_engine import DiffusersEngine
from aws_extension.engine.generate import fill_masked_area, latent_mask, prepare_img2img
from aws_extension.engine.params import Img2ImgInputs
from aws_extension.payload import PayloadError

BASE = {"prompt": "a photo of a house", "seed": 7, "steps": 3, "width": 64, "height": 64,
        "denoising_strength": 0.75, "inpaint_full_res": False, "mask_blur": 0}


@pytest.fixture(scope="module")
def engine() -> DiffusersEngine:
    return DiffusersEngine()


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path) -> ModelSet:
    return ModelSet(checkpoint=tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors", files={})


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _gradient(size: int = 64) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                                     np.full((size, size), 90, np.uint8)], axis=-1))


def _box(box: tuple[int, int, int, int], size: int = 64, mode: str = "L") -> Image.Image:
    mask = Image.new(mode, (size, size), "black")
    mask.paste(Image.new(mode, (box[2] - box[0], box[3] - box[1]), "white"), box[:2])
    return mask


def _inputs(**fields) -> Img2ImgInputs:
    values = dict(init_images=[_gradient()], resize_mode=0, mask=_box((8, 8, 56, 56)), mask_blur_x=0, mask_blur_y=0,
                  mask_round=True, inpainting_fill=0, inpaint_full_res=False, inpaint_full_res_padding=0,
                  inpainting_mask_invert=False, initial_noise_multiplier=1.0)
    return Img2ImgInputs(**{**values, **fields})


def _image(engine: DiffusersEngine, models: ModelSet, **fields) -> np.ndarray:
    result = engine.generate("img2img", {**BASE, "init_images": [_b64(_gradient())], **fields}, models)
    return np.asarray(Image.open(io.BytesIO(result.images[0])).convert("RGB"), dtype=np.int16)


def test_fill_and_latents_follow_the_latent_mask_overlay_the_image_mask():
    image_mask, repaint = _box((8, 8, 56, 56)), _box((16, 0, 48, 64), mode="RGB")  # RGB, as outpainting_mk_2's
    prepared = prepare_img2img(_inputs(latent_mask=repaint), 64, 64)
    assert prepared.latent_mask is repaint  # taken as it is: not rounded, blurred, inverted or resized
    assert prepared.images[0].tobytes() == fill_masked_area(_gradient(), repaint).tobytes()
    assert prepared.images[0].tobytes() != fill_masked_area(_gradient(), image_mask).tobytes()
    assert prepared.mask.tobytes() == image_mask.tobytes()
    assert prepared.overlay.tobytes() == image_mask.tobytes()  # mask x 2, clipped: still the image mask's box
    without = prepare_img2img(_inputs(), 64, 64)
    assert without.latent_mask is without.mask
    assert prepare_img2img(_inputs(mask=None, latent_mask=repaint), 64, 64).latent_mask is None  # as A1111


@pytest.mark.parametrize("round_mask", [True, False])
def test_latent_size_mask_is_a1111s_latmask(round_mask):
    soft = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)))
    # A1111: convert('RGB').resize((w/8, h/8)), first channel / 255, np.around with mask_round
    expected = np.asarray(soft.convert("RGB").resize((8, 8)), dtype=np.float32)[:, :, 0] / 255
    expected = np.around(expected) if round_mask else expected
    assert np.array_equal(latent_mask(soft, 8, 8, round_mask)[0, 0].numpy(), expected)


def test_latent_mask_the_image_mask_would_make_changes_nothing(engine, models):
    mask = _box((16, 16, 48, 48))
    plain = _image(engine, models, mask=_b64(mask), inpainting_fill=1)
    assert np.array_equal(_image(engine, models, mask=_b64(mask), latent_mask=_b64(mask), inpainting_fill=1), plain)


def test_outside_the_latent_mask_the_init_latents_are_kept(engine, models):
    """A latent mask that repaints nothing gives the init image's latents exactly (A1111's last blend), pasted
    through the image mask's overlay: what denoising strength 0 gives."""
    fields = {"mask": _b64(_box((8, 8, 56, 56))), "inpainting_fill": 1}
    kept = _image(engine, models, latent_mask=_b64(Image.new("L", (64, 64), "black")), **fields)
    assert np.array_equal(kept, _image(engine, models, **{**fields, "denoising_strength": 0.0}))
    assert np.abs(kept - _image(engine, models, **fields)).mean() > 1  # without it the masked area is repainted
    half = _image(engine, models, latent_mask=_b64(_box((0, 0, 32, 64))), sampler_name="Euler", **fields)
    whole = _image(engine, models, sampler_name="Euler", **fields)
    # right of the latent mask the init latents stay (a decoder's reach of 8 latent pixels apart: the tiny VAE)
    assert np.abs(half[8:56, 48:56] - kept[8:56, 48:56]).mean() < np.abs(whole[8:56, 48:56] - kept[8:56, 48:56]).mean()


@pytest.mark.parametrize("fill", [2, 3])
def test_latent_noise_and_nothing_fill_where_the_latent_mask_says(engine, models, fill):
    fields = {"mask": _b64(_box((8, 8, 56, 56))), "inpainting_fill": fill}
    assert not np.array_equal(_image(engine, models, latent_mask=_b64(_box((24, 24, 40, 40))), **fields),
                              _image(engine, models, **fields))


def test_bad_latent_masks_are_refused_naming_the_field(engine, models):
    with pytest.raises(EngineError) as size:
        _image(engine, models, mask=_b64(_box((8, 8, 56, 56))), latent_mask=_b64(_box((0, 0, 16, 16), size=32)),
               inpainting_fill=0)
    assert size.value.field == "latent_mask" and "must be the same size" in str(size.value)
    # with another fill it is only resized to the latents, as A1111 does
    _image(engine, models, mask=_b64(_box((8, 8, 56, 56))), latent_mask=_b64(_box((0, 0, 16, 16), size=32)),
           inpainting_fill=1)
    with pytest.raises((EngineError, PayloadError)) as alone:
        _image(engine, models, latent_mask=_b64(_box((0, 0, 16, 16))))
    assert "latent_mask" in str(alone.value) and "only together with a mask" in str(alone.value)
    with pytest.raises(EngineError) as undecodable:
        _image(engine, models, mask=_b64(_box((8, 8, 56, 56))), latent_mask="bm90IGFuIGltYWdl")
    assert undecodable.value.field == "latent_mask"
