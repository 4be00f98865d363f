"""ControlNet preprocessors: the detected maps, and jobs that use them on the tiny model."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from aws_extension.engine.base import ModelSet
from aws_extension.engine.diffusers_engine import DiffusersEngine
from aws_extension.engine.infotext import parse_infotext, read_png_infotext
from aws_extension.engine.preprocessors import Preprocessor, pixel_perfect_resolution


def square(size: int = 64, inset: int = 16, background: int = 0, fill: int = 255) -> Image.Image:
    image = Image.new("RGB", (size, size), (background,) * 3)
    ImageDraw.Draw(image).rectangle((inset, inset, size - inset - 1, size - inset - 1), fill=(fill,) * 3)
    return image


def test_canny_finds_the_edges_of_a_square_and_nothing_else():
    edges = np.asarray(Preprocessor("canny", 512, 100, 200).detected_map(square(), 512, 512, "Crop and Resize"))
    assert edges.shape == (512, 512, 3) and set(np.unique(edges)) == {0, 255}
    rows, cols = np.nonzero(edges[:, :, 0])
    # the square spans 16..47 of 64 pixels: 128..383 at 512, its edges within a few pixels of that border
    assert 120 <= rows.min() <= 132 and 379 <= rows.max() <= 391 and 120 <= cols.min() <= 132 and 379 <= cols.max() <= 391
    inside, outside = edges[160:352, 160:352], np.concatenate([edges[:100].ravel(), edges[412:].ravel()])
    assert not inside.any() and not outside.any()


def test_canny_thresholds_decide_which_edges_count():
    faint = square(fill=40)  # a step of 40 grey levels: a gradient of 160 (3x3 Sobel, L1) along the sides
    assert np.asarray(Preprocessor("canny", 64, 100, 200).detected_map(faint, 64, 64, "Crop and Resize")).any()
    assert not np.asarray(Preprocessor("canny", 64, 150, 250).detected_map(faint, 64, 64, "Crop and Resize")).any()


def test_canny_map_size_follows_processor_res_or_pixel_perfect():
    wide = Image.new("RGB", (100, 50))
    assert Preprocessor("canny", 256, 100, 200).detected_map(wide, 64, 64, "Crop and Resize").size == (512, 256)
    # pixel perfect: the map needs no scaling to cover 64x64 (crop: the short side becomes 64)
    assert pixel_perfect_resolution(50, 100, 64, 64, "Crop and Resize") == 64
    assert pixel_perfect_resolution(50, 100, 64, 64, "Resize and Fill") == 32
    perfect = Preprocessor("canny", 512, 100, 200, pixel_perfect=True)
    assert perfect.detected_map(wide, 64, 64, "Crop and Resize").size == (128, 64)


def test_invert_turns_white_background_line_art_into_a_control_image():
    line_art = square(background=255, fill=0)
    inverted = np.asarray(Preprocessor("invert").detected_map(line_art, 512, 512, "Crop and Resize"))
    assert np.array_equal(inverted, 255 - np.asarray(line_art))


@pytest.fixture(scope="module")
def engine() -> DiffusersEngine:
    return DiffusersEngine()


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path) -> ModelSet:
    return ModelSet(checkpoint=tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors",
                    files={"ControlNet": {"tiny-controlnet.safetensors":
                                          tiny_models_dir / "ControlNet" / "tiny-controlnet.safetensors"}})


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _job(engine: DiffusersEngine, models: ModelSet, image: Image.Image, **unit):
    payload = {"prompt": "a red box", "seed": 3, "steps": 3, "width": 64, "height": 64, "alwayson_scripts": {
        "controlnet": {"args": [{"model": "tiny-controlnet", "image": _b64(image), **unit}]}}}
    return engine.generate("txt2img", payload, models)


def test_a_canny_unit_conditions_on_the_edges_as_a_preprocessed_map_would(engine, models):
    canny = _job(engine, models, square(), module="canny", processor_res=64, threshold_a=50, threshold_b=150)
    edge_map = Preprocessor("canny", 64, 50, 150).detected_map(square(), 64, 64, "Crop and Resize")
    assert np.array_equal(_pixels(canny.images[0]), _pixels(_job(engine, models, edge_map, module="none").images[0]))
    assert not np.array_equal(_pixels(canny.images[0]), _pixels(_job(engine, models, square(), module="none").images[0]))
    infotext = parse_infotext(read_png_infotext(canny.images[0]) or "")["ControlNet 0"]
    assert infotext.startswith("Module: canny, Model: tiny-controlnet, Weight: 1.0, Resize Mode: Crop and Resize, "
                               "Processor Res: 64, Threshold A: 50.0, Threshold B: 150.0")
