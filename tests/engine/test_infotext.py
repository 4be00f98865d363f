"""The A1111 infotext line: format, parse back, PNG `parameters` chunk."""

from __future__ import annotations

from PIL import Image

from aws_extension.engine.infotext import (
    format_infotext,
    parse_infotext,
    png_with_infotext,
    read_png_infotext,
)


def test_infotext_round_trip() -> None:
    parameters = {
        "Steps": 20, "Sampler": "Euler a", "CFG scale": 7.0, "Seed": 1, "Size": "64x96",
        "Model hash": "0123456789", "Model": "tiny-sd", "Variation seed": None,
        "Lora hashes": "tiny-lora: abcdef012345", "Hires upscaler": "Latent (bicubic)", "Version": "sd-aws 0.1.0",
    }
    text = format_infotext("a (cat:1.2), <lora:tiny-lora:0.5>\nsecond line", "ugly, blurry", parameters)
    assert text.splitlines()[:3] == ["a (cat:1.2), <lora:tiny-lora:0.5>", "second line", "Negative prompt: ugly, blurry"]
    assert 'Lora hashes: "tiny-lora: abcdef012345"' in text and "Variation seed" not in text
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "a (cat:1.2), <lora:tiny-lora:0.5>\nsecond line"
    assert parsed["Negative prompt"] == "ugly, blurry"
    assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"], parsed["Seed"]) == ("20", "Euler a", "7.0", "1")
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "96")
    assert parsed["Lora hashes"] == "tiny-lora: abcdef012345"
    assert parsed["Hires upscaler"] == "Latent (bicubic)"


def test_infotext_without_negative_prompt() -> None:
    text = format_infotext("cat", "", {"Steps": 2, "Sampler": "Euler", "Seed": 3})
    assert text == "cat\nSteps: 2, Sampler: Euler, Seed: 3"
    assert parse_infotext(text)["Negative prompt"] == ""


def test_png_carries_the_infotext() -> None:
    png = png_with_infotext(Image.new("RGB", (8, 8)), "cat\nSteps: 2, Sampler: Euler, Seed: 3")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_png_infotext(png) == "cat\nSteps: 2, Sampler: Euler, Seed: 3"
