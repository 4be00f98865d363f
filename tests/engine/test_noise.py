"""A1111's noise: Philox 4x32-10 against its published known answers, the NV generator against A1111's
rng_philox example, ImageRNG's stream semantics (continued per image, ENSD), the Brownian trees per seed."""

from __future__ import annotations

import numpy as np
import torch

from aws_extension.engine.noise import BrownianNoise, ImageNoise, NoiseSource, PhiloxGenerator, philox4x32


def _philox(counter: tuple[int, ...], key: tuple[int, ...]) -> list[int]:
    words = philox4x32(np.array(counter, dtype=np.uint32)[:, None], np.array(key, dtype=np.uint32)[:, None])
    return [int(word) for word in words[:, 0]]


def test_philox_4x32_10_known_answers() -> None:
    """The known-answer vectors of Random123 (kat_vectors, philox4x32 10 rounds)."""
    assert _philox((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert _philox((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert _philox((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_nv_generator_gives_a1111s_example_and_moves_its_offset() -> None:
    """rng_philox.py's docstring: Generator(seed=0).randn((3, 4)) (what torch.randn gives on CUDA)."""
    expected = np.array([[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                         [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                         [-1.07454231, -0.36314407, -1.67105067, 2.26550497]], dtype=np.float32)
    generator = PhiloxGenerator(0)
    assert np.allclose(generator.randn((3, 4)), expected, atol=1e-6)
    assert generator.offset == 1 and not np.allclose(generator.randn((3, 4)), expected, atol=1e-2)


def test_gpu_source_on_a_cpu_worker_is_nv() -> None:
    gpu, nv = NoiseSource("GPU", "cpu"), NoiseSource("NV", "cpu")
    assert torch.equal(gpu.seeded(7, (4, 2, 2)), nv.seeded(7, (4, 2, 2)))
    assert not torch.equal(NoiseSource("CPU").seeded(7, (4, 2, 2)), nv.seeded(7, (4, 2, 2)))


def test_image_noise_continues_each_seeds_stream_and_ensd_reseeds_it() -> None:
    shape = (4, 2, 2)
    rng = ImageNoise(shape, [3, 4])
    first, second = rng.next(), rng.next()
    for index, seed in enumerate((3, 4)):
        generator = torch.Generator().manual_seed(seed)
        assert torch.equal(first[index], torch.randn(shape, generator=generator))
        assert torch.equal(second[index], torch.randn(shape, generator=generator))
    delta = ImageNoise(shape, [3], ensd=31337)
    assert torch.equal(delta.next()[0], first[0])
    assert torch.equal(delta.next()[0], torch.randn(shape, generator=torch.Generator().manual_seed(3 + 31337)))


def test_brownian_noise_is_per_seed_whatever_the_batch() -> None:
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.0])
    latents = torch.zeros(2, 4, 2, 2)
    pair = BrownianNoise(latents, sigmas, [5, 6], NoiseSource())(sigmas[0], sigmas[1])
    alone = BrownianNoise(latents[:1], sigmas, [6], NoiseSource())(sigmas[0], sigmas[1])
    assert torch.equal(pair[1], alone[0]) and not torch.equal(pair[0], pair[1])
    nv = BrownianNoise(latents[:1], sigmas, [6], NoiseSource("NV"))(sigmas[0], sigmas[1])
    assert not torch.equal(nv, alone)
