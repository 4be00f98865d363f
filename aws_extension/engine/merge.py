"""A1111's "Checkpoint Merger": weighted sum, add difference, no interpolation; streamed key by key.

`.safetensors` inputs are read one tensor at a time with `safetensors.safe_open`, and the result is written
one tensor at a time in the safetensors format (the header is computed first from the shapes), so memory
holds only a few tensors, never a whole model. Pickled inputs (`.ckpt`) are loaded whole with
`torch.load(weights_only=True)` (the format does not allow streaming). The math runs in fp32; the result
keeps the primary model's dtypes (fp16 for float tensors with `save_as_half`). The output is always
`.safetensors`, written to a temporary file in the same folder and then renamed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aws_extension.engine.base import EngineError, Progress, ProgressCallback
from aws_extension.engine.checkpoints import load_state_dict, read_tensor_shapes
from aws_extension.model_files import ARCHITECTURE_METADATA_KEY, SAFETENSORS_SUFFIXES
from aws_extension.vocabulary import MergeMethod

if TYPE_CHECKING:
    import torch

MERGE_RECIPE_METADATA_KEY = "sd_merge_recipe"

# A1111 keeps these from the primary model whatever the method (checkpoint_dict_skip_on_merge).
_KEYS_KEPT_FROM_PRIMARY = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)

_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}


class _TensorSource(Protocol):
    def keys(self) -> list[str]: ...

    def get(self, key: str) -> torch.Tensor: ...

    def shape_and_dtype(self, key: str) -> tuple[tuple[int, ...], torch.dtype]: ...


class _DictSource:
    """A model loaded whole (pickled formats)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self._tensors = tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def shape_and_dtype(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        return tuple(self._tensors[key].shape), self._tensors[key].dtype


class _SafetensorsSource:
    """A `.safetensors` model read one tensor at a time (memory-mapped by safe_open)."""

    def __init__(self, handle: Any):
        self._handle = handle

    def keys(self) -> list[str]:
        return list(self._handle.keys())

    def get(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def shape_and_dtype(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        tensor_slice = self._handle.get_slice(key)
        return tuple(tensor_slice.get_shape()), _torch_dtype(tensor_slice.get_dtype())


@contextmanager
def _open_model(path: Path, field: str) -> Iterator[_TensorSource]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EngineError(f"Model file {path.name} does not exist", field=field)
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            read_tensor_shapes(path)  # refuses truncated and non-model files with a clear message
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                yield _SafetensorsSource(handle)
        else:
            yield _DictSource(load_state_dict(path))
    except EngineError as exc:
        if exc.field is None:
            exc.field = field
        raise


def validate_merge(
    secondary: Path | None, tertiary: Path | None, method: str, multiplier: float
) -> None:
    """Raise EngineError (naming the API field) for a merge request that cannot run."""
    if method not in MergeMethod.values():
        raise EngineError(
            f"Unknown merge method {method!r}; use one of: {', '.join(MergeMethod.values())}", field="interp_method"
        )
    if not 0.0 <= float(multiplier) <= 1.0:
        raise EngineError(f"multiplier must be between 0 and 1, got {multiplier}", field="multiplier")
    if method != MergeMethod.NO_INTERPOLATION and secondary is None:
        raise EngineError(f"{method} needs a secondary model", field="secondary_model_name")
    if method == MergeMethod.ADD_DIFFERENCE and tertiary is None:
        raise EngineError(
            "Add difference needs a tertiary model (the base that the secondary was trained from)",
            field="tertiary_model_name",
        )


def merge_checkpoints(
    primary: Path,
    secondary: Path | None,
    tertiary: Path | None,
    method: str,
    multiplier: float,
    save_as_half: bool,
    out: Path,
    progress: ProgressCallback | None = None,
) -> None:
    """Merge checkpoints as A1111 does and write the result to `out` (`.safetensors`).

    Weighted sum: A·(1−M) + B·M. Add difference: A + (B−C)·M (a key missing from C counts as 0).
    No interpolation: A (secondary and tertiary unused). Tensors that are not floats, have other shapes
    than A's, or are missing from B keep A's value; keys only in B are copied. `progress` is called once
    per key. The result's metadata records the recipe and keeps the primary's architecture tag.
    """
    import torch

    validate_merge(secondary, tertiary, method, multiplier)
    out = Path(out)
    if out.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise EngineError(f"The merged model is written as .safetensors; {out.name} has another suffix", field="custom_name")
    multiplier = float(multiplier)
    with ExitStack() as stack:
        model_a = stack.enter_context(_open_model(primary, "primary_model_name"))
        model_b = stack.enter_context(_open_model(secondary, "secondary_model_name")) if (
            method != MergeMethod.NO_INTERPOLATION) else None
        model_c = stack.enter_context(_open_model(tertiary, "tertiary_model_name")) if (
            method == MergeMethod.ADD_DIFFERENCE) else None
        keys_a = model_a.keys()
        keys_b = set(model_b.keys()) if model_b else set()
        keys_c = set(model_c.keys()) if model_c else set()
        known_keys = set(keys_a)
        only_in_b = [k for k in (model_b.keys() if model_b else []) if k not in known_keys]
        plan = [(key, model_a) for key in keys_a] + [(key, model_b) for key in only_in_b if model_b]

        def merged(key: str, source: _TensorSource) -> torch.Tensor:
            tensor = source.get(key)
            if source is model_a and model_b is not None and key in keys_b and _mergeable(key, tensor):
                other = model_b.get(key)
                if other.shape == tensor.shape:
                    tensor = _merge_tensor(tensor, other, model_c.get(key) if model_c and key in keys_c else None,
                                           method, multiplier)
            if save_as_half and tensor.is_floating_point():
                tensor = tensor.to(torch.float16)
            return tensor

        metadata = _merge_metadata(primary, secondary, tertiary, method, multiplier, save_as_half)
        _write_safetensors_streamed(out, plan, merged, metadata, save_as_half, progress)


def _merge_tensor(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, method: str, multiplier: float
) -> torch.Tensor:
    """One tensor of the result, computed in fp32 and cast back to A's dtype."""
    import torch

    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    if method == MergeMethod.WEIGHTED_SUM:
        result = a32 * (1.0 - multiplier) + b32 * multiplier
    elif c is None:  # A1111: a key missing from C counts as zeros
        result = a32 + b32 * multiplier
    elif c.shape == b.shape:
        result = a32 + (b32 - c.to(torch.float32)) * multiplier
    else:
        return a
    return result.to(a.dtype)


def _mergeable(key: str, tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and key not in _KEYS_KEPT_FROM_PRIMARY


def _merge_metadata(
    primary: Path, secondary: Path | None, tertiary: Path | None, method: str, multiplier: float, save_as_half: bool
) -> dict[str, str]:
    recipe = {
        "type": "webui",
        "primary_model": Path(primary).name,
        "secondary_model": Path(secondary).name if secondary else None,
        "tertiary_model": Path(tertiary).name if tertiary else None,
        "interp_method": method,
        "multiplier": multiplier,
        "save_as_half": save_as_half,
    }
    metadata = {MERGE_RECIPE_METADATA_KEY: json.dumps(recipe), "format": "pt"}
    if Path(primary).suffix.lower() in SAFETENSORS_SUFFIXES:
        _, primary_metadata = read_tensor_shapes(Path(primary))
        if ARCHITECTURE_METADATA_KEY in primary_metadata:
            metadata[ARCHITECTURE_METADATA_KEY] = primary_metadata[ARCHITECTURE_METADATA_KEY]
    return metadata


def _write_safetensors_streamed(
    out: Path,
    plan: list[tuple[str, _TensorSource]],
    merged: Callable[[str, _TensorSource], torch.Tensor],
    metadata: dict[str, str],
    save_as_half: bool,
    progress: ProgressCallback | None,
) -> None:
    """Write tensors one at a time: the header (from shapes and output dtypes) first, then the data."""
    import torch

    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, source in plan:
        shape, dtype = source.shape_and_dtype(key)
        if save_as_half and dtype.is_floating_point:
            dtype = torch.float16
        size = _element_size(dtype) * _numel(shape)
        header[key] = {"dtype": _safetensors_dtype(dtype), "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with temporary.open("wb") as file:
            file.write(len(header_bytes).to_bytes(8, "little"))
            file.write(header_bytes)
            for step, (key, source) in enumerate(plan, start=1):
                tensor = merged(key, source).contiguous()
                expected = header[key]
                if list(tensor.shape) != expected["shape"] or _safetensors_dtype(tensor.dtype) != expected["dtype"]:
                    raise EngineError(f"Tensor {key} changed shape or dtype while merging")
                file.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
                if progress is not None:
                    progress(Progress(step=step, total_steps=len(plan)))
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)


def _torch_dtype(safetensors_dtype: str) -> torch.dtype:
    import torch

    by_code = {code: name for name, code in _SAFETENSORS_DTYPES.items()}
    if safetensors_dtype not in by_code:
        raise EngineError(f"Tensors of type {safetensors_dtype} cannot be merged")
    return getattr(torch, by_code[safetensors_dtype])


def _safetensors_dtype(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _SAFETENSORS_DTYPES:
        raise EngineError(f"Tensors of type {name} cannot be written to safetensors")
    return _SAFETENSORS_DTYPES[name]


def _element_size(dtype: torch.dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dimension in shape:
        count *= dimension
    return count
