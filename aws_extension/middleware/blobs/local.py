"""The embedded object store: a folder, with signed expiring URLs served by the middleware (`/blobs/...`).

Layout under the data dir: `blobs/<key>` (objects), `multipart/<upload id>/` (parts in progress:
`meta.json`, `<n>.part`, `<n>.md5`), `blobs-tmp/` (files being written). Every write goes to a temp file in
`blobs-tmp/` and is renamed into place (the same filesystem, so the rename is atomic): a reader never sees a
partial file, and a temp file is never where a key can point, so emptying `blobs-tmp/` at start-up cannot
remove an object, whatever its name. A URL's signature is an HMAC-SHA256, with a secret kept in the data dir,
of the method, the key, the expiry and (for a part) the upload id and part number.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode

import anyio

from aws_extension.middleware.blobs.base import (
    S3_MAX_PART_BYTES,
    S3_MAX_PUT_BYTES,
    BlobInfo,
    InvalidKey,
    KeyConflict,
    ObjectTooLarge,
    StorageFull,
    UploadError,
    UploadNotFound,
    check_part_list,
    check_url_lifetime,
    part_too_large,
    size_text,
    validate_key,
)

CHUNK = 1 << 20
OLD_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class SignatureError(PermissionError):
    """A blob URL that is expired, tampered with, or used with another method."""


def _quoted_etag(md5_hex: str) -> str:
    return f'"{md5_hex}"'


@contextmanager
def _storage_full_as_such() -> Iterator[None]:
    """The OS's "no space left on device" / "disk quota exceeded" as StorageFull (the API's 507)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL_ERRNOS and not isinstance(exc, StorageFull):
            raise StorageFull(exc.errno) from exc
        raise


def _write_hashed(out: BinaryIO, digest, data: bytes) -> None:
    digest.update(data)
    out.write(data)


def _copy_hashed(source: Path, out: BinaryIO, digest) -> int:
    copied = 0
    with open(source, "rb") as f:
        while chunk := f.read(CHUNK):
            _write_hashed(out, digest, chunk)
            copied += len(chunk)
    return copied


async def _limited_buffers(body: AsyncIterator[bytes], limit: int, too_large: str) -> AsyncIterator[bytes]:
    """The body in buffers of about CHUNK bytes; ObjectTooLarge as soon as it passes `limit` (no more is read)."""
    buffer, received = bytearray(), 0
    async for chunk in body:
        received += len(chunk)
        if received > limit:
            raise ObjectTooLarge(too_large, limit)
        buffer += chunk
        if len(buffer) >= CHUNK:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def _is_number(text: str, max_digits: int) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= max_digits


class LocalBlobStore:
    def __init__(self, root: Path, secret: bytes, public_url: str, signed_url_ttl_s: int,
                 min_part_bytes: int, max_parts: int, max_put_bytes: int = S3_MAX_PUT_BYTES,
                 max_part_bytes: int = S3_MAX_PART_BYTES):
        self.objects = root / "blobs"
        self.uploads = root / "multipart"
        self.temp = root / "blobs-tmp"
        written_by_an_older_version = not self.temp.exists()
        for folder in (self.objects, self.uploads, self.temp):
            folder.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self.public_url = public_url.rstrip("/")
        self.signed_url_ttl_s = check_url_lifetime(signed_url_ttl_s)
        self.min_part_bytes = min_part_bytes
        self.max_parts = max_parts
        self.max_put_bytes = max_put_bytes
        self.max_part_bytes = max_part_bytes
        if written_by_an_older_version:
            self._remove_old_temp_files()
        self._empty_temp_folder()
        self._return_claimed_uploads()

    def _remove_old_temp_files(self) -> None:
        """Versions before `blobs-tmp/` wrote `.NAME.<32 hex>.tmp` beside the target and removed the ones a
        crash left at their next start. A data dir without `blobs-tmp/` was last opened by such a version, so
        the files of that form in it are its temp files; once `blobs-tmp/` exists they may be objects."""
        for folder in (self.objects, self.uploads):
            for temp in folder.rglob(".*.tmp"):
                if OLD_TEMP_NAME.fullmatch(temp.name) and temp.is_file() and not temp.is_symlink():
                    temp.unlink(missing_ok=True)

    def _return_claimed_uploads(self) -> None:
        """Uploads a completion had claimed when the process died: the completion never finished (its
        assembled file was a temp file), so the upload is given back and can be completed again."""
        for claimed in self.uploads.glob("*.completing-*"):
            claimed.rename(claimed.with_name(claimed.name.split(".completing-", 1)[0]))

    def _empty_temp_folder(self) -> None:
        """Temp files left by a process that died mid-write (one middleware process owns a data dir)."""
        for entry in self.temp.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    # -- paths -----------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        path = (self.objects / validate_key(key)).resolve()
        if not path.is_relative_to(self.objects.resolve()):
            raise InvalidKey(f"key {key!r} escapes the store")
        return path

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id or len(upload_id) > 32 or not all(c in "0123456789abcdef" for c in upload_id):
            raise UploadNotFound(f"upload id {upload_id!r} is not one this server gave out")
        return self.uploads / upload_id

    def _upload_meta(self, key: str, upload_id: str) -> Path:
        directory = self._upload_dir(upload_id)
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except (FileNotFoundError, ValueError):
            raise UploadNotFound(f"no upload {upload_id} in progress (completed, aborted or expired)") from None
        if meta["key"] != key:
            raise UploadNotFound(f"upload {upload_id} belongs to another object")
        return directory

    @contextmanager
    def _temp_file(self, target: Path, durable: bool = False, make_parents: bool = True) -> Iterator[BinaryIO]:
        """A temp file that replaces `target` when the block ends without error, and is removed otherwise.
        `durable`: fsync before the rename. `make_parents=False`: a missing parent folder is FileNotFoundError."""
        temp = self.temp / f"{uuid.uuid4().hex}.tmp"
        try:
            with _storage_full_as_such():
                with open(temp, "wb") as out:
                    yield out
                    if durable:
                        out.flush()
                        os.fsync(out.fileno())
                self._move_into_place(temp, target, make_parents)
        finally:
            temp.unlink(missing_ok=True)

    def _move_into_place(self, temp: Path, target: Path, make_parents: bool) -> None:
        try:
            if make_parents:
                target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, target)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            objects = self.objects.resolve()
            name = target.relative_to(objects) if target.is_relative_to(objects) else target.name
            raise KeyConflict(f"{name} cannot be stored: a folder of objects has that name, or one of its "
                              "prefixes is an object") from None

    # -- the port ----------------------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        return f"local://blobs/{validate_key(key)}"

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def _signature(self, method: str, key: str, expires: int, upload_id: str = "", part: str = "") -> str:
        message = "\n".join([method, key, str(expires), upload_id, part]).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signed_url(self, key: str, method: str = "GET", expires_in: int | None = None,
                   upload_id: str = "", part: int | None = None) -> str:
        validate_key(key)
        lifetime = self.signed_url_ttl_s if expires_in is None else check_url_lifetime(expires_in)
        expires = int(time.time()) + lifetime
        part_text = str(part) if part is not None else ""
        query = {"X-Method": method, "X-Expires": expires}
        if upload_id:
            query.update(uploadId=upload_id, partNumber=part_text)
        query["X-Signature"] = self._signature(method, key, expires, upload_id, part_text)
        return f"{self.public_url}/blobs/{quote(key)}?{urlencode(query)}"

    def verify(self, method: str, key: str, query: dict[str, str]) -> None:
        """Raise SignatureError unless `query` is a valid, unexpired signature for `method` on `key`."""
        signed_method = query.get("X-Method", "")
        expires_text, signature = query.get("X-Expires", ""), query.get("X-Signature", "")
        if not (signed_method and _is_number(expires_text, 12) and signature):
            raise SignatureError("This blob URL is not signed; ask the API for a signed URL.")
        if signed_method != method and not (signed_method == "GET" and method == "HEAD"):
            raise SignatureError(f"This URL is signed for {signed_method}, not {method}.")
        expected = self._signature(signed_method, key, int(expires_text),
                                   query.get("uploadId", ""), query.get("partNumber", ""))
        if not hmac.compare_digest(expected, signature):
            raise SignatureError("The URL's signature does not match: it was changed after signing.")
        if int(expires_text) < time.time():
            raise SignatureError("This signed URL has expired; ask the API for a new one.")

    def create_multipart(self, key: str) -> str:
        validate_key(key)
        upload_id = uuid.uuid4().hex
        directory = self.uploads / upload_id
        with _storage_full_as_such():
            directory.mkdir()
        try:
            with self._temp_file(directory / "meta.json", make_parents=False) as out:
                out.write(json.dumps({"key": key, "created": time.time()}).encode())
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return upload_id

    def part_urls(self, key: str, upload_id: str, count: int) -> list[str]:
        if not 1 <= count <= self.max_parts:
            raise ValueError(f"an upload has 1 to {self.max_parts} parts, not {count}")
        return [self.signed_url(key, "PUT", upload_id=upload_id, part=n) for n in range(1, count + 1)]

    def _part_upload_dir(self, key: str, upload_id: str, part_number: int) -> Path:
        if not 1 <= part_number <= self.max_parts:
            raise UploadError(f"part number {part_number} is outside 1..{self.max_parts}")
        return self._upload_meta(validate_key(key), upload_id)

    def _save_part_md5(self, directory: Path, upload_id: str, part_number: int, digest: str) -> str:
        try:
            with self._temp_file(directory / f"{part_number}.md5", make_parents=False) as out:
                out.write(digest.encode())
        except FileNotFoundError:  # the upload was completed or aborted while the part arrived
            raise UploadNotFound(f"no upload {upload_id} in progress (completed, aborted or expired)") from None
        return _quoted_etag(digest)

    async def receive_part(self, key: str, upload_id: str, part_number: int, body: AsyncIterator[bytes],
                           declared_bytes: int | None = None) -> str:
        """Stream one part to disk; returns its ETag (the quoted MD5 of the part)."""
        directory = self._part_upload_dir(key, upload_id, part_number)
        try:
            digest = await self._stream_to(directory / f"{part_number}.part", body, self.max_part_bytes,
                                           part_too_large(self.max_part_bytes), declared_bytes, make_parents=False)
        except FileNotFoundError:
            raise UploadNotFound(f"no upload {upload_id} in progress (completed, aborted or expired)") from None
        return self._save_part_md5(directory, upload_id, part_number, digest)

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        directory = self._part_upload_dir(key, upload_id, part_number)
        if len(data) > self.max_part_bytes:
            raise ObjectTooLarge(part_too_large(self.max_part_bytes), self.max_part_bytes)
        try:
            with self._temp_file(directory / f"{part_number}.part", make_parents=False) as out:
                out.write(data)
        except FileNotFoundError:
            raise UploadNotFound(f"no upload {upload_id} in progress (completed, aborted or expired)") from None
        return self._save_part_md5(directory, upload_id, part_number, hashlib.md5(data).hexdigest())

    def list_parts(self, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        directory = self._upload_meta(validate_key(key), upload_id)
        parts = []
        for md5_file in directory.glob("*.md5"):
            try:
                parts.append((int(md5_file.stem), _quoted_etag(md5_file.read_text()),
                              (directory / f"{md5_file.stem}.part").stat().st_size))
            except FileNotFoundError:  # completed or aborted meanwhile
                raise UploadNotFound(f"no upload {upload_id} in progress (completed, aborted or expired)") from None
        return sorted(parts)

    async def receive_object(self, key: str, body: AsyncIterator[bytes], declared_bytes: int | None = None) -> str:
        """Stream a whole object (a single PUT) into place; returns its ETag."""
        too_large = (f"A single upload may be at most {size_text(self.max_put_bytes)} ({self.max_put_bytes} "
                     "bytes); upload a larger file in parts (a multipart upload).")
        digest = await self._stream_to(self.path(key), body, self.max_put_bytes, too_large, declared_bytes)
        return _quoted_etag(digest)

    async def _stream_to(self, target: Path, body: AsyncIterator[bytes], limit: int, too_large: str,
                         declared_bytes: int | None, make_parents: bool = True) -> str:
        """Write the body to `target` via a temp file, refusing it (before reading, if its declared length says
        so) when it is over `limit`. Writing and hashing run in a worker thread, a buffer at a time, so the
        event loop keeps serving the other requests meanwhile."""
        if declared_bytes is not None and declared_bytes > limit:
            raise ObjectTooLarge(too_large, limit)
        digest = hashlib.md5()
        with self._temp_file(target, make_parents=make_parents) as out:
            async for buffer in _limited_buffers(body, limit, too_large):
                await anyio.to_thread.run_sync(_write_hashed, out, digest, buffer)
        return digest.hexdigest()

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]],
                           expected_parts: int | None = None) -> BlobInfo:
        directory = self._upload_meta(key, upload_id)
        # Renaming the upload's folder claims it: of two racing completions only one finds it.
        claimed = directory.with_name(f"{upload_id}.completing-{uuid.uuid4().hex}")
        try:
            with _storage_full_as_such():
                directory.rename(claimed)
        except FileNotFoundError:
            raise UploadNotFound(f"no upload {upload_id} in progress (completed, aborted or expired)") from None
        try:
            info = self._assemble(key, claimed, parts, expected_parts)
        except BaseException:
            claimed.rename(directory)  # give the upload back so the client can fix its list and retry
            raise
        shutil.rmtree(claimed, ignore_errors=True)
        return info

    def _checked_part(self, directory: Path, number: int, etag: str, is_last: bool) -> Path:
        md5_file = directory / f"{number}.md5"
        if not md5_file.is_file():
            raise UploadError(f"part {number} was never uploaded")
        if etag.strip().strip('"').lower() != md5_file.read_text():
            raise UploadError(f"part {number}: ETag {etag} does not match the uploaded part")
        part = directory / f"{number}.part"
        size = part.stat().st_size
        if not is_last and size < self.min_part_bytes:
            raise UploadError(f"part {number} is {size} bytes; every part but the last must be at "
                              f"least {self.min_part_bytes} bytes")
        return part

    def _assemble(self, key: str, directory: Path, parts: list[tuple[int, str]],
                  expected_parts: int | None) -> BlobInfo:
        check_part_list(parts, self.max_parts, expected_parts)
        files = [self._checked_part(directory, number, etag, is_last=index == len(parts) - 1)
                 for index, (number, etag) in enumerate(parts)]
        sha256, size = hashlib.sha256(), 0
        with self._temp_file(self.path(key), durable=True) as out:
            for file in files:
                size += _copy_hashed(file, out, sha256)
        return BlobInfo(size=size, sha256=sha256.hexdigest())

    def abort_multipart(self, key: str, upload_id: str) -> None:
        shutil.rmtree(self._upload_meta(key, upload_id), ignore_errors=True)

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        with self._temp_file(self.path(key), durable=True) as out:
            yield out

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        with open(self.path(key), "rb") as f:
            f.seek(start)
            return f.read() if length is None else f.read(length)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with open(self.path(key), "rb") as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)

    def sweep_incomplete_uploads(self, older_than_s: float) -> list[str]:
        removed, cutoff = [], time.time() - older_than_s
        for directory in self.uploads.iterdir():
            try:
                meta = json.loads((directory / "meta.json").read_text())
            except (FileNotFoundError, NotADirectoryError, ValueError):
                meta = {"key": None, "created": directory.stat().st_mtime}
            if meta["created"] < cutoff:
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(meta["key"])
        return removed
