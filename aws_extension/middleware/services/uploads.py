"""Signed PUT URLs for free-form uploads (`generate-s3-presigned-url-for-uploading`), under `uploads/` only."""

from __future__ import annotations

from aws_extension.middleware.blobs.base import BlobStore, InvalidKey, validate_key
from aws_extension.middleware.errors import InvalidRequest

PREFIX = "uploads/"


class Uploads:
    def __init__(self, blobs: BlobStore):
        self.blobs = blobs

    def signed_put_url(self, key: str) -> str:
        try:
            validate_key(key)
        except InvalidKey as exc:
            raise InvalidRequest(f"key is not valid: {exc}.") from None
        if not key.startswith(PREFIX) or key == PREFIX:
            raise InvalidRequest(f"key {key!r} must be a file under the {PREFIX} prefix, e.g. {PREFIX}my-image.png.")
        return self.blobs.signed_url(key, "PUT")
