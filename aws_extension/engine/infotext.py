"""The A1111 infotext ("generation parameters") line, and PNG files that carry it.

Format and parser follow A1111's `processing.create_infotext` and
`infotext_utils.parse_generation_parameters`: the prompt, an optional "Negative prompt: ..." line, then
one line of `Key: value` pairs where values holding `,`, `:` or a newline are JSON-quoted.
"""

from __future__ import annotations

import functools
import io
import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from aws_extension.model_files import file_sha256

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(value: Any) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_infotext(prompt: str, negative_prompt: str, parameters: dict[str, Any]) -> str:
    """`parameters` in order; None values are left out, as A1111 does."""
    parameters_text = ", ".join(
        f"{key}: {quote(value)}" for key, value in parameters.items() if value is not None
    )
    negative_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_text}\n{parameters_text}".strip()


def parse_infotext(text: str) -> dict[str, str]:
    """Infotext → {"Prompt", "Negative prompt", key: value}; "Size: WxH" gives "Size-1"/"Size-2"."""
    *lines, last_line = text.strip().split("\n")
    if len(_RE_PARAM.findall(last_line)) < 3:
        lines.append(last_line)
        last_line = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            negative_lines.append(line[len("Negative prompt:"):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    result = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, value in _RE_PARAM.findall(last_line):
        if len(value) > 1 and value[0] == '"' and value[-1] == '"':
            value = json.loads(value)
        size = _RE_IMAGE_SIZE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


def png_with_infotext(image: Image.Image, infotext: str) -> bytes:
    """PNG bytes of `image` with `infotext` in the `parameters` text chunk (where A1111 puts it)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_infotext(png: bytes) -> str | None:
    with Image.open(io.BytesIO(png)) as image:
        return image.info.get("parameters")


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def short_hash(path: Path) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's sha256 (cached per file version)."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)[:10]
