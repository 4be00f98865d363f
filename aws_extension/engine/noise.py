"""A1111's seeded noise (modules/rng.py, rng_philox.py): one generator per image, continued by the sampler.

A1111 draws an image's initial latent noise from a generator seeded with its seed; the ancestral samplers
then take every further noise sample from that same generator (`ImageRNG.next`), so the noise continues the
seed's stream. `eta_noise_seed_delta` (ENSD) swaps the generators for ones seeded with seed + ENSD after the
initial noise. The SDE samplers instead draw from a Brownian tree per image, seeded with the image's seed.

Noise sources (A1111's `randn_source` setting):
- "CPU": torch.randn on the CPU (the same on every machine).
- "NV": a numpy Philox 4x32-10 + Box-Muller that gives what torch.randn gives on an NVIDIA GPU.
- "GPU": torch.randn on the CUDA device when the engine has one; on a CPU worker, "NV" (which A1111 calls
  "the same as GPU on NVidia"), so a GPU user's seed makes the same noise here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

# Philox 4x32 constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011).
_PHILOX_M = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_W = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
_TWO_POW32_INV = np.float32(2.3283064e-10)
_TWO_POW32_INV_2PI = np.float32(2.3283064e-10 * 6.2831855)


def _mul_hi_lo(a: np.ndarray, m: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    product = a.astype(np.uint64) * m
    return (product >> np.uint64(32)).astype(np.uint32), (product & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = 10) -> np.ndarray:
    """Philox 4x32-`rounds` of a (4, n) uint32 counter under a (2, n) uint32 key → (4, n) uint32."""
    c0, c1, c2, c3 = (counter[i].astype(np.uint32) for i in range(4))
    k0, k1 = key[0].astype(np.uint32), key[1].astype(np.uint32)
    with np.errstate(over="ignore"):
        for round_no in range(rounds):
            if round_no:
                k0, k1 = k0 + _PHILOX_W[0], k1 + _PHILOX_W[1]
            hi0, lo0 = _mul_hi_lo(c0, _PHILOX_M[0])
            hi1, lo1 = _mul_hi_lo(c2, _PHILOX_M[1])
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3])


class PhiloxGenerator:
    """torch.randn of CUDA, on the CPU (A1111's rng_philox): a normal number per Philox output (its first
    two words through Box-Muller); each draw moves the counter's offset word by one."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        key = np.array([self.seed & 0xFFFFFFFF, (self.seed >> 32) & 0xFFFFFFFF], dtype=np.uint32)[:, None]
        words = philox4x32(counter, np.repeat(key, n, axis=1))
        # float32 constants, arithmetic in float64, the result in float32: A1111's numpy promotions
        u = words[0].astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
        v = words[1].astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
        return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(shape)


class NoiseSource:
    """One of A1111's `randn_source`s: seeded generators and float32 normal draws from them."""

    def __init__(self, name: str = "CPU", device: torch.device | str = "cpu"):
        self.name = name
        device = torch.device(device)
        self.philox = name == "NV" or (name == "GPU" and device.type != "cuda")
        self.device = device if name == "GPU" and device.type == "cuda" else torch.device("cpu")

    def generator(self, seed: int) -> Any:
        if self.philox:
            return PhiloxGenerator(seed)
        return torch.Generator(self.device).manual_seed(int(seed))

    def randn(self, generator: Any, shape: tuple[int, ...]) -> torch.Tensor:
        if self.philox:
            return torch.from_numpy(generator.randn(shape))
        return torch.randn(shape, generator=generator, device=self.device)

    def seeded(self, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
        """The first draw of `seed` (A1111's `randn(seed, shape)` / `randn_local`)."""
        return self.randn(self.generator(seed), shape)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of noise (rows = dim 1 after flattening), kept bug-for-bug."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _paste_centred(full: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The noise of another size pasted centred into `full` (A1111's seed resize)."""
    height, width = full.shape[1:]
    dx, dy = (width - noise.shape[2]) // 2, (height - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    full[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
    return full


class ImageNoise:
    """A1111's `ImageRNG`: `first()` is the batch's initial noise (variation seeds, seed resize), `next()`
    each further sample, from the same per-image generators (or seed + ENSD ones when `ensd` is set).

    Tensors are [len(seeds), *shape] float32 on the source's device.
    """

    def __init__(self, shape: tuple[int, int, int], seeds: list[int], subseeds: list[int] | None = None,
                 subseed_strength: float = 0.0, seed_resize_from_w: int = 0, seed_resize_from_h: int = 0,
                 source: NoiseSource | None = None, ensd: int = 0):
        self.shape = shape
        self.seeds = seeds
        self.subseeds = subseeds or []
        self.subseed_strength = subseed_strength
        self.resize = (seed_resize_from_w, seed_resize_from_h) if seed_resize_from_w > 0 and seed_resize_from_h > 0 else None
        self.source = source or NoiseSource()
        self.ensd = ensd
        self.generators = [self.source.generator(seed) for seed in seeds]
        self.drawn_first = False

    def first(self) -> torch.Tensor:
        source, shape = self.source, self.shape
        noise_shape = shape if self.resize is None else (shape[0], self.resize[1] // 8, self.resize[0] // 8)
        noises = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            if noise_shape == shape:
                noise = source.randn(generator, shape)
            else:
                noise = source.seeded(seed, noise_shape)
            if self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                noise = slerp(self.subseed_strength, noise, source.seeded(subseed, noise_shape))
            if noise_shape != shape:
                noise = _paste_centred(source.randn(generator, shape), noise)
            noises.append(noise)
        if self.ensd:
            self.generators = [source.generator(seed + self.ensd) for seed in self.seeds]
        self.drawn_first = True
        return torch.stack(noises)

    def next(self) -> torch.Tensor:
        if not self.drawn_first:
            return self.first()
        return torch.stack([self.source.randn(generator, self.shape) for generator in self.generators])


_TORCHSDE_LOCK = threading.Lock()


@contextmanager
def _torchsde_draws(source: NoiseSource) -> Iterator[None]:
    """torchsde's Brownian intervals draw their normals through the source (as A1111 patches it)."""
    import torchsde._brownian.brownian_interval as interval

    def randn(size: Any, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
        return source.seeded(seed, tuple(size)).to(device=device, dtype=dtype)

    with _TORCHSDE_LOCK:
        original = interval._randn
        interval._randn = randn
        try:
            yield
        finally:
            interval._randn = original


class BrownianNoise:
    """k-diffusion's BrownianTreeNoiseSampler as A1111 builds it: one torchsde Brownian tree per image,
    seeded with the image's seed, over [smallest sigma > 0, largest sigma]; a call gives unit noise
    for the step sigma → sigma_next."""

    def __init__(self, latents: torch.Tensor, sigmas: torch.Tensor, seeds: list[int], source: NoiseSource):
        import torchsde

        self.source = source
        self.device, self.dtype = latents.device, latents.dtype
        t0, t1 = sigmas[sigmas > 0].min().float().cpu(), sigmas.max().float().cpu()
        w0 = torch.zeros(latents.shape[1:], dtype=torch.float32, device=source.device)
        with _torchsde_draws(source):
            self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=seed) for seed in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma).float().cpu(), torch.as_tensor(sigma_next).float().cpu()
        low, high, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        with _torchsde_draws(self.source):
            w = torch.stack([tree(low, high) for tree in self.trees]) * sign  # the trees run low → high
        return (w / (t1 - t0).abs().sqrt()).to(self.device, self.dtype)
