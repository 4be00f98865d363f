"""Checks that an uploaded file really is a model file of the claimed type, from its header only.

`.safetensors` files are parsed (header length, JSON header, tensor offsets within the file) and their
tensor names matched against the claimed type. Pickle-based files (`.ckpt`, `.pt`, `.pth`, `.bin`) are
recognised by their container (a torch zip archive or a pickle stream) and never unpickled here.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Callable

from aws_extension.middleware.errors import InvalidRequest

SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")
MODEL_EXTENSIONS = (".safetensors", *PICKLE_EXTENSIONS)


def _any(names: list[str], *needles: str) -> bool:
    return any(needle in name for name in names for needle in needles)


# For each type: does this list of tensor names look like such a model?
_SAFETENSORS_SIGNATURES: dict[str, tuple[Callable[[list[str]], bool], str]] = {
    "Stable-diffusion": (lambda n: _any(n, "model.diffusion_model.", "conditioner.embedders", "unet.conv_in"),
                         "a Stable Diffusion checkpoint has model.diffusion_model.* tensors"),
    "Lora": (lambda n: _any(n, "lora_unet_", "lora_te", "lora_down", "lora_up", "lora_A", "lora_B",
                            "hada_w", "lokr_w", "oft_"),
             "a LoRA has lora_unet_*/lora_te_* (or lora_A/lora_B) tensors"),
    "embeddings": (lambda n: _any(n, "emb_params", "string_to_param", "clip_l", "clip_g")
                   or (0 < len(n) <= 4),
                   "an embedding has emb_params (or clip_l/clip_g) tensors"),
    "VAE": (lambda n: _any(n, "decoder.conv_in", "decoder.up", "first_stage_model.decoder"),
            "a VAE has decoder.* tensors"),
    "ControlNet": (lambda n: _any(n, "control_model.", "input_hint_block", "controlnet_cond_embedding",
                                  "zero_convs", "controlnet_down_blocks"),
                   "a ControlNet has control_model.* / input_hint_block tensors"),
    "hypernetworks": (lambda n: _any(n, "linear", "weight"), "a hypernetwork has linear layer tensors"),
}


def check_model_file(read: Callable[[int, int], bytes], size: int, filename: str, checkpoint_type: str) -> None:
    """Raise InvalidRequest unless the file (read through `read(start, length)`) is a model of that type."""
    lower = filename.lower()
    if not lower.endswith(MODEL_EXTENSIONS):
        raise InvalidRequest(f"{filename}: unsupported file type; model files end in "
                         f"{', '.join(MODEL_EXTENSIONS)}.")
    if lower.endswith(".safetensors"):
        _check_safetensors(read, size, filename, checkpoint_type)
    else:
        _check_pickle_container(read, size, filename)


def _check_safetensors(read: Callable[[int, int], bytes], size: int, filename: str, checkpoint_type: str) -> None:
    broken = f"{filename} is not a valid safetensors file"
    if size < 8:
        raise InvalidRequest(f"{broken}: it is only {size} bytes long.")
    (header_len,) = struct.unpack("<Q", read(0, 8))
    if header_len <= 1 or header_len > SAFETENSORS_MAX_HEADER or 8 + header_len > size:
        raise InvalidRequest(f"{broken}: its header length ({header_len}) does not fit the file.")
    try:
        header = json.loads(read(8, header_len))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest(f"{broken}: its header is not JSON.") from None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors:
        raise InvalidRequest(f"{broken}: it holds no tensors.")
    data_len = size - 8 - header_len
    for name, info in tensors.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_len):
            raise InvalidRequest(f"{broken}: tensor {name!r} lies outside the file (truncated upload?).")
    looks_right, expectation = _SAFETENSORS_SIGNATURES[checkpoint_type]
    if not looks_right(list(tensors)):
        raise InvalidRequest(f"{filename} does not look like a {checkpoint_type} model: {expectation}, "
                         f"and this file's tensors start with {sorted(tensors)[:3]}.")


def _check_pickle_container(read: Callable[[int, int], bytes], size: int, filename: str) -> None:
    head = read(0, 4)
    if head.startswith(b"PK"):
        # A torch.save zip archive: zipfile reads only its central directory; nothing is unpickled.
        try:
            names = zipfile.ZipFile(_RangeFile(read, size)).namelist()
        except zipfile.BadZipFile:
            raise InvalidRequest(f"{filename} is a damaged zip archive, not a PyTorch checkpoint.") from None
        if any(name.endswith("data.pkl") for name in names):
            return
        raise InvalidRequest(f"{filename} is a zip archive but not a PyTorch checkpoint (no data.pkl).")
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return  # a legacy pickle stream (protocol 2..5)
    raise InvalidRequest(f"{filename} is not a PyTorch checkpoint (neither a torch zip archive nor a pickle).")


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file over `read(start, length)`, so zipfile can list an archive in place."""

    def __init__(self, read: Callable[[int, int], bytes], size: int):
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

    def read(self, length: int = -1) -> bytes:
        if length is None or length < 0:
            length = self._size - self._pos
        data = self._read(self._pos, max(0, min(length, self._size - self._pos)))
        self._pos += len(data)
        return data
