"""The Amazon SageMaker tab's handlers against a real middleware, and the standalone app served by gradio.

Runs on the newest gradio and, in .ci/ui.sh's venvs, on gradio 3.41.2 (A1111's pins) and 4.40.0 (Forge's).
"""

from __future__ import annotations

import base64
import io

import pytest
import requests
from PIL import Image

from aws_extension.ui.app import build_app
from aws_extension.ui.connection import MemoryConnectionStore
from aws_extension.ui.sagemaker_tab import ALL_TYPES, CHECKPOINT_HEADERS, SageMakerTab
from tests.helpers import FileServer, free_port
from tests.middleware.conftest import safetensors_bytes
from tests.ui.conftest import API_KEY, ProgressRecorder

LORA_TENSORS = {"lora_unet_down_blocks_0_attn.lora_down.weight": ("F32", [256]),
                "lora_unet_down_blocks_0_attn.alpha": ("F32", [1])}


def png_file(path, color) -> str:
    Image.new("RGB", (32, 32), color).save(path)
    return str(path)


def test_settings_save_masks_the_key_and_test_connection(store, middleware):
    tab = SageMakerTab(MemoryConnectionStore("", None))
    message, key_field = tab.save_settings(middleware.url, API_KEY)
    assert message.startswith("Done:") and API_KEY not in message
    assert key_field["value"] == "" and API_KEY not in key_field["placeholder"]
    assert tab.store.api_key() == API_KEY
    assert tab.test_connection(middleware.url, "").startswith("Done: Connected to")  # the saved key
    assert tab.test_connection(middleware.url, "wrong-key") == \
        "Error: The middleware refused the API key: check the key in Settings."
    assert "asks for an API key" in SageMakerTab(MemoryConnectionStore("", None)).test_connection(middleware.url, "")
    down = f"http://127.0.0.1:{free_port()}"
    assert tab.test_connection(down, API_KEY).startswith(f"Error: Cannot reach the middleware at {down}")
    assert tab.test_connection("", API_KEY).startswith("Error: No API URL is set")
    assert tab.save_settings("  ", "k")[0].startswith("Error: Enter the middleware's URL")


def test_api_url_without_scheme_is_normalised_and_a_bad_one_explained(middleware):
    tab = SageMakerTab(MemoryConnectionStore("", None))
    host_port = middleware.url.split("://", 1)[1]
    message, _ = tab.save_settings(host_port, API_KEY)  # "127.0.0.1:PORT" gave requests' InvalidSchema before
    assert message.startswith(f"Done: Saved (as http://{host_port})") and tab.store.api_url() == middleware.url
    assert tab.test_connection(host_port, API_KEY).startswith(f"Done: Connected to {middleware.url}")
    assert tab.endpoint_table()[2].startswith("Done:")
    assert tab.save_settings("ftp://example.com", "")[0] == (
        "Error: The API URL ftp://example.com is not an http(s) URL: enter it as http://host:port or "
        "https://host/stage.")
    assert tab.store.api_url() == middleware.url  # a refused URL is not saved
    assert tab.default_instance_type() == "local"


def test_no_url_or_server_down_keeps_every_tab_working(middleware):
    for store in (MemoryConnectionStore("", None), MemoryConnectionStore(f"http://127.0.0.1:{free_port()}", "k")):
        tab = SageMakerTab(store)
        table, status = tab.checkpoint_table(ALL_TYPES)
        assert table == {"headers": CHECKPOINT_HEADERS, "data": []} and status.startswith("Error:")
        for table, _, status in (tab.endpoint_table(), tab.dataset_table(), tab.job_table()):
            assert table["data"] == [] and table["headers"] and status.startswith("Error:")


def test_upload_from_computer_and_webui_folders_with_progress(store, tmp_path):
    lora_dir = tmp_path / "models" / "Lora"
    (lora_dir / "styles").mkdir(parents=True)
    (lora_dir / "styles" / "ink-style.safetensors").write_bytes(safetensors_bytes(LORA_TENSORS, 1))
    (lora_dir / "readme.txt").write_text("not listed")
    tab = SageMakerTab(store, {"Lora": [lora_dir]})
    assert tab.local_file_choices("Lora")["choices"] == ["styles/ink-style.safetensors"]
    progress = ProgressRecorder()
    message = tab.upload_local("Lora", ["styles/ink-style.safetensors"], progress=progress)
    assert message.startswith("Done: Uploaded ink-style.safetensors as Lora"), message
    assert progress.fractions[-1] == 1.0

    computer_file = tmp_path / "upload" / "paper-cut.safetensors"
    computer_file.parent.mkdir()
    computer_file.write_bytes(safetensors_bytes(LORA_TENSORS, 2))
    assert tab.upload_from_computer("Lora", [str(computer_file)], progress=ProgressRecorder()).startswith("Done:")

    rows, status = tab.checkpoint_table("Lora")
    by_name = {row[0]: row for row in rows["data"]}
    assert {"ink-style.safetensors", "paper-cut.safetensors"} <= set(by_name) and status.startswith("Done:")
    name, model_type, model_status, size, sha_prefix, created = by_name["paper-cut.safetensors"]
    assert (model_type, model_status, len(sha_prefix)) == ("Lora", "Active", 10) and size.endswith("KiB") and created
    assert not any(row[0] == "paper-cut.safetensors" for row in tab.checkpoint_table("VAE")[0]["data"])


def test_upload_of_a_non_model_file_is_refused(store, tmp_path):
    tab = SageMakerTab(store)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    assert tab.upload_from_computer("Lora", [str(text_file)], progress=ProgressRecorder()) == \
        "Error: notes.txt is not a model file (model files end in .safetensors, .ckpt, .pt, .pth, .bin)."
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"this is not a safetensors file at all")
    message = tab.upload_from_computer("Lora", [str(fake)], progress=ProgressRecorder())
    assert message.startswith("Error:") and "fake.safetensors" in message
    assert tab.upload_from_computer("Lora", None, progress=ProgressRecorder()).startswith("Error: Choose at least one")


def test_import_by_url_shows_live_status(store):
    lora = safetensors_bytes(LORA_TENSORS, 3)
    tab = SageMakerTab(store)
    with FileServer({"/models/night.safetensors": (200, {}, lora)}) as server:
        statuses = list(tab.import_by_url("Lora", server.url + "/models/night.safetensors", "", ""))
    assert statuses[0].startswith("Import started (checkpoint ")
    assert statuses[-1] == "Done: Imported night.safetensors as Lora."
    with FileServer({}) as server:
        failed = list(tab.import_by_url("Lora", server.url + "/missing.safetensors", "", ""))
    assert failed[-1].startswith("Error: The import failed:")
    assert list(tab.import_by_url("Lora", "  ", "", "")) == ["Error: Enter at least one http(s) URL of a model file."]


def test_dataset_create_list_preview_and_without_images(store, tmp_path):
    tab = SageMakerTab(store)
    files = [png_file(tmp_path / "a.png", "red"), png_file(tmp_path / "b.png", "green")]
    (tmp_path / "caption.txt").write_text("a caption")
    message = tab.create_dataset("cats-1", "two cats", [*files, str(tmp_path / "caption.txt")],
                                 progress=ProgressRecorder())
    assert message == "Done: Dataset cats-1 is Enabled with 2 image(s); skipped 1 file(s) that are not images."
    datasets, choices, _ = tab.dataset_table()
    rows = datasets["data"]
    assert rows[[r[0] for r in rows].index("cats-1")][:2] == ["cats-1", "Enabled"] and "cats-1" in choices["choices"]
    images, status = tab.preview_dataset("cats-1")
    assert len(images) == 2 and status == "Done: cats-1: 2 file(s)."
    assert {img.convert("RGB").getpixel((0, 0)) for img in images} == {(255, 0, 0), (0, 128, 0)}
    assert tab.create_dataset("empty-1", "", [str(tmp_path / "caption.txt")], progress=ProgressRecorder()) == \
        "Error: A dataset needs at least one image (PNG, JPEG, WebP or BMP)."
    assert tab.create_dataset("", "", files, progress=ProgressRecorder()).startswith("Error: Enter a dataset name")


def test_endpoint_delete_asks_for_confirmation_first():
    tab = SageMakerTab(MemoryConnectionStore("", None))
    row, message = tab.ask_delete([])
    assert row["visible"] is False and message.startswith("Error: Choose")
    row, message = tab.ask_delete(["ep-1"])
    assert row["visible"] is True and message.startswith("Confirm: Delete ep-1?")


@pytest.fixture
def served_app(store):
    app = build_app(store)
    app.queue()
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}"
    app.close()


def test_standalone_app_serves_every_tab(served_app):
    config = requests.get(served_app + "/config", timeout=10).json()
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"txt2img", "img2img", "Amazon SageMaker", "Settings", "Cloud models", "Endpoints", "Datasets",
            "Jobs"} <= labels | {c.get("props", {}).get("name") for c in config["components"]}
    assert {"sd_aws_txt2img_generate", "sd_aws_img2img_init_image", "sd_aws_api_key", "sd_aws_deploy"} <= elem_ids
    page = requests.get(served_app + "/", timeout=10)
    assert page.status_code == 200


def test_standalone_generate_refuses_incomplete_input(store):
    from aws_extension.ui.generate import GenerateTab

    txt2img, img2img = GenerateTab(store, "txt2img"), GenerateTab(store, "img2img")
    args = ("prompt", "", "Euler a", 4, 7, 64, 64, -1, 1)
    assert list(txt2img.generate(None, "m.safetensors", *args))[-1][-1].startswith("Error: Choose an InService endpoint")
    assert list(txt2img.generate("ep", None, *args))[-1][-1].startswith("Error: Choose a checkpoint")
    assert list(img2img.generate("ep", "m.safetensors", *args))[-1][-1] == "Error: Add an input image for img2img."
    body = img2img.build_request("ep", "m.safetensors", *args, Image.new("RGB", (8, 8)), 0.5)
    assert body["task_type"] == "img2img" and body["denoising_strength"] == 0.5
    assert Image.open(io.BytesIO(base64.b64decode(body["init_images"][0]))).size == (8, 8)
