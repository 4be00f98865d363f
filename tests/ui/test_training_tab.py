"""The Training tab against a real local middleware that trains (`sd-aws serve`, training processes on the
learnable tiny model): its handlers, the standalone app's wiring, and a real browser that trains a LoRA.

Steps are few and images 64 px. Runs on the newest gradio and in .ci/ui.sh's host venvs (3.41.2, 4.40.0).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from PIL import Image

from aws_extension.client import MiddlewareClient
from aws_extension.ui.app import build_app
from aws_extension.ui.connection import MemoryConnectionStore
from aws_extension.ui.training_tab import DREAMBOOTH, LORA, TrainingTab, with_lora
from tests.helpers import REPO, SdAwsProcess, free_port, start_middleware
from tests.ui.conftest import TINY_CHECKPOINT, ProgressRecorder, start_server

# the first test also waits for the module's middleware and the session's learnable model (~80 s to build)
pytestmark = pytest.mark.timeout(600)
HOST_VENV = bool(os.environ.get("SD_AWS_TEST_SERVER_PYTHON"))  # .ci/ui.sh's venvs with a host's gradio
# The handlers do not depend on gradio's version: the host venvs run the browser test, which trains once.
trains_on_the_main_venv_only = pytest.mark.skipif(HOST_VENV, reason="the same handlers run on the main venv")
API_KEY = "training-tab-key"
BASE = "training-base.safetensors"
DATASET = "sks-red"
RED = (220, 20, 20)


def red_images(folder: Path, count: int = 2) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        Image.new("RGB", (64, 64), RED).save(folder / f"red-{i}.png")
        paths.append(str(folder / f"red-{i}.png"))
    (folder / "red-0.txt").write_text("sks")
    return [*paths, str(folder / "red-0.txt")]


@pytest.fixture(scope="module")
def base_file(request) -> Path:
    """A tiny model to train on, built by fixtures the session has anyway: the training tests' learnable one,
    or in a host venv (no engine there) the tiny checkpoint of the UI tests' `sd-aws up`. The tab's tests need
    a training that runs, not one that learns."""
    if HOST_VENV:
        return request.getfixturevalue("stack").models / "Stable-diffusion" / TINY_CHECKPOINT
    return request.getfixturevalue("learnable_checkpoint")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory, base_file):
    """A middleware that trains on this machine's CPU, with the base Active and a dataset of red images
    captioned `sks`."""
    root = tmp_path_factory.mktemp("training-tab")
    server = start_server(start_middleware, root / "data", API_KEY, env={"SD_AWS_DEVICE": "cpu"})
    try:
        client = MiddlewareClient(server.url, API_KEY, timeout_s=60)
        base = root / BASE
        base.write_bytes(base_file.read_bytes())
        client.upload_checkpoint_files("Stable-diffusion", [base])
        client.create_dataset_from_files(DATASET, [Path(p) for p in red_images(root / "images")])
        yield server
    finally:
        server.stop()


@pytest.fixture
def tab(trainer) -> TrainingTab:
    return TrainingTab(MemoryConnectionStore(trainer.url, API_KEY))


def form(**changes) -> dict:
    """The Start button's inputs: a short LoRA at 64 px with a sample every 2 steps."""
    values = dict(base=BASE, train_type=LORA, dataset=DATASET, instance_prompt="sks", instance_token="",
                  class_prompt="", class_images=0, steps=4, learning_rate=1e-3, rank=4, resolution=64,
                  instance_type="local", model_name="", preview_prompt="sks", preview_every=2)
    return {**values, **changes}


def start(tab: TrainingTab, **changes) -> tuple[list[str], str]:
    """Run Start's generator; its messages and the job id it ends with ("" when it refused)."""
    updates = list(tab.start(**form(**changes)))
    job_id = updates[-1][1]
    return [message for message, _ in updates], job_id if isinstance(job_id, str) else ""


def follow(tab: TrainingTab, job_id: str, until=lambda view: not view.following, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = tab.view(job_id)
        if until(view):
            return view
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not get there: {view.progress}")


@trains_on_the_main_venv_only
def test_a_lora_trains_from_the_tab_and_goes_into_a_prompt(tab, trainer):
    base, dataset, message = tab.choices(None, None)
    assert BASE in base["choices"] and base["value"] == BASE and DATASET in dataset["choices"], message
    messages, job_id = start(tab, model_name="sks-red")
    assert messages[0] == f"Preparing the training base from {BASE}…"
    assert messages[-1] == f"Done: Started LoRA job {job_id}: 4 steps on {DATASET}."

    view = follow(tab, job_id)
    assert re.fullmatch(rf"Job {job_id} \(LoRA\): \*\*Complete\*\*, step 4 / 4, loss \d+\.\d{{4}}; "
                        r"`sks-red\.safetensors` is Active in the cloud catalogue\.", view.progress), view.progress
    assert len(view.samples) == 2 and view.samples[0].size == (64, 64)  # at step 2 and at the end
    assert view.lora == "<lora:sks-red:1>"
    prompt, status = tab.add_lora_to_prompt(view.lora, "a photo of sks")
    assert prompt["value"] == "a photo of sks <lora:sks-red:1>" and status == "Done: Added `<lora:sks-red:1>` to the " \
        "txt2img prompt."
    assert tab.add_lora_to_prompt(view.lora, prompt["value"])[1] == "Done: The txt2img prompt already has " \
        "`<lora:sks-red:1>`."
    client = MiddlewareClient(trainer.url, API_KEY)
    assert any("sks-red.safetensors" in r["name"] for r in client.list_checkpoints(["Lora"], ["Active"]))

    rows, choices, message = tab.job_table()
    assert rows["data"][0][:5] == [job_id, LORA, "Complete", "4 / 4", "sks-red"] and job_id in choices["choices"]


@trains_on_the_main_venv_only
def test_dreambooth_on_the_same_base_reuses_its_training_model(tab, trainer):
    client = MiddlewareClient(trainer.url, API_KEY)
    _, again = start(tab, train_type=DREAMBOOTH, learning_rate=1e-5, preview_every=0, steps=2)
    assert again and len(client.list_training_models()) == 1  # the one the LoRA test made, or made now
    view = follow(tab, again)
    assert view.progress.startswith(f"Job {again} (DreamBooth): **Complete**, step 2 / 2") and view.lora == ""
    assert ".safetensors` is Active in the cloud catalogue." in view.progress
    assert view.samples == []


@trains_on_the_main_venv_only
def test_stop_then_resume_continues_from_the_saved_state(tab):
    _, job_id = start(tab, steps=2000, preview_every=0)
    follow(tab, job_id, until=lambda view: ", step " in view.progress and "step 0 /" not in view.progress)
    message = tab.stop(job_id)
    assert message.startswith(f"Done: Stopped job {job_id} at step ") or message == \
        f"Done: Stopping job {job_id}: it is saving its state.", message
    stopped = follow(tab, job_id)
    assert "**Stopped** at step " in stopped.progress and "Resume continues from its saved state" in stopped.progress
    step = int(stopped.progress.split("at step ")[1].split(" /")[0])
    assert 0 < step < 2000
    assert tab.resume(job_id) == f"Done: Resumed job {job_id} from step {step}."
    assert tab.resume(job_id) == f"Error: training job {job_id} is already Training."
    follow(tab, job_id, until=lambda view: "**Training**, step" in view.progress)
    assert tab.stop(job_id).startswith("Done: Stop")
    assert "**Stopped**" in follow(tab, job_id).progress


def test_bad_input_is_one_sentence_before_anything_starts(tab):
    assert start(tab, base=None)[0] == ["Error: Choose a base model: an Active Stable-diffusion checkpoint (press "
                                        "Refresh; upload one in Cloud models)."]
    assert start(tab, dataset="")[0] == ["Error: Choose a dataset, or upload images (and their captions) below."]
    assert start(tab, instance_prompt=" ")[0][0].startswith("Error: Enter an instance prompt")
    assert start(tab, steps=None)[0] == ["Error: Steps must be a whole number of at least 1."]
    # the middleware's own sentences
    assert start(tab, resolution=100)[0][-1] == \
        "Error: config_params.resolution: resolution must be a multiple of 64, not 100."
    assert start(tab, rank=2000)[0][-1] == \
        "Error: config_params.lora_unet_rank: lora_unet_rank must be between 1 and 1024, not 2000."
    assert start(tab, instance_type="ml.g5.xlarge")[0][-1].startswith(
        "Error: training_params.training_instance_type: ml.g5.xlarge is a SageMaker training instance")
    messages, job_id = start(tab, base="gone.safetensors")
    assert messages[-1] == "Error: gone.safetensors is not an Active Stable-diffusion checkpoint any more: press " \
        "Refresh." and not job_id
    assert tab.stop("").startswith("Error: No job is shown") and tab.resume("").startswith("Error: No job is shown")
    assert tab.stop("no-such-job") == "Error: training job no-such-job does not exist."
    assert tab.view("no-such-job").progress == "Error: training job no-such-job does not exist."
    assert tab.add_lora_to_prompt("", "a cat")[1].startswith("Error: No finished LoRA is shown")


def test_upload_images_with_captions_as_the_dataset(tab, tmp_path):
    files = red_images(tmp_path / "upload")
    (tmp_path / "upload" / "notes.txt").write_text("not a caption of any image")
    dataset, message = tab.upload_dataset("red-upload", [*files, str(tmp_path / "upload" / "notes.txt")],
                                          progress=ProgressRecorder())
    assert message == "Done: Dataset red-upload is Enabled with 2 image(s) and 1 caption(s); skipped 1 file(s) " \
        "that are not images."
    assert dataset["value"] == "red-upload" and {"red-upload", DATASET} <= set(dataset["choices"])
    assert tab.upload_dataset("", files, progress=ProgressRecorder())[1].startswith("Error: Enter a dataset name")


def test_no_middleware_keeps_the_tab_working():
    tab = TrainingTab(MemoryConnectionStore(f"http://127.0.0.1:{free_port()}", "k"))
    assert tab.choices(None, None)[2].startswith("Error: Cannot reach the middleware")
    rows, _, message = tab.job_table()
    assert rows["data"] == [] and message.startswith("Error: Cannot reach")
    assert list(tab.start(**form()))[-1][0].startswith("Error: Cannot reach the middleware")


def test_the_lora_call_is_appended_as_the_webui_adds_it():
    assert with_lora("", "<lora:a:1>") == "<lora:a:1>"
    assert with_lora("a cat", "<lora:a:1>") == "a cat <lora:a:1>"
    assert with_lora("a cat\n", "<lora:a:1>") == "a cat\n<lora:a:1>"
    assert with_lora("a cat <lora:a:1>", "<lora:a:1>") == "a cat <lora:a:1>"


def test_the_standalone_app_wires_the_lora_button_to_its_txt2img_prompt():
    config = build_app(MemoryConnectionStore("", None)).get_config_file()
    by_elem_id = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}
    button = by_elem_id["sd_aws_train_use_lora"]
    click = next(d for d in config["dependencies"]
                 if button in [t[0] if isinstance(t, list | tuple) else t for t in d["targets"]])
    prompt = by_elem_id["sd_aws_txt2img_prompt"]
    assert click["inputs"] == [by_elem_id["sd_aws_train_lora"], prompt] and click["outputs"][0] == prompt
    assert next(c for c in config["components"] if c["id"] == button)["props"].get("visible", True) is not False


# -- a real browser ------------------------------------------------------------------------------------------
@pytest.fixture
def standalone_ui(trainer, tmp_path):
    port = free_port()
    ui = SdAwsProcess(["ui", "--port", str(port), "--api-url", trainer.url], port, ready_path="/",
                      env={"SD_AWS_API_KEY": API_KEY}, log_path=tmp_path / "ui.log")
    ui.start(timeout_s=90)
    yield ui
    ui.stop()


def test_a_browser_trains_a_lora_and_puts_it_into_the_txt2img_prompt(standalone_ui):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by .ci/ui.sh")
    from tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS, choose, open_tab, set_number, text_field

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is installed by .ci/ui.sh")
    expect = sync_api.expect
    screenshots = Path(os.environ.get("SD_AWS_UI_SCREENSHOTS") or REPO / "artifacts" / "ui-browser")
    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(standalone_ui.url, wait_until="domcontentloaded")
            open_tab(page, "Amazon SageMaker")
            open_tab(page, "Training")
            page.locator("#sd_aws_train_refresh").click()
            expect(page.locator("#sd_aws_train_status").first).to_contain_text("base model(s)", timeout=30_000)
            choose(page, "sd_aws_train_base", BASE)
            choose(page, "sd_aws_train_dataset", DATASET)
            text_field(page, "sd_aws_train_instance_prompt").fill("sks")
            text_field(page, "sd_aws_train_model_name").fill("browser-sks")
            for elem_id, value in (("sd_aws_train_steps", 4), ("sd_aws_train_resolution", 64),
                                   ("sd_aws_train_preview_every", 2), ("sd_aws_train_learning_rate", 0.001)):
                set_number(page, elem_id, value)
            page.locator("#sd_aws_train_start").click()
            expect(page.locator("#sd_aws_train_status").first).to_contain_text("Started LoRA job", timeout=60_000)
            progress = page.locator("#sd_aws_train_progress").first
            expect(progress).to_contain_text("Complete", timeout=240_000)
            expect(progress).to_contain_text("step 4 / 4")
            expect(page.locator("#sd_aws_train_samples img").first).to_be_visible(timeout=30_000)
            expect(text_field(page, "sd_aws_train_lora")).to_have_value("<lora:browser-sks:1>")
            page.screenshot(path=str(screenshots / "training-1-complete.png"), full_page=True)

            open_tab(page, "txt2img")
            text_field(page, "sd_aws_txt2img_prompt").fill("a photo of sks")
            open_tab(page, "Amazon SageMaker")
            page.locator("#sd_aws_train_use_lora").click()
            expect(page.locator("#sd_aws_train_status").first).to_contain_text("Added <lora:browser-sks:1>")
            open_tab(page, "txt2img")
            expect(text_field(page, "sd_aws_txt2img_prompt")).to_have_value("a photo of sks <lora:browser-sks:1>")
            page.screenshot(path=str(screenshots / "training-2-txt2img.png"), full_page=True)
        finally:
            browser.close()
