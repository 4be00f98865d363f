"""The infotext a cloud image carries, made the host's: the worker writes A1111's infotext with its own version
under "Version"; the WebUI's user gets the WebUI's version there (as `create_infotext` writes it, so "reuse
parameters" reads the same fields), the cloud's in its own "Cloud" field, and the `extra_generation_params` the
host's scripts put on `p` (loopback, SD upscale, ...), which the worker never saw."""

from __future__ import annotations

import json
import re
from typing import Any

from modules import processing
from modules.shared import opts

# modules/infotext_utils.py's re_param: one "key: value" of the last line (a value is quoted when it has , : or \n)
PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
CLOUD_KEY = "Cloud"


def quote(value: Any) -> str:
    """infotext_utils.quote: JSON-quoted when the value has a comma, a colon or a newline."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def split_infotext(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(the prompt lines, the last line's (key, raw value) pairs) as parse_generation_parameters splits them."""
    head, _, last = text.strip().rpartition("\n")
    pairs = PARAM.findall(last)
    if len(pairs) < 3:  # no parameter line
        return text.strip(), []
    return head, [(key, value.strip()) for key, value in pairs]


def _extra_params(p: Any, index: int) -> dict[str, Any]:
    """p.extra_generation_params as create_infotext writes them: lists by image index; callables are left out."""
    extra = {}
    for key, value in (getattr(p, "extra_generation_params", None) or {}).items():
        if isinstance(value, list):
            value = value[index] if index < len(value) else None
        if value is not None and not callable(value):
            extra[key] = value
    return extra


def host_infotext(text: str, p: Any, index: int) -> str:
    """The worker's infotext of image `index` with the WebUI's version, the cloud's version and p's extra params."""
    head, pairs = split_infotext(text)
    if not pairs:
        return text
    params = dict(pairs)
    cloud = params.pop("Version", None)
    params.pop(CLOUD_KEY, None)
    for key, value in _extra_params(p, index).items():
        params.setdefault(key, quote(value))
    version = processing.program_version() if getattr(opts, "add_version_to_infotext", True) else None
    if version:
        params["Version"] = quote(version)
    if cloud:
        params[CLOUD_KEY] = cloud
    line = ", ".join(f"{key}: {value}" for key, value in params.items())
    return f"{head}\n{line}" if head else line
