"""The object store on S3: SigV4 presigned URLs (S3 checks them), S3's own multipart uploads and ETags.

boto3 is configured only from its standard environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, ...), so
the same code talks to AWS or to an emulator. Differences from the folder store (`local.py`), by design:
- `KeyConflict` never happens: S3 keys are flat strings, `a` and `a/b` can both be objects.
- `StorageFull` never happens: S3 has no disk to fill.
- A presigned single PUT is capped by S3 itself (5 GiB), not by `max_put_bytes`: a presigned PUT cannot bound
  a length it does not know in advance. Parts sent through `upload_part` are checked against
  `max_part_bytes`; parts PUT to presigned URLs are capped by S3 (5 GiB).
- S3 refuses parts under 5 MiB but the last; `min_part_bytes` is checked too, before completing.
- `complete_multipart` reads the object back once, in a stream, for its sha256: S3 keeps no whole-object
  SHA-256 of a multipart object (its SHA-256 checksums of multipart uploads are hashes of the parts' hashes).
  Memory stays at one chunk whatever the size; the time is one sequential read (background work for big files).
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from aws_extension.middleware.blobs.base import (
    BlobInfo,
    ObjectTooLarge,
    UploadError,
    UploadNotFound,
    check_part_list,
    check_url_lifetime,
    part_too_large,
    validate_key,
)

CHUNK = 1 << 20
WRITER_PART_BYTES = 8 * 1024**2  # writer(): the part size of its multipart upload (S3's minimum is 5 MiB)
DELETE_BATCH_KEYS = 1000  # DeleteObjects' most keys per call; also one ListObjectsV2 page
LIFECYCLE_RULE_ID = "abort-incomplete-multipart-uploads"
_PRESIGNED_METHODS = {"GET": "get_object", "PUT": "put_object"}
_MISSING = {"404", "NoSuchKey", "NotFound"}
_PART_REFUSED = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "MalformedXML", "InvalidArgument"}


def s3_client() -> Any:
    """An S3 client from boto3's standard environment, signing with SigV4 (presigned URLs included)."""
    return boto3.client("s3", config=Config(signature_version="s3v4"))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _quoted(etag: str) -> str:
    return f'"{etag.strip().strip(chr(34))}"'


def _upload_gone(upload_id: str) -> UploadNotFound:
    return UploadNotFound(f"no upload {upload_id} in progress (completed, aborted or expired)")


def multipart_expiry_days(multipart_ttl_s: int) -> int:
    """The lifecycle rule's DaysAfterInitiation for a TTL in seconds: whole days, rounded up, at least 1."""
    return max(1, math.ceil(multipart_ttl_s / 86400))


def ensure_bucket(client: Any, bucket: str, multipart_ttl_s: int) -> None:
    """Create `bucket` if it is missing, block public access, encrypt by default (SSE-S3) and abort incomplete
    multipart uploads after `multipart_ttl_s` (whole days, rounded up). Safe to call again; the lifecycle
    configuration is replaced by this one rule (the bucket is the stack's own). `deploy/template.yaml`
    declares the same."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _code(exc) not in _MISSING and _code(exc) != "NoSuchBucket":
            raise
        region = client.meta.region_name
        # us-east-1 is the one region that refuses a LocationConstraint naming it.
        location = {} if region in (None, "us-east-1") else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            client.create_bucket(Bucket=bucket, **location)
        except ClientError as again:
            if _code(again) != "BucketAlreadyOwnedByYou":
                raise
    client.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [{
        "ID": LIFECYCLE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": multipart_expiry_days(multipart_ttl_s)}}]})


class S3BlobStore:
    def __init__(self, bucket: str, *, client: Any = None, signed_url_ttl_s: int, min_part_bytes: int,
                 max_parts: int, max_part_bytes: int, max_put_bytes: int):
        self.bucket = bucket
        self.client = client if client is not None else s3_client()
        self.signed_url_ttl_s = check_url_lifetime(signed_url_ttl_s)
        self.min_part_bytes = min_part_bytes
        self.max_parts = max_parts
        self.max_part_bytes = max_part_bytes
        self.max_put_bytes = max_put_bytes

    def _presign(self, operation: str, expires_in: int | None, **params: Any) -> str:
        lifetime = self.signed_url_ttl_s if expires_in is None else check_url_lifetime(expires_in)
        return self.client.generate_presigned_url(operation, Params={"Bucket": self.bucket, **params},
                                                  ExpiresIn=lifetime)

    # -- the port ----------------------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{validate_key(key)}"

    def size(self, key: str) -> int | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=validate_key(key))["ContentLength"]
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def signed_url(self, key: str, method: str = "GET", expires_in: int | None = None) -> str:
        if method not in _PRESIGNED_METHODS:
            raise ValueError(f"a signed URL is for GET or PUT, not {method!r}")
        return self._presign(_PRESIGNED_METHODS[method], expires_in, Key=validate_key(key))

    def create_multipart(self, key: str) -> str:
        return self.client.create_multipart_upload(Bucket=self.bucket, Key=validate_key(key))["UploadId"]

    def part_urls(self, key: str, upload_id: str, count: int) -> list[str]:
        if not 1 <= count <= self.max_parts:
            raise ValueError(f"an upload has 1 to {self.max_parts} parts, not {count}")
        validate_key(key)
        return [self._presign("upload_part", None, Key=key, UploadId=upload_id, PartNumber=n)
                for n in range(1, count + 1)]

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes) -> str:
        if not 1 <= part_number <= self.max_parts:
            raise UploadError(f"part number {part_number} is outside 1..{self.max_parts}")
        if len(data) > self.max_part_bytes:
            raise ObjectTooLarge(part_too_large(self.max_part_bytes), self.max_part_bytes)
        try:
            return self.client.upload_part(Bucket=self.bucket, Key=validate_key(key), UploadId=upload_id,
                                           PartNumber=part_number, Body=data)["ETag"]
        except ClientError as exc:
            raise self._upload_error(exc, upload_id) from None

    def list_parts(self, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        pages = self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=validate_key(key), UploadId=upload_id)
        try:
            return [(p["PartNumber"], p["ETag"], p["Size"]) for page in pages for p in page.get("Parts", [])]
        except ClientError as exc:
            raise self._upload_error(exc, upload_id) from None

    def _upload_error(self, exc: ClientError, upload_id: str) -> Exception:
        code = _code(exc)
        if code in ("NoSuchUpload", "404"):
            return _upload_gone(upload_id)
        if code == "EntityTooLarge":
            return ObjectTooLarge(part_too_large(self.max_part_bytes), self.max_part_bytes)
        if code in _PART_REFUSED:
            return UploadError(f"S3 refused the parts: {exc.response['Error'].get('Message', code)}")
        return exc

    def _check_parts(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """The local store's checks, with its messages, on S3's list of the parts (S3's own errors do not say
        which part is wrong); S3 checks again when completing."""
        stored = {number: (etag, size) for number, etag, size in self.list_parts(key, upload_id)}
        for index, (number, etag) in enumerate(parts):
            if number not in stored:
                raise UploadError(f"part {number} was never uploaded")
            stored_etag, size = stored[number]
            if _quoted(etag).lower() != stored_etag.lower():
                raise UploadError(f"part {number}: ETag {etag} does not match the uploaded part")
            if index < len(parts) - 1 and size < self.min_part_bytes:
                raise UploadError(f"part {number} is {size} bytes; every part but the last must be at "
                                  f"least {self.min_part_bytes} bytes")

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]],
                           expected_parts: int | None = None) -> BlobInfo:
        validate_key(key)
        check_part_list(parts, self.max_parts, expected_parts)
        self._check_parts(key, upload_id, parts)
        try:
            done = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": _quoted(e)} for n, e in parts]})
        except ClientError as exc:
            raise self._upload_error(exc, upload_id) from None
        return self._hash(key, done.get("ETag"))

    def _hash(self, key: str, etag: str | None) -> BlobInfo:
        """sha256 and size of the object, read in a stream; `etag`: the version just completed (If-Match)."""
        sha256, size = hashlib.sha256(), 0
        for chunk in self._chunks(key, CHUNK, **({"IfMatch": etag} if etag else {})):
            sha256.update(chunk)
            size += len(chunk)
        return BlobInfo(size=size, sha256=sha256.hexdigest())

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=validate_key(key), UploadId=upload_id)
        except ClientError as exc:
            raise self._upload_error(exc, upload_id) from None

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        out = _PartWriter(self, validate_key(key))
        try:
            yield out  # type: ignore[misc]
            out.finish()
        except BaseException:
            out.abandon()
            raise

    def _get(self, key: str, **extra: Any) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=validate_key(key), **extra)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise FileNotFoundError(f"no object {key}") from None
            raise

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            return b""
        span = {} if start == 0 and length is None else {
            "Range": f"bytes={start}-{'' if length is None else start + length - 1}"}
        try:
            body = self._get(key, **span)["Body"]
        except ClientError as exc:
            if _code(exc) == "InvalidRange":  # starts at or past the end, as reading past a file's end
                return b""
            raise
        with body:
            return body.read()

    def _chunks(self, key: str, chunk_size: int, **extra: Any) -> Iterator[bytes]:
        body = self._get(key, **extra)["Body"]
        with body:
            yield from body.iter_chunks(chunk_size)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        return self._chunks(key, chunk_size)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=validate_key(key))

    def delete_prefix(self, prefix: str) -> None:
        """Every object under `prefix/` (as removing a folder), a page of keys per DeleteObjects call."""
        folder = validate_key(prefix.rstrip("/")) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=folder, PaginationConfig={"PageSize": DELETE_BATCH_KEYS})
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if not keys:
                continue
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise OSError(f"S3 did not delete {len(answer['Errors'])} objects under {folder}, e.g. "
                              f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    def sweep_incomplete_uploads(self, older_than_s: float) -> list[str]:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        removed = []
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cutoff:
                    try:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                    except ClientError as exc:
                        if _code(exc) != "NoSuchUpload":
                            raise
                    removed.append(upload["Key"])
        return removed


class _PartWriter(io.RawIOBase):
    """writer()'s file: buffers WRITER_PART_BYTES, sends each full buffer as a part of a multipart upload
    (started at the first full buffer), and completes it at the end. An object that fits one buffer is a single
    PutObject. Memory: one part. Nothing is visible under the key until `finish`."""

    def __init__(self, store: S3BlobStore, key: str):
        super().__init__()
        self._store, self._key = store, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._buffer += view
        while len(self._buffer) >= WRITER_PART_BYTES:
            self._send_part(bytes(self._buffer[:WRITER_PART_BYTES]))
            del self._buffer[:WRITER_PART_BYTES]
        return len(view)

    def _send_part(self, data: bytes) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._key)["UploadId"]
        number = len(self._parts) + 1
        etag = client.upload_part(Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number,
                                  Body=data)["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})

    def finish(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            client.put_object(Bucket=bucket, Key=self._key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            client.complete_multipart_upload(Bucket=bucket, Key=self._key, UploadId=self._upload_id,
                                             MultipartUpload={"Parts": self._parts})
        self._buffer.clear()

    def abandon(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            try:
                self._store.client.abort_multipart_upload(Bucket=self._store.bucket, Key=self._key,
                                                          UploadId=self._upload_id)
            except ClientError:
                pass  # the lifecycle rule aborts it after the TTL
