"""A real browser (Debian's Chromium + Playwright) clicks through the standalone UI against a real `sd-aws up`:
set the key, deploy an endpoint, upload a checkpoint file, generate, see the image in the gallery.

Screenshots go to $SD_AWS_UI_SCREENSHOTS (default <repo>/artifacts/ui-browser), printed at the start.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from pathlib import Path

import pytest

from aws_extension.ui.compat import GRADIO_MAJOR
from tests.helpers import REPO, SdAwsProcess, free_port
from tests.ui.conftest import STACK_KEY, TINY_CHECKPOINT

CHROMIUM = Path("/usr/bin/chromium")
# Every host but the loopback fails to resolve, so nothing leaves the machine. Request interception (page.route)
# would do the same but intermittently stalls Chromium's multipart uploads, which this test makes.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
UPLOADED_CHECKPOINT = "browser-tiny.safetensors"
ENDPOINT = "browser-ep"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by .ci/ui.sh")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is installed by .ci/ui.sh", allow_module_level=True)
expect = sync_api.expect


@pytest.fixture
def standalone_ui(stack, tmp_path):
    """`sd-aws ui` pointed at the stack, with no API key anywhere: the user sets it in the browser."""
    port = free_port()
    ui = SdAwsProcess(["ui", "--port", str(port), "--api-url", stack.url], port, ready_path="/",
                      env={"SD_AWS_API_KEY": "", "SD_AWS_HOME": str(tmp_path / "empty-home")},
                      log_path=tmp_path / "ui.log")
    ui.start(timeout_s=90)  # this Python: the gradio under test
    yield ui
    ui.stop()


@pytest.fixture
def screenshots(capsys) -> Path:
    folder = Path(os.environ.get("SD_AWS_UI_SCREENSHOTS") or REPO / "artifacts" / "ui-browser")
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nbrowser screenshots: {folder}", flush=True)
    return folder


def open_tab(page, name: str) -> None:
    if GRADIO_MAJOR < 4:  # 3.41 tab buttons have no tab role
        page.locator(".tab-nav button").filter(has_text=re.compile(f"^\\s*{re.escape(name)}\\s*$")).first.click()
    else:
        page.get_by_role("tab", name=name).click()


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f'[data-testid=dropdown-option][aria-label="{option}"]').first.click()


def text_field(page, elem_id: str):
    """A Textbox's field: an input on gradio 3.41 and for passwords, a textarea for text on 4+."""
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def table_cells(table) -> str:
    """A Dataframe's text as "cell | cell | ..." (gradio puts every cell on a line of its own)."""
    return " | ".join(line.strip() for line in table.inner_text().splitlines() if line.strip())


def set_number(page, elem_id: str, value: int) -> None:
    field = page.locator(f"#{elem_id} input[type=number]").first
    field.fill(str(value))
    field.press("Enter")


def _with_metadata(source: Path, target: Path, metadata: dict[str, str]) -> None:
    """A copy of a safetensors file with metadata added to its header (stdlib: this venv may have no torch)."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    header["__metadata__"] = {**header.get("__metadata__", {}), **metadata}
    raw = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])


def test_click_through_the_standalone_ui(stack, standalone_ui, screenshots, tmp_path):
    checkpoint = tmp_path / UPLOADED_CHECKPOINT  # the tiny model with its own metadata: content of its own
    _with_metadata(stack.models / "Stable-diffusion" / TINY_CHECKPOINT, checkpoint, {"uploaded_by": "the browser test"})
    failed_loopback: list[str] = []  # the UI's own requests that failed: each one is a bug

    def record_failure(request) -> None:
        # ERR_ABORTED is the page cancelling a request itself (gradio closes its event streams that way)
        if request.url.startswith("http://127.0.0.1:") and request.failure != "net::ERR_ABORTED":
            failed_loopback.append(f"{request.method} {request.url}: {request.failure}")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("requestfailed", record_failure)
            page.goto(standalone_ui.url, wait_until="domcontentloaded")
            open_tab(page, "Amazon SageMaker")

            # Settings: save the key, then test the connection
            key_field = text_field(page, "sd_aws_api_key")
            key_field.fill(STACK_KEY)
            page.locator("#sd_aws_save_settings").click()
            result = page.locator("#sd_aws_settings_result").first
            expect(result).to_contain_text("Saved", timeout=30_000)
            expect(key_field).to_have_value("")
            assert STACK_KEY not in (key_field.get_attribute("placeholder") or "")
            page.locator("#sd_aws_test_connection").click()
            expect(result).to_contain_text("Connected to", timeout=30_000)
            page.screenshot(path=str(screenshots / "1-settings.png"), full_page=True)

            # Endpoints: deploy a local one
            open_tab(page, "Endpoints")
            choose(page, "sd_aws_instance_type", "local")
            text_field(page, "sd_aws_endpoint_name").fill(ENDPOINT)
            page.locator("#sd_aws_deploy").click()
            expect(page.locator("#sd_aws_endpoints_status").first).to_contain_text(f"Deploying {ENDPOINT}",
                                                                                 timeout=30_000)

            # Cloud models: upload the checkpoint file from "the user's computer"
            open_tab(page, "Cloud models")
            page.locator("#sd_aws_computer_files input[type=file]").set_input_files(str(checkpoint))
            # the browser → gradio upload is done when the size shows ("Uploading..." before, on 3.41)
            expect(page.locator("#sd_aws_computer_files")).to_contain_text("MB", timeout=60_000)
            page.locator("#sd_aws_upload_computer").click()
            expect(page.locator("#sd_aws_upload_status").first).to_contain_text(f"Uploaded {UPLOADED_CHECKPOINT}",
                                                                               timeout=60_000)
            expect(page.locator("#sd_aws_models_table")).to_contain_text(UPLOADED_CHECKPOINT, timeout=30_000)
            page.screenshot(path=str(screenshots / "2-cloud-models.png"), full_page=True)

            # Endpoints: refresh until the new endpoint is InService
            open_tab(page, "Endpoints")
            table = page.locator("#sd_aws_endpoints_table")
            deadline = time.monotonic() + 180
            while f"{ENDPOINT} | success | InService" not in table_cells(table):
                if time.monotonic() > deadline:
                    page.screenshot(path=str(screenshots / "3-endpoints-timeout.png"), full_page=True)
                    raise AssertionError(f"{ENDPOINT} never showed InService: {table.inner_text()}")
                page.locator("#sd_aws_endpoints_refresh").click()
                time.sleep(2)
            page.screenshot(path=str(screenshots / "3-endpoints.png"), full_page=True)

            # txt2img on the new endpoint with the uploaded checkpoint
            open_tab(page, "txt2img")
            page.locator("#sd_aws_txt2img_refresh").click()
            expect(page.locator("#sd_aws_txt2img_status").first).to_contain_text("InService", timeout=30_000)
            choose(page, "sd_aws_txt2img_endpoint", ENDPOINT)
            choose(page, "sd_aws_txt2img_checkpoint", UPLOADED_CHECKPOINT)
            text_field(page, "sd_aws_txt2img_prompt").fill("a lighthouse at dusk")
            for elem_id, value in (("sd_aws_txt2img_width", 64), ("sd_aws_txt2img_height", 64),
                                   ("sd_aws_txt2img_steps", 3)):
                set_number(page, elem_id, value)
            page.locator("#sd_aws_txt2img_generate").click()
            expect(page.locator("#sd_aws_txt2img_status").first).to_contain_text("1 image(s)", timeout=180_000)
            expect(page.locator("#sd_aws_txt2img_gallery img").first).to_be_visible(timeout=30_000)
            expect(text_field(page, "sd_aws_txt2img_infotext")).to_have_value(
                re.compile("a lighthouse at dusk.*Steps: 3", re.S))
            page.screenshot(path=str(screenshots / "4-txt2img.png"), full_page=True)
        finally:
            browser.close()
    job = stack.client.list_inference_jobs(endpoint=ENDPOINT, limit=1)[0]
    assert job["status"] == "succeed" and job["endpoint_name"] == ENDPOINT
    assert not failed_loopback
