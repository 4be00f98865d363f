"""Which models a generation needs and whether the cloud catalogue has them (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_EXTRA_NETWORK = re.compile(r"<(?:lora|lyco):([^:>]+)(?::[^>]*)?>", re.IGNORECASE)


@dataclass(frozen=True)
class ModelRef:
    """A model a job needs: `name` is a file name or, for prompt references, a file stem."""

    type: str
    name: str
    sha256: str | None = None

    def label(self) -> str:
        return f"{self.type} '{self.name}'"


def is_model_file(path: Path) -> bool:
    return path.suffix.lower() in MODEL_FILE_SUFFIXES


def list_model_files(folders: Iterable[Path]) -> list[Path]:
    """Model files under `folders` (recursively), sorted by name; missing folders are skipped."""
    found = {p for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file() and is_model_file(p)}
    return sorted(found, key=lambda p: (p.name.lower(), str(p)))


def lora_names_in_prompt(prompt: str) -> list[str]:
    """Names of `<lora:NAME:weight>` (and `<lyco:...>`) in a prompt, in order, without duplicates."""
    return list(dict.fromkeys(match.strip() for match in _EXTRA_NETWORK.findall(prompt or "")))


def embeddings_in_prompts(prompts: Iterable[str], embedding_files: Iterable[Path]) -> list[Path]:
    """The embedding files whose name (the file stem) appears as a word in any of `prompts`."""
    text = " ".join(p for p in prompts if p)
    return [path for path in embedding_files
            if re.search(rf"(?<![\w-]){re.escape(path.stem)}(?![\w-])", text)]


def _stem(name: str) -> str:
    path = Path(name)
    return path.stem if path.suffix.lower() in MODEL_FILE_SUFFIXES else name


def resolve_models(wanted: Iterable[ModelRef], catalogue: list[dict]) -> tuple[dict[str, list], list[ModelRef]]:
    """Match `wanted` against Active catalogue records: by sha256 when known, else by file name or stem.

    Returns the `models` object of an inference request (entries are file names, or {name, sha256}) and
    the references the catalogue lacks.
    """
    models: dict[str, list] = {}
    missing: list[ModelRef] = []
    for ref in wanted:
        records = [r for r in catalogue if r.get("type") == ref.type and r.get("status") == "Active"]
        entry: str | dict | None = None
        if ref.sha256:
            record = next((r for r in records if (r.get("sha256") or "").lower() == ref.sha256.lower()), None)
            if record:
                entry = {"name": record["name"][0], "sha256": record["sha256"]}
        else:
            entry = next((file for r in records for file in r.get("name", [])
                          if file == ref.name or _stem(file) == _stem(ref.name)), None)
        if entry is None:
            missing.append(ref)
        elif entry not in models.setdefault(ref.type, []):
            models[ref.type].append(entry)
    return models, missing


def missing_models_message(missing: list[ModelRef]) -> str:
    names = ", ".join(ref.label() + (f" (sha256 {ref.sha256[:10]})" if ref.sha256 else "") for ref in missing)
    return (f"Not in the cloud catalogue: {names}; upload it in the Amazon SageMaker tab → Cloud models "
            "(from the WebUI's model folders or your computer), then generate again.")

