"""Which models a generation needs and whether the cloud catalogue has them (pure functions)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aws_extension.vocabulary import MODEL_SUFFIXES, CheckpointStatus, model_stem, prompt_uses_embedding


@dataclass(frozen=True)
class ModelRef:
    """A model a job needs: `name` is a file name or, for prompt references, a file stem."""

    type: str
    name: str
    sha256: str | None = None

    def label(self) -> str:
        return f"{self.type} '{self.name}'"


def is_model_file(path: Path) -> bool:
    return path.suffix.lower() in MODEL_SUFFIXES


def list_model_files(folders: Iterable[Path]) -> list[Path]:
    """Model files under `folders` (recursively), sorted by name; missing folders are skipped."""
    found = {p for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file() and is_model_file(p)}
    return sorted(found, key=lambda p: (p.name.lower(), str(p)))


def embeddings_in_prompts(prompts: Iterable[str], embedding_files: Iterable[Path]) -> list[Path]:
    """The embedding files whose name (the file stem) appears as a word in any of `prompts`."""
    prompts = list(prompts)
    return [path for path in embedding_files if prompt_uses_embedding(prompts, path.name)]


def resolve_models(wanted: Iterable[ModelRef], catalogue: list[dict]) -> tuple[dict[str, list], list[ModelRef]]:
    """Match `wanted` against Active catalogue records: by sha256 when known, else by file name or stem.

    Returns the `models` object of an inference request (entries are file names, or {name, sha256}) and
    the references the catalogue lacks.
    """
    models: dict[str, list] = {}
    missing: list[ModelRef] = []
    for ref in wanted:
        records = [r for r in catalogue if r.get("type") == ref.type and r.get("status") == CheckpointStatus.ACTIVE]
        entry: str | dict | None = None
        if ref.sha256:
            record = next((r for r in records if (r.get("sha256") or "").lower() == ref.sha256.lower()), None)
            if record:
                entry = {"name": record["name"][0], "sha256": record["sha256"]}
        else:
            entry = next((file for r in records for file in r.get("name", [])
                          if file == ref.name or model_stem(file) == model_stem(ref.name)), None)
        if entry is None:
            missing.append(ref)
        elif entry not in models.setdefault(ref.type, []):
            models[ref.type].append(entry)
    return models, missing


def missing_models_message(missing: list[ModelRef]) -> str:
    names = ", ".join(ref.label() + (f" (sha256 {ref.sha256[:10]})" if ref.sha256 else "") for ref in missing)
    return (f"Not in the cloud catalogue: {names}; upload it in the Amazon SageMaker tab → Cloud models "
            "(from the WebUI's model folders or your computer), then generate again.")

