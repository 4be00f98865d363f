"""Model resolution: the names a request uses → the catalogue's Active files.

A request names its checkpoint (and other models) in `models`, LoRAs in its prompts (`<lora:NAME:w>`),
embeddings as words of its prompts, a VAE in `override_settings.sd_vae` and ControlNet models in its
ControlNet units. Each name may be a file name, a file stem or an A1111 title (`name [hash]`), or an
object `{"name", "sha256"}` (matched by sha256).

The catalogue is not read whole: the checkpoints a request can mean are looked up by their keywords
(`records.catalogue_keywords`: a file's type and stem, its sha256, an embedding's first word), all of a
request's at once, so a request costs the same few reads however large the catalogue is. The matching
rules then run on what was found, as they would on the whole catalogue: every file a name or a prompt
could match has one of the keywords looked up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aws_extension.middleware.errors import InvalidRequest
from aws_extension.middleware.records import Checkpoint, JobModel, name_keyword, sha256_keyword, word_keyword
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
# A whole word of a prompt as `prompt_uses_embedding` sees words: an embedding named in a prompt has a stem
# that starts with one of these (or with a character outside them: the empty word).
_PROMPT_WORD = re.compile(r"[\w-]+")


def _entry(entry: Any) -> tuple[str, str | None]:
    """An entry's name (its A1111 hash suffix removed) and sha256."""
    name, sha256 = (entry.get("name"), entry.get("sha256")) if isinstance(entry, dict) else (entry, None)
    return without_hash_suffix(str(name or "")), str(sha256).lower() if sha256 else None


def entry_keyword(model_type: str, entry: Any) -> str:
    """The keyword that finds every file an entry (a name, stem or title; or {"name", "sha256"}) may mean."""
    name, sha256 = _entry(entry)
    return sha256_keyword(model_type, sha256) if sha256 else name_keyword(model_type, name)


def embedding_keywords(prompts: Iterable[str]) -> list[str]:
    return [word_keyword(""), *dict.fromkeys(word_keyword(w) for p in prompts for w in _PROMPT_WORD.findall(p))]


@dataclass
class Catalogue:
    """Active files of the catalogue by type, newest checkpoint first: those found by the keywords looked up
    so far (`load`; `find` looks up its own entry's if it was not)."""

    lookup: Callable[[list[str]], Iterable[Checkpoint]]  # keywords → the Active checkpoints having one
    files: dict[str, list[JobModel]] = field(default_factory=lambda: {t: [] for t in MODEL_TYPES})
    _loaded: set[str] = field(default_factory=set)
    _records: dict[str, Checkpoint] = field(default_factory=dict)

    def load(self, keywords: Iterable[str]) -> None:
        missing = [k for k in dict.fromkeys(keywords) if k not in self._loaded]
        if not missing:
            return
        self._loaded.update(missing)
        self._records.update((record.id, record) for record in self.lookup(missing))
        self.files = {t: [] for t in MODEL_TYPES}
        for record in sorted(self._records.values(), key=lambda r: (r.created, r.id), reverse=True):
            self.files[record.type].extend(JobModel(type=record.type, name=f.filename, sha256=f.sha256 or "",
                                                    key=f.key) for f in record.files)

    def find(self, model_type: str, entry: Any) -> JobModel:
        """The file an entry names (a name, stem or title; or {"name", "sha256"}); InvalidRequest if none."""
        self.load([entry_keyword(model_type, entry)])
        files = self.files.get(model_type, [])
        name, sha256 = _entry(entry)
        if sha256:
            found = next((f for f in files if f.sha256 == sha256), None)
        else:
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
    def __init__(self, active_checkpoints: Callable[[list[str]], Iterable[Checkpoint]]):
        self._active_checkpoints = active_checkpoints  # keywords → the Active checkpoints having one

    def catalogue(self, may_use: Callable[[Checkpoint], bool] = _everyone) -> Catalogue:
        """An empty catalogue that looks up what it is asked to find, among the checkpoints `may_use` allows
        (the others are as if they did not exist)."""
        return Catalogue(lambda keywords: [r for r in self._active_checkpoints(keywords) if may_use(r)])

    def resolve(self, models: dict[str, list[Any]], params: dict[str, Any],
                may_use: Callable[[Checkpoint], bool] = _everyone) -> list[JobModel]:
        """Every catalogue file a job uses (the request's `models` checked by the validator: one
        Stable-diffusion entry, known types); InvalidRequest naming every missing one."""
        prompts = prompts_of(params)
        named: list[tuple[str, Any]] = [(t, e) for t, entries in models.items() for e in entries]
        named += [(CheckpointType.LORA, name) for name in lora_names(prompts)]
        later: list[tuple[str, Any]] = []
        vae = _object(params.get("override_settings")).get("sd_vae")
        if isinstance(vae, str) and vae not in NO_MODEL:
            later.append((CheckpointType.VAE, vae))
        later += [(CheckpointType.CONTROLNET, unit["model"]) for unit in _controlnet_units(params)
                  if unit.get("enabled", True) and unit.get("model") not in NO_MODEL]
        catalogue = self.catalogue(may_use)
        catalogue.load([*(entry_keyword(t, e) for t, e in named + later), *embedding_keywords(prompts)])
        resolved: dict[str, JobModel] = {}
        problems: list[str] = []
        for model_type, entry in named:
            self._add(catalogue, model_type, entry, resolved, problems)
        # Embeddings the prompts use, each name's newest file (what finding it by name gives): every
        # embedding with that name has the same first word, so its look-up found them all.
        seen: set[str] = set()
        for embedding in catalogue.files[CheckpointType.EMBEDDINGS]:
            if embedding.name not in seen and prompt_uses_embedding(prompts, embedding.name):
                seen.add(embedding.name)
                resolved.setdefault(embedding.key, embedding)
        for model_type, entry in later:
            self._add(catalogue, model_type, entry, resolved, problems)
        if problems:
            raise InvalidRequest(" ".join(dict.fromkeys(problems)))
        return list(resolved.values())

    @staticmethod
    def _add(catalogue: Catalogue, model_type: str, entry: Any, resolved: dict[str, JobModel],
             problems: list[str]) -> None:
        try:
            found = catalogue.find(model_type, entry)
        except InvalidRequest as exc:
            problems.append(exc.message)
            return
        resolved.setdefault(found.key, found)


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
