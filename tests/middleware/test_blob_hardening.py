"""The embedded object store under abuse: names like temp files, oversized uploads, a full disk, odd Range
headers, caller-chosen sizes. The store directly, then the real server over HTTP."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from aws_extension.middleware.blobs import local
from aws_extension.middleware.blobs.base import (
    MAX_URL_LIFETIME_S,
    KeyConflict,
    ObjectTooLarge,
    StorageFull,
    UploadError,
)
from aws_extension.middleware.blobs.local import LocalBlobStore, SignatureError

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


# -- 5. sizes and numbers the caller chooses --------------------------------------------------------------------
def test_caller_chosen_counts_lifetimes_and_numbers_are_bounded(tmp_path):
    store = make_store(tmp_path)
    upload_id = store.create_multipart("a/m")
    assert len(store.part_urls("a/m", upload_id, 10)) == 10
    for count in (0, -1, 11, 10**9):
        with pytest.raises(ValueError, match="1 to 10 parts"):
            store.part_urls("a/m", upload_id, count)
    for lifetime in (0, -5, MAX_URL_LIFETIME_S + 1, 10**12, True, 1.5):
        with pytest.raises(ValueError, match="must live 1 to 604800 seconds"):
            store.signed_url("a/m", "PUT", expires_in=lifetime)
    assert store.signed_url("a/m", "GET", expires_in=MAX_URL_LIFETIME_S)
    with pytest.raises(ValueError, match="must live"):
        LocalBlobStore(tmp_path, b"s", "http://127.0.0.1:1", 0, 4, 10)
    for number in (0, 11, -1):
        with pytest.raises(UploadError, match="outside 1..10"):
            put_part(store, "a/m", upload_id, number, b"x")
    with pytest.raises(UploadError, match="at most 10 parts"):
        store.complete_multipart("a/m", upload_id, [(n, "e") for n in range(1, 12)])
    with pytest.raises(UploadError, match="at most 10 parts"):
        store.complete_multipart("a/m", upload_id, [(10**9, "e")])
    etag = put_part(store, "a/m", upload_id, 1, b"x")
    with pytest.raises(UploadError, match="does not match"):
        store.complete_multipart("a/m", upload_id, [(1, "../../../blobs/a/m")])
    assert store.complete_multipart("a/m", upload_id, [(1, etag)]).size == 1


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
