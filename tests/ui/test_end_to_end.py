"""The cloud switch and the tabs against a real `sd-aws up`: real middleware, real worker, the tiny model."""

from __future__ import annotations

import hashlib

import pytest

from aws_extension.ui.connection import MemoryConnectionStore
from aws_extension.ui.generate import GenerateTab
from aws_extension.ui.sagemaker_tab import SageMakerTab
from tests.ui.conftest import STACK_ENDPOINT, STACK_KEY, TINY_CHECKPOINT
from tests.webui.conftest import make_p, switch_runner, user_sees, webui  # noqa: F401 - webui is a fixture


@pytest.fixture
def webui_on_stack(webui, stack, monkeypatch):  # noqa: F811
    """The WebUI double with the tiny models as its model folders, configured for the stack."""
    from modules import sd_models

    from aws_extension.webui import host

    monkeypatch.setattr(webui.paths, "models_path", str(stack.models))
    monkeypatch.setattr(webui.shared.cmd_opts, "embeddings_dir", str(stack.models / "embeddings"))
    checkpoint_path = stack.models / "Stable-diffusion" / TINY_CHECKPOINT
    info = sd_models.CheckpointInfo(str(checkpoint_path), hashlib.sha256(checkpoint_path.read_bytes()).hexdigest())
    info.register()
    webui.shared.opts.data.update(sd_model_checkpoint=info.title, sd_aws_api_url=stack.url)
    host.write_api_key(STACK_KEY)
    return webui


def test_switch_generates_on_the_endpoint_after_uploading_what_is_missing(webui_on_stack, stack, capsys):
    from aws_extension.webui import host

    host_webui = webui_on_stack
    runner = switch_runner(host_webui)
    prompt = "a cat <lora:tiny-lora:0.5> in the style of tiny-emb"
    missing = user_sees(host_webui, make_p(host_webui, runner, on=True, endpoint=STACK_ENDPOINT, prompt=prompt), capsys)
    assert "Lora 'tiny-lora'" in missing and "embeddings 'tiny-emb.safetensors'" in missing

    tab = SageMakerTab(host.WebUIConnectionStore(), host.model_folders())
    for model_type, name in (("Lora", "tiny-lora.safetensors"), ("embeddings", "tiny-emb.safetensors")):
        assert tab.upload_local(model_type, [name], progress=lambda *a, **k: None).startswith("Done:"), model_type
    p = make_p(host_webui, runner, on=True, endpoint=STACK_ENDPOINT, prompt=prompt, negative_prompt="", seed=7,
               batch_size=2, steps=3)
    processed = host_webui.processing.process_images(p)
    assert processed.index_of_first_image == 1 and [im.size for im in processed.images[1:]] == [(64, 64)] * 2
    assert processed.all_seeds == [7, 8] and processed.seed == 7
    assert "Seed: 8" in processed.infotexts[2] and processed.infotexts[1].startswith(prompt)
    assert len(list((host_webui.data / "outputs" / "samples").iterdir())) == 2
    assert host_webui.shared.state.progress_log[-1] == 100


def test_worker_failure_reason_is_shown(webui_on_stack, capsys):
    """Refused at the middleware's door (the validator) and shown as the host shows a user error."""
    host_webui = webui_on_stack
    p = make_p(host_webui, switch_runner(host_webui), on=True, endpoint=STACK_ENDPOINT, prompt="a dog", negative_prompt="",
               sampler_name="No Such Sampler")
    assert "No Such Sampler" in user_sees(host_webui, p, capsys)


def test_tabs_list_endpoints_and_jobs_and_delete_with_confirmation(stack):
    tab = SageMakerTab(MemoryConnectionStore(stack.url, STACK_KEY))
    rows = tab.endpoint_table()[0]["data"]
    assert next(r for r in rows if r[0] == STACK_ENDPOINT)[:3] == [STACK_ENDPOINT, "success", "InService"]
    assert tab.deploy_endpoint("ml.nonexistent", 1, False, 0, 1, "bad-ep").startswith("Error:")
    assert tab.deploy_endpoint("local", 1, True, 0, 1, "to-delete").startswith("Done: Deploying to-delete")
    assert tab.ask_delete(["to-delete"])[0]["visible"] is True
    assert tab.confirm_delete(["to-delete"])[1] == "Done: Deleted to-delete."

    generate = GenerateTab(MemoryConnectionStore(stack.url, STACK_KEY), "txt2img")
    endpoint_choice, checkpoint_choice, _ = generate.choices()
    assert STACK_ENDPOINT in endpoint_choice["choices"] and TINY_CHECKPOINT in checkpoint_choice["choices"]
    updates = list(generate.generate(STACK_ENDPOINT, TINY_CHECKPOINT, "a red boat", "", "Euler a", 3, 7, 64, 64, 11, 1))
    images, infotext, job_id, final = updates[-1]
    assert final == "Done: 1 image(s), seed 11." and images[0].size == (64, 64) and "Seed: 11" in infotext
    assert any(u[-1].startswith("Job ") for u in updates[:-1])

    table, choices, _ = tab.job_table()
    rows = table["data"]
    assert job_id in choices["choices"] and next(r for r in rows if r[0] == job_id)[1:3] == ["succeed", "100%"]
    images, parameters, status = tab.show_job(job_id)
    assert len(images) == 1 and parameters["parameters"]["prompt"] == "a red boat" and parameters["info"]["seed"] == 11


def test_switch_img2img_with_controlnet_and_the_selected_vae(webui_on_stack, stack):
    from PIL import Image

    from aws_extension.webui import host

    host_webui = webui_on_stack
    tab = SageMakerTab(host.WebUIConnectionStore(), host.model_folders())
    for model_type, name in (("VAE", "tiny-vae.safetensors"), ("ControlNet", "tiny-controlnet.safetensors")):
        assert tab.upload_local(model_type, [name], progress=lambda *a, **k: None).startswith("Done:"), model_type
    host_webui.sd_vae.vae_dict["tiny-vae.safetensors"] = str(stack.models / "VAE" / "tiny-vae.safetensors")
    host_webui.shared.opts.data["sd_vae"] = "tiny-vae.safetensors"

    class ControlNetScript(host_webui.scripts.Script):  # sd-webui-controlnet: its units in p.script_args
        def title(self):
            return "ControlNet"

    unit = {"enabled": True, "module": "none", "model": "tiny-controlnet [0123abcd]", "weight": 0.9,
            "image": {"image": Image.new("RGB", (64, 64), "white"), "mask": None}}
    runner = switch_runner(host_webui, is_img2img=True)
    controlnet = ControlNetScript()
    controlnet.args_from, controlnet.args_to = len(runner.inputs), len(runner.inputs) + 1
    runner.alwayson_scripts.append(controlnet)
    p = make_p(host_webui, runner, on=True, img2img=True, endpoint=STACK_ENDPOINT, prompt="a tower", negative_prompt="",
               seed=5, steps=3, denoising_strength=0.6)
    p.script_args = [*p.script_args, unit]
    processed = host_webui.processing.process_images(p)
    assert [im.size for im in processed.images] == [(64, 64)] and processed.seed == 5
    assert "VAE: tiny-vae" in processed.infotexts[0] and "ControlNet 0: " in processed.infotexts[0]
