"""The worker's models folder, laid out like the WebUI's `models/`: one sub-folder per model type.

A model's name is its path relative to its type folder, with `/` separators (`foo.safetensors`,
`sdxl/bar.safetensors`), as the WebUI shows it. Hidden folders (the model cache lives in `.cache`) are
skipped.
"""

from __future__ import annotations

import threading
from pathlib import Path

from aws_extension.engine.base import EngineError
from aws_extension.model_files import (
    KIND_OF_TYPE,
    SAFETENSORS_SUFFIXES,
    ModelFileError,
    identify_model,
    pickle_container_of,
    read_safetensors_file,
)
from aws_extension.vocabulary import MODEL_SUFFIXES, MODEL_TYPES


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


def _tensor_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The tensor shapes and metadata of a model file: a safetensors header is read without torch; a pickle's
    container is checked first, then it is loaded by the engine (torch, `weights_only=True`) to see its tensors."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        header = read_safetensors_file(path)
        return header.shapes(), header.metadata
    pickle_container_of(path)
    from aws_extension.engine.checkpoints import read_tensor_shapes

    return read_tensor_shapes(path)


def model_file_problem(path: Path, name: str, model_type: str) -> str | None:
    """Why `path` (to be known as `name`, a model of `model_type`) is refused, or None when it is fine.

    Reads the tensor names and shapes (not the weights): enough to refuse an HTML error page, a text
    file, or a LoRA sent as a checkpoint before the engine tries to load it. Hypernetworks are only read
    (their kind is not detected).
    """
    if Path(name).suffix.lower() not in MODEL_SUFFIXES:
        return f"{name} is not a model file: expected one of {', '.join(MODEL_SUFFIXES)}"
    expected_kind = KIND_OF_TYPE.get(model_type)
    try:
        shapes, metadata = _tensor_shapes(path)
        if expected_kind is None:
            return None
        kind = identify_model(shapes, metadata, path.name).kind
    except (ModelFileError, EngineError) as exc:
        return str(exc)  # it names the file
    if kind != expected_kind:
        return f"{name} is not a model of type {model_type}: it is a {kind}"
    return None


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
