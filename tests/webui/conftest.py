"""The host double on sys.modules, a model folder laid out like the WebUI's, and the extension loaded from it."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

HOST_DOUBLE = Path(__file__).resolve().parent / "host"
REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_BYTES = b"tiny checkpoint bytes"
CHECKPOINT_SHA256 = hashlib.sha256(CHECKPOINT_BYTES).hexdigest()
EMBEDDING_BYTES = b"embedding"
EMBEDDING_SHA256 = hashlib.sha256(EMBEDDING_BYTES).hexdigest()


def _purge_modules() -> None:
    for name in list(sys.modules):
        if name == "modules" or name.startswith(("modules.", "aws_extension.webui")):
            del sys.modules[name]


@pytest.fixture
def webui(tmp_path, monkeypatch):
    """A WebUI with the extension loaded the way the host loads it; yields its modules and folders."""
    _purge_modules()
    monkeypatch.syspath_prepend(str(HOST_DOUBLE))
    from modules import paths, processing, script_callbacks, scripts, sd_models, sd_vae, shared

    data = tmp_path / "webui"
    models = data / "models"
    for folder in ("Stable-diffusion", "Lora", "VAE", "ControlNet", "hypernetworks"):
        (models / folder).mkdir(parents=True)
    (data / "embeddings").mkdir()
    (models / "Stable-diffusion" / "tiny.safetensors").write_bytes(CHECKPOINT_BYTES)
    (models / "Lora" / "style.safetensors").write_bytes(b"lora")
    (models / "VAE" / "vae-ft.safetensors").write_bytes(b"vae")
    (data / "embeddings" / "badhands.pt").write_bytes(EMBEDDING_BYTES)
    monkeypatch.setattr(paths, "data_path", str(data))
    monkeypatch.setattr(paths, "models_path", str(models))
    shared.config_filename = str(data / "config.json")
    checkpoint = sd_models.CheckpointInfo(str(models / "Stable-diffusion" / "tiny.safetensors"), CHECKPOINT_SHA256)
    checkpoint.register()
    shared.opts.data.update(sd_model_checkpoint=checkpoint.title, sd_vae="Automatic", samples_save=True,
                            samples_format="png", grid_save=True, return_grid=True, CLIP_stop_at_last_layers=1)
    sd_vae.vae_dict["vae-ft.safetensors"] = str(models / "VAE" / "vae-ft.safetensors")
    original_process_images = processing.process_images
    scripts.load_scripts(str(REPO))
    yield SimpleNamespace(paths=paths, processing=processing, script_callbacks=script_callbacks, scripts=scripts,
                          shared=shared, sd_vae=sd_vae, data=data, models=models,
                          original_process_images=original_process_images)
    script_callbacks.script_unloaded_callback()
    _purge_modules()


def switch_runner(webui, is_img2img: bool = False):
    """The always-on scripts' UI as the WebUI builds it, so the switch gets its args_from:args_to."""
    import gradio as gr

    runner = webui.scripts.ScriptRunner(is_img2img)
    with gr.Blocks():
        runner.setup_ui()
    return runner


def make_p(webui, runner, on: bool, endpoint: str | None = "ep-ready", img2img: bool = False, **fields):
    processing = webui.processing
    out = webui.data / "outputs"
    common = dict(prompt="a red fox <lora:style:0.8>", negative_prompt="badhands, blurry", seed=42, steps=4,
                  width=64, height=64, outpath_samples=str(out / "samples"), outpath_grids=str(out / "grids"))
    common.update(fields)
    if img2img:
        from PIL import Image

        p = processing.StableDiffusionProcessingImg2Img(init_images=[Image.new("RGB", (64, 64), "blue")], **common)
    else:
        p = processing.StableDiffusionProcessingTxt2Img(**common)
    p.scripts = runner
    p.script_args = runner.script_args_from_api({"amazon sagemaker": {"args": [on, endpoint]}})
    return p


def user_sees(webui, p, capsys) -> str:
    """Generate from the page as the host does (its call_queue wrapper) and return the one sentence the user
    sees in the info box: no error box, no traceback in the console, no images."""
    import html
    import re

    from modules import txt2img

    images, _, info_html, comments_html = txt2img.txt2img_from_page(p)
    console = capsys.readouterr().err
    assert "Traceback" not in console and "<div class='error'>" not in info_html, (console, info_html)
    assert images == []
    webui.shared.state.interrupted = False  # state.begin() of the next job
    text = html.unescape(re.sub(r"<[^>]+>", "", info_html)).strip()
    assert text in comments_html or html.escape(text) in comments_html
    assert "\n" not in text
    return text
