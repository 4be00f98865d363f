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


def _prompt_lines(prompt: str, negative_prompt: str | None) -> str:
    """create_infotext's lines above the parameters."""
    return f"{prompt}\nNegative prompt: {negative_prompt}" if negative_prompt else prompt


def _batch_prompts(p: Any) -> tuple[str, str] | None:
    """The prompts create_infotext writes for image p.batch_index of its batch (p.prompts, as the host resets
    them after postprocess_batch: a batch hook's edits of the prompts sent are not in the infotext)."""
    i, prompts, negatives = getattr(p, "batch_index", 0), getattr(p, "prompts", None), getattr(p, "negative_prompts", None)
    if not prompts or not negatives or i >= min(len(prompts), len(negatives)):
        return None
    return str(prompts[i]), str(negatives[i])


def host_infotext(text: str, p: Any, index: int) -> str:
    """The worker's infotext of image `index` (p's per-batch fields on its batch) with the host's prompts, the
    WebUI's version, the cloud's version and p's extra params."""
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
    prompts = _batch_prompts(p)
    head = _prompt_lines(*prompts) if prompts else head
    line = ", ".join(f"{key}: {value}" for key, value in params.items())
    return f"{head}\n{line}".strip()  # as create_infotext: no empty first line without a prompt


def grid_infotext(first_image_text: str, p: Any) -> str:
    """The grid's infotext as create_infotext(use_main_prompt=True) writes it: the first image's parameters under
    p's main prompt and negative prompt (set before the scripts' `process`, which may change p.all_prompts)."""
    _, pairs = split_infotext(first_image_text)
    main_prompt = getattr(p, "main_prompt", None)
    if not pairs or main_prompt is None:
        return first_image_text
    line = first_image_text.strip().rpartition("\n")[2]
    return f"{_prompt_lines(main_prompt, getattr(p, 'main_negative_prompt', None))}\n{line}".strip()
