"""The model catalogue: checkpoint records, their uploads, and their state machine.

States (API.md): `Initialed` → `Active` | `Failed`; `Active` ↔ `Disabled`. A checkpoint groups one or
more files of one type; each file is stored under `models/<type>/<id>/<filename>`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aws_extension.middleware.blobs.base import BlobStore, UploadError, UploadNotFound
from aws_extension.middleware.errors import BadRequest, Conflict, NotFound
from aws_extension.middleware.services.model_files import check_model_file
from aws_extension.middleware.services.records import check_filename, new_id, now, time_text
from aws_extension.middleware.store.base import Store, list_all
from aws_extension.model_types import MODEL_TYPES

log = logging.getLogger(__name__)

TABLE = "checkpoints"
INITIALED, ACTIVE, FAILED, DISABLED = "Initialed", "Active", "Failed", "Disabled"
# Allowed status changes through PUT /checkpoint, besides completing an upload (Initialed → Active).
_TOGGLES = {(ACTIVE, DISABLED), (DISABLED, ACTIVE)}


@dataclass(frozen=True)
class FileToUpload:
    filename: str
    parts_number: int


def file_key(checkpoint_type: str, checkpoint_id: str, filename: str) -> str:
    return f"models/{checkpoint_type}/{checkpoint_id}/{filename}"


def public_checkpoint(record: dict[str, Any]) -> dict[str, Any]:
    """The `checkpoint` object of POST/PUT /checkpoint answers."""
    return {"id": record["id"], "type": record["kind"], "s3_location": record["s3_location"],
            "status": record["status"], "params": record["params"], "name": record["names"],
            "sha256": record.get("sha256"), "size": record.get("size"), "error": record.get("error")}


def listed_checkpoint(record: dict[str, Any]) -> dict[str, Any]:
    """One entry of GET /checkpoints."""
    entry = {"id": record["id"], "s3Location": record["s3_location"], "type": record["kind"],
             "status": record["status"], "name": record["names"], "created": record["created"],
             "sha256": record.get("sha256"), "size": record.get("size"), "params": record["params"],
             "files": [{k: f.get(k) for k in ("filename", "sha256", "size")} for f in record["files"]]}
    for optional in ("error", "progress"):
        if record.get(optional) is not None:
            entry[optional] = record[optional]
    return entry


class CheckpointService:
    def __init__(self, store: Store, blobs: BlobStore, *, min_part_bytes: int, max_parts: int):
        self.store = store
        self.blobs = blobs
        self.min_part_bytes = min_part_bytes
        self.max_parts = max_parts

    @staticmethod
    def check_type(checkpoint_type: str) -> str:
        if checkpoint_type not in MODEL_TYPES:
            raise BadRequest(f"checkpoint type {checkpoint_type!r} is unknown; use one of {', '.join(MODEL_TYPES)}.")
        return checkpoint_type

    def new_record(self, checkpoint_type: str, filenames: list[str], params: dict[str, Any],
                   source: str) -> dict[str, Any]:
        checkpoint_id, created = new_id(), now()
        return {
            "id": checkpoint_id, "kind": checkpoint_type, "status": INITIALED, "name": filenames[0] if filenames else None,
            "names": filenames, "created": created, "source": source,
            "params": {**params, "created": time_text(created)},
            "s3_location": self.blobs.uri(f"models/{checkpoint_type}/{checkpoint_id}"),
            "files": [{"filename": f, "key": file_key(checkpoint_type, checkpoint_id, f)} for f in filenames],
        }

    def create_upload(self, checkpoint_type: str, files: list[FileToUpload],
                      params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
        """Create an `Initialed` record and one multipart upload per file; returns it and the part URLs."""
        self.check_type(checkpoint_type)
        if not files:
            raise BadRequest("filenames is empty: list at least one file to upload.")
        names = [check_filename(f.filename) for f in files]
        if len(set(names)) != len(names):
            raise BadRequest("each file name may be listed only once.")
        for f in files:
            if not 1 <= f.parts_number <= self.max_parts:
                raise BadRequest(f"{f.filename}: parts_number must be between 1 and {self.max_parts}, "
                                 f"not {f.parts_number}.")
        record = self.new_record(checkpoint_type, names, params, source="upload")
        urls: dict[str, list[str]] = {}
        for entry, f in zip(record["files"], files):
            entry["parts_number"] = f.parts_number
            entry["upload_id"] = self.blobs.create_multipart(entry["key"])
            urls[f.filename] = self.blobs.part_urls(entry["key"], entry["upload_id"], f.parts_number)
        self.store.create(TABLE, record)
        return record, urls

    def get(self, checkpoint_id: str) -> dict[str, Any]:
        record = self.store.get(TABLE, checkpoint_id)
        if record is None:
            raise NotFound(f"checkpoint {checkpoint_id} does not exist.")
        return record

    def update_status(self, checkpoint_id: str, status: str,
                      multi_parts_tags: dict[str, list[tuple[int, str]]] | None) -> dict[str, Any]:
        record = self.get(checkpoint_id)
        if record["status"] == INITIALED and status == ACTIVE and record["source"] == "upload":
            return self.complete_upload(checkpoint_id, multi_parts_tags or {})
        if record["status"] == status:
            raise Conflict(f"checkpoint {checkpoint_id} is already {status}"
                           + (": its upload was already completed." if status == ACTIVE else "."))
        if (record["status"], status) not in _TOGGLES:
            raise Conflict(f"checkpoint {checkpoint_id} is {record['status']}; it cannot become {status}.")
        updated = self.store.update(TABLE, checkpoint_id, {"status": status}, expect={"status": record["status"]})
        if updated is None:
            raise Conflict(f"checkpoint {checkpoint_id} changed while it was being updated; try again.")
        return updated

    def complete_upload(self, checkpoint_id: str, tags: dict[str, list[tuple[int, str]]]) -> dict[str, Any]:
        """Assemble every file from its parts, check it is a model of the record's type, then `Active`.

        A missing or wrong part leaves the record `Initialed` (fix the list and retry); a file that is
        not a model of that type fails the record for good.
        """
        record = self.get(checkpoint_id)
        expected = {f["filename"] for f in record["files"]}
        unknown = sorted(set(tags) - expected)
        if unknown:
            raise BadRequest(f"multi_parts_tags names {unknown}, which are not files of checkpoint "
                             f"{checkpoint_id} (its files: {sorted(expected)}).")
        # Claim the completion: of two racing requests only one sees the record unclaimed.
        claim = uuid.uuid4().hex
        claimed = self.store.update(TABLE, checkpoint_id, {"completing": claim},
                                    expect={"status": INITIALED, "completing": None})
        if claimed is None:
            current = self.get(checkpoint_id)
            if current["status"] == INITIALED:
                raise Conflict(f"checkpoint {checkpoint_id} is being completed by another request.")
            raise Conflict(f"checkpoint {checkpoint_id} is {current['status']}, not {INITIALED}: "
                           "its upload was already completed.")
        try:
            files = self._assemble_files(record, tags)
        except BaseException:
            self.store.update(TABLE, checkpoint_id, {"completing": None}, expect={"completing": claim})
            raise
        return self.finish(checkpoint_id, files, expect={"completing": claim})

    def _assemble_files(self, record: dict[str, Any], tags: dict[str, list[tuple[int, str]]]) -> list[dict]:
        missing = [f["filename"] for f in record["files"] if f["filename"] not in tags and "sha256" not in f]
        if missing:
            raise BadRequest(f"multi_parts_tags has no parts for {missing}; list every file's parts.")
        files = []
        for entry in record["files"]:
            if "sha256" in entry:  # assembled by an earlier attempt that failed on another file
                files.append(entry)
                continue
            try:
                info = self.blobs.complete_multipart(entry["key"], entry["upload_id"], tags[entry["filename"]],
                                                     expected_parts=entry["parts_number"])
            except (UploadError, UploadNotFound) as exc:
                raise BadRequest(f"{entry['filename']}: {exc}.") from None
            entry = {**entry, "sha256": info.sha256, "size": info.size}
            files.append(entry)
            # Keep progress, so a retry after a bad ETag on another file does not need these parts again.
            self.store.update(TABLE, record["id"], {"files": files + record["files"][len(files):]})
        return files

    def finish(self, checkpoint_id: str, files: list[dict], expect: dict[str, Any]) -> dict[str, Any]:
        """Check each stored file is a model of the record's type; `Active` if all are, else `Failed`."""
        record = self.get(checkpoint_id)
        try:
            for entry in files:
                check_model_file(lambda start, length, key=entry["key"]: self.blobs.read(key, start, length),
                                 entry["size"], entry["filename"], record["kind"])
        except BadRequest as exc:
            self.fail(checkpoint_id, exc.message, expect=expect)
            raise
        changes = {"status": ACTIVE, "files": files, "completing": None, "error": None,
                   "names": [f["filename"] for f in files], "name": files[0]["filename"],
                   "sha256": files[0]["sha256"], "size": sum(f["size"] for f in files)}
        updated = self.store.update(TABLE, checkpoint_id, changes, expect=expect)
        if updated is None:
            raise Conflict(f"checkpoint {checkpoint_id} changed while it was being completed.")
        return updated

    def fail(self, checkpoint_id: str, reason: str, expect: dict[str, Any] | None = None) -> None:
        log.warning("checkpoint %s failed: %s", checkpoint_id, reason)
        record = self.store.update(TABLE, checkpoint_id, {"status": FAILED, "error": reason, "completing": None},
                                   expect={**(expect or {}), "status": INITIALED})
        if record:
            for entry in record["files"]:
                if entry.get("upload_id"):
                    try:
                        self.blobs.abort_multipart(entry["key"], entry["upload_id"])
                    except UploadNotFound:
                        pass

    def list(self, statuses: list[str], types: list[str]) -> list[dict[str, Any]]:
        for t in types:
            self.check_type(t)
        return list_all(self.store, TABLE, {"status": statuses, "kind": types})

    def page(self, statuses: list[str], types: list[str], limit: int,
             last_key: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """One page, newest first, after the checkpoint whose id is `last_key`; and the next page's key."""
        for t in types:
            self.check_type(t)
        after = None
        if last_key:
            previous = self.store.get(TABLE, last_key)
            if previous is None:
                raise BadRequest(f"last_key {last_key!r} is not the id of a checkpoint.")
            after = self.store.key_after(previous)
        page = self.store.list(TABLE, filters={"status": statuses, "kind": types}, limit=limit, after=after)
        return page.records, page.records[-1]["id"] if page.next_key else None

    def active_file_names(self, checkpoint_type: str) -> list[str]:
        return list(dict.fromkeys(n for record in self.list([ACTIVE], [checkpoint_type]) for n in record["names"]))

    def expire_uploads(self, older_than_s: float) -> list[str]:
        """Fail checkpoints whose upload was started over `older_than_s` ago and never completed."""
        failed = []
        cutoff = now() - older_than_s
        for record in self.list([INITIALED], []):
            if record["source"] == "upload" and record["created"] < cutoff:
                self.fail(record["id"], "the upload was not completed in time; upload the files again.",
                          expect={"completing": None})
                failed.append(record["id"])
        return failed
