"""The embedded object store under abuse: names like temp files, oversized uploads, a full disk, odd Range
headers, caller-chosen sizes. The store directly, then the real server over HTTP."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import http.client
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from aws_extension.middleware.blobs import local
from aws_extension.middleware.blobs.base import (
    KeyConflict,
    ObjectTooLarge,
    StorageFull,
    UploadError,
)
from aws_extension.middleware.blobs.local import LocalBlobStore, SignatureError
from aws_extension.middleware.routes.blobs import RangeNotSatisfiable, requested_span
from tests.helpers import start_middleware
from tests.middleware.conftest import API_KEY, fake_lora

# The local blob store and its signed /blobs URLs (S3's presigned URLs are tested against a real S3 server).
pytestmark = pytest.mark.local_only("the local blob store's signed /blobs URLs")

KiB, MiB, GiB = 1024, 1024**2, 1024**3


def make_store(root: Path, **limits) -> LocalBlobStore:
    return LocalBlobStore(root, b"secret", "http://127.0.0.1:1", 3600, min_part_bytes=4, max_parts=10, **limits)


async def _chunks(data: bytes, size: int = 64 * KiB) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def put(store: LocalBlobStore, key: str, data: bytes, declared: int | None = None) -> str:
    return asyncio.run(store.receive_object(key, _chunks(data), declared))


def put_part(store: LocalBlobStore, key: str, upload_id: str, number: int, data: bytes) -> str:
    return asyncio.run(store.receive_part(key, upload_id, number, _chunks(data)))


def temp_files(root: Path) -> list[Path]:
    return list((root / "blobs-tmp").iterdir())


# -- 1. temp files live where no key can point ---------------------------------------------------------------
def test_objects_named_like_temp_files_survive_a_restart_of_the_store(tmp_path):
    store = make_store(tmp_path)
    named_like_temp = {"uploads/.evil.tmp": b"user upload", "dataset/d/.a.tmp": b"dataset file",
                       "uploads/.x.0123456789abcdef0123456789abcdef.tmp": b"the old temp naming"}
    for key, data in named_like_temp.items():
        put(store, key, data)
    with store.writer("out/.w.tmp") as out:
        out.write(b"written by a service")
    (tmp_path / "blobs-tmp" / "0123.tmp").write_bytes(b"left by a crash")
    (tmp_path / "blobs-tmp" / "folder").mkdir()

    store = make_store(tmp_path)
    for key, data in named_like_temp.items():
        assert store.read(key) == data, key
    assert store.read("out/.w.tmp") == b"written by a service"
    assert temp_files(tmp_path) == [], "the start-up clean-up empties the temp folder"


def test_temp_files_of_older_versions_are_removed_once(tmp_path):
    """Before blobs-tmp/, temp files were `.NAME.<32 hex>.tmp` beside their target."""
    hex32 = "0123456789abcdef" * 2
    old = {f"blobs/uploads/.x.bin.{hex32}.tmp", f"blobs/a/b/.f.{hex32}.tmp", f"multipart/0123/.1.part.{hex32}.tmp"}
    kept = {"blobs/uploads/.x.tmp", "blobs/uploads/.x.0123.tmp", f"blobs/uploads/x.{hex32}.tmp", "blobs/uploads/x.bin"}
    for name in old | kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"data")
    make_store(tmp_path)
    assert {n for n in old | kept if (tmp_path / n).exists()} == kept
    named_like_old = tmp_path / "blobs/uploads/.y.0123456789abcdef0123456789abcdef.tmp"
    named_like_old.write_bytes(b"an object of this version")
    make_store(tmp_path)
    assert named_like_old.read_bytes() == b"an object of this version", "blobs-tmp/ exists: no more clean-up"


def test_every_writer_goes_through_the_temp_folder_and_leaves_nothing(tmp_path):
    store = make_store(tmp_path)
    put(store, "a/one", b"1")
    with store.writer("a/two") as out:
        out.write(b"2")
    with pytest.raises(RuntimeError), store.writer("a/three") as out:
        out.write(b"half")
        raise RuntimeError("the writer failed")
    upload_id = store.create_multipart("a/four")
    etag = put_part(store, "a/four", upload_id, 1, b"part")
    assert store.complete_multipart("a/four", upload_id, [(1, etag)]).size == 4
    assert (store.read("a/one"), store.read("a/two"), store.read("a/four")) == (b"1", b"2", b"part")
    assert not store.exists("a/three")
    assert temp_files(tmp_path) == []
    assert not [p for p in tmp_path.rglob("*.tmp")], "no temp file beside the objects or the parts"


# -- 2. size caps ----------------------------------------------------------------------------------------------
class CountingBody:
    """A body of endless 1 KiB chunks that counts how many were read."""

    def __init__(self):
        self.read = 0

    async def __aiter__(self):
        while True:
            self.read += 1
            yield b"x" * KiB


def test_single_put_and_part_are_capped_and_the_rest_is_not_read(tmp_path):
    store = make_store(tmp_path, max_put_bytes=10 * KiB, max_part_bytes=20 * KiB)
    assert put(store, "a/fits", b"x" * 10 * KiB)
    body = CountingBody()
    with pytest.raises(ObjectTooLarge, match=r"at most 10 KiB \(10240 bytes\).*in parts") as raised:
        asyncio.run(store.receive_object("a/big", body.__aiter__()))
    assert raised.value.limit == 10 * KiB and body.read == 11
    declared = CountingBody()
    with pytest.raises(ObjectTooLarge):
        asyncio.run(store.receive_object("a/big", declared.__aiter__(), 10 * KiB + 1))
    assert declared.read == 0, "a declared length over the cap is refused before reading"

    upload_id = store.create_multipart("a/parts")
    assert put_part(store, "a/parts", upload_id, 1, b"x" * 20 * KiB)
    body = CountingBody()
    with pytest.raises(ObjectTooLarge, match=r"A part may be at most 20 KiB"):
        asyncio.run(store.receive_part("a/parts", upload_id, 2, body.__aiter__()))
    assert body.read == 21
    assert not store.exists("a/big") and temp_files(tmp_path) == []


def test_the_caps_default_to_s3s_limits(tmp_path):
    store = LocalBlobStore(tmp_path, b"s", "http://127.0.0.1:1", 3600, 5 * MiB, 10_000)
    assert store.max_put_bytes == store.max_part_bytes == 5 * GiB


# -- 3. a full disk --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_storage_full_and_every_write_is_undone(tmp_path, monkeypatch, code):
    store = make_store(tmp_path)
    upload_id = store.create_multipart("a/parts")
    etag = put_part(store, "a/parts", upload_id, 1, b"part one")
    real_write = local._write_hashed

    def full(*args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(local, "_write_hashed", full)
    with pytest.raises(StorageFull, match="storage is full"):
        put(store, "a/object", b"data")
    with pytest.raises(StorageFull):
        put_part(store, "a/parts", upload_id, 2, b"part two")
    with pytest.raises(StorageFull):
        store.complete_multipart("a/parts", upload_id, [(1, etag)])
    with pytest.raises(StorageFull) as raised, store.writer("a/written"):
        raise OSError(code, "No space left on device")
    assert raised.value.errno == code and str(raised.value) == StorageFull.MESSAGE
    assert isinstance(raised.value, OSError)
    assert not any(store.exists(k) for k in ("a/object", "a/parts", "a/written"))
    assert temp_files(tmp_path) == []

    monkeypatch.setattr(local, "_write_hashed", real_write)
    with pytest.raises(UploadError, match="part 2 was never uploaded"):
        store.complete_multipart("a/parts", upload_id, [(1, etag), (2, etag)])
    assert store.complete_multipart("a/parts", upload_id, [(1, etag)]).size == 8, "the upload is still there"


def test_other_os_errors_stay_what_they_are(tmp_path):
    store = make_store(tmp_path)
    with pytest.raises(PermissionError) as raised, store.writer("a/x"):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert not isinstance(raised.value, StorageFull)


@contextmanager
def small_tmpfs(where: Path, size: str = "2m") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


@contextmanager
def disk_filled(fs: Path) -> Iterator[None]:
    """Fill the filesystem of `fs` with a filler file; remove it at the end of the block."""
    filler = fs / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 64 * KiB)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    try:
        yield
    finally:
        filler.unlink()


def test_a_really_full_disk_store_level(tmp_path):
    with small_tmpfs(tmp_path / "fs") as fs:
        store = LocalBlobStore(fs, b"secret", "http://127.0.0.1:1", 3600, min_part_bytes=64 * KiB, max_parts=10)
        upload_id = store.create_multipart("models/m")
        parts = [os.urandom(300 * KiB), os.urandom(100 * KiB)]
        tags = [(n, put_part(store, "models/m", upload_id, n, data)) for n, data in enumerate(parts, 1)]
        with disk_filled(fs):
            with pytest.raises(StorageFull):
                put(store, "uploads/x", b"y" * 200 * KiB)
            with pytest.raises(StorageFull):
                put_part(store, "models/m", upload_id, 3, b"z" * 200 * KiB)
            with pytest.raises(StorageFull):
                store.complete_multipart("models/m", upload_id, tags)
            with pytest.raises(StorageFull):
                store.create_multipart("models/n")
            assert temp_files(fs) == [] and not store.exists("models/m")
        info = store.complete_multipart("models/m", upload_id, tags)
        assert info.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()


# -- 5. sizes and numbers the caller chooses: test_blobs_s3.py, on both stores -----------------------------------
@pytest.mark.parametrize("expires", ["\u00b2", "9" * 5000, "-1", ""])
def test_a_malformed_expiry_is_a_signature_error(tmp_path, expires):
    store = make_store(tmp_path)
    with pytest.raises(SignatureError, match="not signed"):
        store.verify("GET", "a/m", {"X-Method": "GET", "X-Expires": expires, "X-Signature": "0" * 64})


def test_keys_that_clash_with_a_folder_or_an_object_are_refused(tmp_path):
    store = make_store(tmp_path)
    put(store, "a/file", b"1")
    put(store, "a/folder/inside", b"2")
    with pytest.raises(KeyConflict, match="a/file/child cannot be stored"):
        put(store, "a/file/child", b"3")
    with pytest.raises(KeyConflict, match="a/folder cannot be stored"), store.writer("a/folder") as out:
        out.write(b"4")
    assert store.read("a/file") == b"1" and temp_files(tmp_path) == []


# -- 4. Range parsing ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("header", "span"), [
    (None, None), ("", None),
    ("bytes=0-9", (0, 10)), ("bytes=10-", (10, 100)), ("bytes=-10", (90, 100)), ("bytes=-1000", (0, 100)),
    ("bytes=0-1000", (0, 100)), ("bytes=99-99", (99, 100)), ("BYTES=1-2", (1, 3)), (" bytes=1-2 ", (1, 3)),
    ("bytes=0000000000000000000000000001-2", (1, 3)),
    # ignored: the whole object
    ("bytes=abc", None), ("bytes=5-1", None), ("items=0-1", None), ("bytes=0-1,3-4", None), ("bytes=-", None),
    ("bytes", None), ("bytes=1-2-3", None), ("bytes=\u0661-2", None),
])
def test_range_headers(header, span):
    assert requested_span(header, 100) == span


@pytest.mark.parametrize(("header", "size"), [
    ("bytes=100-", 100), ("bytes=999999999-", 100), ("bytes=100-200", 100), ("bytes=-0", 100),
    ("bytes=" + "9" * 5000 + "-", 100), ("bytes=0-", 0), ("bytes=-5", 0),
])
def test_unsatisfiable_ranges(header, size):
    with pytest.raises(RangeNotSatisfiable):
        requested_span(header, size)


# -- over HTTP: the real server ----------------------------------------------------------------------------------
def _signed_get_url(client, name: str, data: bytes) -> str:
    """A signed GET URL of an object holding `data` (a dataset file's preview URL)."""
    urls = client.create_dataset(name, [{"filename": "f.bin", "name": "f", "type": "bin"}])["s3PresignUrl"]
    assert requests.put(urls["f.bin"], data=data, timeout=30).status_code == 200
    return client.dataset_files(name)[0]["preview_url"]


def _assert_error(response: requests.Response, status: int, words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["statusCode"] == status and words in body["error"], body
    return body


RANGED_SIZE = 3 * MiB + 5


@pytest.fixture(scope="module")
def ranged(middleware) -> tuple[str, bytes]:
    """A signed GET URL of an object of RANGED_SIZE random bytes (over three of the server's read chunks)."""
    from aws_extension.client import MiddlewareClient

    data = os.urandom(RANGED_SIZE)
    return _signed_get_url(MiddlewareClient(middleware.url, API_KEY), "ranges", data), data


def _get(url: str, range_header: str | None = None, method: str = "GET", **headers) -> requests.Response:
    if range_header is not None:
        headers["Range"] = range_header
    return requests.request(method, url, headers=headers, timeout=30)


def test_whole_object_and_head_over_http(ranged):
    url, data = ranged
    whole = _get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Accept-Ranges"] == "bytes" and whole.headers["Content-Length"] == str(RANGED_SIZE)
    head = _get(url, method="HEAD")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == str(RANGED_SIZE) and head.headers["Accept-Ranges"] == "bytes"
    head = _get(url, "bytes=0-9", "HEAD")
    assert head.status_code == 206 and head.headers["Content-Length"] == "10"


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-9", 0, 10), ("bytes=-10", RANGED_SIZE - 10, RANGED_SIZE),
    (f"bytes={RANGED_SIZE - 3}-", RANGED_SIZE - 3, RANGED_SIZE), ("bytes=-99999999", 0, RANGED_SIZE),
    (f"bytes={MiB - 7}-{2 * MiB + 6}", MiB - 7, 2 * MiB + 7), ("bytes=5-99999999", 5, RANGED_SIZE),
])
def test_a_satisfiable_range_is_206_over_http(ranged, header, start, end):
    url, data = ranged
    partial = _get(url, header)
    assert partial.status_code == 206
    assert partial.content == data[start:end]
    assert partial.headers["Content-Range"] == f"bytes {start}-{end - 1}/{RANGED_SIZE}"
    assert partial.headers["Content-Length"] == str(end - start)


@pytest.mark.parametrize("header", ["bytes=999999999-", f"bytes={RANGED_SIZE}-", "bytes=-0"])
def test_an_unsatisfiable_range_is_416_with_the_error_body(ranged, header):
    refused = _get(ranged[0], header)
    _assert_error(refused, 416, f"not satisfiable: dataset/ranges/f.bin is {RANGED_SIZE} bytes long")
    assert refused.headers["Content-Range"] == f"bytes */{RANGED_SIZE}"


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=5-1", "items=0-1", "bytes=0-1,3-4", "bytes="])
def test_a_malformed_or_multiple_range_is_ignored(ranged, header):
    url, data = ranged
    ignored = _get(url, header)
    assert ignored.status_code == 200 and ignored.content == data
    assert "Content-Range" not in ignored.headers


def test_if_range_over_http(ranged):
    url, _ = ranged
    etag, modified = _get(url, method="HEAD").headers["ETag"], _get(url, method="HEAD").headers["Last-Modified"]
    assert _get(url, "bytes=0-9", **{"If-Range": etag}).status_code == 206
    assert _get(url, "bytes=0-9", **{"If-Range": modified}).status_code == 206
    assert _get(url, "bytes=0-9", **{"If-Range": '"another-version"'}).status_code == 200


def test_range_of_an_empty_object_over_http(middleware, client):
    url = _signed_get_url(client, "empty", b"")
    empty = requests.get(url, timeout=10)
    assert empty.status_code == 200 and empty.content == b"" and empty.headers["Content-Length"] == "0"
    refused = requests.get(url, headers={"Range": "bytes=0-"}, timeout=10)
    _assert_error(refused, 416, "is 0 bytes long")
    assert refused.headers["Content-Range"] == "bytes */0"


def _put_declaring(url: str, length: int) -> tuple[int, dict]:
    """PUT that declares `length` bytes and sends only a few: the server must answer before reading them."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("PUT", f"{parts.path}?{parts.query}")
        connection.putheader("Content-Length", str(length))
        connection.endheaders(b"just the start")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_oversized_uploads_are_413_before_they_are_read(middleware, client):
    url = client.presigned_upload_url("uploads/huge.bin")
    status, body = _put_declaring(url, 5 * GiB + 1)
    assert status == 413 and body["statusCode"] == 413
    assert "at most 5 GiB (5368709120 bytes)" in body["error"] and "in parts" in body["error"]
    part_url = client.create_checkpoint("Lora", [("huge.safetensors", 1)])["s3PresignUrl"]["huge.safetensors"][0]
    status, body = _put_declaring(part_url, 5 * GiB + 1)
    assert status == 413 and "A part may be at most 5 GiB" in body["error"]
    assert requests.put(url, data=b"small", timeout=10).status_code == 200


def test_put_errors_over_http(middleware, client):
    assert requests.put(client.presigned_upload_url("uploads/clash"), data=b"1", timeout=10).status_code == 200
    clash = requests.put(client.presigned_upload_url("uploads/clash/child"), data=b"2", timeout=10)
    _assert_error(clash, 409, "uploads/clash/child cannot be stored")
    part_url = client.create_checkpoint("Lora", [("p.safetensors", 1)])["s3PresignUrl"]["p.safetensors"][0]
    tampered = part_url.replace("partNumber=1", "partNumber=2")
    _assert_error(requests.put(tampered, data=b"x", timeout=10), 403, "signature does not match")


def test_lowered_caps_over_http(tmp_path):

    server = start_middleware(tmp_path / "data", API_KEY, env={"SD_AWS_BLOB_MAX_PUT_BYTES": str(64 * KiB),
                                                             "SD_AWS_MULTIPART_MAX_PART_BYTES": str(128 * KiB)})
    try:
        from aws_extension.client import MiddlewareClient

        client = MiddlewareClient(server.url, API_KEY)
        url = client.presigned_upload_url("uploads/capped.bin")
        assert requests.put(url, data=b"x" * 64 * KiB, timeout=10).status_code == 200
        streamed = requests.put(url, data=(b"x" * KiB for _ in range(100)), timeout=10)  # chunked: no length
        _assert_error(streamed, 413, "at most 64 KiB")
        part_url = client.create_checkpoint("Lora", [("c.safetensors", 1)])["s3PresignUrl"]["c.safetensors"][0]
        _assert_error(requests.put(part_url, data=b"x" * 200 * KiB, timeout=10), 413, "at most 128 KiB")
    finally:
        server.stop()


def test_objects_named_like_temp_files_survive_a_server_restart(tmp_path):
    from aws_extension.client import MiddlewareClient

    data_dir = tmp_path / "data"
    server = start_middleware(data_dir, API_KEY)
    try:
        client = MiddlewareClient(server.url, API_KEY)
        dotted = tmp_path / ".a.tmp"
        dotted.write_bytes(b"a dataset file named like a temp file")
        assert client.create_dataset_from_files("d", [dotted])["status"] == "Enabled"
        upload = requests.put(client.presigned_upload_url("uploads/.evil.tmp"), data=b"evil", timeout=10)
        assert upload.status_code == 200
    finally:
        server.stop()
    server = start_middleware(data_dir, API_KEY)
    try:
        client = MiddlewareClient(server.url, API_KEY)
        assert client.list_datasets()[0]["status"] == "Enabled"
        assert requests.get(client.dataset_files("d")[0]["preview_url"], timeout=10).content == dotted.read_bytes()
        assert (data_dir / "blobs" / "uploads" / ".evil.tmp").read_bytes() == b"evil"
    finally:
        server.stop()


# -- a full disk over HTTP ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_disk_server(tmp_path_factory):
    """A server whose blob folders (objects, parts, temp files) are on a 2 MiB tmpfs; its records are not."""
    root = tmp_path_factory.mktemp("full")
    with small_tmpfs(root / "fs") as fs:
        data_dir = root / "data"
        data_dir.mkdir()
        for folder in ("blobs", "multipart", "blobs-tmp"):
            (fs / folder).mkdir()
            (data_dir / folder).symlink_to(fs / folder)
        server = start_middleware(data_dir, API_KEY, env={"SD_AWS_MULTIPART_MIN_PART_BYTES": str(64 * KiB)})
        try:
            from aws_extension.client import MiddlewareClient

            yield server, MiddlewareClient(server.url, API_KEY), fs
        finally:
            server.stop()


def _lora_upload(client, tmp_path: Path, name: str) -> tuple[dict, bytes, list[bytes]]:
    data = fake_lora(tmp_path / name, 300 * KiB).read_bytes()
    parts = [data[:128 * KiB], data[128 * KiB:256 * KiB], data[256 * KiB:]]
    return client.create_checkpoint("Lora", [(name, len(parts))]), data, parts


def test_a_full_disk_is_507_on_put_and_part_and_leaves_nothing(small_disk_server, tmp_path):
    server, client, fs = small_disk_server
    created, data, parts = _lora_upload(client, tmp_path, "full.safetensors")
    urls = created["s3PresignUrl"]["full.safetensors"]
    etags = [requests.put(urls[i], data=parts[i], timeout=10).headers["ETag"] for i in (0, 1)]
    single = client.presigned_upload_url("uploads/when-full.bin")
    with disk_filled(fs):
        _assert_error(requests.put(single, data=b"x" * 100 * KiB, timeout=10), 507, "storage is full")
        _assert_error(requests.put(urls[2], data=parts[2], timeout=10), 507, "free disk space")
        assert list((fs / "blobs-tmp").iterdir()) == []
        assert not (fs / "blobs" / "uploads" / "when-full.bin").exists()
    etags.append(requests.put(urls[2], data=parts[2], timeout=10).headers["ETag"])
    done = client.complete_checkpoint(created["checkpoint"]["id"], {"full.safetensors": [
        {"ETag": etag, "PartNumber": n} for n, etag in enumerate(etags, 1)]})
    assert done["checkpoint"]["status"] == "Active"
    assert done["checkpoint"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_full_disk_is_507_on_completion_and_the_upload_stays_completable(small_disk_server, tmp_path):
    server, client, fs = small_disk_server
    created, data, parts = _lora_upload(client, tmp_path, "complete.safetensors")
    urls = created["s3PresignUrl"]["complete.safetensors"]
    tags = {"complete.safetensors": [{"ETag": requests.put(url, data=part, timeout=10).headers["ETag"],
                                      "PartNumber": n} for n, (url, part) in enumerate(zip(urls, parts), 1)]}
    body = {"checkpoint_id": created["checkpoint"]["id"], "status": "Active", "multi_parts_tags": tags}
    headers = {"x-api-key": API_KEY}
    with disk_filled(fs):
        refused = requests.put(f"{server.url}/checkpoint", json=body, headers=headers, timeout=30)
        assert list((fs / "blobs-tmp").iterdir()) == []
    done = requests.put(f"{server.url}/checkpoint", json=body, headers=headers, timeout=30)
    assert done.status_code == 200 and done.json()["checkpoint"]["status"] == "Active"
    _assert_error(refused, 507, "storage is full")
