"""Model files fetched by URL, kept on local disk by sha256, evicted least-recently-used.

Layout: `<cache dir>/<sha256>/<file name>`. One folder per content hash; when a job names the same
content under another file name, that name is hard-linked into the folder (the engine sees real file
names and suffixes). A download streams into `<cache dir>/.tmp/`, is hashed on the way, checked, and
renamed into place, so a folder that exists is always complete and verified. The folder's mtime is its
last use.

Concurrency: one lock per sha256, so one file is never downloaded twice at once (the second job waits and
then finds it); files pinned by a running job are never evicted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK_BYTES = 1024 * 1024


class ModelFetchError(Exception):
    """A model could not be fetched or was refused; `status` is the HTTP status the worker answers."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def check_model_name(name: str) -> str:
    """`name` if it is a safe relative file name (sub-folders allowed, no `..`, not absolute)."""
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or any(p in ("", ".", "..") for p in path.parts):
        raise ModelFetchError(f"Model name {name!r} is not a plain relative file name")
    return name


class ModelCache:
    def __init__(self, root: Path, budget_bytes: int, timeout_s: float):
        self.root = root
        self.budget_bytes = budget_bytes
        self.timeout_s = timeout_s
        self._tmp = root / ".tmp"
        # Partial downloads of a previous run are useless: their hashing state is gone.
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._guard = threading.Lock()
        self._sha_locks: dict[str, threading.Lock] = {}
        self._pins: Counter[str] = Counter()
        self.evict()  # the budget may have shrunk since the last run

    def fetch(self, sha256: str, name: str, url: str,
              check: Callable[[Path], str | None] | None = None) -> Path:
        """The cached file of `sha256` named `name`, downloading it from `url` when missing.

        `check(path)` may return a reason to refuse the downloaded file (it is then deleted, not cached).
        """
        sha256 = sha256.lower()
        if not _SHA256_RE.match(sha256):
            raise ModelFetchError(f"Model {name}: sha256 {sha256!r} is not 64 hex digits")
        file_name = PurePosixPath(check_model_name(name)).name
        with self._lock_for(sha256):
            entry = self.root / sha256
            if not entry.is_dir():
                self._download(sha256, name, file_name, url, check)
            path = entry / file_name
            if not path.exists():
                existing = next(p for p in entry.iterdir() if p.is_file())
                os.link(existing, path)
            os.utime(entry)  # last use, for LRU eviction
        with self.pinned([sha256]):
            self.evict()
        return path

    def scratch_path(self, file_name: str) -> Path:
        """A path for a job's temporary file, on the cache's disk (removed at the next start)."""
        return self._tmp / PurePosixPath(check_model_name(file_name)).name

    def is_cached(self, sha256: str) -> bool:
        return (self.root / sha256.lower()).is_dir()

    @contextmanager
    def pinned(self, sha256s: Iterable[str]) -> Iterator[None]:
        """Keep these files from eviction while the block runs; a job pins its models before fetching them."""
        keys = [s.lower() for s in sha256s]
        with self._guard:
            self._pins.update(keys)
        try:
            yield
        finally:
            with self._guard:
                self._pins.subtract(keys)
                self._pins += Counter()  # drop zero counts

    def size_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())

    def evict(self) -> list[str]:
        """Remove least-recently-used files until the cache fits its budget; returns the sha256s removed."""
        entries = sorted(self._entries(), key=lambda e: e[1])
        total = sum(size for _, _, size in entries)
        removed = []
        for sha256, _, size in entries:
            if total <= self.budget_bytes:
                break
            with self._guard:
                if self._pins[sha256]:
                    continue
                lock = self._sha_locks.get(sha256)
                if lock is not None and lock.locked():
                    continue
                shutil.rmtree(self.root / sha256, ignore_errors=True)
            total -= size
            removed.append(sha256)
            log.info("Evicted model %s (%d bytes) from the cache", sha256, size)
        return removed

    def _entries(self) -> list[tuple[str, float, int]]:
        """(sha256, last use, size) of every cached file; hard links to one file count once."""
        entries = []
        for entry in self.root.iterdir():
            if not (_SHA256_RE.match(entry.name) and entry.is_dir()):
                continue
            inodes = {p.stat().st_ino: p.stat().st_size for p in entry.iterdir() if p.is_file()}
            entries.append((entry.name, entry.stat().st_mtime, sum(inodes.values())))
        return entries

    def _lock_for(self, sha256: str) -> threading.Lock:
        with self._guard:
            return self._sha_locks.setdefault(sha256, threading.Lock())

    def _download(self, sha256: str, name: str, file_name: str, url: str,
                  check: Callable[[Path], str | None] | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ModelFetchError(f"Model {name}: its URL must be http or https")
        # The URL is signed: name only its host in messages, never the query.
        where = parts.netloc
        staging = Path(tempfile.mkdtemp(prefix=f"{sha256}.", dir=self._tmp))
        try:
            target = staging / file_name
            digest = hashlib.sha256()
            try:
                with requests.get(url, stream=True, timeout=self.timeout_s) as response:
                    if response.status_code != 200:
                        raise ModelFetchError(
                            f"Model {name}: downloading it from {where} failed with HTTP {response.status_code}")
                    with target.open("wb") as out:
                        for chunk in response.iter_content(_CHUNK_BYTES):
                            digest.update(chunk)
                            out.write(chunk)
            except requests.RequestException as exc:
                raise ModelFetchError(
                    f"Model {name}: downloading it from {where} failed: {type(exc).__name__}", status=502) from exc
            if digest.hexdigest() != sha256:
                raise ModelFetchError(
                    f"Model {name}: the downloaded file's sha256 is {digest.hexdigest()}, not {sha256}")
            problem = check(target) if check else None
            if problem:
                raise ModelFetchError(problem)
            size = target.stat().st_size
            staging.chmod(0o755)  # mkdtemp makes it private
            staging.rename(self.root / sha256)
            log.info("Cached model %s as %s (%d bytes)", name, sha256, size)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
