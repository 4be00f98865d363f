"""Importing model files from URLs (`POST /upload_checkpoint`), in the background.

The request only checks the URLs and creates the `Initialed` record; a thread downloads each file
(streaming into the blob store, hashing as it goes, retrying transient errors, recording progress on the
record), then the catalogue checks the files and turns the record `Active`, or `Failed` with the reason.
Access tokens are used for the download only and never stored.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests

from aws_extension.middleware.errors import InvalidRequest, ServiceError, TooLarge
from aws_extension.middleware.records import Checkpoint, CheckpointFile
from aws_extension.middleware.services.checkpoints import INITIALED, CheckpointService, check_type, file_key
from aws_extension.middleware.services.names import check_filename
from aws_extension.middleware.services.url_guard import RefusedAddress, check_download_url, guarded_session
from aws_extension.settings import MiddlewareSettings

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
PROGRESS_INTERVAL_S = 0.5
# Which token goes to which site, and only there.
TOKEN_HOSTS = {"hf_token": ("huggingface.co", "hf.co"), "civitai_token": ("civitai.com",)}


class DownloadFailed(Exception):
    """A download that will not succeed by retrying (404, too large, refused address, ...)."""


class TransientError(Exception):
    """A download that may succeed if retried (connection reset, 5xx, 429, timeout)."""


def _declared_sha256s(value: Any, count: int) -> list[str] | None:
    """`params.sha256` of an import: one 64-hex string per URL (a string for one URL), or absent."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else value
    if not (isinstance(values, list) and len(values) == count
            and all(isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{64}", v) for v in values)):
        raise InvalidRequest(f"params.sha256 must be the sha256 (64 hex digits) of each of the {count} URLs, in order.")
    return [v.lower() for v in values]


def filename_from_response(response: requests.Response) -> str:
    """The file name from Content-Disposition (RFC 6266, incl. filename*=UTF-8''), else the URL path."""
    disposition = response.headers.get("Content-Disposition", "")
    match = re.search(r"filename\*\s*=\s*[^']*'[^']*'([^;]+)", disposition) or \
        re.search(r'filename\s*=\s*"([^"]+)"', disposition) or re.search(r"filename\s*=\s*([^;]+)", disposition)
    name = unquote(match.group(1).strip()) if match else unquote(urlsplit(response.url).path.rsplit("/", 1)[-1])
    return name.replace("\\", "/").rsplit("/", 1)[-1]


class ModelImporter:
    def __init__(self, checkpoints: CheckpointService, settings: MiddlewareSettings):
        self.checkpoints = checkpoints
        self.settings = settings
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, checkpoint_type: str, urls: list[str], params: dict[str, Any]) -> Checkpoint:
        """Import the files at `urls` in the background. `params.sha256` (one per URL, as model sites list
        them) makes it content-addressed: if that content is Active already, that checkpoint is the answer
        and nothing is downloaded; a download that does not hash to it fails."""
        check_type(checkpoint_type)
        declared = _declared_sha256s(params.get("sha256"), len(urls))
        existing = self.checkpoints.find_content(checkpoint_type, declared) if declared else None
        if existing:
            return existing
        if not urls:
            raise InvalidRequest("modelUrl is empty: give at least one URL to import.")
        if len(urls) > self.settings.max_files_per_checkpoint:
            raise TooLarge(f"modelUrl lists {len(urls)} URLs; a checkpoint has at most "
                           f"{self.settings.max_files_per_checkpoint} files.")
        for url in urls:
            check_download_url(url, self.settings.import_allow_private_addresses)
        tokens = {k: params[k] for k in TOKEN_HOSTS if params.get(k)}
        for name, token in tokens.items():
            if not isinstance(token, str) or not token.isprintable() or " " in token:
                raise InvalidRequest(f"params.{name} must be the site's access token (printable text, no spaces).")
        stored_params = {k: v for k, v in params.items() if k not in TOKEN_HOSTS}
        record = self.checkpoints.new_record(checkpoint_type, [], stored_params, source="url")
        record.urls = urls
        record.progress = {"files_done": 0, "files_total": len(urls), "bytes_received": 0, "bytes_total": None}
        self.checkpoints.records.create(record)
        self._spawn(record.id, urls, tokens)
        return record

    def resume_interrupted(self) -> None:
        """Restart the imports a previous run of the server left unfinished (tokens are not kept)."""
        for record in self.checkpoints.list([INITIALED], []):
            if record.source == "url":
                log.info("resuming the import of checkpoint %s", record.id)
                self._spawn(record.id, record.urls, {})

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout_s)

    def _spawn(self, checkpoint_id: str, urls: list[str], tokens: dict[str, str]) -> None:
        thread = threading.Thread(target=self._import, args=(checkpoint_id, urls, tokens),
                                  name=f"import-{checkpoint_id[:8]}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _import(self, checkpoint_id: str, urls: list[str], tokens: dict[str, str]) -> None:
        record = self.checkpoints.get(checkpoint_id)
        files: list[CheckpointFile] = []
        try:
            for index, url in enumerate(urls):
                files.append(self._download_with_retries(record, index, url, tokens, [f.filename for f in files]))
            self.checkpoints.finish(checkpoint_id, files, expect={"status": INITIALED})
        except ServiceError:
            pass  # finish() already failed the record with the reason
        except DownloadFailed as exc:
            self.checkpoints.fail(checkpoint_id, str(exc))
        except Exception as exc:  # the record must never stay Initialed because of a bug
            log.exception("import of checkpoint %s failed", checkpoint_id)
            self.checkpoints.fail(checkpoint_id, f"the import failed unexpectedly: {exc}")

    def _download_with_retries(self, record: Checkpoint, index: int, url: str, tokens: dict[str, str],
                               taken_names: list[str]) -> CheckpointFile:
        attempts = max(1, self.settings.import_attempts)
        for attempt in range(1, attempts + 1):
            if self._stopping.is_set():
                raise DownloadFailed("the server stopped during the import; it resumes when the server starts.")
            try:
                return self._download(record, index, url, tokens, taken_names)
            except TransientError as exc:
                if attempt == attempts:
                    raise DownloadFailed(f"{url}: {exc} (gave up after {attempts} attempts).") from None
                log.info("import %s: %s; retrying (%d/%d)", record.id, exc, attempt, attempts)
                self._stopping.wait(min(30.0, 2.0 ** (attempt - 1)))
        raise AssertionError("unreachable")

    def _open(self, url: str, tokens: dict[str, str]) -> requests.Response:
        """GET `url`, following redirects by hand so that every hop passes the SSRF guard."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                check_download_url(url, self.settings.import_allow_private_addresses)
            except InvalidRequest as exc:
                raise DownloadFailed(exc.message) from None
            host = urlsplit(url).hostname or ""
            headers = {"User-Agent": "sd-aws-import"}
            for token_name, hosts in TOKEN_HOSTS.items():
                if token_name in tokens and any(host == h or host.endswith("." + h) for h in hosts):
                    headers["Authorization"] = f"Bearer {tokens[token_name]}"
            try:
                response = guarded_session(self.settings.import_allow_private_addresses).get(
                    url, headers=headers, stream=True, allow_redirects=False, timeout=self.settings.import_timeout_s)
            except RefusedAddress as exc:
                raise DownloadFailed(f"{url}: {exc}") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(f"could not connect ({type(exc).__name__})") from None
            if response.is_redirect:
                url = urljoin(url, response.headers["Location"])
                response.close()
                continue
            return response
        raise DownloadFailed(f"{url}: more than {MAX_REDIRECTS} redirects.")

    def _download(self, record: Checkpoint, index: int, url: str, tokens: dict[str, str],
                  taken_names: list[str]) -> CheckpointFile:
        cap = self.settings.import_max_bytes
        with self._open(url, tokens) as response:
            if response.status_code == 429 or response.status_code >= 500:
                raise TransientError(f"the server answered {response.status_code} {response.reason}")
            if response.status_code != 200:
                raise DownloadFailed(f"{url}: the server answered {response.status_code} {response.reason}.")
            total = int(response.headers["Content-Length"]) if response.headers.get("Content-Length", "").isdigit() else None
            if total is not None and total > cap:
                raise DownloadFailed(f"{url}: the file is {total} bytes, over the import limit of {cap} bytes.")
            try:
                filename = check_filename(filename_from_response(response))
            except InvalidRequest as exc:
                raise DownloadFailed(f"{url}: {exc.message}") from None
            if filename in taken_names:
                raise DownloadFailed(f"{url}: another URL of this import is also named {filename}.")
            key = file_key(record.type, record.id, filename)
            sha256, received, last_report = hashlib.sha256(), 0, 0.0
            try:
                with self.checkpoints.blobs.writer(key) as out:
                    # read1: whatever has arrived (up to 1 MiB), so progress moves on slow links too.
                    while chunk := response.raw.read1(1 << 20):
                        if self._stopping.is_set():
                            raise DownloadFailed("the server stopped during the import.")
                        received += len(chunk)
                        if received > cap:
                            raise DownloadFailed(f"{url}: the file is over the import limit of {cap} bytes.")
                        sha256.update(chunk)
                        out.write(chunk)
                        if time.monotonic() - last_report > PROGRESS_INTERVAL_S:
                            last_report = time.monotonic()
                            self._report(record, index, received, total)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                raise TransientError(f"the download broke off after {received} bytes ({type(exc).__name__})") from None
            if total is not None and received != total:
                raise TransientError(f"the download ended after {received} of {total} bytes")
        self._report(record, index + 1, 0, None)
        declared = (_declared_sha256s(record.params.get("sha256"), len(record.urls)) or [None] * len(record.urls))[index]
        if declared and sha256.hexdigest() != declared:
            raise DownloadFailed(f"{url}: the file's sha256 is {sha256.hexdigest()}, not the declared {declared}.")
        return CheckpointFile(filename=filename, key=key, sha256=sha256.hexdigest(), size=received, url=url)

    def _report(self, record: Checkpoint, files_done: int, received: int, total: int | None) -> None:
        self.checkpoints.records.update(record.id, {"progress": {
            "files_done": files_done, "files_total": len(record.urls), "bytes_received": received,
            "bytes_total": total}}, expect={"status": INITIALED})
