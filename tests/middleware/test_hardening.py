"""What an adversarial pass over the running middleware broke, one test per item (issue: hardening)."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time

import pytest
import requests
import uvicorn

from aws_extension.client import ApiError, MiddlewareClient
from aws_extension.middleware.guards import UnexpectedErrors
from tests.helpers import free_port, start_middleware
from tests.middleware.conftest import API_KEY, fake_lora, safetensors_bytes

LONE_SURROGATE = '"\\ud800"'  # JSON text: a lone UTF-16 surrogate, as an attacker sends it


def _post_raw(url: str, text: str, method: str = "POST") -> requests.Response:
    return requests.request(method, url, data=text.encode(), timeout=10,
                            headers={"x-api-key": API_KEY, "Content-Type": "application/json"})


@pytest.mark.parametrize(("path", "body"), [
    ("/checkpoint", '{"checkpoint_type": "Lora", "filenames": [{"filename": "a.safetensors", "parts_number": 1}], '
                    '"params": {"x": SURROGATE}}'.replace("SURROGATE", LONE_SURROGATE)),
    ("/checkpoint", '{"checkpoint_type": "Lora", "filenames": [{"filename": SURROGATE, "parts_number": 1}]}'.replace(
        "SURROGATE", LONE_SURROGATE)),
    ("/dataset", '{"dataset_name": "d", "content": [{"filename": "a.png"}], "params": {SURROGATE: 1}}'.replace(
        "SURROGATE", LONE_SURROGATE)),
    ("/inference/v2", '{"task_type": "txt2img", "models": {"Stable-diffusion": ["m"]}, "prompt": SURROGATE}'.replace(
        "SURROGATE", LONE_SURROGATE)),
    ("/upload_checkpoint", '{"checkpointType": "Lora", "modelUrl": [SURROGATE]}'.replace("SURROGATE", LONE_SURROGATE)),
])
def test_a_lone_surrogate_is_refused_at_the_door(middleware, path, body):
    before = requests.get(f"{middleware.url}/checkpoints", headers={"x-api-key": API_KEY}, timeout=10).json()
    response = _post_raw(middleware.url + path, body)
    assert response.status_code == 400 and "lone UTF-16 surrogate" in response.json()["error"], response.text
    after = requests.get(f"{middleware.url}/checkpoints", headers={"x-api-key": API_KEY}, timeout=10)
    assert after.status_code == 200 and after.json() == before  # nothing was stored


def test_a_surrogate_pair_is_a_character_like_any_other(middleware):
    body = '{"dataset_name": "emoji-set", "content": [{"filename": "a.png"}], "params": {"note": "\\ud83d\\ude00"}}'
    assert _post_raw(f"{middleware.url}/dataset", body).status_code == 200
    listed = requests.get(f"{middleware.url}/datasets", headers={"x-api-key": API_KEY}, timeout=10).json()
    assert next(d for d in listed["datasets"] if d["datasetName"] == "emoji-set")["note"] == "\U0001F600"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_nan_and_infinity_are_refused_when_parsing(middleware, number):
    body = '{"checkpoint_type": "Lora", "filenames": [{"filename": "a.safetensors", "parts_number": N}]}'.replace(
        "N", number)
    response = _post_raw(f"{middleware.url}/checkpoint", body)
    assert response.status_code == 400 and response.json()["statusCode"] == 400, response.text
    assert "not JSON" in response.json()["error"] or "too large" in response.json()["error"]
    assert _post_raw(f"{middleware.url}/checkpoint", body, method="PUT").status_code == 400
    unauthenticated = requests.post(f"{middleware.url}/checkpoint", data=body, timeout=10)
    assert unauthenticated.status_code == 401  # the key first, whatever the body


@pytest.mark.local_only("it looks for the files in the local data dir")
def test_a_stored_lone_surrogate_does_not_break_the_lists_and_records_can_be_deleted(middleware, client, tmp_path):
    record = client.upload_checkpoint_files("Lora", [fake_lora(tmp_path / "victim.safetensors")])
    # A record written before the door refused such text (or by another program), straight into the store.
    db = sqlite3.connect(middleware.log_path.parent / "data" / "store.sqlite3")
    data = json.loads(db.execute("SELECT data FROM records WHERE id = ?", (record["id"],)).fetchone()[0])
    data["params"]["note"] = "\ud800"
    db.execute("UPDATE records SET data = ? WHERE id = ?", (json.dumps(data), record["id"]))
    db.commit()
    db.close()
    listed = requests.get(f"{middleware.url}/checkpoints", headers={"x-api-key": API_KEY}, timeout=10)
    assert listed.status_code == 200
    entry = next(c for c in listed.json()["checkpoints"] if c["id"] == record["id"])
    assert entry["params"]["note"] == "\ufffd"
    assert requests.get(f"{middleware.url}/inference/get-lora-list", headers={"x-api-key": API_KEY},
                        timeout=10).status_code == 200
    deleted = requests.delete(f"{middleware.url}/checkpoint/{record['id']}", headers={"x-api-key": API_KEY}, timeout=10)
    assert deleted.status_code == 200 and deleted.json()["checkpoint_id"] == record["id"]
    assert requests.get(f"{middleware.url}/checkpoint/{record['id']}", headers={"x-api-key": API_KEY},
                        timeout=10).status_code == 404
    assert not (middleware.log_path.parent / "data" / "blobs" / "models" / "Lora" / record["id"]).exists()
    assert requests.delete(f"{middleware.url}/checkpoint/{record['id']}", headers={"x-api-key": API_KEY},
                           timeout=10).status_code == 404


@pytest.mark.local_only("it looks for the files in the local data dir")
def test_a_dataset_can_be_deleted_with_its_files(middleware, client, tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG fake")
    client.create_dataset_from_files("doomed-set", [image])
    files = middleware.log_path.parent / "data" / "blobs" / "dataset" / "doomed-set"
    assert files.is_dir()
    deleted = requests.delete(f"{middleware.url}/dataset/doomed-set", headers={"x-api-key": API_KEY}, timeout=10)
    assert deleted.status_code == 200 and deleted.json()["datasetName"] == "doomed-set"
    assert not files.exists()
    assert "doomed-set" not in [d["datasetName"] for d in client.list_datasets()]
    client.create_dataset_from_files("doomed-set", [image])  # the name is free again


HOSTILE_BODIES = ["[]", '"x"', "5", "null", "true", '{"a": ' * 200 + "1" + "}" * 200, '{"": {}}',
                  '{"checkpoint_type": 5, "filenames": "x", "params": []}',
                  '{"checkpoint_id": {"x": 1}, "status": ["Active"], "multi_parts_tags": {"a": [{"ETag": 1}]}}',
                  '{"dataset_name": ["a"], "content": {"filename": 1}, "status": 5}',
                  '{"task_type": "txt2img", "models": {"Stable-diffusion": [{"name": 5}]}, "override_settings": "x", '
                  '"alwayson_scripts": {"controlnet": {"args": 5}}, "sagemaker_endpoint_name": ["a"], "batch_size": "two"}',
                  '{"task_type": ["txt2img"], "models": [], "callback_url": {"u": 1}, "run": "no"}',
                  '{"instance_type": ["local"], "initial_instance_count": {"n": 1}, "autoscaling_enabled": "maybe"}',
                  '{"delete_endpoint_list": "all"}', '{"delete_endpoint_list": [1, null, {}]}',
                  '{"primary_model_name": 5, "interp_method": "Magic", "multiplier": "0.5"}',
                  '{"checkpointType": "Lora", "modelUrl": "http://x", "params": {"hf_token": 5}}',
                  '{"train_type": "Lora"}', '{"models": {"Stable-diffusion": ["a"] }, "task_type": "img2img", '
                  '"init_images": "abc", "mask": 5}']


def test_no_route_answers_500_to_hostile_bodies(middleware):
    """Every route of the OpenAPI document, with every hostile body and a few hostile query strings."""
    spec = requests.get(f"{middleware.url}/openapi.json", timeout=10).json()
    job_id = "00000000-0000-4000-8000-000000000000"
    failures = []
    for path, operations in spec["paths"].items():
        url = middleware.url + path.replace("{job_id}", job_id).replace("{checkpoint_id}", job_id) \
            .replace("{dataset_name}", "no-such-set")
        for method in operations:
            for body in HOSTILE_BODIES if method in ("post", "put", "delete") else [""]:
                for query in ({}, {"jobID": "\x00../../etc", "limit": "-1", "last_key": "!!", "status": "x" * 5000,
                                   "types": "Nope", "key": "../x"}):
                    response = requests.request(method.upper(), url, data=body.encode(), params=query, timeout=30,
                                                headers={"x-api-key": API_KEY, "Content-Type": "application/json"})
                    if response.status_code >= 500 or "statusCode" not in response.text and response.status_code >= 400:
                        failures.append((method, path, body[:60], query, response.status_code, response.text[:200]))
    assert not failures, failures


def test_caller_chosen_sizes_are_bounded(middleware, headers):
    many_parts = {"checkpoint_type": "Lora", "params": {},
                  "filenames": [{"filename": f"f{i}.safetensors", "parts_number": 10_000} for i in range(20)]}
    response = requests.post(f"{middleware.url}/checkpoint", json=many_parts, headers=headers, timeout=10)
    assert response.status_code == 413 and "at most 10000" in response.json()["error"]
    many_files = {"checkpoint_type": "Lora", "params": {},
                  "filenames": [{"filename": f"f{i}.safetensors", "parts_number": 1} for i in range(33)]}
    response = requests.post(f"{middleware.url}/checkpoint", json=many_files, headers=headers, timeout=10)
    assert response.status_code == 413 and "at most 32" in response.json()["error"]
    urls = {"checkpointType": "Lora", "modelUrl": [f"https://example.invalid/{i}.safetensors" for i in range(33)]}
    response = requests.post(f"{middleware.url}/upload_checkpoint", json=urls, headers=headers, timeout=10)
    assert response.status_code == 413
    names = {"delete_endpoint_list": [f"e{i}" for i in range(101)]}
    assert requests.delete(f"{middleware.url}/endpoints", json=names, headers=headers, timeout=10).status_code == 422


def test_endpoint_and_dataset_counts_are_bounded(tmp_path):
    server = start_middleware(tmp_path / "data", API_KEY, env={"SD_AWS_MAX_ENDPOINTS": "0",
                                                              "SD_AWS_MAX_DATASET_FILES": "2"})
    try:
        headers = {"x-api-key": API_KEY}
        deploy = requests.post(f"{server.url}/endpoints", json={"instance_type": "local", "initial_instance_count": 1},
                               headers=headers, timeout=10)
        assert deploy.status_code == 413 and "SD_AWS_MAX_ENDPOINTS=0" in deploy.json()["error"]
        dataset = {"dataset_name": "big", "content": [{"filename": f"{i}.png"} for i in range(3)]}
        response = requests.post(f"{server.url}/dataset", json=dataset, headers=headers, timeout=10)
        assert response.status_code == 413 and "at most 2" in response.json()["error"]
    finally:
        server.stop()


def _upload_parts(client: MiddlewareClient, name: str, size: int, part_size: int) -> tuple[str, dict]:
    """Create a checkpoint of one LoRA file of about `size` bytes and upload its parts; (id, tags)."""
    data = safetensors_bytes({"lora_unet_a.lora_down.weight": ("F32", [size // 4])}, filler=3)
    parts = [data[i:i + part_size] for i in range(0, len(data), part_size)]
    created = client.create_checkpoint("Lora", [(name, len(parts))])
    tags = [{"PartNumber": n, "ETag": requests.put(url, data=part, timeout=60).headers["ETag"]}
            for n, (url, part) in enumerate(zip(created["s3PresignUrl"][name], parts), 1)]
    return created["checkpoint"]["id"], {name: tags}


def test_a_completion_killed_mid_assembly_can_be_completed_after_a_restart(tmp_path):
    data_dir = tmp_path / "data"
    server = start_middleware(data_dir, API_KEY)
    client = MiddlewareClient(server.url, API_KEY, timeout_s=120)
    checkpoint_id, tags = _upload_parts(client, "big.safetensors", 400 * 1024 * 1024, 5 * 1024 * 1024)
    threading.Thread(target=lambda: _swallow(lambda: client.complete_checkpoint(checkpoint_id, tags)),
                     daemon=True).start()
    db = sqlite3.connect(data_dir / "store.sqlite3")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the completion has claimed the record, then kill -9
        row = db.execute("SELECT json_extract(data, '$.completing') FROM records WHERE id = ?", (checkpoint_id,)).fetchone()
        if row and row[0]:
            break
        time.sleep(0.005)
    else:
        raise AssertionError("the completion never claimed the record")
    server.stop(sig=9)
    db.close()
    server = start_middleware(data_dir, API_KEY)
    try:
        client = MiddlewareClient(server.url, API_KEY, timeout_s=120)
        record = client.get_checkpoint(checkpoint_id)
        assert record["status"] == "Initialed" and not record["completing"]  # not claimed for ever
        completed = client.complete_checkpoint(checkpoint_id, tags)["checkpoint"]
        if completed["completing"]:
            completed = client.wait_for_completion(completed)
        assert completed["status"] == "Active" and completed["size"] > 400 * 1024 * 1024
    finally:
        server.stop()


def _swallow(call) -> None:
    try:
        call()
    except ApiError:
        pass


def test_a_long_completion_goes_on_in_the_background(tmp_path):
    server = start_middleware(tmp_path / "data", API_KEY, env={"SD_AWS_COMPLETION_WAIT_S": "0"})
    try:
        client = MiddlewareClient(server.url, API_KEY)
        checkpoint_id, tags = _upload_parts(client, "slow.safetensors", 64 * 1024 * 1024, 5 * 1024 * 1024)
        answer = client.complete_checkpoint(checkpoint_id, tags)["checkpoint"]
        assert answer["status"] == "Initialed" and answer["completing"]  # answered before the file was assembled
        again = requests.put(f"{server.url}/checkpoint", headers={"x-api-key": API_KEY}, timeout=10,
                             json={"checkpoint_id": checkpoint_id, "status": "Active", "multi_parts_tags": tags})
        assert again.status_code == 409
        assert client.wait_for_completion(answer)["status"] == "Active"
        # The client's own upload waits the same way.
        lora = client.upload_checkpoint_files("Lora", [fake_lora(tmp_path / "small.safetensors")])
        assert lora["status"] == "Active"
    finally:
        server.stop()


def test_a_slow_client_is_disconnected_after_the_header_timeout(tmp_path):
    server = start_middleware(tmp_path / "data", API_KEY, env={"SD_AWS_HEADER_TIMEOUT_S": "1"})
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            started = time.monotonic()
            assert slow.recv(100) == b""  # closed by the server
            assert time.monotonic() - started < 8
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as keeper:
            keeper.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert keeper.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()


def _exchange(conn: socket.socket, path: str) -> bytes:
    """One HTTP/1.1 request on an open connection; the whole response (b"" if the server had closed it)."""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = conn.recv(65536)
        if not chunk:
            return response
        response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def test_an_unexpected_error_answers_500_and_keeps_the_connection():
    async def broken(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/boom":
            raise RuntimeError("a bug")
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(UnexpectedErrors(broken), host="127.0.0.1", port=port, log_level="critical",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            boom = _exchange(conn, "/boom")
            assert boom.startswith(b"HTTP/1.1 500") and b"the server log has the details" in boom
            assert _exchange(conn, "/fine").endswith(b"\r\n\r\nok")  # the same connection goes on
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_full_disk_under_the_records_is_507_and_nothing_is_half_written(tmp_path):
    """The whole data dir (store and blobs) on a small filesystem that fills: a write is 507 with a sentence,
    and once space is freed the same request succeeds."""
    from tests.middleware.test_blob_hardening import disk_filled, small_tmpfs

    with small_tmpfs(tmp_path / "fs", size="8m") as fs:
        server = start_middleware(fs / "data", API_KEY)
        try:
            body = {"dataset_name": "full", "content": [{"filename": f"{i}.png"} for i in range(200)],
                    "params": {"note": "x" * 20000}}
            with disk_filled(fs):
                refused = requests.post(f"{server.url}/dataset", json=body, headers={"x-api-key": API_KEY}, timeout=30)
                assert refused.status_code == 507, refused.text
                assert "storage is full" in refused.json()["error"]
                listed = requests.get(f"{server.url}/datasets", headers={"x-api-key": API_KEY}, timeout=10)
                assert listed.status_code == 200 and listed.json()["datasets"] == []
            created = requests.post(f"{server.url}/dataset", json=body, headers={"x-api-key": API_KEY}, timeout=30)
            assert created.status_code == 200, created.text
        finally:
            server.stop()
