"""Importing model files from URLs (`POST /upload_checkpoint`), in the background.

The request only checks the URLs and creates the `Initialed` record; a background runner downloads each
file (retrying transient errors, recording progress on the record), then the catalogue checks the files and
turns the record `Active`, or `Failed` with the reason. Access tokens are used for the download only and
never stored.

Two runners (`ImportRunner`):
- `ThreadRunner` (the local backend, `serve --backend aws`): a thread streams each file into the blob store
  in one go, hashing as it goes.
- `LambdaRunner` (under AWS Lambda, whose invocations end, and their threads with them, when they return):
  the function invokes itself asynchronously with an import task; each invocation (`run_step`) streams the
  download into an S3 multipart upload, a part at a time, and before Lambda's 15-minute limit invokes the
  function again, which resumes from the parts already uploaded (`list_parts`) with an HTTP Range request;
  so any size completes. The record's `files` hold the state between steps: finished files, and the one in
  progress with its upload id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import unquote, urljoin, urlsplit

import requests

from aws_extension.middleware.blobs.base import UploadError, UploadNotFound
from aws_extension.middleware.errors import InvalidRequest, ServiceError, TooLarge
from aws_extension.middleware.principals import BOOTSTRAP_ADMIN, Principal
from aws_extension.middleware.records import Checkpoint, CheckpointFile
from aws_extension.middleware.services.checkpoints import INITIALED, CheckpointService, check_type, file_key
from aws_extension.middleware.services.names import check_filename
from aws_extension.middleware.services.ownership import check_roles
from aws_extension.middleware.services.url_guard import RefusedAddress, check_download_url, guarded_session
from aws_extension.settings import MiddlewareSettings

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
PROGRESS_INTERVAL_S = 0.5
IMPORT_TASK = "import"  # lambda_entry routes {"sd_aws_task": "import"} to ModelImporter.run_step
STEP_MARGIN_S = 90.0  # a Lambda step stops this long before its time is up (a part may be in flight)
# Which token goes to which site, and only there.
TOKEN_HOSTS = {"hf_token": ("huggingface.co", "hf.co"), "civitai_token": ("civitai.com",)}


class DownloadFailed(Exception):
    """A download that will not succeed by retrying (404, too large, refused address, ...)."""


class TransientError(Exception):
    """A download that may succeed if retried (connection reset, 5xx, 429, timeout)."""


class OutOfTime(Exception):
    """A resumable step reached its deadline: what it did is stored, the next step goes on from there."""


class ImportRunner(Protocol):
    resumable: bool  # True: downloads go to multipart uploads in steps (run_step), resumed across invocations

    def launch(self, importer: ModelImporter, checkpoint_id: str, tokens: dict[str, str]) -> None:
        """Get the import of `checkpoint_id` going (or going on) in the background."""

    def stop(self, timeout_s: float) -> None: ...


class ThreadRunner:
    """A daemon thread per import, running it to the end."""

    resumable = False

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []

    def launch(self, importer: ModelImporter, checkpoint_id: str, tokens: dict[str, str]) -> None:
        thread = threading.Thread(target=importer.run_import, args=(checkpoint_id, tokens),
                                  name=f"import-{checkpoint_id[:8]}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def stop(self, timeout_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout_s)


def import_task(checkpoint_id: str, tokens: dict[str, str]) -> dict[str, Any]:
    """The event of an import step (the tokens travel in it, inside AWS; they are never stored or logged)."""
    return {"sd_aws_task": IMPORT_TASK, "checkpoint_id": checkpoint_id, "tokens": tokens}


class LambdaRunner:
    """Each step is an asynchronous invocation of the Lambda function itself (its role may invoke only
    itself: template ResumeImportsByInvokingItself)."""

    resumable = True

    def __init__(self, function_name: str, client: Any = None):
        self.function_name = function_name
        self._client = client

    def launch(self, importer: ModelImporter, checkpoint_id: str, tokens: dict[str, str]) -> None:
        if self._client is None:
            import boto3

            self._client = boto3.client("lambda")
        self._client.invoke(FunctionName=self.function_name, InvocationType="Event",
                            Payload=json.dumps(import_task(checkpoint_id, tokens)).encode())

    def stop(self, timeout_s: float) -> None:
        pass  # nothing runs here between invocations


def default_runner(settings: MiddlewareSettings) -> ImportRunner:
    """Under Lambda (AWS_LAMBDA_FUNCTION_NAME is set by the runtime) on the aws backend, invocations of the
    function; anywhere else a thread."""
    function = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if settings.backend == "aws" and function:
        return LambdaRunner(function)
    return ThreadRunner()


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
    def __init__(self, checkpoints: CheckpointService, settings: MiddlewareSettings,
                 runner: ImportRunner | None = None):
        self.checkpoints = checkpoints
        self.settings = settings
        self.runner = runner or default_runner(settings)
        self._stopping = threading.Event()

    def start(self, checkpoint_type: str, urls: list[str], params: dict[str, Any],
              principal: Principal = BOOTSTRAP_ADMIN) -> Checkpoint:
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
        record = self.checkpoints.new_record(checkpoint_type, [], stored_params, source="url", owner=principal.username,
                                             allowed_roles=check_roles(params.get("allowed_roles"), "params.allowed_roles"))
        record.urls = urls
        record.progress = {"files_done": 0, "files_total": len(urls), "bytes_received": 0, "bytes_total": None}
        self.checkpoints.records.create(record)
        self.runner.launch(self, record.id, tokens)
        return record

    def resume_interrupted(self) -> None:
        """Restart the imports a previous run of the server left unfinished (tokens are not kept)."""
        for record in self.checkpoints.list([INITIALED], []):
            if record.source == "url":
                log.info("resuming the import of checkpoint %s", record.id)
                self.runner.launch(self, record.id, {})

    def resume_stalled(self, older_than_s: float) -> list[str]:
        """Launch again the imports whose progress has not moved for `older_than_s` (a Lambda step that died
        without invoking the next: throttled, or out of memory); the reaper calls it under Lambda. Tokens
        are not kept, so such an import goes on without them. Returns the ids launched."""
        now, launched = time.time(), []
        for record in self.checkpoints.list([INITIALED], []):
            updated = (record.progress or {}).get("updated") or record.created
            if record.source == "url" and now - updated > older_than_s:
                log.info("import %s made no progress for %.0f s; launching it again", record.id, now - updated)
                self.runner.launch(self, record.id, {})
                launched.append(record.id)
        return launched

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self.runner.stop(timeout_s)

    def run_step(self, task: dict[str, Any], remaining_s: float | None) -> None:
        """One invocation's share of an import (`LambdaRunner`): download until `remaining_s` minus a
        margin, then launch the next step, which resumes where this one stopped."""
        deadline = time.monotonic() + remaining_s - STEP_MARGIN_S if remaining_s is not None else None
        self.run_import(task["checkpoint_id"], task.get("tokens") or {}, deadline)

    def run_import(self, checkpoint_id: str, tokens: dict[str, str], deadline: float | None = None) -> None:
        """Download the record's files (resuming from what its `files` say is done), then finish it."""
        record = self.checkpoints.get(checkpoint_id)
        if record.status != INITIALED:
            return  # finished, failed or deleted meanwhile (a repeated invocation)
        files: list[CheckpointFile] = [f for f in record.files if f.sha256 is not None]
        try:
            for index, url in enumerate(record.urls[len(files):], start=len(files)):
                files.append(self._download_with_retries(record, index, url, tokens, [f.filename for f in files],
                                                         deadline))
                if self.runner.resumable:
                    record = self.checkpoints.records.update(record.id, {"files": files},
                                                             expect={"status": INITIALED}) or record
            self.checkpoints.finish(checkpoint_id, files, expect={"status": INITIALED})
        except OutOfTime:
            log.info("import %s: continuing in the next step", checkpoint_id)
            self.runner.launch(self, checkpoint_id, tokens)
        except ServiceError:
            pass  # finish() already failed the record with the reason
        except DownloadFailed as exc:
            self.checkpoints.fail(checkpoint_id, str(exc))
        except Exception as exc:  # the record must never stay Initialed because of a bug
            log.exception("import of checkpoint %s failed", checkpoint_id)
            self.checkpoints.fail(checkpoint_id, f"the import failed unexpectedly: {exc}")

    def _download_with_retries(self, record: Checkpoint, index: int, url: str, tokens: dict[str, str],
                               taken_names: list[str], deadline: float | None = None) -> CheckpointFile:
        attempts = max(1, self.settings.import_attempts)
        for attempt in range(1, attempts + 1):
            if self._stopping.is_set():
                raise DownloadFailed("the server stopped during the import; it resumes when the server starts.")
            try:
                if self.runner.resumable:
                    return self._download_in_parts(record, index, url, tokens, taken_names, deadline)
                return self._download(record, index, url, tokens, taken_names)
            except TransientError as exc:
                if attempt == attempts:
                    raise DownloadFailed(f"{url}: {exc} (gave up after {attempts} attempts).") from None
                log.info("import %s: %s; retrying (%d/%d)", record.id, exc, attempt, attempts)
                self._stopping.wait(min(30.0, 2.0 ** (attempt - 1)))
        raise AssertionError("unreachable")

    def _open(self, url: str, tokens: dict[str, str], start: int = 0) -> requests.Response:
        """GET `url`, following redirects by hand so that every hop passes the SSRF guard."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                check_download_url(url, self.settings.import_allow_private_addresses)
            except InvalidRequest as exc:
                raise DownloadFailed(exc.message) from None
            host = urlsplit(url).hostname or ""
            headers = {"User-Agent": "sd-aws-import"}
            if start:
                headers["Range"] = f"bytes={start}-"
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
            self._check_status(response, url)
            total = self._total(response, url, 0)
            filename = self._filename(response, url, taken_names)
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
        self._check_declared(record, index, url, sha256.hexdigest())
        return CheckpointFile(filename=filename, key=key, sha256=sha256.hexdigest(), size=received, url=url)

    @staticmethod
    def _check_status(response: requests.Response, url: str, expected: int = 200) -> None:
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"the server answered {response.status_code} {response.reason}")
        if response.status_code != expected:
            raise DownloadFailed(f"{url}: the server answered {response.status_code} {response.reason}.")

    def _total(self, response: requests.Response, url: str, start: int) -> int | None:
        """The file's whole size (what is left plus `start`), when the server says; over the cap fails."""
        length = response.headers.get("Content-Length", "")
        total = int(length) + start if length.isdigit() else None
        cap = self.settings.import_max_bytes
        if total is not None and total > cap:
            raise DownloadFailed(f"{url}: the file is {total} bytes, over the import limit of {cap} bytes.")
        return total

    @staticmethod
    def _filename(response: requests.Response, url: str, taken_names: list[str]) -> str:
        try:
            filename = check_filename(filename_from_response(response))
        except InvalidRequest as exc:
            raise DownloadFailed(f"{url}: {exc.message}") from None
        if filename in taken_names:
            raise DownloadFailed(f"{url}: another URL of this import is also named {filename}.")
        return filename

    def _check_declared(self, record: Checkpoint, index: int, url: str, sha256: str) -> None:
        declared = (_declared_sha256s(record.params.get("sha256"), len(record.urls)) or [None] * len(record.urls))[index]
        if declared and sha256 != declared:
            raise DownloadFailed(f"{url}: the file's sha256 is {sha256}, not the declared {declared}.")

    def _download_in_parts(self, record: Checkpoint, index: int, url: str, tokens: dict[str, str],
                           taken_names: list[str], deadline: float | None) -> CheckpointFile:
        """Download into a multipart upload, a part at a time, resuming the upload that the record's file
        `index` names (from the parts it has, with a Range request); OutOfTime at the deadline."""
        blobs, cap = self.checkpoints.blobs, self.settings.import_max_bytes
        part_bytes = max(self.settings.import_part_bytes, self.settings.multipart_min_part_bytes,
                         -(-cap // self.settings.multipart_max_parts))
        current = self.checkpoints.get(record.id).files
        entry = current[index] if len(current) > index and current[index].upload_id else None
        parts = blobs.list_parts(entry.key, entry.upload_id) if entry else []
        received = sum(size for _, _, size in parts)
        response = self._open(url, tokens, start=received)
        with response:
            if received and response.status_code == 200:  # the server ignores Range: start the file over
                blobs.abort_multipart(entry.key, entry.upload_id)
                entry, parts, received = None, [], 0
            self._check_status(response, url, expected=206 if received else 200)
            total = self._total(response, url, received)
            if entry is None:
                filename = self._filename(response, url, taken_names)
                key = file_key(record.type, record.id, filename)
                entry = CheckpointFile(filename=filename, key=key, url=url, upload_id=blobs.create_multipart(key))
                files = [f for f in current if f.sha256 is not None][:index] + [entry]
                self.checkpoints.records.update(record.id, {"files": files}, expect={"status": INITIALED})
            tags = [(number, etag) for number, etag, _ in parts]
            buffer = bytearray()
            try:
                while True:
                    chunk = response.raw.read1(min(1 << 20, part_bytes - len(buffer)))  # parts of part_bytes
                    buffer += chunk
                    if received + len(buffer) > cap:
                        raise DownloadFailed(f"{url}: the file is over the import limit of {cap} bytes.")
                    if len(buffer) >= part_bytes or (not chunk and (buffer or not tags)):
                        number = len(tags) + 1
                        tags.append((number, blobs.upload_part(entry.key, entry.upload_id, number, bytes(buffer))))
                        received += len(buffer)
                        buffer.clear()
                        self._report(record, index, received, total)
                        if chunk and deadline is not None and time.monotonic() > deadline:
                            raise OutOfTime()
                    if not chunk:
                        break
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                raise TransientError(f"the download broke off after {received} bytes ({type(exc).__name__})") from None
        if total is not None and received != total:
            raise TransientError(f"the download ended after {received} of {total} bytes")
        try:
            info = blobs.complete_multipart(entry.key, entry.upload_id, tags)
        except (UploadError, UploadNotFound) as exc:
            raise TransientError(f"assembling the parts failed ({exc})") from None
        self._report(record, index + 1, 0, None)
        self._check_declared(record, index, url, info.sha256)
        return replace(entry, sha256=info.sha256, size=info.size, upload_id=None)

    def _report(self, record: Checkpoint, files_done: int, received: int, total: int | None) -> None:
        self.checkpoints.records.update(record.id, {"progress": {
            "files_done": files_done, "files_total": len(record.urls), "bytes_received": received,
            "bytes_total": total, "updated": time.time()}}, expect={"status": INITIALED})
