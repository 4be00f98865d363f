"""Webhooks: one signed POST to a job's `callback_url` when it ends (API.md, "Webhooks").

Body: the job record (JSON). Headers: `X-Signature: sha256=<hex HMAC-SHA256 of the body with the webhook
secret>`, `X-Event: inference.<status>`. Delivered from a background thread, retried with backoff on
connection errors, timeouts and 5xx, a bounded number of times; every attempt is recorded on the job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import requests

from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.services.names import now, time_text
from aws_extension.middleware.services.url_guard import RefusedAddress, check_download_url, guarded_session

log = logging.getLogger(__name__)


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, secret: bytes, attempts: int, timeout_s: float, allow_private: bool, backoff_s: float = 1.0):
        self.secret = secret
        self.attempts = max(1, attempts)
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self.backoff_s = backoff_s
        self._stopping = threading.Event()

    def check_url(self, url: object) -> None:
        if not isinstance(url, str):
            raise InvalidRequest(f"callback_url must be an http(s) URL, not {url!r}.")
        try:
            check_download_url(url, self.allow_private)
        except InvalidRequest as exc:
            raise InvalidRequest("callback_url: " + exc.message.replace("imported from", "called")) from None

    def send(self, url: str, job_id: str, status: str, body: dict[str, Any],
             record_delivery: Callable[[str, dict[str, Any]], None]) -> None:
        """Deliver `body` (the job as the API shows it) in the background; `record_delivery(job id, {"url",
        "delivered", "attempts"})` after each try."""
        threading.Thread(target=self._deliver, args=(url, job_id, status, body, record_delivery),
                         name=f"webhook-{job_id[:8]}", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def _deliver(self, url: str, job_id: str, status: str, job: dict[str, Any],
                 record_delivery: Callable[[str, dict[str, Any]], None]) -> None:
        body = json.dumps(job).encode()
        headers = {"Content-Type": "application/json", "X-Event": f"inference.{status}",
                   "X-Signature": signature(self.secret, body), "User-Agent": "sd-aws-webhook"}
        attempts: list[dict[str, Any]] = []
        for attempt in range(1, self.attempts + 1):
            entry: dict[str, Any] = {"at": time_text(now())}
            try:
                self.check_url(url)
                with guarded_session(self.allow_private) as session:
                    response = session.post(url, data=body, headers=headers, timeout=self.timeout_s,
                                            allow_redirects=False)
                entry["status"] = response.status_code
                retry = response.status_code >= 500
            except InvalidRequest as exc:
                entry["error"], retry = exc.message, False
            except RefusedAddress as exc:
                entry["error"], retry = f"callback_url: {exc}", False
            except requests.RequestException as exc:
                entry["error"], retry = f"{type(exc).__name__}: could not deliver", True
            attempts.append(entry)
            delivered = 200 <= entry.get("status", 0) < 300
            record_delivery(job_id, {"url": url, "delivered": delivered, "attempts": attempts})
            if delivered or not retry or attempt == self.attempts:
                if not delivered:
                    log.warning("webhook for job %s not delivered after %d attempts", job_id, attempt)
                return
            if self._stopping.wait(self.backoff_s * 2 ** (attempt - 1)):
                return
