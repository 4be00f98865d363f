"""What every service uses to make records: ids, times, and the rules for names."""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone

from aws_extension.middleware.errors import InvalidRequest

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


def new_id() -> str:
    return str(uuid.uuid4())


def now() -> float:
    return time.time()


def time_text(timestamp: float) -> str:
    """The seed's time format, UTC: `2023-07-04 08:00:35.171309`."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def check_name(name: str, what: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise InvalidRequest(f"{what} {name!r} is not valid: use 1 to 63 letters, digits and '-', "
                         "starting with a letter or digit.")
    return name


def check_filename(filename: str) -> str:
    """A plain file name: no path, no `..`, no NUL, 1..255 bytes (it becomes the last part of a key)."""
    if not filename or len(filename.encode()) > 255:
        raise InvalidRequest(f"file name {filename[:40]!r}... must be 1 to 255 bytes long" if filename
                         else "a file name is empty")
    if "/" in filename or "\\" in filename or "\x00" in filename or filename in (".", "..") \
            or filename.startswith(".."):
        raise InvalidRequest(f"file name {filename!r} must be a plain name without '/', '\\', '..' or NUL "
                         f"(send only the last part, e.g. {filename.replace(chr(92), '/').rsplit('/', 1)[-1]!r})")
    return filename
