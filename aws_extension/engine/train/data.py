"""The training images: a folder of PNG/JPEG/WebP files with optional `<stem>.txt` captions, sorted into
aspect-ratio buckets as kohya does (no square crop), and a deterministic batch order per epoch.

Several concepts: concept i (of the trained concepts, `TrainingConfig.trained_concepts`) has its files in
`<folder>/<i>/`; one concept has them in the folder itself (`concept_folder`). Their images go into one list
(concept by concept) and so into one order, where the concepts mix.

Buckets: sizes whose sides are multiples of 64 and whose area is at most resolution²; each image goes to the
bucket of the nearest aspect ratio, is scaled to cover it and centre-cropped on its long side only. The order
of an epoch depends only on (seed, epoch), so a resumed run finds its place from the step alone.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from aws_extension.training import RESOLUTION_MULTIPLE, Concept, concept_subfolder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
CAPTION_SUFFIX = ".txt"
FILEWORDS = "[filewords]"  # the DreamBooth extension's placeholder for an image's caption
# Files a dataset may hold besides images and captions (what tools and file managers leave behind).
_IGNORED_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")


class DatasetError(ValueError):
    """A dataset the trainer cannot use; the message names the file."""


@dataclass(frozen=True)
class TrainImage:
    path: Path
    caption: str
    width: int
    height: int
    concept: int = 0  # its concept's place among the trained concepts


def concept_folder(root: Path, index: int, concepts: int) -> Path:
    """The folder of concept `index` of `concepts` trained concepts under a channel's `root`."""
    return Path(root) / concept_subfolder(index, concepts)


def read_concepts(root: Path, concepts: tuple[Concept, ...]) -> list[TrainImage]:
    """The images of every concept (concept by concept, each sorted by name), captioned from its own prompt.
    Raises DatasetError as `read_images`, or naming the concept whose folder is missing."""
    images: list[TrainImage] = []
    for index, concept in enumerate(concepts):
        folder = concept_folder(root, index, len(concepts))
        if len(concepts) > 1 and not folder.is_dir():
            raise DatasetError(f"concept {index} ({concept.instance_prompt or concept.instance_token!r}) has no "
                               f"images: the folder {index}/ is missing from {Path(root).name}/")
        images += [replace(image, concept=index)
                   for image in read_images(folder, concept.instance_prompt or concept.instance_token)]
    return images


def caption_for(image: Path, instance_prompt: str) -> str:
    """The caption of `image`: its `<stem>.txt` put into the instance prompt at `[filewords]` (or alone when
    the prompt has none), else the instance prompt without `[filewords]`."""
    caption_file = image.with_suffix(CAPTION_SUFFIX)
    caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
    if FILEWORDS in instance_prompt:
        return " ".join(instance_prompt.replace(FILEWORDS, caption).split())
    return caption or instance_prompt.strip()


def read_images(folder: Path, instance_prompt: str) -> list[TrainImage]:
    """The images of `folder` (sorted by name) with their captions. Raises DatasetError naming a file that
    is not an image or does not decode, or when there is no image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"the dataset folder {folder.name} does not exist")
    images: list[TrainImage] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if path.name in _IGNORED_NAMES or path.suffix.lower() == CAPTION_SUFFIX:
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{name} is not an image (PNG, JPEG or WebP)")
        try:
            with Image.open(path) as image:
                image.load()
                width, height = image.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"{name} is not a readable image: {exc}") from None
        images.append(TrainImage(path, caption_for(path, instance_prompt), width, height))
    if not images:
        raise DatasetError(f"the dataset {folder.name} holds no image (PNG, JPEG or WebP)")
    return images


def bucket_sizes(resolution: int, step: int = RESOLUTION_MULTIPLE) -> list[tuple[int, int]]:
    """kohya's bucket sizes for `resolution`: (width, height), multiples of `step`, area ≤ resolution²,
    sides from resolution/2 (at least `step`) to 2×resolution."""
    max_area = resolution * resolution
    low, high = max(step, resolution // 2 // step * step), resolution * 2
    sizes = set()
    for width in range(low, high + 1, step):
        height = min(high, max_area // width // step * step)
        if height >= low:
            sizes.add((width, height))
            sizes.add((height, width))
    return sorted(sizes)


def bucket_for(width: int, height: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket of the nearest aspect ratio (log-ratio distance; ties: the larger area)."""
    ratio = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def fit_to_bucket(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`image` scaled to cover `size`, then centre-cropped to it (only the long side loses pixels)."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    resized = image.convert("RGB").resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.Resampling.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def epoch_batches(buckets: dict[tuple[int, int], list[int]], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches (image indices, one bucket each) of `epoch`, in order; a function of (seed, epoch) only."""
    rng = random.Random(f"{seed}:{epoch}")
    batches: list[list[int]] = []
    for size in sorted(buckets):
        indices = list(buckets[size])
        rng.shuffle(indices)
        batches += [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    rng.shuffle(batches)
    return batches
