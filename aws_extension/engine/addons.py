"""LoRA, textual-inversion embeddings and ControlNet models on a cached pipeline, applied for one job.

A cached pipeline is shared by jobs, so everything applied here is undone afterwards: use
`applied_addons(pipeline, loras, embeddings)` around the sampling (or the apply/remove pairs).
LoRA layers are never fused into the weights: removing them restores the exact original computation.
Embeddings add tokens named after the file stem (`tiny-emb`, multi-vector: `tiny-emb`, `tiny-emb_1`, ...);
a prompt with the token is expanded by the pipeline (`pipeline.maybe_convert_prompt` when prompts are
encoded outside the pipeline's `__call__`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_extension.engine.base import EngineError
from aws_extension.engine.checkpoints import controlnet_config_dir, inspect_model_file, load_state_dict
from aws_extension.model_files import KIND_CONTROLNET, KIND_EMBEDDING, KIND_LORA, SAFETENSORS_SUFFIXES

if TYPE_CHECKING:
    import torch
    from diffusers import ControlNetModel

    from aws_extension.engine.placement import Placement

ADAPTER_PREFIX = "sd_aws_lora_"


def lora_adapter_name(path: Path) -> str:
    """The adapter name a LoRA file gets on a pipeline (derived from its file stem)."""
    safe_stem = "".join(c if c.isalnum() else "_" for c in Path(path).stem)
    return ADAPTER_PREFIX + safe_stem


def apply_loras(pipeline: Any, loras: Sequence[tuple[Path, float]]) -> list[str]:
    """Load each (LoRA file, weight) as a named adapter on the UNet and text encoder; return the names.

    kohya/A1111 (`lora_unet_*`, `.alpha` honoured) and diffusers/peft formats are read. The same file
    twice counts once with the weights added (as A1111 does). Raises EngineError for a file that is not a
    LoRA or does not fit the model; on error, adapters already added are removed again.
    """
    weights: dict[str, float] = {}
    files: dict[str, Path] = {}
    for path, weight in loras:
        name = lora_adapter_name(path)
        weights[name] = weights.get(name, 0.0) + float(weight)
        files[name] = Path(path)
    loaded: list[str] = []
    try:
        for name, path in files.items():
            info = inspect_model_file(path)
            if info.kind != KIND_LORA:
                raise EngineError(f"{path.name} is not a LoRA (it is a {info.kind})", field="prompt")
            if info.format == "lycoris":
                raise EngineError(f"{path.name} is a LyCORIS (LoHa/LoKr) network, which is not supported", field="prompt")
            _load_lora_file(pipeline, path, name)
            loaded.append(name)
        if loaded:
            pipeline.set_adapters(loaded, adapter_weights=[weights[name] for name in loaded])
    except Exception:
        remove_loras(pipeline, loaded)
        raise
    return loaded


def _load_lora_file(pipeline: Any, path: Path, adapter_name: str) -> None:
    try:
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:  # by file: diffusers reads the adapter metadata
            pipeline.load_lora_weights(
                str(path.parent), weight_name=path.name, adapter_name=adapter_name, local_files_only=True
            )
        else:
            pipeline.load_lora_weights(load_state_dict(path), adapter_name=adapter_name)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise EngineError(
            f"LoRA {path.name} does not fit this checkpoint: {str(exc).splitlines()[0]}", field="prompt"
        ) from None


def remove_loras(pipeline: Any, adapter_names: Sequence[str]) -> None:
    """Remove the named adapters; with none left, unload the LoRA layers entirely (clean pipeline)."""
    if adapter_names:
        pipeline.delete_adapters(list(adapter_names))
    if not _active_adapters(pipeline):
        pipeline.unload_lora_weights()


def _active_adapters(pipeline: Any) -> list[str]:
    return [name for names in pipeline.get_list_adapters().values() for name in names]


def embedding_token(path: Path) -> str:
    """The prompt token of an embedding file: its file stem, as in the WebUI."""
    return Path(path).stem


def read_embedding(path: Path) -> torch.Tensor:
    """The vectors ([n, dim]) of an embedding file: A1111 `.pt` (`string_to_param`), A1111
    `.safetensors` (`emb_params`) or diffusers format (one tensor). `.pt` is read with weights_only."""
    path = Path(path)
    info = inspect_model_file(path)
    if info.kind != KIND_EMBEDDING:
        raise EngineError(f"{path.name} is not an embedding (it is a {info.kind})", field="prompt")
    if info.format == "sdxl":
        raise EngineError(f"{path.name} is an SDXL embedding (clip_l/clip_g); SDXL is not supported yet", field="prompt")
    tensors = load_state_dict(path)
    if info.format == "a1111-safetensors":
        vectors = tensors["emb_params"]
    elif info.format == "a1111-pt":
        vectors = next(v for k, v in tensors.items() if k.startswith("string_to_param."))
    else:
        vectors = next(iter(tensors.values()))
    return vectors.detach().float().reshape(-1, vectors.shape[-1])


def load_embeddings(pipeline: Any, paths: Sequence[Path]) -> list[str]:
    """Add each embedding file as tokens of the pipeline's tokenizer/text encoder; return every token added.

    Raises EngineError for a file that is not an embedding, or whose vector size does not match the model.
    """
    tokenizer = pipeline.tokenizer
    before = set(tokenizer.get_added_vocab())
    hidden_size = pipeline.text_encoder.get_input_embeddings().embedding_dim
    try:
        for path in paths:
            token = embedding_token(path)
            if token in tokenizer.get_added_vocab():
                continue
            vectors = read_embedding(path)
            if vectors.shape[-1] != hidden_size:
                raise EngineError(
                    f"Embedding {Path(path).name} has vectors of size {vectors.shape[-1]}, but this checkpoint's text "
                    f"encoder uses {hidden_size} (an embedding for another model family)",
                    field="prompt",
                )
            text_encoder = pipeline.text_encoder
            pipeline.load_textual_inversion({token: vectors.to(text_encoder.device, text_encoder.dtype)}, token=token)
    except Exception:
        remove_embeddings(pipeline, sorted(set(tokenizer.get_added_vocab()) - before))
        raise
    return sorted(set(tokenizer.get_added_vocab()) - before)


def remove_embeddings(pipeline: Any, tokens: Sequence[str]) -> None:
    """Remove tokens added by `load_embeddings` (tokenizer and text encoder return to their size)."""
    if tokens:
        pipeline.unload_textual_inversion(tokens=list(tokens))


@contextmanager
def applied_addons(
    pipeline: Any, loras: Sequence[tuple[Path, float]] = (), embeddings: Sequence[Path] = ()
) -> Iterator[Any]:
    """Apply LoRAs (file, weight) and embeddings for the block, and remove them after, even on error."""
    tokens = load_embeddings(pipeline, embeddings)
    try:
        adapters = apply_loras(pipeline, loras)
        try:
            yield pipeline
        finally:
            remove_loras(pipeline, adapters)
    finally:
        remove_embeddings(pipeline, tokens)


def load_controlnet(path: Path, architecture: str | None = None,
                    placement: Placement | None = None) -> ControlNetModel:
    """Load a ControlNet file (A1111/ldm `control_model.*` or diffusers single-file layout), offline, on
    `placement` (default: the CPU in float32).

    `architecture` (of the checkpoint it will run with) is used when the file does not say.
    """
    from diffusers import ControlNetModel

    path = Path(path)
    info = inspect_model_file(path)
    if info.kind != KIND_CONTROLNET:
        raise EngineError(f"{path.name} is not a ControlNet model (it is a {info.kind})", field="alwayson_scripts")
    config_dir = controlnet_config_dir(info.architecture or architecture)
    try:
        controlnet = ControlNetModel.from_single_file(  # in the placement's dtype from the start, as checkpoints
            load_state_dict(path), config=str(config_dir), local_files_only=True,
            torch_dtype=placement.dtype if placement is not None else None,
        )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise EngineError(
            f"ControlNet {path.name} does not fit {config_dir.name}: {str(exc).splitlines()[0]}",
            field="alwayson_scripts",
        ) from None
    if placement is not None:
        from aws_extension.engine.placement import place

        place([controlnet], placement)
    return controlnet.eval()


def controlnet_pipeline(pipeline: Any, controlnet: ControlNetModel | list[ControlNetModel]) -> Any:
    """A StableDiffusionControlNetPipeline sharing every component of `pipeline` (no copy)."""
    from diffusers import StableDiffusionControlNetPipeline

    controlnet_pipe = StableDiffusionControlNetPipeline.from_pipe(pipeline, controlnet=controlnet)
    controlnet_pipe.set_progress_bar_config(disable=True)
    return controlnet_pipe
