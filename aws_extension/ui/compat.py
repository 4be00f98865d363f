"""The few places where gradio 3.41 (A1111), 4.40 (Forge) and the newest gradio differ."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio 3.41 calls out at import otherwise

import gradio as gr  # noqa: E402

GRADIO_MAJOR = int(gr.__version__.split(".")[0])


def uploaded_paths(value: Any) -> list[Path]:
    """Paths of a File input's value: temp-file objects on 3.x, str paths on 4+; one file or a list."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [Path(getattr(item, "name", item)) for item in items if item]

