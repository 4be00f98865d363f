"""The model catalogue over real HTTP: multipart upload, completion, listing, and every bad input."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.middleware.conftest import fake_lora, safetensors_bytes

MiB = 1024 * 1024


def _upload_parts(urls: list[str], data: bytes, part_size: int) -> list[dict]:
    def put(number_url):
        number, url = number_url
        chunk = data[(number - 1) * part_size: number * part_size]
        response = requests.put(url, data=chunk, timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["ETag"] == f'"{hashlib.md5(chunk).hexdigest()}"'
        return {"ETag": response.headers["ETag"], "PartNumber": number}

    with ThreadPoolExecutor(4) as pool:
        return sorted(pool.map(put, enumerate(urls, 1)), key=lambda t: t["PartNumber"])


def _create(middleware, headers, filename="lora.safetensors", parts=1, checkpoint_type="Lora"):
    body = {"checkpoint_type": checkpoint_type, "filenames": [{"filename": filename, "parts_number": parts}],
            "params": {"message": "test"}}
    return requests.post(f"{middleware.url}/checkpoint", json=body, headers=headers, timeout=10)


def test_multipart_flow_parallel_parts(middleware, headers, tmp_path):
    data = fake_lora(tmp_path / "big.safetensors", padding_bytes=12 * MiB).read_bytes()
    part_size = 5 * MiB
    created = _create(middleware, headers, "big.safetensors", parts=3)
    assert created.status_code == 200, created.text
    answer = created.json()
    assert answer["statusCode"] == 200
    checkpoint = answer["checkpoint"]
    assert checkpoint["status"] == "Initialed" and checkpoint["type"] == "Lora"
    urls = answer["s3PresignUrl"]["big.safetensors"]
    assert len(urls) == 3
    tags = _upload_parts(urls, data, part_size)

    done = requests.put(f"{middleware.url}/checkpoint", headers=headers, timeout=30, json={
        "checkpoint_id": checkpoint["id"], "status": "Active", "multi_parts_tags": {"big.safetensors": tags}})
    assert done.status_code == 200, done.text
    record = done.json()["checkpoint"]
    assert record["status"] == "Active"
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["size"] == len(data)

    listed = requests.get(f"{middleware.url}/checkpoints", params={"types": "Lora", "status": "Active"},
                          headers=headers, timeout=10).json()
    entry = next(c for c in listed["checkpoints"] if c["id"] == checkpoint["id"])
    assert entry["name"] == ["big.safetensors"] and entry["sha256"] == record["sha256"]
    assert isinstance(entry["created"], float | int)
    assert "big.safetensors" in requests.get(f"{middleware.url}/inference/get-lora-list", headers=headers,
                                             timeout=10).json()
    # Completing twice is refused and changes nothing.
    again = requests.put(f"{middleware.url}/checkpoint", headers=headers, timeout=10, json={
        "checkpoint_id": checkpoint["id"], "status": "Active", "multi_parts_tags": {"big.safetensors": tags}})
    assert again.status_code == 409 and "already completed" in again.json()["error"]


def test_client_upload_helper_with_progress(client, tmp_path):
    path = fake_lora(tmp_path / "helper.safetensors", padding_bytes=11 * MiB)
    seen = []
    record = client.upload_checkpoint_files("Lora", [path], part_size=5 * MiB, workers=3,
                                            progress=lambda done, total: seen.append((done, total)))
    assert record["status"] == "Active"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert seen[-1] == (path.stat().st_size, path.stat().st_size) and len(seen) == 3


def test_disable_and_enable(client, tmp_path):
    record = client.upload_checkpoint_files("Lora", [fake_lora(tmp_path / "toggle.safetensors")])
    assert client.set_checkpoint_status(record["id"], "Disabled")["checkpoint"]["status"] == "Disabled"
    assert "toggle.safetensors" not in client.lora_names()
    assert client.set_checkpoint_status(record["id"], "Active")["checkpoint"]["status"] == "Active"
    assert "toggle.safetensors" in client.lora_names()


def test_concurrent_completion_exactly_one_wins(middleware, headers, tmp_path):
    data = fake_lora(tmp_path / "race.safetensors", padding_bytes=64 * 1024).read_bytes()
    answer = _create(middleware, headers, "race.safetensors").json()
    tags = _upload_parts(answer["s3PresignUrl"]["race.safetensors"], data, len(data))
    body = {"checkpoint_id": answer["checkpoint"]["id"], "status": "Active",
            "multi_parts_tags": {"race.safetensors": tags}}
    barrier = threading.Barrier(6)

    def complete(_):
        barrier.wait()
        return requests.put(f"{middleware.url}/checkpoint", json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(complete, range(6)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409, 409, 409, 409, 409], [r.text for r in results]


def test_random_blob_is_refused_and_failed(middleware, headers, client):
    answer = _create(middleware, headers, "random.safetensors", checkpoint_type="Stable-diffusion").json()
    tags = _upload_parts(answer["s3PresignUrl"]["random.safetensors"], b"\x13" * 5000, 5000)
    done = requests.put(f"{middleware.url}/checkpoint", headers=headers, timeout=10, json={
        "checkpoint_id": answer["checkpoint"]["id"], "status": "Active",
        "multi_parts_tags": {"random.safetensors": tags}})
    assert done.status_code == 400
    assert "not a valid safetensors file" in done.json()["error"]
    record = next(c for c in client.list_checkpoints() if c["id"] == answer["checkpoint"]["id"])
    assert record["status"] == "Failed" and "safetensors" in record["error"]


def test_lora_uploaded_as_checkpoint_type_is_refused(middleware, headers, tmp_path):
    data = fake_lora(tmp_path / "wrongtype.safetensors").read_bytes()
    answer = _create(middleware, headers, "wrongtype.safetensors", checkpoint_type="Stable-diffusion").json()
    tags = _upload_parts(answer["s3PresignUrl"]["wrongtype.safetensors"], data, len(data))
    done = requests.put(f"{middleware.url}/checkpoint", headers=headers, timeout=10, json={
        "checkpoint_id": answer["checkpoint"]["id"], "status": "Active",
        "multi_parts_tags": {"wrongtype.safetensors": tags}})
    assert done.status_code == 400 and "does not look like a Stable-diffusion model" in done.json()["error"]


def test_pickle_checkpoint_accepted_without_unpickling(client, tmp_path):
    import zipfile

    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w") as archive:  # the layout torch.save writes
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", b"\x00" * 64)
    assert client.upload_checkpoint_files("Stable-diffusion", [path])["status"] == "Active"


@pytest.mark.parametrize("filename", ["a/b.safetensors", "../x.safetensors", "..", "nul\x00.safetensors",
                                      "x" * 250 + ".safetensors", "back\\slash.safetensors", ""])
def test_bad_filenames(middleware, headers, client, filename):
    before = len(client.list_checkpoints())
    response = _create(middleware, headers, filename)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["statusCode"] == 400 and "file name" in body["error"]
    assert len(client.list_checkpoints()) == before


@pytest.mark.parametrize("parts", [0, 10001, -1])
def test_bad_parts_number(middleware, headers, parts):
    response = _create(middleware, headers, "p.safetensors", parts=parts)
    assert response.status_code == 400 and "parts_number must be between 1 and 10000" in response.json()["error"]


def test_unknown_type_and_empty_filenames(middleware, headers):
    response = _create(middleware, headers, checkpoint_type="Checkpoint")
    assert response.status_code == 422
    body = response.json()
    assert body["statusCode"] == 422 and "checkpoint_type" in body["error"] and body["detail"]
    response = requests.post(f"{middleware.url}/checkpoint", headers=headers, timeout=10,
                             json={"checkpoint_type": "Lora", "filenames": [], "params": {}})
    assert response.status_code == 400 and "filenames is empty" in response.json()["error"]


def test_completion_missing_part_and_wrong_etag_keep_it_initialed(middleware, headers, tmp_path, client):
    data = fake_lora(tmp_path / "two.safetensors", padding_bytes=6 * MiB).read_bytes()
    answer = _create(middleware, headers, "two.safetensors", parts=2).json()
    checkpoint_id = answer["checkpoint"]["id"]
    tags = _upload_parts(answer["s3PresignUrl"]["two.safetensors"], data, 5 * MiB)

    def complete(part_tags):
        return requests.put(f"{middleware.url}/checkpoint", headers=headers, timeout=10, json={
            "checkpoint_id": checkpoint_id, "status": "Active", "multi_parts_tags": {"two.safetensors": part_tags}})

    missing = complete(tags[:1])
    assert missing.status_code == 400 and "[2]" in missing.json()["error"]
    wrong = complete([tags[0], {"ETag": '"0123456789abcdef0123456789abcdef"', "PartNumber": 2}])
    assert wrong.status_code == 400 and "part 2" in wrong.json()["error"] and "ETag" in wrong.json()["error"]
    other = requests.put(f"{middleware.url}/checkpoint", headers=headers, timeout=10, json={
        "checkpoint_id": checkpoint_id, "status": "Active", "multi_parts_tags": {"someone-elses.safetensors": tags}})
    assert other.status_code == 400 and "not files of checkpoint" in other.json()["error"]
    record = next(c for c in client.list_checkpoints() if c["id"] == checkpoint_id)
    assert record["status"] == "Initialed"
    assert complete(tags).status_code == 200  # the upload was kept: fixing the list completes it


def test_complete_unknown_checkpoint(middleware, headers):
    response = requests.put(f"{middleware.url}/checkpoint", headers=headers, timeout=10, json={
        "checkpoint_id": "00000000-0000-4000-8000-000000000000", "status": "Active", "multi_parts_tags": {}})
    assert response.status_code == 404 and "does not exist" in response.json()["error"]


@pytest.mark.local_only("moto does not check S3 signatures; tests/middleware/test_blobs_s3.py checks them on seaweedfs")
def test_part_url_of_another_upload_is_refused(middleware, headers):
    first = _create(middleware, headers, "first.safetensors").json()
    second = _create(middleware, headers, "second.safetensors").json()
    url = first["s3PresignUrl"]["first.safetensors"][0]
    other_upload = requests.utils.urlparse(second["s3PresignUrl"]["second.safetensors"][0]).query
    other_id = dict(p.split("=") for p in other_upload.split("&"))["uploadId"]
    own_id = dict(p.split("=") for p in requests.utils.urlparse(url).query.split("&"))["uploadId"]
    tampered = url.replace(own_id, other_id)
    response = requests.put(tampered, data=b"x", timeout=10)
    assert response.status_code == 403 and "signature does not match" in response.json()["error"]


def test_presigned_upload_url(middleware, headers):
    url = requests.get(f"{middleware.url}/inference/generate-s3-presigned-url-for-uploading",
                       params={"key": "uploads/init.png"}, headers=headers, timeout=10)
    assert url.status_code == 200
    assert requests.put(url.json(), data=b"png bytes", timeout=10).status_code == 200
    for key in ["../etc/passwd", "uploads/../blob_secret", "/uploads/x", "models/x", "uploads/", "uploads//x"]:
        response = requests.get(f"{middleware.url}/inference/generate-s3-presigned-url-for-uploading",
                                params={"key": key}, headers=headers, timeout=10)
        assert response.status_code == 400, key
        assert response.json()["statusCode"] == 400


def test_list_routes_only_name_active_files(middleware, headers, client, tmp_path):
    path = tmp_path / "emb.safetensors"
    path.write_bytes(safetensors_bytes({"emb_params": ("F32", [2, 32])}))
    client.upload_checkpoint_files("embeddings", [path])
    for route in ("get-texual-inversion-list", "get-textual-inversion-list"):
        assert "emb.safetensors" in requests.get(f"{middleware.url}/inference/{route}", headers=headers,
                                                 timeout=10).json()
    for route in ("get-hypernetwork-list", "get-controlnet-model-list"):
        assert requests.get(f"{middleware.url}/inference/{route}", headers=headers, timeout=10).json() == []
    # Initialed uploads are not listed.
    _create(middleware, headers, "pending.safetensors")
    assert "pending.safetensors" not in client.lora_names()


def test_list_filters_types_both_spellings(middleware, headers, client, tmp_path):
    client.upload_checkpoint_files("Lora", [fake_lora(tmp_path / "f.safetensors")])
    both = requests.get(f"{middleware.url}/checkpoints?types=Lora&types=embeddings", headers=headers, timeout=10)
    comma = requests.get(f"{middleware.url}/checkpoints?types=Lora,embeddings", headers=headers, timeout=10)
    assert both.json() == comma.json()
    assert {c["type"] for c in both.json()["checkpoints"]} <= {"Lora", "embeddings"}
    bad = requests.get(f"{middleware.url}/checkpoints?types=Nope", headers=headers, timeout=10)
    assert bad.status_code == 400 and "Nope" in bad.json()["error"]


def test_uploaded_file_is_served_with_range(middleware, headers, client, tmp_path, backend):
    # The blob GET route, reached through a dataset preview URL (the same signed URLs).
    path: Path = tmp_path / "range.png"
    path.write_bytes(bytes(range(256)) * 4)
    client.create_dataset_from_files("range-ds", [path])
    url = client.dataset_files("range-ds")[0]["preview_url"]
    whole = requests.get(url, timeout=10)
    assert whole.status_code == 200 and whole.content == path.read_bytes()
    part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert part.status_code == 206 and part.content == path.read_bytes()[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{path.stat().st_size}"
    if backend == "local":  # moto does not check S3 signatures (test_blobs_s3.py does, on seaweedfs)
        assert requests.put(url, data=b"x", timeout=10).status_code == 403  # signed for GET, not PUT


def test_get_one_checkpoint(middleware, headers, client, tmp_path):
    record = client.upload_checkpoint_files("Lora", [fake_lora(tmp_path / "one.safetensors")])
    one = requests.get(f"{middleware.url}/checkpoint/{record['id']}", headers=headers, timeout=10)
    assert one.status_code == 200 and one.json()["checkpoint"]["name"] == ["one.safetensors"]
    assert one.json()["checkpoint"] == next(c for c in client.list_checkpoints() if c["id"] == record["id"])
    missing = requests.get(f"{middleware.url}/checkpoint/00000000-0000-4000-8000-000000000000", headers=headers, timeout=10)
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]


def test_checkpoints_paged(middleware, headers, client, tmp_path, monkeypatch):
    for i in range(5):
        client.upload_checkpoint_files("Lora", [fake_lora(tmp_path / f"paged-{i}.safetensors")], {"batch": "paged"})
    whole = [c["id"] for c in client.list_checkpoints(["Lora"])]
    seen, last_key = [], None
    while True:
        params = {"types": "Lora", "limit": 2, **({"last_key": last_key} if last_key else {})}
        page = requests.get(f"{middleware.url}/checkpoints", params=params, headers=headers, timeout=10).json()
        seen.extend(c["id"] for c in page["checkpoints"])
        last_key = page["last_key"]
        if last_key is None:
            break
    assert seen == whole
    default = requests.get(f"{middleware.url}/checkpoints", params={"types": "Lora"}, headers=headers, timeout=10).json()
    assert [c["id"] for c in default["checkpoints"]] == whole[:100]  # one page of 100 without ?limit=
    assert (default["last_key"] is None) == (len(whole) <= 100)
    monkeypatch.setattr("aws_extension.client.api.LIST_PAGE_MAX", 2)  # the client follows the pages
    assert [c["id"] for c in client.list_checkpoints(["Lora"])] == whole
    bad = requests.get(f"{middleware.url}/checkpoints", params={"limit": 2, "last_key": "nope"}, headers=headers, timeout=10)
    assert bad.status_code == 400 and "last_key" in bad.json()["error"]


def test_the_catalogue_is_content_addressed(middleware, headers, client, tmp_path):
    original = client.upload_checkpoint_files("Lora", [fake_lora(tmp_path / "original.safetensors")])
    copy = tmp_path / "renamed-copy.safetensors"
    copy.write_bytes((tmp_path / "original.safetensors").read_bytes())
    before = len(client.list_checkpoints(["Lora"]))
    again = client.upload_checkpoint_files("Lora", [copy])  # hashed first: nothing is uploaded
    assert again["id"] == original["id"] and again["status"] == "Active"
    assert len(client.list_checkpoints(["Lora"])) == before
    declared = requests.post(f"{middleware.url}/checkpoint", headers=headers, timeout=10, json={
        "checkpoint_type": "Lora", "filenames": [{"filename": "x.safetensors", "parts_number": 1,
                                                  "sha256": original["sha256"]}]}).json()
    assert declared["existing"] and declared["s3PresignUrl"] == {} and declared["checkpoint"]["id"] == original["id"]
    # The same content as another type is another checkpoint; a wrong sha256 is refused.
    assert requests.post(f"{middleware.url}/checkpoint", headers=headers, timeout=10, json={
        "checkpoint_type": "embeddings", "filenames": [{"filename": "x.pt", "parts_number": 1,
                                                        "sha256": original["sha256"]}]}).json()["existing"] is False
    bad = requests.post(f"{middleware.url}/checkpoint", headers=headers, timeout=10, json={
        "checkpoint_type": "Lora", "filenames": [{"filename": "x.safetensors", "parts_number": 1, "sha256": "abc"}]})
    assert bad.status_code == 422


def test_an_upload_that_is_not_its_declared_content_fails(middleware, headers, client, tmp_path):
    path = fake_lora(tmp_path / "liar.safetensors")
    created = client.create_checkpoint("Lora", [("liar.safetensors", 1)], sha256s={"liar.safetensors": "0" * 64})
    etag = requests.put(created["s3PresignUrl"]["liar.safetensors"][0], data=path.read_bytes(), timeout=10).headers["ETag"]
    answer = requests.put(f"{middleware.url}/checkpoint", headers=headers, timeout=30, json={
        "checkpoint_id": created["checkpoint"]["id"], "status": "Active",
        "multi_parts_tags": {"liar.safetensors": [{"ETag": etag, "PartNumber": 1}]}})
    assert answer.status_code == 400 and "not the declared" in answer.json()["error"]
    assert client.get_checkpoint(created["checkpoint"]["id"])["status"] == "Failed"
