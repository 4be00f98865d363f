"""The Checkpoint Merger on real files: the math per method, dtypes, errors, and a loadable result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aws_extension.engine.base import EngineError, Progress
from aws_extension.engine.checkpoints import inspect_model_file, load_checkpoint_pipeline
from aws_extension.engine.merge import MERGE_RECIPE_METADATA_KEY, merge_checkpoints
from aws_extension.model_files import ARCHITECTURE_METADATA_KEY
from tests.conftest import TINY_CHECKPOINT_NAME

POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"


def _models(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three small models with the cases the merger must handle."""
    torch.manual_seed(0)
    a = {
        "w32": torch.randn(4, 3),
        "w16": torch.randn(5).to(torch.float16),
        "steps": torch.tensor([1, 2, 3], dtype=torch.int64),
        "other_shape": torch.randn(2, 2),
        "only_in_a": torch.randn(3),
        POSITION_IDS: torch.arange(4, dtype=torch.float32),
    }
    b = {
        "w32": torch.randn(4, 3),
        "w16": torch.randn(5).to(torch.float16),
        "steps": torch.tensor([7, 8, 9], dtype=torch.int64),
        "other_shape": torch.randn(3, 2),
        "only_in_b": torch.randn(2),
        POSITION_IDS: torch.arange(4, dtype=torch.float32) + 10,
    }
    c = {"w32": torch.randn(4, 3), "other_shape": torch.randn(2, 2)}  # w16 is missing from C
    paths = []
    for name, tensors in (("a", a), ("b", b), ("c", c)):
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={ARCHITECTURE_METADATA_KEY: f"arch-{name}"})
        paths.append(path)
    return paths[0], paths[1], paths[2]


def test_weighted_sum(tmp_path: Path):
    a_path, b_path, _ = _models(tmp_path)
    out = tmp_path / "merged.safetensors"
    steps: list[Progress] = []
    merge_checkpoints(a_path, b_path, None, "Weighted sum", 0.3, False, out, progress=steps.append)
    a, b, merged = load_file(str(a_path)), load_file(str(b_path)), load_file(str(out))
    torch.testing.assert_close(merged["w32"], a["w32"] * 0.7 + b["w32"] * 0.3)
    expected16 = (a["w16"].float() * 0.7 + b["w16"].float() * 0.3).to(torch.float16)
    assert merged["w16"].dtype == torch.float16
    assert torch.equal(merged["w16"], expected16)  # computed in fp32, cast back once
    assert torch.equal(merged["steps"], a["steps"])  # not a float: A's value
    assert torch.equal(merged["other_shape"], a["other_shape"])  # other shape in B: A's value
    assert torch.equal(merged["only_in_a"], a["only_in_a"])
    assert torch.equal(merged["only_in_b"], b["only_in_b"])  # copied from B
    assert torch.equal(merged[POSITION_IDS], a[POSITION_IDS])  # A1111 never merges these
    assert [p.step for p in steps] == list(range(1, len(merged) + 1))
    assert {p.total_steps for p in steps} == {len(merged)}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_add_difference(tmp_path: Path):
    a_path, b_path, c_path = _models(tmp_path)
    out = tmp_path / "diff.safetensors"
    merge_checkpoints(a_path, b_path, c_path, "Add difference", 0.5, False, out)
    a, b, c, merged = (load_file(str(p)) for p in (a_path, b_path, c_path, out))
    torch.testing.assert_close(merged["w32"], a["w32"] + (b["w32"] - c["w32"]) * 0.5)
    expected16 = (a["w16"].float() + b["w16"].float() * 0.5).to(torch.float16)  # missing from C: C = 0
    assert torch.equal(merged["w16"], expected16)
    assert torch.equal(merged["other_shape"], a["other_shape"])


def test_no_interpolation_and_save_as_half(tmp_path: Path):
    a_path, _, _ = _models(tmp_path)
    out = tmp_path / "half.safetensors"
    merge_checkpoints(a_path, None, None, "No interpolation", 0.0, True, out)
    a, merged = load_file(str(a_path)), load_file(str(out))
    assert set(merged) == set(a)
    for key, tensor in a.items():
        if tensor.is_floating_point():
            assert merged[key].dtype == torch.float16, key
            assert torch.equal(merged[key], tensor.to(torch.float16)), key
        else:
            assert merged[key].dtype == tensor.dtype and torch.equal(merged[key], tensor), key
    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    recipe = json.loads(metadata[MERGE_RECIPE_METADATA_KEY])
    assert (recipe["interp_method"], recipe["primary_model"], recipe["save_as_half"]) == ("No interpolation", "a.safetensors", True)
    assert metadata[ARCHITECTURE_METADATA_KEY] == "arch-a"


def test_weighted_sum_with_a_ckpt_secondary(tmp_path: Path):
    a_path, b_path, _ = _models(tmp_path)
    b_ckpt = tmp_path / "b.ckpt"
    torch.save({"state_dict": load_file(str(b_path))}, b_ckpt)
    out = tmp_path / "mixed.safetensors"
    merge_checkpoints(a_path, b_ckpt, None, "Weighted sum", 1.0, False, out)
    assert torch.equal(load_file(str(out))["w32"], load_file(str(b_path))["w32"])


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"method": "Add difference", "tertiary": None}, "tertiary_model_name", "needs a tertiary model"),
        ({"method": "Average"}, "interp_method", "Unknown merge method 'Average'"),
        ({"multiplier": 1.5}, "multiplier", "between 0 and 1"),
        ({"multiplier": -0.1}, "multiplier", "between 0 and 1"),
        ({"secondary": None}, "secondary_model_name", "needs a secondary model"),
        ({"secondary": Path("missing.safetensors")}, "secondary_model_name", "missing.safetensors does not exist"),
        ({"out": Path("merged.ckpt")}, "custom_name", "written as .safetensors"),
    ],
)
def test_refused_merges_name_the_field(tmp_path: Path, kwargs, field: str, message: str):
    a_path, b_path, _ = _models(tmp_path)
    arguments = {"primary": a_path, "secondary": b_path, "tertiary": None, "method": "Weighted sum",
                 "multiplier": 0.5, "save_as_half": False, "out": tmp_path / "out.safetensors"}
    arguments.update(kwargs)
    if isinstance(arguments["secondary"], Path) and not arguments["secondary"].is_absolute():
        arguments["secondary"] = tmp_path / arguments["secondary"]
    if not arguments["out"].is_absolute():
        arguments["out"] = tmp_path / arguments["out"]
    with pytest.raises(EngineError, match=message) as raised:
        merge_checkpoints(**arguments)
    assert raised.value.field == field
    assert not (tmp_path / "out.safetensors").exists()


def test_truncated_input_is_refused(tmp_path: Path):
    a_path, b_path, _ = _models(tmp_path)
    b_path.write_bytes(b_path.read_bytes()[:-16])
    with pytest.raises(EngineError, match="b.safetensors is not a valid safetensors file: tensor .* lies outside the "
                                          "file") as raised:
        merge_checkpoints(a_path, b_path, None, "Weighted sum", 0.5, False, tmp_path / "out.safetensors")
    assert raised.value.field == "secondary_model_name"


def test_merged_tiny_checkpoint_loads_and_generates(tiny_models_dir: Path, tmp_path: Path):
    primary = tiny_models_dir / "Stable-diffusion" / TINY_CHECKPOINT_NAME
    tensors = load_file(str(primary))
    secondary = tmp_path / "tiny-b.safetensors"
    generator = torch.Generator().manual_seed(5)
    save_file({k: v + torch.randn(v.shape, generator=generator) * 0.05 if v.is_floating_point() else v
               for k, v in tensors.items()}, str(secondary))

    def image(checkpoint: Path) -> np.ndarray:
        pipeline = load_checkpoint_pipeline(checkpoint)
        return pipeline("a photo of a cat", num_inference_steps=3, height=64, width=64, output_type="np",
                        generator=torch.Generator("cpu").manual_seed(1)).images[0]

    unchanged = tmp_path / "m0.safetensors"
    merge_checkpoints(primary, secondary, None, "Weighted sum", 0.0, False, unchanged)
    assert inspect_model_file(unchanged).architecture == "sd1-tiny"
    np.testing.assert_array_equal(image(unchanged), image(primary))
    halfway = tmp_path / "m50-half.safetensors"
    merge_checkpoints(primary, secondary, None, "Weighted sum", 0.5, True, halfway)
    assert all(t.dtype == torch.float16 for t in load_file(str(halfway)).values() if t.is_floating_point())
    assert image(halfway).shape == (64, 64, 3)
