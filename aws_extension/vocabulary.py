"""The project's words and rules, written once: task names, statuses, model types, merge methods, and the
A1111 naming rules (` [hash]` titles, `<lora:NAME:w>`, embeddings named in a prompt).

Standard library only: the WebUI side (`client/`, `ui/`, `webui/`), the middleware, the worker and the
engine all import it. The wire shapes of `/invocations` are in `aws_extension.wire`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath


class Word(str, Enum):
    """A value that travels as its string (in JSON, in the store, in URLs): `Task.TXT2IMG == "txt2img"`."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Status(Word):
    """A record's status; the terminal ones are listed by each enum's `_terminal_`."""

    @property
    def is_terminal(self) -> bool:
        return self.value in type(self)._terminal_values()

    @classmethod
    def _terminal_values(cls) -> tuple[str, ...]:
        return ()


class Task(Word):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    MERGE_CHECKPOINT = "merge-checkpoint"


GENERATION_TASKS = (Task.TXT2IMG, Task.IMG2IMG)


class JobStatus(Status):
    """An inference job: `created` → `inprogress` (→ `cancelling`) → `succeed` | `failed` | `cancelled`.

    `cancelling`: a cancel was asked while the job ran; it becomes `cancelled` once its worker stops."""

    CREATED = "created"
    INPROGRESS = "inprogress"
    CANCELLING = "cancelling"
    SUCCEED = "succeed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def _terminal_values(cls) -> tuple[str, ...]:
        return ("succeed", "failed", "cancelled")


class DeploymentStatus(Status):
    """An endpoint deployment job: `inprogress` → `success` | `failed`; `success` → `deleted`."""

    INPROGRESS = "inprogress"
    SUCCESS = "success"
    FAILED = "failed"
    DELETED = "deleted"

    @classmethod
    def _terminal_values(cls) -> tuple[str, ...]:
        return ("failed", "deleted")


class EndpointStatus(Status):
    """An endpoint: `Creating` → `InService` | `Failed`; → `Deleting` → `Deleted`."""

    CREATING = "Creating"
    IN_SERVICE = "InService"
    FAILED = "Failed"
    DELETING = "Deleting"
    DELETED = "Deleted"

    @classmethod
    def _terminal_values(cls) -> tuple[str, ...]:
        return ("Deleted",)


class CheckpointStatus(Status):
    """A catalogue checkpoint: `Initialed` → `Active` | `Failed`; `Active` ↔ `Disabled`."""

    INITIALED = "Initialed"
    ACTIVE = "Active"
    FAILED = "Failed"
    DISABLED = "Disabled"

    @classmethod
    def _terminal_values(cls) -> tuple[str, ...]:
        return ("Failed",)


class DatasetStatus(Status):
    """A training dataset: `Initialed` → `Enabled` ↔ `Disabled`."""

    INITIALED = "Initialed"
    ENABLED = "Enabled"
    DISABLED = "Disabled"



class TrainingModelStatus(Status):
    """A training base model (`POST /model`): `Initialed` → `Creating` → `Complete` | `Fail`."""

    INITIALED = "Initialed"
    CREATING = "Creating"
    COMPLETE = "Complete"
    FAIL = "Fail"

    @classmethod
    def _terminal_values(cls) -> tuple[str, ...]:
        return ("Complete", "Fail")


class TrainingStatus(Status):
    """A training job: `Initial` → `Training` → `Complete` | `Fail` | `Stopped`; `Stopped` → `Training`."""

    INITIAL = "Initial"
    TRAINING = "Training"
    COMPLETE = "Complete"
    FAIL = "Fail"
    STOPPED = "Stopped"

    @classmethod
    def _terminal_values(cls) -> tuple[str, ...]:
        return ("Complete", "Fail")

class CheckpointType(Word):
    """Model (checkpoint) types of API.md, which are also the WebUI's model folder names."""

    STABLE_DIFFUSION = "Stable-diffusion"
    LORA = "Lora"
    EMBEDDINGS = "embeddings"
    HYPERNETWORKS = "hypernetworks"
    CONTROLNET = "ControlNet"
    VAE = "VAE"


MODEL_TYPES = CheckpointType.values()


class Permission(Word):
    """What a key may do, as ESD names it: `<resource>:all` (create, change, delete; implies `:list`) or
    `<resource>:list` (see only). Datasets belong to `train`."""

    ROLE_ALL = "role:all"
    ROLE_LIST = "role:list"
    USER_ALL = "user:all"
    USER_LIST = "user:list"
    SAGEMAKER_ENDPOINT_ALL = "sagemaker_endpoint:all"
    SAGEMAKER_ENDPOINT_LIST = "sagemaker_endpoint:list"
    INFERENCE_ALL = "inference:all"
    INFERENCE_LIST = "inference:list"
    CHECKPOINT_ALL = "checkpoint:all"
    CHECKPOINT_LIST = "checkpoint:list"
    TRAIN_ALL = "train:all"
    TRAIN_LIST = "train:list"

    @property
    def resource(self) -> str:
        return self.value.split(":", 1)[0]


def grants(held: Iterable[str], needed: str) -> bool:
    """Whether holding `held` allows `needed` (`X:all` allows `X:list`)."""
    resource = needed.split(":", 1)[0]
    return needed in held or f"{resource}:all" in held


ADMIN_ROLE = "admin"
USER_ROLE = "user"
# The built-in roles: `admin` may do everything (and sees every owner's records); `user` runs its own
# inference and training and reads the shared catalogue and the endpoints.
BUILT_IN_ROLES: dict[str, frozenset[str]] = {
    ADMIN_ROLE: frozenset(p.value for p in Permission if p.value.endswith(":all")),
    USER_ROLE: frozenset({Permission.INFERENCE_ALL.value, Permission.TRAIN_ALL.value,
                          Permission.CHECKPOINT_LIST.value, Permission.SAGEMAKER_ENDPOINT_LIST.value}),
}


# The permission that makes a key an administrator: it manages users and sees every owner's records.
ADMIN_PERMISSION = Permission.USER_ALL.value


class UserStatus(Word):
    """A user is `active` until deleted; a deleted user stays as a tombstone (`deleted`), so the name is never
    given to someone new (who would inherit the old user's records)."""

    ACTIVE = "active"
    DELETED = "deleted"


class ApiKeyStatus(Word):
    """What `GET /users/{name}/keys` says of a key (stored as times: `revoked`, `expires`)."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


class MergeMethod(Word):
    """A1111's Checkpoint Merger: A·(1−M) + B·M; A + (B − C)·M; A alone."""

    WEIGHTED_SUM = "Weighted sum"
    ADD_DIFFERENCE = "Add difference"
    NO_INTERPOLATION = "No interpolation"


# -- model files and their names ----------------------------------------------------------------------------

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]+\]$")


def without_hash_suffix(title: str) -> str:
    """A1111 titles carry a short hash: `"model.safetensors [6ce0161689]"` → `"model.safetensors"`."""
    return _HASH_SUFFIX.sub("", title.strip())


def model_stem(name: str) -> str:
    """The name a prompt uses for a model file: `"sub/foo.safetensors"` → `"sub/foo"`; other names as they are."""
    path = PurePosixPath(name)
    return str(path.with_suffix("")) if path.suffix.lower() in MODEL_SUFFIXES else name


# -- prompts ---------------------------------------------------------------------------------------------------

# Fields of an A1111 payload whose text may name LoRAs (`<lora:...>`) and embeddings.
PROMPT_FIELDS = ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
# A1111's `extra_networks.re_extra_net`: `<kind:args>`; kinds are matched as written (A1111 registers
# "lora", "lyco", "hypernet" in lower case, so `<LORA:x>` is removed from the text but applies nothing).
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")


class PromptSyntaxError(ValueError):
    """A prompt's extra-network call cannot be read (a weight that is not a number)."""


@dataclass(frozen=True)
class ExtraNetworkCall:
    """`<kind:name[:args]>` in a prompt."""

    kind: str
    name: str
    args: tuple[str, ...]

    @property
    def is_lora(self) -> bool:
        return self.kind in LORA_KINDS


@dataclass(frozen=True)
class LoraCall:
    """`<lora:name:te_weight[:unet_weight]>` (or `<lyco:...>`); also `te=w` / `unet=w` as A1111 takes them."""

    name: str
    text_encoder_weight: float
    unet_weight: float


def split_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkCall]]:
    """The prompt without its `<kind:args>` calls (as A1111 removes them), and the calls in order."""
    calls: list[ExtraNetworkCall] = []

    def take(match: re.Match[str]) -> str:
        name, *args = match.group(2).split(":")
        calls.append(ExtraNetworkCall(kind=match.group(1), name=name.strip(), args=tuple(args)))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt or ""), calls


def lora_call(call: ExtraNetworkCall) -> LoraCall:
    """The weights of a LoRA call; PromptSyntaxError for a weight that is not a number."""
    positional = [a for a in call.args if "=" not in a]
    named = dict(a.split("=", 1) for a in call.args if "=" in a)
    try:
        te_weight = float(named.get("te", positional[0] if positional else 1.0))
        unet_weight = float(named.get("unet", positional[1] if len(positional) > 1 else te_weight))
    except ValueError:
        raise PromptSyntaxError(f"bad weight in <{call.kind}:{':'.join((call.name, *call.args))}>") from None
    return LoraCall(name=call.name, text_encoder_weight=te_weight, unet_weight=unet_weight)


def lora_names(prompts: Iterable[str]) -> list[str]:
    """Names of the LoRAs called in `prompts`, in order, without duplicates."""
    return list(dict.fromkeys(call.name for prompt in prompts for call in split_extra_networks(prompt)[1]
                              if call.is_lora))


def prompt_uses_embedding(prompts: Iterable[str], embedding_name: str) -> bool:
    """Whether an embedding (a file name or its stem) is named in `prompts`: its stem as a whole word, as the
    WebUI finds embeddings (a `-` or word character on either side makes it part of another word)."""
    word = re.compile(rf"(?<![\w-]){re.escape(model_stem(embedding_name))}(?![\w-])")
    return any(word.search(prompt or "") for prompt in prompts)


def prompts_of(payload: dict) -> list[str]:
    """The texts of an A1111 payload that may name models (`PROMPT_FIELDS`), those that are strings."""
    return [value for value in (payload.get(key) for key in PROMPT_FIELDS) if isinstance(value, str)]
