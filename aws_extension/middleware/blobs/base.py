"""The object store port: files by key, signed expiring URLs, multipart uploads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol


class InvalidKey(ValueError):
    """A key that is empty, absolute, has `..`/`.` segments, NUL or backslashes, or is too long."""


class UploadError(ValueError):
    """Completing a multipart upload failed: a part is missing, an ETag is wrong, a part is too small."""


class UploadNotFound(LookupError):
    """No such multipart upload for this key (never created, already completed, aborted or expired)."""


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


class BlobStore(Protocol):
    def uri(self, key: str) -> str:
        """Where a key lives, for records (`s3://bucket/key` on S3)."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None: ...

    def signed_url(self, key: str, method: str = "GET", expires_in: int | None = None) -> str: ...

    def create_multipart(self, key: str) -> str:
        """Start a multipart upload; returns its upload id."""

    def part_urls(self, key: str, upload_id: str, count: int) -> list[str]:
        """Signed PUT URLs for parts 1..count; each answers with the part's ETag."""

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]],
                           expected_parts: int | None = None) -> BlobInfo:
        """Check every (part number, ETag), assemble the object atomically, drop the parts."""

    def abort_multipart(self, key: str, upload_id: str) -> None: ...

    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A file to write the object into; it appears under `key` only when the block ends without error."""

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def sweep_incomplete_uploads(self, older_than_s: float) -> list[str]:
        """Remove multipart uploads started more than `older_than_s` ago; returns their keys."""
