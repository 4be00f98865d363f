"""The model catalogue: checkpoint records, their uploads, and their state machine.

States (API.md): `Initialed` → `Active` | `Failed`; `Active` ↔ `Disabled`. A checkpoint groups one or
more files of one type; each file is stored under `models/<type>/<id>/<filename>`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import anyio

from aws_extension.middleware.blobs.base import BlobStore, UploadError, UploadNotFound
from aws_extension.middleware.errors import InvalidRequest, ServiceError, TooLarge, UnknownRecord, WrongState
from aws_extension.middleware.principals import BOOTSTRAP_ADMIN, Principal
from aws_extension.middleware.records import CHECKPOINTS, Checkpoint, CheckpointFile
from aws_extension.middleware.services.names import check_filename, new_id, now, time_text
from aws_extension.middleware.services.ownership import check_roles, may_use_checkpoint
from aws_extension.middleware.store.base import Store
from aws_extension.middleware.store.typed import Records
from aws_extension.model_files import ModelFileError, check_model_file
from aws_extension.vocabulary import MODEL_TYPES, CheckpointStatus

log = logging.getLogger(__name__)

INITIALED, ACTIVE, FAILED, DISABLED = (CheckpointStatus.INITIALED, CheckpointStatus.ACTIVE,
                                       CheckpointStatus.FAILED, CheckpointStatus.DISABLED)
# Allowed status changes through PUT /checkpoint, besides completing an upload (Initialed → Active).
_TOGGLES = {(ACTIVE, DISABLED), (DISABLED, ACTIVE)}


@dataclass(frozen=True)
class FileToUpload:
    filename: str
    parts_number: int
    sha256: str | None = None  # declared by the client: the same content already Active is not uploaded again


def file_key(checkpoint_type: str, checkpoint_id: str, filename: str) -> str:
    return f"models/{checkpoint_type}/{checkpoint_id}/{filename}"


class ContentMismatch(InvalidRequest):
    """An uploaded file is not the content its client declared."""


def check_type(checkpoint_type: str) -> str:
    if checkpoint_type not in MODEL_TYPES:
        raise InvalidRequest(f"checkpoint type {checkpoint_type!r} is unknown; use one of {', '.join(MODEL_TYPES)}.")
    return checkpoint_type


class CheckpointService:
    def __init__(self, store: Store, blobs: BlobStore, *, max_parts: int, max_files: int, completion_wait_s: float):
        self.records = Records(store, CHECKPOINTS, Checkpoint)
        self.blobs = blobs
        self.completion_wait_s = completion_wait_s
        self._completions = ThreadPoolExecutor(max_workers=2, thread_name_prefix="completion")
        self.max_parts = max_parts  # of one request: the answer has one URL per part
        self.max_files = max_files

    def new_record(self, checkpoint_type: str, filenames: list[str], params: dict[str, Any],
                   source: str, owner: str | None = None, allowed_roles: list[str] | None = None) -> Checkpoint:
        checkpoint_id, created = new_id(), now()
        return Checkpoint(
            id=checkpoint_id, type=check_type(checkpoint_type), status=INITIALED, created=created, source=source,
            owner=owner, allowed_roles=check_roles(allowed_roles),
            params={**params, "created": time_text(created)},
            s3_location=self.blobs.uri(f"models/{checkpoint_type}/{checkpoint_id}"),
            files=[CheckpointFile(filename=f, key=file_key(checkpoint_type, checkpoint_id, f)) for f in filenames])

    def create_upload(self, checkpoint_type: str, files: list[FileToUpload], params: dict[str, Any],
                      principal: Principal = BOOTSTRAP_ADMIN) -> tuple[Checkpoint, dict[str, list[str]]]:
        """Create an `Initialed` record (the principal's; `params.allowed_roles` limits who sees it) and one
        multipart upload per file; returns it and the part URLs. When the client declares every file's
        sha256 and an Active checkpoint of that type that the principal sees has exactly that content, that
        checkpoint is returned instead, with no URLs: nothing is uploaded twice."""
        check_type(checkpoint_type)
        allowed_roles = check_roles(params.get("allowed_roles"), "params.allowed_roles")
        declared = [f.sha256 for f in files]
        existing = self.find_content(checkpoint_type, declared) if files and all(declared) else None
        if existing and may_use_checkpoint(principal, existing):
            return existing, {}
        names = self.check_filenames([f.filename for f in files], "filenames")
        for f in files:
            if not 1 <= f.parts_number <= self.max_parts:
                raise InvalidRequest(f"{f.filename}: parts_number must be between 1 and {self.max_parts}, "
                                     f"not {f.parts_number}.")
        if sum(f.parts_number for f in files) > self.max_parts:
            raise TooLarge(f"the files have {sum(f.parts_number for f in files)} parts in all; one checkpoint may "
                           f"have at most {self.max_parts} (use larger parts).")
        record = self.new_record(checkpoint_type, names, params, source="upload", owner=principal.username,
                                 allowed_roles=allowed_roles)
        urls: dict[str, list[str]] = {}
        for entry, f in zip(record.files, files):
            entry.parts_number, entry.declared_sha256 = f.parts_number, f.sha256
            entry.upload_id = self.blobs.create_multipart(entry.key)
            urls[f.filename] = self.blobs.part_urls(entry.key, entry.upload_id, f.parts_number)
        self.records.create(record)
        return record, urls

    def find_content(self, checkpoint_type: str, sha256s: list[str]) -> Checkpoint | None:
        """The Active checkpoint of this type whose files have exactly these sha256s (in any order)."""
        wanted = sorted(s.lower() for s in sha256s)
        for record in self.records.all({"sha256": [s.lower() for s in sha256s], "status": [ACTIVE]}):
            if record.type == checkpoint_type and sorted(f.sha256 or "" for f in record.files) == wanted:
                return record
        return None

    def check_filenames(self, filenames: list[str], field: str) -> list[str]:
        """A checkpoint's file names: 1 to `max_files` plain names, each once."""
        if not filenames:
            raise InvalidRequest(f"{field} is empty: list at least one file.")
        if len(filenames) > self.max_files:
            raise TooLarge(f"{field} lists {len(filenames)} files; a checkpoint has at most {self.max_files}.")
        names = [check_filename(name) for name in filenames]
        if len(set(names)) != len(names):
            raise InvalidRequest("each file name may be listed only once.")
        return names

    def get(self, checkpoint_id: str, principal: Principal = BOOTSTRAP_ADMIN) -> Checkpoint:
        """The checkpoint, if the principal sees it (`allowed_roles`); else as if it did not exist."""
        record = self.records.get(checkpoint_id)
        if record is None or not may_use_checkpoint(principal, record):
            raise UnknownRecord(f"checkpoint {checkpoint_id} does not exist.")
        return record

    def set_allowed_roles(self, checkpoint_id: str, roles: object, principal: Principal) -> Checkpoint:
        """PUT /checkpoint `allowed_roles`: who may see and use the checkpoint from now on ([]: everyone)."""
        self.get(checkpoint_id, principal)
        updated = self.records.update(checkpoint_id, {"allowed_roles": check_roles(roles)})
        if updated is None:
            raise UnknownRecord(f"checkpoint {checkpoint_id} does not exist.")
        return updated

    async def update(self, checkpoint_id: str, status: CheckpointStatus,
                     multi_parts_tags: dict[str, list[tuple[int, str]]] | None) -> Checkpoint:
        """PUT /checkpoint: toggle Active ↔ Disabled, or complete an upload. A completion (assembling and
        hashing what may be gigabytes) runs in the background: the answer waits for it up to
        `completion_wait_s`, then is the record as it is (`Initialed`, `completing`); its end shows on the
        record (`Active`, `Failed`, or `Initialed` with the `error` to fix)."""
        started = await anyio.to_thread.run_sync(self._toggle_or_claim, checkpoint_id, status, multi_parts_tags or {})
        if isinstance(started, Checkpoint):
            return started
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(started)), self.completion_wait_s)
        except asyncio.TimeoutError:
            return await anyio.to_thread.run_sync(self.get, checkpoint_id)

    def _toggle_or_claim(self, checkpoint_id: str, status: CheckpointStatus,
                         tags: dict[str, list[tuple[int, str]]]) -> Checkpoint | Future[Checkpoint]:
        record = self.get(checkpoint_id)
        if record.status == INITIALED and status == ACTIVE and record.source == "upload":
            claimed, claim = self._claim_completion(record, tags)
            return self._completions.submit(self._complete_claimed, claimed, tags, claim)
        if record.status == status:
            raise WrongState(f"checkpoint {checkpoint_id} is already {status}"
                             + (": its upload was already completed." if status == ACTIVE else "."))
        if (record.status, status) not in _TOGGLES:
            raise WrongState(f"checkpoint {checkpoint_id} is {record.status}; it cannot become {status}.")
        updated = self.records.update(checkpoint_id, {"status": status}, expect={"status": record.status})
        if updated is None:
            raise WrongState(f"checkpoint {checkpoint_id} changed while it was being updated; try again.")
        return updated

    def _claim_completion(self, record: Checkpoint, tags: dict[str, list[tuple[int, str]]]) -> tuple[Checkpoint, str]:
        """Check the tags name the record's files and claim its completion: of two racing requests only one
        sees the record unclaimed."""
        unknown = sorted(set(tags) - set(record.names))
        if unknown:
            raise InvalidRequest(f"multi_parts_tags names {unknown}, which are not files of checkpoint "
                                 f"{record.id} (its files: {sorted(record.names)}).")
        claim = uuid.uuid4().hex
        claimed = self.records.update(record.id, {"completing": claim, "error": None},
                                      expect={"status": INITIALED, "completing": None})
        if claimed is None:
            current = self.get(record.id)
            if current.status == INITIALED:
                raise WrongState(f"checkpoint {record.id} is being completed by another request.")
            raise WrongState(f"checkpoint {record.id} is {current.status}, not {INITIALED}: "
                             "its upload was already completed.")
        return claimed, claim

    def _complete_claimed(self, record: Checkpoint, tags: dict[str, list[tuple[int, str]]], claim: str) -> Checkpoint:
        """Assemble every file from its parts, check it is a model of the record's type, then `Active`.

        A missing or wrong part leaves the record `Initialed` with the `error` (fix the list and retry); a
        file that is not a model of that type fails the record for good.
        """
        try:
            files = self._assemble_files(record, tags)
        except ContentMismatch as exc:  # its parts are gone: only a new upload can fix it
            self.fail(record.id, exc.message, expect={"completing": claim})
            raise
        except BaseException as exc:
            error = exc.message if isinstance(exc, ServiceError) else "the completion failed; try again."
            self.records.update(record.id, {"completing": None, "error": error}, expect={"completing": claim})
            raise
        return self.finish(record.id, files, expect={"completing": claim})

    def _assemble_files(self, record: Checkpoint, tags: dict[str, list[tuple[int, str]]]) -> list[CheckpointFile]:
        missing = [f.filename for f in record.files if f.filename not in tags and f.sha256 is None]
        if missing:
            raise InvalidRequest(f"multi_parts_tags has no parts for {missing}; list every file's parts.")
        files: list[CheckpointFile] = []
        for entry in record.files:
            if entry.sha256 is None:  # else: assembled by an earlier attempt that failed on another file
                try:
                    info = self.blobs.complete_multipart(entry.key, entry.upload_id, tags[entry.filename],
                                                         expected_parts=entry.parts_number)
                except (UploadError, UploadNotFound) as exc:
                    raise InvalidRequest(f"{entry.filename}: {exc}.") from None
                if entry.declared_sha256 and info.sha256 != entry.declared_sha256.lower():
                    raise ContentMismatch(f"{entry.filename}: the uploaded file's sha256 is {info.sha256}, not the "
                                          f"declared {entry.declared_sha256}; upload the file again.")
                entry = replace(entry, sha256=info.sha256, size=info.size)
            files.append(entry)
            # Keep progress, so a retry after a bad ETag on another file does not need these parts again.
            self.records.update(record.id, {"files": files + record.files[len(files):]})
        return files

    def finish(self, checkpoint_id: str, files: list[CheckpointFile], expect: dict[str, Any]) -> Checkpoint:
        """Check each stored file is a model of the record's type; `Active` if all are, else `Failed`."""
        record = self.get(checkpoint_id)
        try:
            for entry in files:
                check_model_file(lambda start, length, key=entry.key: self.blobs.read(key, start, length),
                                 entry.size, entry.filename, record.type)
        except ModelFileError as exc:
            self.fail(checkpoint_id, str(exc), expect=expect)
            raise InvalidRequest(str(exc)) from None
        changes = {"status": ACTIVE, "files": files, "completing": None, "error": None,
                   "sha256": files[0].sha256, "size": sum(f.size or 0 for f in files)}
        updated = self.records.update(checkpoint_id, changes, expect=expect)
        if updated is None:
            raise WrongState(f"checkpoint {checkpoint_id} changed while it was being completed.")
        return updated

    def fail(self, checkpoint_id: str, reason: str, expect: dict[str, Any] | None = None) -> None:
        log.warning("checkpoint %s failed: %s", checkpoint_id, reason)
        record = self.records.update(checkpoint_id, {"status": FAILED, "error": reason, "completing": None},
                                     expect={**(expect or {}), "status": INITIALED})
        for entry in record.files if record else []:
            if entry.upload_id:
                try:
                    self.blobs.abort_multipart(entry.key, entry.upload_id)
                except UploadNotFound:
                    pass

    def list(self, statuses: list[str], types: list[str]) -> list[Checkpoint]:
        return self.records.all({"status": statuses, "type": [check_type(t) for t in types]})

    def active(self, keywords: list[str]) -> list[Checkpoint]:
        """The Active checkpoints that have one of these keywords (`records.catalogue_keywords`): what a job
        may mean by the names it uses (`services/models.py`), read without reading the whole catalogue."""
        return [record for record in self.records.with_keywords(keywords) if record.status == ACTIVE]

    def page(self, statuses: list[str], types: list[str], limit: int,
             last_key: str | None) -> tuple[list[Checkpoint], str | None]:
        """One page, newest first, after the checkpoint whose id is `last_key`; and the next page's key.
        (The routes leave out what the principal may not see: a page may be shorter than `limit`.)"""
        after = None
        if last_key:
            previous = self.records.get(last_key)
            if previous is None:
                raise InvalidRequest(f"last_key {last_key!r} is not the id of a checkpoint.")
            after = self.records.key_after(previous)
        page = self.records.page({"status": statuses, "type": [check_type(t) for t in types]}, limit, after)
        return page.records, page.records[-1].id if page.next_key else None

    def active_file_names(self, checkpoint_type: str, principal: Principal = BOOTSTRAP_ADMIN) -> list[str]:
        return list(dict.fromkeys(n for record in self.list([ACTIVE], [checkpoint_type])
                                  if may_use_checkpoint(principal, record) for n in record.names))

    def release_stale_claims(self) -> list[str]:
        """At start: completions claimed by a process that died (one middleware owns a data dir) are given
        up, so the upload can be completed again (the blob store gave its parts back)."""
        stale = [r.id for r in self.list([INITIALED], []) if r.completing]
        for checkpoint_id in stale:
            log.warning("checkpoint %s: its completion was interrupted by a restart; it can be completed again",
                        checkpoint_id)
            self.records.update(checkpoint_id, {"completing": None}, expect={"status": INITIALED})
        return stale

    def delete(self, checkpoint_id: str, principal: Principal = BOOTSTRAP_ADMIN) -> None:
        """Remove a checkpoint and its files (jobs still waiting for it fail when they are dispatched)."""
        record = self.get(checkpoint_id, principal)
        if record.completing:
            raise WrongState(f"checkpoint {checkpoint_id} is being completed; delete it when that has ended.")
        self.records.delete(checkpoint_id)
        for entry in record.files:
            if entry.upload_id and entry.sha256 is None:
                try:
                    self.blobs.abort_multipart(entry.key, entry.upload_id)
                except UploadNotFound:
                    pass
        self.blobs.delete_prefix(f"models/{record.type}/{record.id}")

    def expire_uploads(self, older_than_s: float) -> list[str]:
        """Fail checkpoints whose upload was started over `older_than_s` ago and never completed."""
        failed = []
        cutoff = now() - older_than_s
        for record in self.list([INITIALED], []):
            if record.source == "upload" and record.created < cutoff:
                self.fail(record.id, "the upload was not completed in time; upload the files again.",
                          expect={"completing": None})
                failed.append(record.id)
        return failed
