"""The object store port: files by key, signed expiring URLs, multipart uploads."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol

# S3's limits, the defaults of every implementation (settings may lower the sizes).
S3_MAX_PUT_BYTES = 5 * 1024**3
S3_MAX_PART_BYTES = 5 * 1024**3
MAX_URL_LIFETIME_S = 7 * 24 * 3600  # the longest a presigned S3 URL may live


class InvalidKey(ValueError):
    """A key that is empty, absolute, has `..`/`.` segments, NUL or backslashes, or is too long."""


class KeyConflict(ValueError):
    """A key the store cannot hold beside the objects already there (in a folder: `a/b` when `a` is an object)."""


class UploadError(ValueError):
    """Completing a multipart upload failed: a part is missing, an ETag is wrong, a part is too small."""


class UploadNotFound(LookupError):
    """No such multipart upload for this key (never created, already completed, aborted or expired)."""


class ObjectTooLarge(ValueError):
    """An upload over the store's limit: a single PUT over `max_put_bytes`, a part over `max_part_bytes`."""

    def __init__(self, message: str, limit: int):
        super().__init__(message)
        self.message = message
        self.limit = limit


class StorageFull(OSError):
    """The store's disk (or the quota of its user) is full: the write was undone; nothing partial is left."""

    MESSAGE = ("The server's storage is full; the operator must free disk space or grow the data volume, "
               "then the upload can be retried.")

    def __init__(self, code: int = errno.ENOSPC):
        super().__init__(code, self.MESSAGE)
        self.message = self.MESSAGE

    def __str__(self) -> str:
        return self.MESSAGE


@dataclass(frozen=True)
class BlobInfo:
    size: int
    sha256: str


def validate_key(key: str) -> str:
    if not key or len(key.encode()) > 1024:
        raise InvalidKey("a key must be 1 to 1024 bytes long")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidKey(f"key {key!r} must be a relative path without backslashes or NUL")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"key {key!r} has an empty, '.' or '..' segment")
        if len(segment.encode()) > 255:
            raise InvalidKey(f"key {key!r} has a segment over 255 bytes")
    return key


def check_url_lifetime(seconds: int) -> int:
    """A signed URL's lifetime: a whole number of seconds, 1 s to 7 days (S3's bounds)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= MAX_URL_LIFETIME_S:
        raise ValueError(f"a signed URL must live 1 to {MAX_URL_LIFETIME_S} seconds (7 days), not {seconds!r}")
    return seconds


def check_part_list(parts: list[tuple[int, str]], max_parts: int, expected_parts: int | None) -> None:
    """A completion's (part number, ETag) list: not empty, numbers 1..max_parts, ascending, each once, and
    exactly 1..expected_parts when that is given. UploadError otherwise."""
    if not parts:
        raise UploadError("the list of parts is empty")
    numbers = [n for n, _ in parts]
    if len(parts) > max_parts or not all(1 <= n <= max_parts for n in numbers):
        raise UploadError(f"an upload has at most {max_parts} parts, numbered 1 to {max_parts}")
    if numbers != sorted(set(numbers)):
        raise UploadError("part numbers must be listed once each, in ascending order")
    if expected_parts is not None and numbers != list(range(1, expected_parts + 1)):
        missing = sorted(set(range(1, expected_parts + 1)) - set(numbers))
        raise UploadError(f"parts {missing or numbers} are missing or unexpected; "
                          f"expected parts 1..{expected_parts}")


def part_too_large(max_part_bytes: int) -> str:
    """ObjectTooLarge's message for a part over the cap."""
    return (f"A part may be at most {size_text(max_part_bytes)} ({max_part_bytes} bytes); "
            "split the file into more, smaller parts.")


def size_text(size: int) -> str:
    """`5 GiB`, `64 KiB`, `1000 bytes`: a limit as a person reads it."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


class BlobStore(Protocol):
    """Writes raise StorageFull when the disk is full (API: 507) and undo themselves."""

    def uri(self, key: str) -> str:
        """Where a key lives, for records (`s3://bucket/key` on S3)."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None: ...

    def signed_url(self, key: str, method: str = "GET", expires_in: int | None = None) -> str:
        """`expires_in`: 1 s to 7 days (ValueError otherwise); None: the store's default lifetime."""

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload; returns its upload id."""

    def part_urls(self, key: str, upload_id: str, count: int) -> list[str]:
        """Signed PUT URLs for parts 1..count (count at most the store's `max_parts`); each answers with the
        part's ETag."""

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        """Store one part sent by the server itself (a resumable upload, e.g. a URL import spread over several
        Lambda invocations); returns its ETag. UploadError for a number outside 1..max_parts, ObjectTooLarge
        over `max_part_bytes`, UploadNotFound when the upload is gone."""

    def list_parts(self, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        """The parts stored so far, ascending: (part number, ETag, size). UploadNotFound when the upload is
        gone. With `upload_part`, what a resumed upload needs to go on where it stopped."""

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]],
                           expected_parts: int | None = None) -> BlobInfo:
        """Check every (part number, ETag), assemble the object atomically, drop the parts. On failure the
        upload is left as it was, so it can be completed again."""

    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A file to write the object into; it appears under `key` only when the block ends without error."""

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def sweep_incomplete_uploads(self, older_than_s: float) -> list[str]:
        """Remove multipart uploads started more than `older_than_s` ago; returns their keys."""


def key_of(blobs: BlobStore, location: str) -> str | None:
    """The blob key of a location (`s3://<bucket>/<key>`) when it is in this store, else None."""
    parts = location.split("/", 3)
    if len(parts) < 4:
        return None
    try:
        return parts[3] if blobs.uri(parts[3]) == location else None
    except InvalidKey:
        return None
