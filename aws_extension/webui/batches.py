"""The host's prompts, seeds and batches for a `p`, as `process_images_inner` sets them up, and the cloud requests
that produce exactly those images.

A1111 v1.10 (`modules/processing.py`): `p.setup_prompts()` fills `p.all_prompts`/`p.all_negative_prompts` (and
`p.all_hr_prompts`/`p.all_hr_negative_prompts` with hires fix) with the styles applied; the fixed seed gives
`p.all_seeds = [seed + i]` (or `[seed] * n` with a variation strength; a list of seeds is taken as it is), and
`p.all_subseeds = [subseed + i]`; batch `n` is images `n * batch_size` to `(n + 1) * batch_size`, each with its
own prompt and seed. The API takes one prompt and one first seed per request, so consecutive batches with the
same prompts and seeds that follow on stay one request (`n_iter`), and a batch that mixes prompts or seeds is
sent one image per request (A1111 draws each image's noise from its own seed, so that gives the same images).
When the always-on scripts have batch hooks (which may change a batch's prompts), each batch is planned alone
after its hooks, from p's per-batch fields (`plan_batch_requests`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from modules import processing
from modules.shared import opts

from aws_extension.vocabulary import Task
from aws_extension.webui.request import task_type


@dataclass(frozen=True)
class Texts:
    """The prompts of one image."""

    prompt: str
    negative_prompt: str
    hr_prompt: str | None = None
    hr_negative_prompt: str | None = None


@dataclass(frozen=True)
class CloudRequest:
    """One /inference/v2 job: images `first` to `first + batch_size * n_iter` of `p.all_prompts`."""

    first: int
    texts: Texts
    seed: int
    subseed: int
    batch_size: int
    n_iter: int = 1
    init_image: Any = None  # img2img with one init image per batch image: this image's own

    @property
    def count(self) -> int:
        return self.batch_size * self.n_iter

    def fields(self) -> dict[str, Any]:
        """The request's fields that differ from p's: the texts, seeds and sizes of this request."""
        values: dict[str, Any] = {"prompt": self.texts.prompt, "negative_prompt": self.texts.negative_prompt,
                                  "seed": self.seed, "subseed": self.subseed, "batch_size": self.batch_size,
                                  "n_iter": self.n_iter}
        if self.texts.hr_prompt is not None:
            values.update(hr_prompt=self.texts.hr_prompt, hr_negative_prompt=self.texts.hr_negative_prompt)
        return values


def set_up_like_the_host(p: Any) -> None:
    """What process_images_inner does to `p` before sampling: prompts, seeds, restore_faces/tiling, batch size."""
    seed, subseed = processing.get_fixed_seed(p.seed), processing.get_fixed_seed(p.subseed)
    if p.restore_faces is None:
        p.restore_faces = getattr(opts, "face_restoration", False)
    if p.tiling is None:
        p.tiling = getattr(opts, "tiling", False)
    p.setup_prompts()
    count = len(p.all_prompts)
    p.all_seeds = list(seed) if isinstance(seed, list) else [
        int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(count)]
    p.all_subseeds = list(subseed) if isinstance(subseed, list) else [int(subseed) + x for x in range(count)]
    init_images = getattr(p, "init_images", None) or []
    if task_type(p) == Task.IMG2IMG and len(init_images) > p.batch_size:
        raise ValueError(f"Bad number of images passed: {len(init_images)}; expecting {p.batch_size} or less.")
    if len(init_images) > 1:  # as StableDiffusionProcessingImg2Img.init: one init image per batch image
        p.batch_size = len(init_images)


def set_batch(p: Any, n: int) -> None:
    """p's per-batch fields for batch `n`, as the host's loop sets them."""
    p.iteration = n
    window = slice(n * p.batch_size, (n + 1) * p.batch_size)
    p.prompts, p.negative_prompts = p.all_prompts[window], p.all_negative_prompts[window]
    p.seeds, p.subseeds = p.all_seeds[window], p.all_subseeds[window]
    if getattr(p, "enable_hr", False) and getattr(p, "all_hr_prompts", None):
        p.hr_prompts, p.hr_negative_prompts = p.all_hr_prompts[window], p.all_hr_negative_prompts[window]


@dataclass(frozen=True)
class ImageTable:
    """Per image: its texts, seed and subseed; of the whole job (p.all_*) or of one batch (p.prompts, ...,
    as the scripts' batch hooks left them)."""

    texts: list[Texts]
    seeds: list[int]
    subseeds: list[int]
    variation: bool  # a variation strength: every image has the first seed

    @classmethod
    def _of(cls, p: Any, prompts: list, negatives: list, hr_prompts: list | None, hr_negatives: list | None,
            seeds: list, subseeds: list) -> ImageTable:
        hires = bool(getattr(p, "enable_hr", False) and hr_prompts and hr_negatives)
        texts = [Texts(prompts[i], negatives[i], *((hr_prompts[i], hr_negatives[i]) if hires else (None, None)))
                 for i in range(len(prompts))]
        return cls(texts, list(seeds), list(subseeds), p.subseed_strength != 0)

    @classmethod
    def of_job(cls, p: Any) -> ImageTable:
        return cls._of(p, p.all_prompts, p.all_negative_prompts, getattr(p, "all_hr_prompts", None),
                       getattr(p, "all_hr_negative_prompts", None), p.all_seeds, p.all_subseeds)

    @classmethod
    def of_batch(cls, p: Any) -> ImageTable:
        return cls._of(p, p.prompts, p.negative_prompts, getattr(p, "hr_prompts", None),
                       getattr(p, "hr_negative_prompts", None), p.seeds, p.subseeds)

    def request(self, index: int, batch_size: int, init_image: Any = None, offset: int = 0) -> CloudRequest:
        return CloudRequest(offset + index, self.texts[index], self.seeds[index], self.subseeds[index], batch_size,
                            1, init_image)

    def follows(self, first: int, index: int) -> bool:
        """Whether image `index` is what a request starting at image `first` makes at its place."""
        step = index - first
        return (self.texts[index] == self.texts[first]
                and self.seeds[index] == self.seeds[first] + (0 if self.variation else step)
                and self.subseeds[index] == self.subseeds[first] + step)


def _batch_requests(p: Any, table: ImageTable, first: int, last: int, offset: int = 0) -> list[CloudRequest]:
    """The requests of the batch of images first..last-1 of `table`: one if it is uniform, else one per image
    (`offset`: the table's first image in the job)."""
    init_images = list(getattr(p, "init_images", None) or [])
    if len(init_images) > 1:
        return [table.request(i, 1, init_images[i - first], offset) for i in range(first, last)]
    if all(table.follows(first, i) for i in range(first, last)):
        return [table.request(first, last - first, offset=offset)]
    return [table.request(i, 1, offset=offset) for i in range(first, last)]


def plan_requests(p: Any) -> list[CloudRequest]:
    """The cloud requests for p's images, in order (call after `set_up_like_the_host`)."""
    table = ImageTable.of_job(p)
    planned: list[CloudRequest] = []
    for n in range(p.n_iter):
        first, last = n * p.batch_size, min((n + 1) * p.batch_size, len(table.texts))
        if first >= last:
            break
        for request in _batch_requests(p, table, first, last):
            previous = planned[-1] if planned else None
            if (previous is not None and previous.batch_size == request.batch_size == p.batch_size > 0
                    and request.init_image is None and previous.init_image is None
                    and request.first == previous.first + previous.count and table.follows(previous.first, request.first)):
                planned[-1] = replace(previous, n_iter=previous.n_iter + 1)
            else:
                planned.append(request)
    return planned


def plan_batch_requests(p: Any, n: int) -> list[CloudRequest]:
    """The requests of batch `n` alone, from p's per-batch fields (after the scripts' batch hooks)."""
    table = ImageTable.of_batch(p)
    return _batch_requests(p, table, 0, len(table.texts), offset=n * p.batch_size)
