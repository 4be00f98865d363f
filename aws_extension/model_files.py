"""What a model file is, from its bytes, without loading it (standard library only: json, struct, zipfile).

- `read_safetensors_header(read, size, filename)` parses and validates a safetensors header (its length, its
  JSON, every tensor's offsets inside the file) through `read(start, length)`, so a file is checked where it
  lies (a local file, a blob in the object store); `read_safetensors_file(path)` does it for a local file.
- `detect_model(shapes, metadata)` finds the kind (checkpoint, lora, embedding, vae, controlnet; hypernetworks
  are not detected), the architecture (sd1, sd1-tiny, sd2, sdxl) and the layout from tensor names and shapes.
- `pickle_container(read, size, filename)` recognises the containers of `.ckpt`/`.pt`/`.pth`/`.bin` files (a
  torch zip archive holding `data.pkl`, or a pickle stream) without unpickling anything.
- `check_model_file(read, size, filename, checkpoint_type)` is the upload check of the middleware: the file
  must be a model file, and a safetensors file's tensor names must look like the claimed type.

Every refusal is a `ModelFileError` whose message names the file and says what is wrong with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aws_extension.vocabulary import MODEL_SUFFIXES, PICKLE_SUFFIXES, CheckpointType

Reader = Callable[[int, int], bytes]  # read(start, length) -> at most `length` bytes from `start`

SAFETENSORS_SUFFIXES = tuple(s for s in MODEL_SUFFIXES if s not in PICKLE_SUFFIXES)
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # what the safetensors library itself accepts
ARCHITECTURE_METADATA_KEY = "sd_aws_arch"  # safetensors metadata written by sd-aws (the tiny model, merges)

KIND_CHECKPOINT = "checkpoint"
KIND_LORA = "lora"
KIND_EMBEDDING = "embedding"
KIND_VAE = "vae"
KIND_CONTROLNET = "controlnet"
# The kind detected for each model type (hypernetworks are not detected).
KIND_OF_TYPE = {CheckpointType.STABLE_DIFFUSION: KIND_CHECKPOINT, CheckpointType.LORA: KIND_LORA,
                CheckpointType.EMBEDDINGS: KIND_EMBEDDING, CheckpointType.VAE: KIND_VAE,
                CheckpointType.CONTROLNET: KIND_CONTROLNET}

# The A1111 (ldm) single-file checkpoint layout.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
_SD1_CROSS_ATTENTION_KEY = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_LDM_CONTROLNET_CROSS_ATTENTION_KEY = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_DIFFUSERS_CROSS_ATTENTION_KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
_TINY_CROSS_ATTENTION_DIM = 32  # no real model is this small: a file without metadata is still recognised
_CROSS_ATTENTION_ARCHITECTURES = {768: "sd1", 1024: "sd2", 2048: "sdxl", _TINY_CROSS_ATTENTION_DIM: "sd1-tiny"}

Shapes = Mapping[str, tuple[int, ...]]


class ModelFileError(ValueError):
    """A file that is not a (valid) model file, or not one of the claimed type; the message names the file."""


# ---------------------------------------------------------------------------------------------------------
# safetensors


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: each tensor's entry (`dtype`, `shape`, `data_offsets`) by name, and the
    file's `__metadata__` (strings)."""

    filename: str
    header_length: int
    tensors: dict[str, dict[str, Any]]
    metadata: dict[str, str] = field(default_factory=dict)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor's shape; ModelFileError for a tensor whose shape is not a list of sizes."""
        shapes = {}
        for name, entry in self.tensors.items():
            shape = entry.get("shape")
            if not (isinstance(shape, list) and all(_is_size(d) for d in shape)):
                raise ModelFileError(f"{self.filename} is not a valid safetensors file: tensor {name!r} is malformed.")
            shapes[name] = tuple(shape)
        return shapes


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _inside(entry: Any, data_length: int) -> bool:
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    return (isinstance(offsets, list) and len(offsets) == 2 and all(_is_size(o) for o in offsets)
            and offsets[0] <= offsets[1] <= data_length)


def file_sha256(path: Path) -> str:
    """The sha256 of a file (what the catalogue, the worker's cache and A1111's hashes identify content by)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(8 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def read_safetensors_header(read: Reader, size: int, filename: str) -> SafetensorsHeader:
    """The header of the safetensors file of `size` bytes read through `read`; ModelFileError unless its length
    fits the file, it is a JSON object with at least one tensor, and every tensor lies inside the file."""
    broken = f"{filename} is not a valid safetensors file"
    if size < 8:
        raise ModelFileError(f"{broken}: it is only {size} bytes long.")
    (header_length,) = struct.unpack("<Q", read(0, 8))
    if header_length <= 1 or header_length > SAFETENSORS_MAX_HEADER or 8 + header_length > size:
        raise ModelFileError(f"{broken}: its header length ({header_length}) does not fit the file.")
    try:
        header = json.loads(read(8, header_length))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except ValueError:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        raise ModelFileError(f"{broken}: its header is not JSON.") from None
    metadata = header.pop("__metadata__", None)
    if not header:
        raise ModelFileError(f"{broken}: it holds no tensors.")
    data_length = size - 8 - header_length
    for name, entry in header.items():
        if not _inside(entry, data_length):
            raise ModelFileError(f"{broken}: tensor {name!r} lies outside the file (truncated upload?).")
    return SafetensorsHeader(filename=filename, header_length=header_length, tensors=header,
                             metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict)
                             else {})


@contextmanager
def file_reader(path: Path) -> Iterator[tuple[Reader, int]]:
    """`(read, size)` of a local file, for the functions that take a reader."""
    with Path(path).open("rb") as file:
        def read(start: int, length: int) -> bytes:
            file.seek(start)
            return file.read(length)

        yield read, os.fstat(file.fileno()).st_size


def read_safetensors_file(path: Path) -> SafetensorsHeader:
    """`read_safetensors_header` of a local file (named by its file name in messages)."""
    with file_reader(path) as (read, size):
        return read_safetensors_header(read, size, Path(path).name)


# ---------------------------------------------------------------------------------------------------------
# pickle containers (.ckpt, .pt, .pth, .bin)

TORCH_ZIP = "torch-zip"
PICKLE_STREAM = "pickle"


def pickle_container(read: Reader, size: int, filename: str) -> str:
    """`TORCH_ZIP` (a torch.save zip archive with a data.pkl) or `PICKLE_STREAM` (a legacy pickle, protocol
    2 to 5); ModelFileError otherwise. Only the archive's directory or the first bytes are read: nothing is
    unpickled."""
    head = read(0, 4)
    if head.startswith(b"PK"):
        try:
            names = zipfile.ZipFile(_RangeFile(read, size)).namelist()
        except zipfile.BadZipFile:
            raise ModelFileError(f"{filename} is a damaged zip archive, not a PyTorch checkpoint.") from None
        if any(name.endswith("data.pkl") for name in names):
            return TORCH_ZIP
        raise ModelFileError(f"{filename} is a zip archive but not a PyTorch checkpoint (no data.pkl).")
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return PICKLE_STREAM
    raise ModelFileError(f"{filename} is not a PyTorch checkpoint (neither a torch zip archive nor a pickle).")


def pickle_container_of(path: Path) -> str:
    """`pickle_container` of a local file."""
    with file_reader(path) as (read, size):
        return pickle_container(read, size, Path(path).name)


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file over `read(start, length)`, so zipfile can list an archive in place."""

    def __init__(self, read: Reader, size: int):
        self._read, self._size, self._pos = read, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, length: int | None = -1) -> bytes:
        if length is None or length < 0:
            length = self._size - self._pos
        data = self._read(self._pos, max(0, min(length, self._size - self._pos)))
        self._pos += len(data)
        return data


# ---------------------------------------------------------------------------------------------------------
# detection: what a file is, from its tensor names and shapes (never from its file name)


@dataclass(frozen=True)
class ModelFileInfo:
    """kind: checkpoint | lora | embedding | vae | controlnet.
    architecture: sd1 | sd1-tiny | sd2 | sdxl, or None where the file does not say.
    format: lora: kohya | diffusers | lycoris; embedding: a1111-safetensors | a1111-pt | diffusers | sdxl;
        controlnet: ldm | diffusers; vae: ldm | diffusers; checkpoint: ldm.
    """

    kind: str
    architecture: str | None
    format: str
    metadata: dict[str, str] = field(default_factory=dict)


Detected = tuple[str, str | None, str]  # kind, architecture, format


def _checkpoint(shapes: Shapes, declared: str | None) -> Detected | None:
    if UNET_PREFIX + "input_blocks.0.0.weight" not in shapes:
        return None
    return KIND_CHECKPOINT, _checkpoint_architecture(shapes, declared), "ldm"


def _checkpoint_architecture(shapes: Shapes, declared: str | None) -> str | None:
    """The architecture the tensors show; the metadata's claim only when the shapes do not tell."""
    if any(k.startswith("conditioner.embedders.") for k in shapes):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        return "sd2"
    cross_attention = shapes.get(_SD1_CROSS_ATTENTION_KEY)
    if cross_attention and len(cross_attention) > 1 and any(k.startswith(CLIP_PREFIX) for k in shapes):
        found = {768: "sd1", _TINY_CROSS_ATTENTION_DIM: "sd1-tiny"}.get(cross_attention[1])
        if found:
            return found
    return declared


def _lora(shapes: Shapes, declared: str | None) -> Detected | None:
    keys = shapes.keys()
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        lycoris = any(".hada_" in k or ".lokr_" in k for k in keys)
        sdxl = any(k.startswith(("lora_te1_", "lora_te2_")) for k in keys)
        return KIND_LORA, declared or ("sdxl" if sdxl else None), "lycoris" if lycoris else "kohya"
    if any(".lora_A." in k or ".lora.down." in k or "_lora.down." in k or ".lora_linear_layer." in k for k in keys):
        return KIND_LORA, declared, "diffusers"
    return None


def _embedding(shapes: Shapes, declared: str | None) -> Detected | None:
    if "emb_params" in shapes:
        return KIND_EMBEDDING, declared, "a1111-safetensors"
    if any(k.startswith("string_to_param.") for k in shapes):
        return KIND_EMBEDDING, declared, "a1111-pt"
    if "clip_l" in shapes and "clip_g" in shapes:
        return KIND_EMBEDDING, "sdxl", "sdxl"
    if len(shapes) == 1 and len(next(iter(shapes.values()))) in (1, 2):
        return KIND_EMBEDDING, declared, "diffusers"
    return None


def _controlnet(shapes: Shapes, declared: str | None) -> Detected | None:
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        return KIND_CONTROLNET, declared or _controlnet_architecture(shapes, ""), "diffusers"
    for prefix in ("control_model.", ""):
        if prefix + "input_hint_block.0.weight" in shapes:
            return KIND_CONTROLNET, declared or _controlnet_architecture(shapes, prefix), "ldm"
    return None


def _controlnet_architecture(shapes: Shapes, prefix: str) -> str | None:
    key = _DIFFUSERS_CROSS_ATTENTION_KEY if not prefix and _DIFFUSERS_CROSS_ATTENTION_KEY in shapes else (
        prefix + _LDM_CONTROLNET_CROSS_ATTENTION_KEY
    )
    cross_attention = shapes.get(key)
    if cross_attention is None or len(cross_attention) < 2:
        return None
    return _CROSS_ATTENTION_ARCHITECTURES.get(cross_attention[1])


def _vae(shapes: Shapes, declared: str | None) -> Detected | None:
    for prefix in ("", VAE_PREFIX):
        if prefix + "encoder.conv_in.weight" in shapes and prefix + "decoder.conv_in.weight" in shapes:
            return KIND_VAE, declared, "diffusers" if any(".down_blocks." in k for k in shapes) else "ldm"
    return None


_DETECTORS = (_checkpoint, _lora, _embedding, _controlnet, _vae)  # in this order: the first match wins


def detect_model(shapes: Shapes, metadata: Mapping[str, str] | None = None) -> ModelFileInfo | None:
    """Classify a file from its tensor shapes and metadata; None when it is none of the known kinds."""
    metadata = dict(metadata or {})
    declared = metadata.get(ARCHITECTURE_METADATA_KEY)
    for detector in _DETECTORS:
        found = detector(shapes, declared)
        if found is not None:
            kind, architecture, layout = found
            return ModelFileInfo(kind, architecture, layout, metadata)
    return None


def identify_model(shapes: Shapes, metadata: Mapping[str, str] | None, filename: str) -> ModelFileInfo:
    """`detect_model`, or ModelFileError naming the file and its first tensors when it is no known kind."""
    info = detect_model(shapes, metadata)
    if info is None:
        raise ModelFileError(
            f"{filename} is not a model this engine knows: not an SD checkpoint, LoRA, embedding, VAE or "
            f"ControlNet (first tensors: {', '.join(list(shapes)[:3]) or 'none'})"
        )
    return info


# ---------------------------------------------------------------------------------------------------------
# the upload check


def _any(names: list[str], *needles: str) -> bool:
    return any(needle in name for name in names for needle in needles)


# For each type: does this list of tensor names look like such a model? (Looser than detect_model: an upload
# is refused only when its tensors clearly belong to something else.)
_SAFETENSORS_SIGNATURES: dict[str, tuple[Callable[[list[str]], bool], str]] = {
    CheckpointType.STABLE_DIFFUSION: (
        lambda n: _any(n, "model.diffusion_model.", "conditioner.embedders", "unet.conv_in"),
        "a Stable Diffusion checkpoint has model.diffusion_model.* tensors"),
    CheckpointType.LORA: (
        lambda n: _any(n, "lora_unet_", "lora_te", "lora_down", "lora_up", "lora_A", "lora_B", "hada_w", "lokr_w",
                       "oft_"),
        "a LoRA has lora_unet_*/lora_te_* (or lora_A/lora_B) tensors"),
    CheckpointType.EMBEDDINGS: (
        lambda n: _any(n, "emb_params", "string_to_param", "clip_l", "clip_g") or (0 < len(n) <= 4),
        "an embedding has emb_params (or clip_l/clip_g) tensors"),
    CheckpointType.VAE: (
        lambda n: _any(n, "decoder.conv_in", "decoder.up", "first_stage_model.decoder"),
        "a VAE has decoder.* tensors"),
    CheckpointType.CONTROLNET: (
        lambda n: _any(n, "control_model.", "input_hint_block", "controlnet_cond_embedding", "zero_convs",
                       "controlnet_down_blocks"),
        "a ControlNet has control_model.* / input_hint_block tensors"),
    CheckpointType.HYPERNETWORKS: (lambda n: _any(n, "linear", "weight"), "a hypernetwork has linear layer tensors"),
}


def check_model_file(read: Reader, size: int, filename: str, checkpoint_type: str) -> None:
    """Raise ModelFileError unless the file (read through `read(start, length)`) is a model of that type:
    a `.safetensors` file with a valid header whose tensor names look like the type, or a pickle container."""
    lower = filename.lower()
    if not lower.endswith(MODEL_SUFFIXES):
        raise ModelFileError(f"{filename}: unsupported file type; model files end in {', '.join(MODEL_SUFFIXES)}.")
    if not lower.endswith(SAFETENSORS_SUFFIXES):
        pickle_container(read, size, filename)
        return
    names = list(read_safetensors_header(read, size, filename).tensors)
    looks_right, expectation = _SAFETENSORS_SIGNATURES[checkpoint_type]
    if not looks_right(names):
        raise ModelFileError(f"{filename} does not look like a {checkpoint_type} model: {expectation}, "
                             f"and this file's tensors start with {sorted(names)[:3]}.")
