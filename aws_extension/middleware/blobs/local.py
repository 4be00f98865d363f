"""The embedded object store: a folder, with signed expiring URLs served by the middleware (`/blobs/...`).

Layout under the data dir: `blobs/<key>` (objects), `multipart/<upload id>/` (parts in progress:
`meta.json`, `<n>.part`, `<n>.md5`). Objects and parts are written to a temp file and renamed into
place, so a reader never sees a partial file. A URL's signature is an HMAC-SHA256, with a secret kept in
the data dir, of the method, the key, the expiry and (for a part) the upload id and part number.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
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
    BlobInfo,
    InvalidKey,
    UploadError,
    UploadNotFound,
    validate_key,
)

CHUNK = 1 << 20


class SignatureError(PermissionError):
    """A blob URL that is expired, tampered with, or used with another method."""


def _quoted_etag(md5_hex: str) -> str:
    return f'"{md5_hex}"'


class LocalBlobStore:
    def __init__(self, root: Path, secret: bytes, public_url: str, signed_url_ttl_s: int,
                 min_part_bytes: int, max_parts: int):
        self.objects = root / "blobs"
        self.uploads = root / "multipart"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.uploads.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self.public_url = public_url.rstrip("/")
        self.signed_url_ttl_s = signed_url_ttl_s
        self.min_part_bytes = min_part_bytes
        self.max_parts = max_parts
        self._remove_orphaned_temp_files()

    def _remove_orphaned_temp_files(self) -> None:
        """Temp files left by a process that died mid-write (one middleware process owns a data dir)."""
        for temp in [*self.objects.rglob(".*.tmp"), *self.uploads.rglob(".*.tmp")]:
            temp.unlink(missing_ok=True)

    # -- paths -----------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        path = (self.objects / validate_key(key)).resolve()
        if not path.is_relative_to(self.objects.resolve()):
            raise InvalidKey(f"key {key!r} escapes the store")
        return path

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id or not all(c in "0123456789abcdef" for c in upload_id):
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
        expires = int(time.time()) + (expires_in or self.signed_url_ttl_s)
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
        if not (signed_method and expires_text.isdigit() and signature):
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
        directory.mkdir()
        (directory / "meta.json").write_text(json.dumps({"key": key, "created": time.time()}))
        return upload_id

    def part_urls(self, key: str, upload_id: str, count: int) -> list[str]:
        return [self.signed_url(key, "PUT", upload_id=upload_id, part=n) for n in range(1, count + 1)]

    async def receive_part(self, key: str, upload_id: str, part_number: int, body: AsyncIterator[bytes]) -> str:
        """Stream one part to disk; returns its ETag (the quoted MD5 of the part)."""
        if not 1 <= part_number <= self.max_parts:
            raise UploadError(f"part number {part_number} is outside 1..{self.max_parts}")
        directory = self._upload_meta(key, upload_id)
        digest = await self._stream_to(directory / f"{part_number}.part", body, hashlib.md5())
        (directory / f"{part_number}.md5").write_text(digest)
        return _quoted_etag(digest)

    async def receive_object(self, key: str, body: AsyncIterator[bytes], max_bytes: int) -> str:
        """Stream a whole object (a single PUT) into place; returns its ETag."""
        digest = await self._stream_to(self.path(key), body, hashlib.md5(), max_bytes)
        return _quoted_etag(digest)

    @staticmethod
    async def _stream_to(target: Path, body: AsyncIterator[bytes], digest, max_bytes: int | None = None) -> str:
        """Write the body to `target` via a temp file; writing and hashing run in a worker thread, a
        buffer at a time, so the event loop keeps serving the other parts meanwhile."""
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        received = 0
        buffer = bytearray()

        def flush(out: BinaryIO, data: bytes) -> None:
            digest.update(data)
            out.write(data)

        try:
            with open(temp, "wb") as out:
                async for chunk in body:
                    received += len(chunk)
                    if max_bytes is not None and received > max_bytes:
                        raise UploadError(f"the object is larger than {max_bytes} bytes; use a multipart upload")
                    buffer += chunk
                    if len(buffer) >= CHUNK:
                        await anyio.to_thread.run_sync(flush, out, bytes(buffer))
                        buffer.clear()
                if buffer:
                    await anyio.to_thread.run_sync(flush, out, bytes(buffer))
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return digest.hexdigest()

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]],
                           expected_parts: int | None = None) -> BlobInfo:
        directory = self._upload_meta(key, upload_id)
        # Renaming the upload's folder claims it: of two racing completions only one finds it.
        claimed = directory.with_name(f"{upload_id}.completing-{uuid.uuid4().hex}")
        try:
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

    def _assemble(self, key: str, directory: Path, parts: list[tuple[int, str]],
                  expected_parts: int | None) -> BlobInfo:
        numbers = [n for n, _ in parts]
        if not parts:
            raise UploadError("the list of parts is empty")
        if numbers != sorted(set(numbers)):
            raise UploadError("part numbers must be listed once each, in ascending order")
        if expected_parts is not None and numbers != list(range(1, expected_parts + 1)):
            missing = sorted(set(range(1, expected_parts + 1)) - set(numbers))
            raise UploadError(f"parts {missing or numbers} are missing or unexpected; "
                              f"expected parts 1..{expected_parts}")
        for index, (number, etag) in enumerate(parts):
            md5_file = directory / f"{number}.md5"
            if not md5_file.is_file():
                raise UploadError(f"part {number} was never uploaded")
            if etag.strip().strip('"').lower() != md5_file.read_text():
                raise UploadError(f"part {number}: ETag {etag} does not match the uploaded part")
            size = (directory / f"{number}.part").stat().st_size
            if index < len(parts) - 1 and size < self.min_part_bytes:
                raise UploadError(f"part {number} is {size} bytes; every part but the last must be at "
                                  f"least {self.min_part_bytes} bytes")
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        sha256, size = hashlib.sha256(), 0
        try:
            with open(temp, "wb") as out:
                for number, _ in parts:
                    with open(directory / f"{number}.part", "rb") as part:
                        while chunk := part.read(CHUNK):
                            sha256.update(chunk)
                            size += len(chunk)
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return BlobInfo(size=size, sha256=sha256.hexdigest())

    def abort_multipart(self, key: str, upload_id: str) -> None:
        shutil.rmtree(self._upload_meta(key, upload_id), ignore_errors=True)

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temp, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

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
