"""The extension inside a WebUI double: entry points, callbacks, settings, the tab, the cloud switch."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.helpers import free_port
from tests.webui.conftest import (
    CHECKPOINT_SHA256,
    EMBEDDING_SHA256,
    HOST_DOUBLE,
    REPO,
    make_p,
    switch_runner,
    user_sees,
)
from tests.webui.fake_middleware import FakeMiddleware, color_of

CATALOGUE = [
    {"id": "c1", "type": "Stable-diffusion", "status": "Active", "name": ["tiny.safetensors"], "sha256": CHECKPOINT_SHA256,
     "size": 21, "created": 1700000000},
    {"id": "c2", "type": "Lora", "status": "Active", "name": ["style.safetensors"], "sha256": "ab" * 32},
    {"id": "c3", "type": "embeddings", "status": "Active", "name": ["badhands.pt"], "sha256": EMBEDDING_SHA256},
    {"id": "c4", "type": "VAE", "status": "Active", "name": ["vae-ft.safetensors"], "sha256": "ef" * 32},
    {"id": "c5", "type": "ControlNet", "status": "Active", "name": ["control_canny.safetensors"], "sha256": "01" * 32},
]
ENDPOINTS = [{"endpoint_name": "ep-ready", "endpoint_status": "InService", "status": "success"},
             {"endpoint_name": "ep-creating", "endpoint_status": "Creating", "status": "inprogress"}]


@pytest.fixture
def middleware_for(webui):
    """A FakeMiddleware the extension is configured for (URL setting + key file)."""
    servers = []

    def start(**kwargs) -> FakeMiddleware:
        server = FakeMiddleware(CATALOGUE, ENDPOINTS, **kwargs).__enter__()
        servers.append(server)
        webui.shared.opts.data["sd_aws_api_url"] = server.url
        return server

    yield start
    for server in servers:
        server.__exit__()


def test_scripts_register_callbacks_and_the_switch(webui):
    callbacks = webui.script_callbacks.callbacks
    assert len(callbacks["ui_tabs"]) == len(callbacks["ui_settings"]) == len(callbacks["script_unloaded"]) == 1
    classes = [d.script_class for d in webui.scripts.scripts_data]
    assert [c().title() for c in classes] == ["Amazon SageMaker"]
    assert classes[0]().show(False) is webui.scripts.AlwaysVisible
    assert webui.processing.process_images is not webui.original_process_images
    import modules.api.api  # imported by name after the extension loaded: it gets the wrapper

    assert modules.api.api.process_images is webui.processing.process_images


def test_unload_restores_process_images_everywhere(webui):
    import modules.api.api
    import modules.img2img

    assert modules.img2img.process_images is not webui.original_process_images
    webui.script_callbacks.script_unloaded_callback()
    for module in (webui.processing, modules.img2img, modules.api.api):
        assert module.process_images is webui.original_process_images
    for data in webui.scripts.scripts_data:
        assert vars(data.module).get("process_images", webui.original_process_images) is webui.original_process_images


def test_modules_that_imported_process_images_before_the_extension_are_rebound(tmp_path, monkeypatch):
    from tests.webui import conftest

    conftest._purge_modules()
    monkeypatch.syspath_prepend(str(HOST_DOUBLE))
    import modules.api.api
    import modules.processing
    from modules import scripts

    original = modules.processing.process_images
    scripts.load_scripts(str(REPO))
    try:
        assert modules.api.api.process_images is modules.processing.process_images is not original
    finally:
        from modules import script_callbacks

        script_callbacks.script_unloaded_callback()
        assert modules.api.api.process_images is original
        conftest._purge_modules()


def test_settings_section_and_api_key_file(webui):
    shared = webui.shared
    webui.script_callbacks.ui_settings_callback()
    assert shared.opts.data_labels["sd_aws_api_url"].section[0] == "sd_aws"
    key_info = shared.opts.data_labels["sd_aws_api_key"]
    assert key_info.component_args == {"type": "password"}
    shared.opts.set("sd_aws_api_key", "secret-key-1234567890")  # what "Apply settings" does
    shared.opts.save(shared.config_filename)
    key_file = webui.data / "sd_aws_api_key"
    assert key_file.read_text() == "secret-key-1234567890"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "secret-key" not in Path(shared.config_filename).read_text()
    from aws_extension.webui.host import WebUIConnectionStore

    store = WebUIConnectionStore()
    assert store.api_key() == "secret-key-1234567890"
    store.save("http://127.0.0.1:9", "other-key-0987654321")  # the tab's Save
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and store.api_key() == "other-key-0987654321"
    assert json.loads(Path(shared.config_filename).read_text())["sd_aws_api_url"] == "http://127.0.0.1:9"
    shared.cmd_opts.sd_aws_api_key, shared.cmd_opts.sd_aws_api_url = "flag-key", "http://127.0.0.1:10"
    try:
        assert (store.api_key(), store.api_url()) == ("flag-key", "http://127.0.0.1:10")
    finally:
        shared.cmd_opts.sd_aws_api_key = shared.cmd_opts.sd_aws_api_url = None


def test_tab_renders_inside_host_tabs_and_serves(webui):
    import gradio as gr

    tabs = webui.script_callbacks.ui_tabs_callback()
    assert [(title, elem_id) for _, title, elem_id in tabs] == [("Amazon SageMaker", "sd_aws")]
    with gr.Blocks(analytics_enabled=False) as demo, gr.Tabs(elem_id="tabs"):
        for blocks, title, elem_id in tabs:
            with gr.Tab(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                blocks.render()
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        config = requests.get(f"http://127.0.0.1:{port}/config", timeout=10).json()
        labels = {c.get("props", {}).get("label") for c in config["components"]}
        assert {"API URL", "API key", "Type", "Instance type", "Dataset name", "Job"} <= labels
        elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert {"sd_aws_api_url", "sd_aws_deploy", "sd_aws_local_files", "sd_aws_job_gallery"} <= elem_ids
    finally:
        demo.close()


def test_tab_lists_the_webui_model_folders(webui):
    from aws_extension.ui.sagemaker_tab import SageMakerTab
    from aws_extension.webui.host import WebUIConnectionStore, model_folders

    tab = SageMakerTab(WebUIConnectionStore(), model_folders())
    assert tab.local_file_choices("Lora")["choices"] == ["style.safetensors"]
    assert tab.local_file_choices("embeddings")["choices"] == ["badhands.pt"]


def test_switch_on_sends_the_request_and_returns_a_processed(webui, middleware_for):
    server = middleware_for()
    webui.shared.opts.data["sd_vae"] = "vae-ft.safetensors"
    runner = switch_runner(webui)
    p = make_p(webui, runner, on=True, batch_size=2, hr_prompt="", enable_hr=False)
    processed = webui.processing.process_images(p)

    body = server.inference_bodies()[0]
    assert body["task_type"] == "txt2img" and body["sagemaker_endpoint_name"] == "ep-ready"
    assert body["models"] == {
        "Stable-diffusion": [{"name": "tiny.safetensors", "sha256": CHECKPOINT_SHA256}],
        "VAE": ["vae-ft.safetensors"], "Lora": ["style.safetensors"],
        "embeddings": [{"name": "badhands.pt", "sha256": EMBEDDING_SHA256}]}
    assert body["prompt"] == "a red fox <lora:style:0.8>" and body["negative_prompt"] == "badhands, blurry"
    assert (body["seed"], body["steps"], body["width"], body["batch_size"], body["n_iter"]) == (42, 4, 64, 2, 1)
    assert body["sampler_name"] == "Euler a" and body["enable_hr"] is False
    assert "init_images" not in body and "styles" not in body
    assert body["override_settings"] == {"sd_vae": "vae-ft.safetensors"}

    # a grid first (return_grid), then the two images with their own infotexts and seeds
    assert processed.index_of_first_image == 1 and len(processed.images) == 3
    assert processed.images[1].getpixel((0, 0)) == color_of(body["prompt"])
    assert processed.all_seeds == [42, 43] and processed.seed == 42
    line = "Steps: 4, Sampler: Euler a, CFG scale: 7.0, Seed: {}, Size: 64x64, Model hash: {}, Model: tiny, "
    assert processed.infotexts[1:] == [
        f"a red fox <lora:style:0.8>\nNegative prompt: badhands, blurry\n{line.format(seed, CHECKPOINT_SHA256[:10])}"
        "Version: v1.10.1, Cloud: sd-aws 0.1.0" for seed in (42, 43)]
    saved = sorted((webui.data / "outputs" / "samples").iterdir())
    assert len(saved) == 2 and len(list((webui.data / "outputs" / "grids").iterdir())) == 1
    assert "Seed: 43," in Image.open(saved[1]).info["parameters"]
    assert webui.shared.state.progress_log[-1] == 100 and 50 in webui.shared.state.progress_log


def test_switch_sends_img2img_with_init_image_mask_and_controlnet(webui, middleware_for):
    server = middleware_for()
    from PIL import Image

    class ControlNetScript(webui.scripts.Script):  # how sd-webui-controlnet shows up: units in script_args
        def title(self):
            return "ControlNet"

    class Unit:
        def __init__(self, enabled):
            self.enabled, self.module, self.model, self.weight = enabled, "none", "control_canny [a1b2c3d4]", 0.8
            self.image = {"image": Image.new("RGB", (64, 64), "white"), "mask": None}
            self.guidance_start, self.guidance_end = 0.0, 1.0

    runner = switch_runner(webui, is_img2img=True)
    controlnet = ControlNetScript()
    controlnet.args_from, controlnet.args_to = len(runner.inputs), len(runner.inputs) + 2
    runner.alwayson_scripts.append(controlnet)
    p = make_p(webui, runner, on=True, img2img=True, prompt="a house", negative_prompt="", mask=Image.new("L", (64, 64)))
    p.script_args = [*p.script_args, Unit(True), Unit(False)]
    webui.processing.process_images(p)

    body = server.inference_bodies()[0]
    assert body["task_type"] == "img2img" and len(body["init_images"]) == 1 and body["mask"]
    assert body["denoising_strength"] == 0.75 and body["mask_blur_x"] == 4
    assert body["models"]["ControlNet"] == ["control_canny.safetensors"]
    units = body["alwayson_scripts"]["controlnet"]["args"]
    assert len(units) == 1 and units[0]["model"] == "control_canny [a1b2c3d4]" and units[0]["weight"] == 0.8
    assert set(units[0]["image"]) == {"image"} and units[0]["image"]["image"].startswith("iVBOR")


def test_switch_off_runs_the_original_and_sends_nothing(webui, middleware_for):
    server = middleware_for()
    p = make_p(webui, switch_runner(webui), on=False)
    processed = webui.processing.process_images(p)
    assert server.requests == [] and "Cloud:" not in processed.info
    assert processed.info.endswith("Model: tiny, Version: v1.10.1")


def test_switch_through_the_api_alwayson_scripts(webui, middleware_for):
    import modules.api.api

    server = middleware_for()
    p = make_p(webui, switch_runner(webui), on=True, endpoint=None, prompt="api prompt", do_not_save_samples=True)
    status, answer = modules.api.api.call(modules.api.api.text2imgapi, p)
    assert status == 200 and "sagemaker_endpoint_name" not in server.inference_bodies()[0]  # the middleware picks one
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.getpixel((0, 0)) == color_of("api prompt")
    assert not (webui.data / "outputs" / "samples").exists()


def test_missing_model_stops_before_sending(webui, middleware_for, capsys):
    server = middleware_for()
    p = make_p(webui, switch_runner(webui), on=True, prompt="x <lora:unknown-style:1>")
    assert re.search(r"Lora 'unknown-style'.*upload it in the Amazon SageMaker tab", user_sees(webui, p, capsys))
    assert server.inference_bodies() == []
    webui.shared.opts.data["sd_model_checkpoint"] = None
    assert "No checkpoint is selected" in user_sees(webui, make_p(webui, switch_runner(webui), on=True), capsys)


def test_a_renamed_copy_is_found_by_content_once_a1111_has_hashed_it(webui, middleware_for):
    """The WebUI has not hashed this checkpoint yet: the switch has A1111 hash it (into its own cache) and
    finds the catalogue's checkpoint of the same content under its other name; embeddings likewise."""
    from modules import hashes, sd_models

    server = middleware_for()
    copy = webui.models / "Stable-diffusion" / "my-copy.safetensors"
    copy.write_bytes((webui.models / "Stable-diffusion" / "tiny.safetensors").read_bytes())
    (webui.data / "embeddings" / "badhands.pt").rename(webui.data / "embeddings" / "hands.pt")
    info = sd_models.CheckpointInfo(str(copy))  # no sha256 yet, as for a checkpoint A1111 never loaded
    info.register()
    webui.shared.opts.data["sd_model_checkpoint"] = info.title
    p = make_p(webui, switch_runner(webui), on=True, negative_prompt="hands, blurry")
    webui.processing.process_images(p)
    models = server.inference_bodies()[0]["models"]
    assert models["Stable-diffusion"] == [{"name": "tiny.safetensors", "sha256": CHECKPOINT_SHA256}]
    assert models["embeddings"] == [{"name": "badhands.pt", "sha256": EMBEDDING_SHA256}]
    assert "checkpoint/my-copy.safetensors" in hashes.computed and info.sha256 == CHECKPOINT_SHA256


def test_checkpoint_with_another_sha256_is_missing(webui, middleware_for, capsys):
    middleware_for()
    CATALOGUE[0]["sha256"], saved = "99" * 32, CATALOGUE[0]["sha256"]
    try:
        message = user_sees(webui, make_p(webui, switch_runner(webui), on=True), capsys)
    finally:
        CATALOGUE[0]["sha256"] = saved
    assert f"Stable-diffusion 'tiny.safetensors' (sha256 {CHECKPOINT_SHA256[:10]})" in message


def test_endpoint_not_in_service_and_worker_failure_are_reported(webui, middleware_for, capsys):
    middleware_for(fail_with="CUDA out of memory on the worker.")
    p = make_p(webui, switch_runner(webui), on=True, endpoint="ep-creating")
    assert "Endpoint ep-creating is Creating, not InService" in user_sees(webui, p, capsys)
    assert user_sees(webui, make_p(webui, switch_runner(webui), on=True), capsys) == (
        "The cloud job failed: CUDA out of memory on the worker.")


def test_no_url_and_middleware_down_are_one_sentence(webui, monkeypatch, capsys):
    monkeypatch.delenv("SD_AWS_API_URL", raising=False)
    message = user_sees(webui, make_p(webui, switch_runner(webui), on=True), capsys)
    assert message.startswith("No API URL is set: enter the middleware's URL")

    webui.shared.opts.data["sd_aws_api_url"] = f"http://127.0.0.1:{free_port()}"
    message = user_sees(webui, make_p(webui, switch_runner(webui), on=True), capsys)
    assert message.startswith("Cannot reach the middleware at http://127.0.0.1")


def test_a_user_error_through_the_api_is_an_http_error_without_traceback(webui, middleware_for, capsys):
    import modules.api.api

    server = middleware_for()
    p = make_p(webui, switch_runner(webui), on=True, prompt="x <lora:unknown-style:1>")
    status, answer = modules.api.api.call(modules.api.api.text2imgapi, p)
    assert status == 400 and answer["error"] == "HTTPException"
    assert answer["detail"].startswith("Not in the cloud catalogue: Lora 'unknown-style'")
    assert "Traceback" not in capsys.readouterr().err and server.inference_bodies() == []


def test_interrupt_cancels_the_cloud_job(webui, middleware_for):
    server = middleware_for(polls_before_done=1000)

    def interrupt_once_sent() -> None:
        while not server.inference_bodies():
            time.sleep(0.05)
        webui.shared.state.interrupt()

    thread = threading.Thread(target=interrupt_once_sent, daemon=True)
    thread.start()
    processed = webui.processing.process_images(make_p(webui, switch_runner(webui), on=True))
    thread.join(10)
    assert processed.images == [] and "cancelled" in processed.info
    assert any(method == "PUT" and path.endswith("/cancel") for method, path, _ in server.requests)


def test_two_users_at_once_get_their_own_images(webui, middleware_for):
    middleware_for(polls_before_done=3)
    runner = switch_runner(webui)
    results = {}

    def generate(prompt: str) -> None:
        results[prompt] = webui.processing.process_images(make_p(webui, runner, on=True, prompt=prompt,
                                                                 do_not_save_samples=True))

    threads = [threading.Thread(target=generate, args=(prompt,)) for prompt in ("user one", "user two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for prompt in ("user one", "user two"):
        assert results[prompt].images[0].getpixel((0, 0)) == color_of(prompt)
        assert results[prompt].infotexts[0].startswith(prompt)


def test_install_py_installs_only_what_is_missing(tmp_path):
    log = tmp_path / "pip.log"
    env = {**os.environ, "PYTHONPATH": str(HOST_DOUBLE), "HOST_DOUBLE_PIP_LOG": str(log)}
    subprocess.run([sys.executable, str(REPO / "install.py")], cwd=tmp_path, env=env, check=True, timeout=60)
    assert not log.exists()  # everything is there: nothing to do
    subprocess.run([sys.executable, str(REPO / "install.py")], cwd=tmp_path, check=True, timeout=60,
                   env={**env, "HOST_DOUBLE_MISSING": "tqdm"})
    assert log.read_text().splitlines() == ['install "tqdm>=4.60"']


def test_preload_adds_the_flags():
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("preload", REPO / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    module.preload(parser)
    args = parser.parse_args(["--sd-aws-api-url", "http://127.0.0.1:8080", "--sd-aws-api-key", "k"])
    assert (args.sd_aws_api_url, args.sd_aws_api_key) == ("http://127.0.0.1:8080", "k")


def test_loads_from_a_folder_with_any_name(tmp_path):
    """A fresh Python, the extension copied to extensions/<any name>, nothing else on the path."""
    extension = tmp_path / "extensions" / "my-sd-aws-copy"
    for name in ("aws_extension", "scripts", "javascript"):
        shutil.copytree(REPO / name, extension / name, ignore=shutil.ignore_patterns("__pycache__", "engine"))
    for name in ("install.py", "preload.py", "style.css"):
        shutil.copy(REPO / name, extension / name)
    check = ("import modules.scripts as s, modules.script_callbacks as c, modules.processing as p, sys;"
             f"s.load_scripts({str(extension)!r});"
             "import aws_extension; print(aws_extension.__file__);"
             "print(len(c.callbacks['ui_tabs']), [d.script_class.__name__ for d in s.scripts_data]);"
             "print(hasattr(p.process_images, '__sd_aws_original__'))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**env, "PYTHONPATH": str(HOST_DOUBLE), "GRADIO_ANALYTICS_ENABLED": "False"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(extension)) and lines[1:] == ["1 ['CloudSwitchScript']", "True"]


def test_endpoint_refresh_of_the_switch_lists_in_service_endpoints(webui, middleware_for):
    from aws_extension.webui.switch import refresh_endpoints

    middleware_for()
    dropdown, status = refresh_endpoints()
    assert dropdown["choices"] == ["ep-ready"] and dropdown["value"] == "ep-ready"
    assert status == "Done: 1 endpoint(s) InService."
    webui.shared.opts.data["sd_aws_api_url"] = f"http://127.0.0.1:{free_port()}"
    assert refresh_endpoints()[1].startswith("Error: Cannot reach the middleware")
