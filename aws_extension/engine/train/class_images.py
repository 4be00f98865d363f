"""Class images for prior preservation: the user's own first, the rest generated with the base model by the
engine from the concept's class settings, and cached per (base sha256, class prompt, settings) so a second
run (or a resumed one) reuses them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aws_extension.engine.train.data import IMAGE_SUFFIXES
from aws_extension.training import Concept

CLASS_SAMPLER = "Euler a"


def class_cache_key(base_sha256: str, concept: Concept, resolution: int) -> str:
    settings = {"base": base_sha256, "prompt": concept.class_prompt, "negative": concept.class_negative_prompt,
                "cfg": concept.class_guidance_scale, "steps": concept.class_infer_steps, "size": resolution,
                "sampler": CLASS_SAMPLER}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def class_images(base: Path, base_sha256: str, concept: Concept, resolution: int, wanted: int,
                 user_dir: Path | None, cache_dir: Path, seed: int) -> list[Path]:
    """`wanted` class image files: the user's (sorted), then generated ones from the cache, generating the
    missing ones (image i with seed `seed + i`)."""
    own = sorted(p for p in user_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if user_dir else []
    if len(own) >= wanted:
        return own[:wanted]
    folder = cache_dir / class_cache_key(base_sha256, concept, resolution)
    folder.mkdir(parents=True, exist_ok=True)
    needed = [folder / f"{i:05d}.png" for i in range(wanted - len(own))]
    missing = [(i, p) for i, p in enumerate(needed) if not p.is_file()]
    if missing:
        from aws_extension.engine.base import ModelSet
        from aws_extension.engine.diffusers_engine import DiffusersEngine

        engine = DiffusersEngine()
        for index, path in missing:
            payload = {"prompt": concept.class_prompt, "negative_prompt": concept.class_negative_prompt,
                       "steps": concept.class_infer_steps, "cfg_scale": concept.class_guidance_scale,
                       "width": resolution, "height": resolution, "seed": seed + index,
                       "sampler_name": CLASS_SAMPLER}
            result = engine.generate("txt2img", payload, ModelSet(base))
            partial = path.with_suffix(".partial")
            partial.write_bytes(result.images[0])
            partial.replace(path)
    return own + needed
