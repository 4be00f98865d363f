"""Loaded pipelines kept in memory: an LRU cache within a byte budget, safe to use from several threads.

A pipeline is keyed by its checkpoint file (path, size, modification time) and its VAE override file,
so a replaced file is loaded again. Its size is estimated as the bytes of its parameters and buffers.
The entry just loaded is never evicted, so one model larger than the budget still runs (alone). A load
that runs out of device memory drops the cached pipelines not in use and tries once more.

A cached pipeline is shared: a job that changes it (LoRA, embeddings, tiling) must hold
`PipelineCache.use(...)` for the whole job and undo its changes before leaving (see addons.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_extension.engine.checkpoints import load_checkpoint_pipeline

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from aws_extension.engine.placement import Placement
    from aws_extension.settings import WorkerSettings

FileKey = tuple[str, int, int]  # resolved path, size, mtime_ns
CacheKey = tuple[FileKey, FileKey | None]
PipelineLoader = Callable[[Path, "Path | None"], "StableDiffusionPipeline"]


@dataclass
class _Entry:
    pipeline: Any
    size_bytes: int
    in_use: threading.Lock = field(default_factory=threading.Lock)


def _file_key(path: Path) -> FileKey:
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except FileNotFoundError:
        from aws_extension.engine.base import EngineError

        raise EngineError(f"Model file {resolved.name} does not exist") from None
    return (str(resolved), stat.st_size, stat.st_mtime_ns)


def pipeline_size_bytes(pipeline: Any) -> int:
    """Bytes of the parameters and buffers of every torch module of a pipeline."""
    import torch

    total = 0
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in list(component.parameters()) + list(component.buffers()):
                total += tensor.numel() * tensor.element_size()
    return total


class PipelineCache:
    """LRU cache of loaded StableDiffusionPipelines within `memory_budget_bytes`; thread-safe."""

    def __init__(self, memory_budget_bytes: int, loader: PipelineLoader = load_checkpoint_pipeline):
        self.memory_budget_bytes = memory_budget_bytes
        self._loader = loader
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards _entries and _loading
        self._loading: dict[CacheKey, threading.Lock] = {}

    @classmethod
    def from_settings(cls, settings: WorkerSettings, placement: Placement) -> PipelineCache:
        """A cache with the budget of `settings.pipeline_memory_budget_bytes`, loading onto `placement`."""
        return cls(settings.pipeline_memory_budget_bytes, loader=partial(load_checkpoint_pipeline, placement=placement))

    def get(self, checkpoint: Path, vae: Path | None = None) -> StableDiffusionPipeline:
        """The pipeline of `checkpoint` (with the VAE of file `vae` if given), loaded once and then cached.

        The same files give the same object while it stays cached. Raises EngineError for bad files.
        """
        return self._entry(checkpoint, vae).pipeline

    @contextmanager
    def use(self, checkpoint: Path, vae: Path | None = None) -> Iterator[StableDiffusionPipeline]:
        """`get`, holding the pipeline exclusively until the block ends (one job at a time per pipeline)."""
        entry = self._entry(checkpoint, vae)
        with entry.in_use:
            yield entry.pipeline

    def _entry(self, checkpoint: Path, vae: Path | None) -> _Entry:
        key: CacheKey = (_file_key(checkpoint), _file_key(vae) if vae is not None else None)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread loads a given model; others wait for it, other models are not blocked
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    return entry
            try:
                pipeline = self._load_making_room(Path(checkpoint), Path(vae) if vae is not None else None)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            entry = _Entry(pipeline, pipeline_size_bytes(pipeline))
            with self._lock:
                self._entries[key] = entry
                self._evict_beyond_budget(keep=key)
        return entry

    def _load_making_room(self, checkpoint: Path, vae: Path | None) -> StableDiffusionPipeline:
        """Load; if the device's memory is full, drop the cached pipelines that are not in use and try again."""
        import gc

        import torch

        try:
            return self._loader(checkpoint, vae)
        except torch.OutOfMemoryError:
            with self._lock:
                for key in [key for key, entry in self._entries.items() if not entry.in_use.locked()]:
                    del self._entries[key]
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return self._loader(checkpoint, vae)

    def _evict_beyond_budget(self, keep: CacheKey) -> None:
        while self.size_bytes > self.memory_budget_bytes:
            oldest = next((k for k in self._entries if k != keep), None)
            if oldest is None:
                return
            del self._entries[oldest]

    @property
    def size_bytes(self) -> int:
        """Estimated bytes of all cached pipelines."""
        return sum(entry.size_bytes for entry in self._entries.values())

    def cached_files(self) -> list[tuple[Path, Path | None]]:
        """(checkpoint, vae) of the cached pipelines, least recently used first."""
        with self._lock:
            return [(Path(ck[0]), Path(vae[0]) if vae else None) for ck, vae in self._entries]

    def clear(self) -> None:
        """Drop every cached pipeline."""
        with self._lock:
            self._entries.clear()
