"""The worker's models folder, laid out like the WebUI's `models/`: one sub-folder per model type.

A model's name is its path relative to its type folder, with `/` separators (`foo.safetensors`,
`sdxl/bar.safetensors`), as the WebUI shows it. Hidden folders (the model cache lives in `.cache`) are
skipped.
"""

from __future__ import annotations

import json
import struct
import threading
from pathlib import Path

from aws_extension.engine.base import MODEL_TYPES

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# A safetensors file starts with the length of its JSON header; real headers are far below this.
_MAX_SAFETENSORS_HEADER_BYTES = 100 * 1024 * 1024


def scan_models(root: Path) -> dict[str, dict[str, Path]]:
    """Every model file under `root`, by type folder, then by name (sorted case-insensitively)."""
    found: dict[str, dict[str, Path]] = {}
    for model_type in MODEL_TYPES:
        folder = root / model_type
        paths = [
            p for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ] if folder.is_dir() else []
        names = sorted((p.relative_to(folder).as_posix() for p in paths), key=str.lower)
        found[model_type] = {name: folder / name for name in names}
    return found


def model_file_problem(path: Path, name: str) -> str | None:
    """Why `path` (to be known as `name`) is not a model file, or None when it looks like one.

    Only the container format is checked (a safetensors header with tensors, or a zip/pickle torch
    file): enough to refuse an HTML error page or a text file before it reaches the engine.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        return f"{name} is not a model file: expected one of {', '.join(MODEL_SUFFIXES)}"
    with path.open("rb") as f:
        head = f.read(8)
        if suffix == ".safetensors":
            if len(head) < 8:
                return f"{name} is not a safetensors file: it is only {len(head)} bytes long"
            (header_len,) = struct.unpack("<Q", head)
            if not 0 < header_len <= _MAX_SAFETENSORS_HEADER_BYTES:
                return f"{name} is not a safetensors file: its header is unreadable"
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError):
                return f"{name} is not a safetensors file: its header is not JSON"
            if not isinstance(header, dict) or not any(k != "__metadata__" for k in header):
                return f"{name} is not a model: the safetensors file holds no tensors"
            return None
    # .ckpt/.pt/.pth/.bin: torch.save writes a zip archive; older files are a bare pickle.
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    return f"{name} is not a model file: it is neither a safetensors file nor a torch checkpoint"


class ModelsIndex:
    """The scanned models folder, rescanned on `refresh()` (the WebUI's refresh-checkpoints)."""

    def __init__(self, root: Path):
        self.root = root
        self._lock = threading.Lock()
        self._models: dict[str, dict[str, Path]] = {}
        self.refresh()

    def refresh(self) -> None:
        models = scan_models(self.root)
        with self._lock:
            self._models = models

    def by_type(self, model_type: str) -> dict[str, Path]:
        with self._lock:
            return dict(self._models.get(model_type, {}))

    def all(self) -> dict[str, dict[str, Path]]:
        with self._lock:
            return {t: dict(files) for t, files in self._models.items()}
