"""The model-file inspector (`aws_extension.model_files`): safetensors headers, kind detection, pickle containers
and the upload check, on real bytes (hand-built, or written by the safetensors and torch libraries)."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from aws_extension.model_files import (
    ARCHITECTURE_METADATA_KEY,
    PICKLE_STREAM,
    TORCH_ZIP,
    ModelFileError,
    check_model_file,
    detect_model,
    file_reader,
    identify_model,
    pickle_container,
    pickle_container_of,
    read_safetensors_file,
    read_safetensors_header,
)

REPO = Path(__file__).resolve().parents[1]


def safetensors_bytes(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None = None,
                      padding: int = 0) -> bytes:
    """A valid safetensors file of float32 zeros, built by hand (8-byte length, JSON header, data)."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset + padding)


def reader_of(data: bytes, log: list[tuple[int, int]] | None = None):
    def read(start: int, length: int) -> bytes:
        if log is not None:
            log.append((start, length))
        return data[start:start + length]

    return read


def header_of(data: bytes, name: str = "m.safetensors"):
    return read_safetensors_header(reader_of(data), len(data), name)


def refusal(data: bytes, name: str = "m.safetensors") -> str:
    with pytest.raises(ModelFileError) as error:
        header_of(data, name)
    return str(error.value)


# --- safetensors headers ----------------------------------------------------------------------------------


def test_a_valid_header_gives_tensors_shapes_and_metadata():
    data = safetensors_bytes({"a": (2, 3), "b": (4,)}, metadata={ARCHITECTURE_METADATA_KEY: "sd1"})
    header = header_of(data)
    assert header.shapes() == {"a": (2, 3), "b": (4,)}
    assert header.metadata == {ARCHITECTURE_METADATA_KEY: "sd1"}
    assert header.tensors["a"]["dtype"] == "F32"


def test_a_file_written_by_the_safetensors_library_is_read(tmp_path: Path):
    from safetensors.numpy import save_file

    path = tmp_path / "real.safetensors"
    save_file({"emb_params": np.zeros((2, 32), np.float16)}, str(path), metadata={"note": "x"})
    header = read_safetensors_file(path)
    assert (header.shapes(), header.metadata) == ({"emb_params": (2, 32)}, {"note": "x"})
    assert header.filename == "real.safetensors"


def test_truncated_files_are_refused():
    assert refusal(b"") == "m.safetensors is not a valid safetensors file: it is only 0 bytes long."
    assert refusal(b"\x10\x00\x00") == "m.safetensors is not a valid safetensors file: it is only 3 bytes long."
    whole = safetensors_bytes({"w": (64,)})
    assert refusal(whole[: len(whole) - 10]) == ("m.safetensors is not a valid safetensors file: tensor 'w' lies "
                                                  "outside the file (truncated upload?).")
    header_only = whole[: len(whole) - 256]
    assert "lies outside the file" in refusal(header_only)


@pytest.mark.parametrize("length", [0, 1, 10**12, 200 * 1024 * 1024])
def test_a_header_length_that_does_not_fit_is_refused(length: int):
    data = struct.pack("<Q", length) + b"{}" + bytes(64)
    assert refusal(data) == (f"m.safetensors is not a valid safetensors file: its header length ({length}) does "
                             "not fit the file.")


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b"not json!", b"[1, 2]", b'"text"'])
def test_a_header_that_is_not_a_json_object_is_refused(raw: bytes):
    assert refusal(struct.pack("<Q", len(raw)) + raw + bytes(8)) == (
        "m.safetensors is not a valid safetensors file: its header is not JSON.")


def test_a_header_without_tensors_is_refused():
    raw = json.dumps({"__metadata__": {"a": "b"}}).encode()
    assert refusal(struct.pack("<Q", len(raw)) + raw) == "m.safetensors is not a valid safetensors file: it holds no tensors."


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [4], "data_offsets": [0, 4000]},  # past the end
    {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]},  # reversed
    {"dtype": "F32", "shape": [4], "data_offsets": [-4, 4]},
    {"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]},
    {"dtype": "F32", "shape": [4], "data_offsets": [0]},
    {"dtype": "F32", "shape": [4]},
    "not an object",
])
def test_a_tensor_outside_the_file_is_refused(entry):
    raw = json.dumps({"w": entry}).encode()
    assert refusal(struct.pack("<Q", len(raw)) + raw + bytes(16)) == (
        "m.safetensors is not a valid safetensors file: tensor 'w' lies outside the file (truncated upload?).")


def test_a_malformed_shape_is_refused_when_shapes_are_read():
    raw = json.dumps({"w": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}).encode()
    header = header_of(struct.pack("<Q", len(raw)) + raw + bytes(16))
    with pytest.raises(ModelFileError, match="tensor 'w' is malformed"):
        header.shapes()


def test_only_the_header_is_read_through_the_reader():
    data = safetensors_bytes({"lora_unet_x.lora_down.weight": (4, 8)}, padding=1_000_000)
    reads: list[tuple[int, int]] = []
    check_model_file(reader_of(data, reads), len(data), "big.safetensors", "Lora")
    assert sum(length for _, length in reads) < 1000 < len(data)


def test_random_bytes_are_refused(tmp_path: Path):
    blob = np.random.default_rng(0).bytes(4096)
    assert "is not a valid safetensors file" in refusal(blob, "random.safetensors")
    path = tmp_path / "random.ckpt"
    path.write_bytes(blob)
    with pytest.raises(ModelFileError, match="random.ckpt is not a PyTorch checkpoint"):
        pickle_container_of(path)


# --- detection ---------------------------------------------------------------------------------------------

SD1_UNET = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}
CLIP = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": (8,)}


def _cross_attention(dim: int) -> dict[str, tuple[int, ...]]:
    return {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, dim)}


@pytest.mark.parametrize(("shapes", "metadata", "expected"), [
    ({**SD1_UNET, **_cross_attention(768), **CLIP}, None, ("checkpoint", "sd1", "ldm")),
    ({**SD1_UNET, **_cross_attention(32), **CLIP}, None, ("checkpoint", "sd1-tiny", "ldm")),
    ({**SD1_UNET, "cond_stage_model.model.ln_final.weight": (1024,)}, None, ("checkpoint", "sd2", "ldm")),
    ({**SD1_UNET, "conditioner.embedders.1.model.ln_final.weight": (1280,)}, None, ("checkpoint", "sdxl", "ldm")),
    (SD1_UNET, {ARCHITECTURE_METADATA_KEY: "sd1-tiny"}, ("checkpoint", "sd1-tiny", "ldm")),  # the shapes do not tell
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320),
      "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()}, None, ("lora", None, "kohya")),
    ({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768)}, None,
     ("lora", "sdxl", "kohya")),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": (4, 320)}, None, ("lora", None, "lycoris")),
    ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 320)}, None,
     ("lora", None, "diffusers")),
    ({"emb_params": (2, 768)}, {ARCHITECTURE_METADATA_KEY: "sd1"}, ("embedding", "sd1", "a1111-safetensors")),
    ({"string_to_param.*": (2, 768)}, None, ("embedding", None, "a1111-pt")),
    ({"clip_l": (2, 768), "clip_g": (2, 1280)}, None, ("embedding", "sdxl", "sdxl")),
    ({"my-token": (768,)}, None, ("embedding", None, "diffusers")),
    ({"control_model.input_hint_block.0.weight": (16, 3, 3, 3),
      "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}, None,
     ("controlnet", "sd1", "ldm")),
    ({"input_hint_block.0.weight": (16, 3, 3, 3),
      "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 2048)}, None, ("controlnet", "sdxl", "ldm")),
    ({"controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
      "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}, None,
     ("controlnet", "sd2", "diffusers")),
    ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}, None, ("vae", None, "ldm")),
    ({"encoder.conv_in.weight": (128, 3, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3),
      "encoder.down_blocks.0.resnets.0.conv1.weight": (128, 128, 3, 3)}, None, ("vae", None, "diffusers")),
    ({"first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
      "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3)}, None, ("vae", None, "ldm")),
])
def test_each_kind_is_detected_from_a_file(tmp_path: Path, shapes, metadata, expected):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(shapes, metadata))
    header = read_safetensors_file(path)
    info = identify_model(header.shapes(), header.metadata, path.name)
    assert (info.kind, info.architecture, info.format) == expected
    assert info.metadata == (metadata or {})


def test_unknown_tensors_are_no_model():
    shapes = {"classifier.weight": (10, 5), "classifier.bias": (10,)}
    assert detect_model(shapes) is None
    with pytest.raises(ModelFileError, match="other.safetensors is not a model this engine knows.*classifier.weight"):
        identify_model(shapes, {}, "other.safetensors")


# --- pickle containers ---------------------------------------------------------------------------------------


class RunsCodeWhenUnpickled:
    """Unpickling it would create `marker` (as a real attack would run a command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_torch_zip_archive_is_recognised_without_unpickling(tmp_path: Path):
    path = tmp_path / "model.ckpt"
    with zipfile.ZipFile(path, "w") as archive:  # the layout torch.save writes
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", b"\x00" * 64)
    assert pickle_container_of(path) == TORCH_ZIP
    with file_reader(path) as (read, size):
        check_model_file(read, size, "model.ckpt", "Stable-diffusion")


def test_a_file_saved_by_torch_is_recognised_and_its_code_never_runs(tmp_path: Path):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": RunsCodeWhenUnpickled(marker)}, path)
    assert pickle_container_of(path) == TORCH_ZIP
    legacy = tmp_path / "legacy.pt"
    torch.save({"weight": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    assert pickle_container_of(legacy) == PICKLE_STREAM
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pickle_stream_is_recognised_without_unpickling(tmp_path: Path, protocol: int):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"payload": RunsCodeWhenUnpickled(marker)}, protocol=protocol)
    assert pickle_container(reader_of(data), len(data), "old.pt") == PICKLE_STREAM
    assert not marker.exists()


def test_other_containers_are_refused(tmp_path: Path):
    path = tmp_path / "notes.zip.ckpt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ModelFileError, match=r"^notes.zip.ckpt is a zip archive but not a PyTorch checkpoint \(no data.pkl\).$"):
        pickle_container_of(path)
    damaged = b"PK\x03\x04" + bytes(100)
    with pytest.raises(ModelFileError, match=r"^d.ckpt is a damaged zip archive, not a PyTorch checkpoint.$"):
        pickle_container(reader_of(damaged), len(damaged), "d.ckpt")
    for data in (b"", b"\x80", b"\x80\x09abc", b"<html>"):
        with pytest.raises(ModelFileError, match="is not a PyTorch checkpoint .neither a torch zip archive nor a pickle"):
            pickle_container(reader_of(data), len(data), "x.bin")


# --- the upload check ------------------------------------------------------------------------------------------


def check(data: bytes, filename: str, checkpoint_type: str) -> str | None:
    """The refusal message of check_model_file, or None when the file is accepted."""
    try:
        check_model_file(reader_of(data), len(data), filename, checkpoint_type)
    except ModelFileError as exc:
        return str(exc)
    return None


def test_the_upload_check_accepts_each_type_and_refuses_the_wrong_one():
    lora = safetensors_bytes({"lora_unet_x.lora_down.weight": (4, 8)})
    files = {
        "Stable-diffusion": safetensors_bytes({**SD1_UNET, **CLIP}),
        "Lora": lora,
        "embeddings": safetensors_bytes({"emb_params": (2, 8)}),
        "VAE": safetensors_bytes({"decoder.conv_in.weight": (8, 4, 3, 3)}),
        "ControlNet": safetensors_bytes({"control_model.input_hint_block.0.weight": (16, 3, 3, 3)}),
        "hypernetworks": safetensors_bytes({"linear.0.weight": (8, 8)}),
    }
    for checkpoint_type, data in files.items():
        assert check(data, "m.safetensors", checkpoint_type) is None, checkpoint_type
    assert check(lora, "wrongtype.safetensors", "Stable-diffusion") == (
        "wrongtype.safetensors does not look like a Stable-diffusion model: a Stable Diffusion checkpoint has "
        "model.diffusion_model.* tensors, and this file's tensors start with ['lora_unet_x.lora_down.weight'].")
    vae = files["VAE"]
    assert check(vae, "v.safetensors", "ControlNet") == (
        "v.safetensors does not look like a ControlNet model: a ControlNet has control_model.* / input_hint_block "
        "tensors, and this file's tensors start with ['decoder.conv_in.weight'].")


def test_the_upload_check_refuses_other_files():
    assert check(b"whatever", "notes.txt", "Lora") == (
        "notes.txt: unsupported file type; model files end in .safetensors, .ckpt, .pt, .pth, .bin.")
    assert check(b"\x13" * 5000, "random.safetensors", "Stable-diffusion") == (
        f"random.safetensors is not a valid safetensors file: its header length ({struct.unpack('<Q', bytes([0x13]) * 8)[0]}) "
        "does not fit the file.")
    assert check(b"<html>denied</html>", "page.ckpt", "Stable-diffusion") == (
        "page.ckpt is not a PyTorch checkpoint (neither a torch zip archive nor a pickle).")
    assert check(pickle.dumps({"a": 1}, protocol=2), "UPPER.PTH", "VAE") is None  # suffixes in any case


def test_importing_the_inspector_imports_neither_torch_nor_safetensors():
    code = ("import sys, aws_extension.model_files; "
            "print(sorted(m for m in ('torch', 'safetensors', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
