"""Model resolution: the names a request uses → the catalogue's Active files, read once per request.

A request names its checkpoint (and other models) in `models`, LoRAs in its prompts (`<lora:NAME:w>`),
embeddings as words of its prompts, a VAE in `override_settings.sd_vae` and ControlNet models in its
ControlNet units. Each name may be a file name, a file stem or an A1111 title (`name [hash]`), or an
object `{"name", "sha256"}` (matched by sha256).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.records import Checkpoint, JobModel
from aws_extension.vocabulary import (
    MODEL_TYPES,
    CheckpointType,
    lora_names,
    model_stem,
    prompt_uses_embedding,
    prompts_of,
    without_hash_suffix,
)

NO_MODEL = (None, "", "None", "Automatic")  # A1111's "no VAE / no ControlNet model" values


@dataclass(frozen=True)
class Catalogue:
    """The Active files of the catalogue at one moment, by type."""

    files: dict[str, list[JobModel]]

    @classmethod
    def of(cls, checkpoints: Iterable[Checkpoint]) -> Catalogue:
        files: dict[str, list[JobModel]] = {t: [] for t in MODEL_TYPES}
        for record in checkpoints:
            files[record.type].extend(JobModel(type=record.type, name=f.filename, sha256=f.sha256 or "", key=f.key)
                                      for f in record.files)
        return cls(files)

    def find(self, model_type: str, entry: Any) -> JobModel:
        """The file an entry names (a name, stem or title; or {"name", "sha256"}); InvalidRequest if none."""
        files = self.files.get(model_type, [])
        name, sha256 = (entry.get("name"), entry.get("sha256")) if isinstance(entry, dict) else (entry, None)
        if sha256:
            found = next((f for f in files if f.sha256 == str(sha256).lower()), None)
        else:
            name = without_hash_suffix(str(name or ""))
            found = next((f for f in files if f.name == name), None) or \
                next((f for f in files if model_stem(f.name) == model_stem(name)), None)
        if found is None:
            what = f"with sha256 {sha256}" if sha256 else repr(name)
            raise InvalidRequest(f"{model_type} model {what} is not an Active checkpoint; upload it (sd-aws "
                                 f"checkpoint upload FILE --type {model_type}) or import it by URL first.")
        return found


def _everyone(record: Checkpoint) -> bool:
    return True


class ModelResolver:
    def __init__(self, active_checkpoints):
        self._active_checkpoints = active_checkpoints  # () -> list[Checkpoint], one catalogue read

    def catalogue(self, may_use: Callable[[Checkpoint], bool] = _everyone) -> Catalogue:
        """The Active files, of the checkpoints `may_use` allows (the others are as if they did not exist)."""
        return Catalogue.of(record for record in self._active_checkpoints() if may_use(record))

    def resolve(self, models: dict[str, list[Any]], params: dict[str, Any],
                may_use: Callable[[Checkpoint], bool] = _everyone) -> list[JobModel]:
        """Every catalogue file a job uses (the request's `models` checked by the validator: one
        Stable-diffusion entry, known types); InvalidRequest naming every missing one."""
        catalogue = self.catalogue(may_use)
        wanted: list[tuple[str, Any]] = [(t, e) for t, entries in models.items() for e in entries]
        prompts = prompts_of(params)
        wanted += [(CheckpointType.LORA, name) for name in lora_names(prompts)]
        wanted += [(CheckpointType.EMBEDDINGS, f.name) for f in catalogue.files[CheckpointType.EMBEDDINGS]
                   if prompt_uses_embedding(prompts, f.name)]
        vae = _object(params.get("override_settings")).get("sd_vae")
        if isinstance(vae, str) and vae not in NO_MODEL:
            wanted.append((CheckpointType.VAE, vae))
        wanted += [(CheckpointType.CONTROLNET, unit["model"]) for unit in _controlnet_units(params)
                   if unit.get("enabled", True) and unit.get("model") not in NO_MODEL]
        resolved: dict[str, JobModel] = {}
        problems: list[str] = []
        for model_type, entry in wanted:
            try:
                found = catalogue.find(model_type, entry)
            except InvalidRequest as exc:
                problems.append(exc.message)
                continue
            resolved.setdefault(found.key, found)
        if problems:
            raise InvalidRequest(" ".join(dict.fromkeys(problems)))
        return list(resolved.values())


def check_models_field(models: Any) -> dict[str, list[Any]]:
    """The request's `models`: an object of known types to lists of names, with one Stable-diffusion entry."""
    if not isinstance(models, dict):
        raise InvalidRequest('models must be an object like {"Stable-diffusion": ["model.safetensors"]}.')
    unknown = [t for t in models if t not in MODEL_TYPES]
    if unknown:
        raise InvalidRequest(f"models has unknown types {unknown}; use {', '.join(MODEL_TYPES)}.")
    normalised = {t: entries if isinstance(entries, list) else [entries] for t, entries in models.items()}
    for model_type, entries in normalised.items():
        for entry in entries:
            if not (isinstance(entry, str) or (isinstance(entry, dict) and isinstance(entry.get("name", ""), str)
                                               and isinstance(entry.get("sha256", ""), str))):
                raise InvalidRequest(f"models.{model_type}: each entry must be a file name or "
                                     f'{{"name": ..., "sha256": ...}}, not {entry!r}.')
    checkpoints = normalised.get(CheckpointType.STABLE_DIFFUSION) or []
    if len(checkpoints) != 1:
        raise InvalidRequest(f"models must name exactly one Stable-diffusion checkpoint, not {len(checkpoints)}.")
    return normalised


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _controlnet_units(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The ControlNet units of a payload (parameters of a `run: false` job are not checked yet: any shape)."""
    args = _object(_object(params.get("alwayson_scripts")).get("controlnet")).get("args")
    return [unit for unit in args if isinstance(unit, dict)] if isinstance(args, list) else []
