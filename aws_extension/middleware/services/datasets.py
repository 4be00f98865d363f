"""Training datasets: a named set of files uploaded through signed PUT URLs.

States (API.md): `Initialed` → `Enabled` ↔ `Disabled`. Files live under `dataset/<name>/<filename>`; a
dataset can be enabled only when every file it lists has arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_extension.middleware.blobs.base import BlobStore
from aws_extension.middleware.errors import BadRequest, Conflict, NotFound
from aws_extension.middleware.services.records import check_filename, check_name, now
from aws_extension.middleware.store.base import DuplicateRecord, Store, list_all

TABLE = "datasets"
INITIALED, ENABLED, DISABLED = "Initialed", "Enabled", "Disabled"
_TRANSITIONS = {(INITIALED, ENABLED), (ENABLED, DISABLED), (DISABLED, ENABLED)}


@dataclass(frozen=True)
class DatasetFile:
    filename: str
    name: str
    type: str


def file_key(dataset_name: str, filename: str) -> str:
    return f"dataset/{dataset_name}/{filename}"


def listed_dataset(record: dict[str, Any]) -> dict[str, Any]:
    """One entry of GET /datasets: the seed's fields, then the params the dataset was created with."""
    return {**record["params"], "datasetName": record["name"], "s3": record["s3"], "status": record["status"],
            "timestamp": record["created"]}


class DatasetService:
    def __init__(self, store: Store, blobs: BlobStore, upload_url_ttl_s: int):
        self.store = store
        self.blobs = blobs
        self.upload_url_ttl_s = upload_url_ttl_s

    def create(self, dataset_name: str, content: list[DatasetFile],
               params: dict[str, Any]) -> dict[str, str]:
        """Create an `Initialed` dataset; returns a signed PUT URL per file name."""
        check_name(dataset_name, "dataset name")
        if not content:
            raise BadRequest("content is empty: a dataset needs at least one file.")
        filenames = [check_filename(f.filename) for f in content]
        if len(set(filenames)) != len(filenames):
            raise BadRequest("each file name may be listed only once in a dataset.")
        record = {
            "id": dataset_name, "name": dataset_name, "status": INITIALED, "created": now(),
            "s3": self.blobs.uri(f"dataset/{dataset_name}"), "params": params,
            "files": [{"filename": f.filename, "name": f.name, "type": f.type,
                       "key": file_key(dataset_name, f.filename)} for f in content],
        }
        try:
            self.store.create(TABLE, record, unique_name=True)
        except DuplicateRecord:
            raise Conflict(f"a dataset named {dataset_name!r} already exists; choose another name.") from None
        return {f["filename"]: self.blobs.signed_url(f["key"], "PUT", self.upload_url_ttl_s) for f in record["files"]}

    def get(self, dataset_name: str) -> dict[str, Any]:
        record = self.store.get(TABLE, dataset_name)
        if record is None:
            raise NotFound(f"dataset {dataset_name!r} does not exist.")
        return record

    def set_status(self, dataset_name: str, status: str) -> dict[str, Any]:
        record = self.get(dataset_name)
        if (record["status"], status) not in _TRANSITIONS:
            raise Conflict(f"dataset {dataset_name!r} is {record['status']}; it cannot become {status}.")
        if status == ENABLED:
            missing = [f["filename"] for f in record["files"] if not self.blobs.exists(f["key"])]
            if missing:
                raise BadRequest(f"dataset {dataset_name!r} cannot be enabled: these files have not been "
                                 f"uploaded yet: {', '.join(missing)}.")
        updated = self.store.update(TABLE, dataset_name, {"status": status}, expect={"status": record["status"]})
        if updated is None:
            raise Conflict(f"dataset {dataset_name!r} changed while it was being updated; try again.")
        return updated

    def list(self, statuses: list[str]) -> list[dict[str, Any]]:
        return list_all(self.store, TABLE, {"status": statuses})

    def files(self, dataset_name: str) -> list[dict[str, Any]]:
        """The files of a dataset with a signed preview URL each (`dataStatus` says if it has arrived)."""
        record = self.get(dataset_name)
        return [{"key": f["key"], "name": f["name"], "type": f["type"], "filename": f["filename"],
                 "preview_url": self.blobs.signed_url(f["key"]) if self.blobs.exists(f["key"]) else None,
                 "dataStatus": ENABLED if self.blobs.exists(f["key"]) else INITIALED}
                for f in record["files"]]
