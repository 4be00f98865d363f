"""The signed blob URLs of the embedded object store: GET (with Range), PUT, and multipart part PUTs.

The signature in the query string is the credential (no API key); see blobs/local.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from aws_extension.middleware.blobs.base import InvalidKey, UploadError, UploadNotFound
from aws_extension.middleware.blobs.local import SignatureError
from aws_extension.middleware.errors import BadRequest, Forbidden, NotFound

router = APIRouter(tags=["blobs"], include_in_schema=False)
SINGLE_PUT_MAX_BYTES = 5 * 1024**3  # S3's limit for one PUT


def _verified_store(request: Request, key: str):
    store = request.app.state.services.blobs
    try:
        store.verify(request.method, key, dict(request.query_params))
        store.path(key)
    except SignatureError as exc:
        raise Forbidden(str(exc)) from None
    except InvalidKey as exc:
        raise BadRequest(str(exc)) from None
    return store


@router.api_route("/blobs/{key:path}", methods=["GET", "HEAD"])
def get_blob(key: str, request: Request):
    store = _verified_store(request, key)
    path = store.path(key)
    if not path.is_file():
        raise NotFound(f"There is no object {key}.")
    return FileResponse(path, filename=path.name, content_disposition_type="inline")


@router.put("/blobs/{key:path}")
async def put_blob(key: str, request: Request) -> Response:
    store = _verified_store(request, key)
    upload_id, part = request.query_params.get("uploadId"), request.query_params.get("partNumber")
    try:
        if upload_id:
            etag = await store.receive_part(key, upload_id, int(part or 0), request.stream())
        else:
            etag = await store.receive_object(key, request.stream(), SINGLE_PUT_MAX_BYTES)
    except UploadNotFound as exc:
        raise NotFound(str(exc)) from None
    except UploadError as exc:
        raise BadRequest(str(exc)) from None
    return Response(status_code=200, headers={"ETag": etag})
