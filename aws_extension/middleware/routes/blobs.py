"""The signed blob URLs of the embedded object store: GET/HEAD (with Range), PUT, and multipart part PUTs.

The signature in the query string is the credential (no API key); see blobs/local.py.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import BinaryIO
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from aws_extension.middleware.blobs.base import InvalidKey, UploadError, UploadNotFound
from aws_extension.middleware.blobs.local import CHUNK, SignatureError
from aws_extension.middleware.errors import AccessDenied, InvalidRequest, UnknownRecord

router = APIRouter(tags=["blobs"], include_in_schema=False)

_BYTE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
_BEYOND_ANY_OBJECT = 10**18


class RangeNotSatisfiable(Exception):
    """A byte range that starts at or past the end of the object (or asks for its last 0 bytes)."""


def not_satisfiable(message: str, headers: dict[str, str]) -> JSONResponse:
    """416 with API.md's error body and the headers RFC 9110 asks for (Content-Range: bytes */SIZE)."""
    return JSONResponse({"statusCode": 416, "error": message}, status_code=416, headers=headers)


def _verified_store(request: Request, key: str):
    store = request.app.state.services.blobs
    try:
        store.verify(request.method, key, dict(request.query_params))
        store.path(key)
    except SignatureError as exc:
        raise AccessDenied(str(exc)) from None
    except InvalidKey as exc:
        raise InvalidRequest(str(exc)) from None
    return store


# -- GET / HEAD ---------------------------------------------------------------------------------------------
def _position(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else _BEYOND_ANY_OBJECT


def _suffix_span(count_digits: str, size: int) -> tuple[int, int]:
    """`bytes=-N`: the last N bytes (the whole object if N is over its size)."""
    count = _position(count_digits)
    if count == 0 or size == 0:
        raise RangeNotSatisfiable
    return max(0, size - count), size


def requested_span(header: str | None, size: int) -> tuple[int, int] | None:
    """The bytes [start, end) that a Range header asks for, or None for the whole object (no header, or one
    this route ignores). Raises RangeNotSatisfiable."""
    match = _BYTE_RANGE.fullmatch(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        return _suffix_span(last, size) if last else None
    start = _position(first)
    if last and _position(last) < start:
        return None  # an invalid range: the header is ignored (RFC 9110 14.2)
    if start >= size:
        raise RangeNotSatisfiable
    return start, size if not last else min(_position(last) + 1, size)


def _object_headers(key: str, meta: os.stat_result) -> dict[str, str]:
    name = key.rsplit("/", 1)[-1]
    quoted = quote(name)
    disposition = f'inline; filename="{name}"' if quoted == name else f"inline; filename*=utf-8''{quoted}"
    version = hashlib.md5(f"{meta.st_mtime}-{meta.st_size}".encode()).hexdigest()
    return {"Accept-Ranges": "bytes", "Content-Disposition": disposition, "ETag": f'"{version}"',
            "Last-Modified": formatdate(meta.st_mtime, usegmt=True)}


def _open_object(store, key: str) -> BinaryIO:
    try:
        return open(store.path(key), "rb")  # noqa: SIM115 - closed by the response that streams it
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise UnknownRecord(f"There is no object {key}.") from None


def _wanted_span(request: Request, headers: dict[str, str], size: int) -> tuple[int, int] | None:
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range not in (headers["ETag"], headers["Last-Modified"]):
        return None  # the client holds another version of the object: it gets the whole of this one
    return requested_span(request.headers.get("range"), size)


async def _read_span(file: BinaryIO, start: int, end: int) -> AsyncIterator[bytes]:
    """The bytes [start, end) of the open file, a chunk at a time; the file is closed at the end."""
    try:
        position = start
        while position < end:
            chunk = await anyio.to_thread.run_sync(os.pread, file.fileno(), min(CHUNK, end - position), position)
            if not chunk:
                return
            position += len(chunk)
            yield chunk
    finally:
        file.close()


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield


@router.api_route("/blobs/{key:path}", methods=["GET", "HEAD"])
async def get_blob(key: str, request: Request) -> Response:
    """The object, streamed; HEAD: its headers (Content-Length, Accept-Ranges: bytes) without it.

    Range, as S3 answers it: one range `bytes=A-B`, `bytes=A-` or `bytes=-N` that overlaps the object → 206
    with Content-Range (B past the end is cut to the end; N over the size is the whole object). A range that
    starts at or past the end, `bytes=-0`, or any range of an empty object → 416 with `Content-Range: bytes
    */SIZE` and the JSON error body. A header that does not parse (`bytes=abc`), an invalid range (`bytes=5-1`),
    another unit (`items=0-1`) or several ranges (`bytes=0-1,3-4`) → ignored: 200 with the whole object (RFC
    9110 allows it; S3 does it). An `If-Range` that is not the object's ETag or Last-Modified → the whole object.
    """
    store = _verified_store(request, key)
    file = await anyio.to_thread.run_sync(_open_object, store, key)
    meta = os.fstat(file.fileno())  # of the open file: an object replaced meanwhile does not mix in
    headers = _object_headers(key, meta)
    try:
        span = _wanted_span(request, headers, meta.st_size)
    except RangeNotSatisfiable:
        file.close()
        return not_satisfiable( f"The requested range is not satisfiable: {key} is {meta.st_size} bytes long.",
                              {"Content-Range": f"bytes */{meta.st_size}", "Accept-Ranges": "bytes"})
    start, end = span or (0, meta.st_size)
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{meta.st_size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        file.close()
    body = _read_span(file, start, end) if request.method == "GET" else _nothing()
    media_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return StreamingResponse(body, status_code=206 if span else 200, headers=headers, media_type=media_type)


# -- PUT ----------------------------------------------------------------------------------------------------
def _declared_length(request: Request) -> int | None:
    text = request.headers.get("content-length", "")
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 20 else None


def _part_number(text: str | None) -> int:
    if text and text.isascii() and text.isdigit() and len(text) <= 5:
        return int(text)
    raise InvalidRequest(f"partNumber must be a whole number (1, 2, ...), not {text!r}.")


async def _receive(store, key: str, request: Request) -> str:
    upload_id, declared = request.query_params.get("uploadId"), _declared_length(request)
    if upload_id:
        part_number = _part_number(request.query_params.get("partNumber"))
        return await store.receive_part(key, upload_id, part_number, request.stream(), declared)
    return await store.receive_object(key, request.stream(), declared)


@router.put("/blobs/{key:path}")
async def put_blob(key: str, request: Request) -> Response:
    """A single PUT (an object up to the store's `max_put_bytes`) or a part (`uploadId`, `partNumber`; up to
    `max_part_bytes`); answers with the ETag. Over the limit: 413, as soon as the declared length or the bytes
    received pass it (the rest is not read). The disk full: 507, and nothing of the upload is kept."""
    store = _verified_store(request, key)
    try:
        etag = await _receive(store, key, request)
    except UploadNotFound as exc:
        raise UnknownRecord(str(exc)) from None
    except UploadError as exc:
        raise InvalidRequest(str(exc)) from None
    return Response(status_code=200, headers={"ETag": etag})
