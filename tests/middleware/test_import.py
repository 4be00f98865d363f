"""POST /upload_checkpoint: background downloads from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import time

import requests

from tests.helpers import FileServer
from tests.middleware.conftest import safetensors_bytes

LORA = safetensors_bytes({"lora_unet_x.lora_down.weight": ("F32", [64, 64]), "lora_unet_x.alpha": ("F32", [1])}, 3)


def _import(middleware, headers, urls, checkpoint_type="Lora", params=None):
    return requests.post(f"{middleware.url}/upload_checkpoint", headers=headers, timeout=10, json={
        "checkpointType": checkpoint_type, "modelUrl": urls, "params": params or {"message": "imported"}})


def test_import_with_content_disposition_name_and_progress(middleware, headers, client):
    chunks = [LORA[i:i + 2048] for i in range(0, len(LORA), 2048)]

    def slow_body():
        for chunk in chunks:
            time.sleep(0.25)
            yield chunk

    routes = {"/api/download/models/1": lambda hit: (200, {
        "Content-Disposition": 'attachment; filename="detail-tweaker.safetensors"',
        "Content-Length": str(len(LORA))}, slow_body())}
    with FileServer(routes) as server:
        answer = _import(middleware, headers, [server.url + "/api/download/models/1"],
                         params={"message": "m", "civitai_token": "secret-token"})
        assert answer.status_code == 200, answer.text
        record = answer.json()["checkpoint"]
        assert record["status"] == "Initialed" and "civitai_token" not in record["params"]
        seen_progress = []
        final = client.wait_for_checkpoint(record["id"], timeout_s=60, poll_s=0.2,
                                           on_update=lambda r: seen_progress.append(r.get("progress")))
    assert final["status"] == "Active", final
    assert final["name"] == ["detail-tweaker.safetensors"]
    assert final["sha256"] == hashlib.sha256(LORA).hexdigest() and final["size"] == len(LORA)
    partial = [p["bytes_received"] for p in seen_progress if p and 0 < p["bytes_received"] < len(LORA)]
    assert partial, f"no progress seen between 0 and the total: {seen_progress}"
    assert "secret-token" not in str(client.list_checkpoints())


def test_import_retries_transient_errors(middleware, headers, client):
    routes = {"/flaky/lora.safetensors": lambda hit: (503, {}, b"busy") if hit == 1 else (200, {}, LORA)}
    with FileServer(routes) as server:
        record = _import(middleware, headers, [server.url + "/flaky/lora.safetensors"]).json()["checkpoint"]
        final = client.wait_for_checkpoint(record["id"], timeout_s=60, poll_s=0.2)
        assert server.hits["/flaky/lora.safetensors"] == 2
    assert final["status"] == "Active" and final["name"] == ["lora.safetensors"]


def test_import_404_fails_with_reason(middleware, headers, client):
    with FileServer({}) as server:
        record = _import(middleware, headers, [server.url + "/missing.safetensors"]).json()["checkpoint"]
        final = client.wait_for_checkpoint(record["id"], timeout_s=60, poll_s=0.2)
    assert final["status"] == "Failed" and "404" in final["error"]


def test_import_over_the_cap_fails(middleware, headers, client):
    routes = {"/huge.safetensors": (200, {"Content-Length": str(60 * 1024**3)}, b"")}
    with FileServer(routes) as server:
        record = _import(middleware, headers, [server.url + "/huge.safetensors"]).json()["checkpoint"]
        final = client.wait_for_checkpoint(record["id"], timeout_s=60, poll_s=0.2)
    assert final["status"] == "Failed" and "over the import limit" in final["error"]


def test_import_of_a_non_model_fails(middleware, headers, client):
    with FileServer({"/page.html": (200, {}, b"<html>not a model</html>")}) as server:
        record = _import(middleware, headers, [server.url + "/page.html"]).json()["checkpoint"]
        final = client.wait_for_checkpoint(record["id"], timeout_s=60, poll_s=0.2)
    assert final["status"] == "Failed" and "unsupported file type" in final["error"]


def test_import_refuses_file_urls_and_bad_input(middleware, headers, client):
    before = len(client.list_checkpoints())
    for urls, status, words in [(["file:///etc/passwd"], 400, "only http and https"),
                                (["ftp://example.com/x"], 400, "only http and https"),
                                ([], 400, "modelUrl is empty"),
                                (["http://no-such-host.invalid/x"], 400, "cannot be resolved")]:
        response = _import(middleware, headers, urls)
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
    assert _import(middleware, headers, ["http://x/y"], checkpoint_type="Bogus").status_code == 422
    assert len(client.list_checkpoints()) == before


def test_an_import_declaring_its_sha256_is_content_addressed(middleware, headers, client):
    content = safetensors_bytes({"lora_unet_y.lora_down.weight": ("F32", [32]), "lora_unet_y.alpha": ("F32", [1])}, 9)
    sha256 = hashlib.sha256(content).hexdigest()
    with FileServer({"/m.safetensors": (200, {}, content)}) as server:
        first = _import(middleware, headers, [server.url + "/m.safetensors"], params={"sha256": sha256}).json()
        assert client.wait_for_checkpoint(first["checkpoint"]["id"], timeout_s=60, poll_s=0.2)["status"] == "Active"
        again = _import(middleware, headers, [server.url + "/m.safetensors"], params={"sha256": sha256.upper()})
        assert again.json()["checkpoint"]["id"] == first["checkpoint"]["id"]  # known content: no download
        assert server.hits["/m.safetensors"] == 1
        lied = _import(middleware, headers, [server.url + "/m.safetensors"], params={"sha256": "1" * 64}).json()
        final = client.wait_for_checkpoint(lied["checkpoint"]["id"], timeout_s=60, poll_s=0.2)
    assert final["status"] == "Failed" and "not the declared" in final["error"]
    bad = _import(middleware, headers, ["http://127.0.0.1:9/x"], params={"sha256": ["a" * 64, "b" * 64]})
    assert bad.status_code == 400 and "each of the 1 URLs" in bad.json()["error"]
