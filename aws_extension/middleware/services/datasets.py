"""Training datasets: a named set of files uploaded through signed PUT URLs.

States (API.md): `Initialed` → `Enabled` ↔ `Disabled`. Files live under `dataset/<name>/<filename>`; a
dataset can be enabled only when every file it lists has arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aws_extension.middleware.blobs.base import BlobStore
from aws_extension.middleware.errors import InvalidRequest, TooLarge, UnknownRecord, WrongState
from aws_extension.middleware.principals import BOOTSTRAP_ADMIN, Principal
from aws_extension.middleware.records import DATASETS, Dataset, DatasetFile
from aws_extension.middleware.services.names import check_filename, check_name, now
from aws_extension.middleware.services.ownership import owned_page, sees_owner
from aws_extension.middleware.store.base import DuplicateRecord, Store
from aws_extension.middleware.store.typed import Records
from aws_extension.vocabulary import DatasetStatus

INITIALED, ENABLED, DISABLED = DatasetStatus.INITIALED, DatasetStatus.ENABLED, DatasetStatus.DISABLED
_TRANSITIONS = {(INITIALED, ENABLED), (ENABLED, DISABLED), (DISABLED, ENABLED)}


@dataclass(frozen=True)
class FileToAdd:
    filename: str
    name: str
    type: str


@dataclass(frozen=True)
class DatasetFileState:
    """A dataset file and whether it has arrived (with a signed preview URL when it has)."""

    file: DatasetFile
    preview_url: str | None

    @property
    def arrived(self) -> bool:
        return self.preview_url is not None


def file_key(dataset_name: str, filename: str) -> str:
    return f"dataset/{dataset_name}/{filename}"


class DatasetService:
    def __init__(self, store: Store, blobs: BlobStore, upload_url_ttl_s: int, max_files: int):
        self.records = Records(store, DATASETS, Dataset)
        self.blobs = blobs
        self.upload_url_ttl_s = upload_url_ttl_s
        self.max_files = max_files

    def create(self, dataset_name: str, content: list[FileToAdd], params: dict[str, Any],
               principal: Principal = BOOTSTRAP_ADMIN) -> dict[str, str]:
        """Create an `Initialed` dataset, the principal's; returns a signed PUT URL per file name. (Dataset
        names are one namespace: a name another user took is refused as taken.)"""
        check_name(dataset_name, "dataset name")
        if not content:
            raise InvalidRequest("content is empty: a dataset needs at least one file.")
        if len(content) > self.max_files:
            raise TooLarge(f"content lists {len(content)} files; a dataset has at most {self.max_files}.")
        filenames = [check_filename(f.filename) for f in content]
        if len(set(filenames)) != len(filenames):
            raise InvalidRequest("each file name may be listed only once in a dataset.")
        record = Dataset(id=dataset_name, name=dataset_name, status=INITIALED, created=now(),
                         s3=self.blobs.uri(f"dataset/{dataset_name}"), params=params, owner=principal.username,
                         files=[DatasetFile(filename=f.filename, name=f.name, type=f.type,
                                            key=file_key(dataset_name, f.filename)) for f in content])
        try:
            self.records.create(record)
        except DuplicateRecord:
            raise WrongState(f"a dataset named {dataset_name!r} already exists; choose another name.") from None
        return {f.filename: self.blobs.signed_url(f.key, "PUT", self.upload_url_ttl_s) for f in record.files}

    def get(self, dataset_name: str, principal: Principal = BOOTSTRAP_ADMIN) -> Dataset:
        """The dataset, if the principal sees it (its own, or any for administrators)."""
        record = self.records.get(dataset_name)
        if record is None or not sees_owner(principal, record.owner):
            raise UnknownRecord(f"dataset {dataset_name!r} does not exist.")
        return record

    def set_status(self, dataset_name: str, status: DatasetStatus, principal: Principal = BOOTSTRAP_ADMIN) -> Dataset:
        record = self.get(dataset_name, principal)
        if (record.status, status) not in _TRANSITIONS:
            raise WrongState(f"dataset {dataset_name!r} is {record.status}; it cannot become {status}.")
        if status == ENABLED:
            missing = [f.filename for f in record.files if not self.blobs.exists(f.key)]
            if missing:
                raise InvalidRequest(f"dataset {dataset_name!r} cannot be enabled: these files have not been "
                                     f"uploaded yet: {', '.join(missing)}.")
        updated = self.records.update(dataset_name, {"status": status}, expect={"status": record.status})
        if updated is None:
            raise WrongState(f"dataset {dataset_name!r} changed while it was being updated; try again.")
        return updated

    def delete(self, dataset_name: str, principal: Principal = BOOTSTRAP_ADMIN) -> None:
        """Remove a dataset and its files."""
        self.get(dataset_name, principal)
        self.records.delete(dataset_name)
        self.blobs.delete_prefix(f"dataset/{dataset_name}")

    def page(self, statuses: list[str], limit: int, last_key: str | None, principal: Principal = BOOTSTRAP_ADMIN,
             owner: str | None = None) -> tuple[list[Dataset], str | None]:
        """One page of the principal's datasets (administrators: everyone's, or `owner`'s), newest first, after
        the dataset named `last_key`; and the next page's key (GET /datasets)."""
        return owned_page(self.records, {"status": statuses}, limit, last_key, principal, owner, "dataset")

    def files(self, dataset_name: str, principal: Principal = BOOTSTRAP_ADMIN) -> list[DatasetFileState]:
        """The files of a dataset, with a signed preview URL for each one that has arrived."""
        return [DatasetFileState(f, self.blobs.signed_url(f.key) if self.blobs.exists(f.key) else None)
                for f in self.get(dataset_name, principal).files]
