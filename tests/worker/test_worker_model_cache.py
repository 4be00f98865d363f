"""The model cache against a real HTTP server: hits, misses, refusals, eviction, one download at a time."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from aws_extension.worker.model_cache import ModelCache, ModelFetchError
from aws_extension.worker.models_dir import model_file_problem
from tests.worker.helpers import FileServer


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safetensors_bytes(n_floats: int) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(4 * n_floats)


@pytest.fixture
def cache(tmp_path: Path) -> ModelCache:
    return ModelCache(tmp_path / "cache", budget_bytes=10**9, timeout_s=10)


def test_second_fetch_is_a_hit_and_other_names_share_the_file(cache: ModelCache, file_server: FileServer):
    data = safetensors_bytes(16)
    url = file_server.serve("/hit/a.safetensors", data)
    first = cache.fetch(sha256_of(data), "a.safetensors", url)
    second = cache.fetch(sha256_of(data), "a.safetensors", url)
    renamed = cache.fetch(sha256_of(data), "sub/b.safetensors", url)
    assert first == second and first.read_bytes() == data
    assert renamed.name == "b.safetensors" and renamed.read_bytes() == data
    assert file_server.gets["/hit/a.safetensors"] == 1
    assert cache.size_bytes() == len(data)  # hard links count once


def test_bad_hash_is_refused_and_not_cached(cache: ModelCache, file_server: FileServer):
    data = safetensors_bytes(8)
    claimed = sha256_of(b"something else")
    url = file_server.serve("/bad-hash.safetensors", data)
    with pytest.raises(ModelFetchError, match="sha256") as err:
        cache.fetch(claimed, "m.safetensors", url)
    assert err.value.status == 400
    assert not cache.is_cached(claimed) and not cache.is_cached(sha256_of(data))
    assert list((cache.root / ".tmp").iterdir()) == []


def test_missing_url_and_refused_file_give_reasons(cache: ModelCache, file_server: FileServer):
    with pytest.raises(ModelFetchError, match="HTTP 404"):
        cache.fetch("0" * 64, "gone.safetensors", file_server.url + "/nothing-here")
    page = b"<html>Access denied</html>"
    url = file_server.serve("/page.safetensors", page)
    with pytest.raises(ModelFetchError, match="not a valid safetensors file"):
        cache.fetch(sha256_of(page), "page.safetensors", url,
                    check=lambda p: model_file_problem(p, "page.safetensors", "Lora"))
    assert not cache.is_cached(sha256_of(page))
    with pytest.raises(ModelFetchError, match="http or https"):
        cache.fetch(sha256_of(page), "x.safetensors", "file:///etc/passwd")
    with pytest.raises(ModelFetchError, match="plain relative file name"):
        cache.fetch(sha256_of(page), "../x.safetensors", url)


def test_least_recently_used_is_evicted_but_pinned_files_stay(tmp_path: Path, file_server: FileServer):
    cache = ModelCache(tmp_path / "cache", budget_bytes=2 * 1000 + 500, timeout_s=10)
    blobs = [os.urandom(1000) for _ in range(4)]
    shas = [sha256_of(b) for b in blobs]
    urls = [file_server.serve(f"/lru/{i}.bin", b) for i, b in enumerate(blobs)]
    cache.fetch(shas[0], "0.bin", urls[0])
    cache.fetch(shas[1], "1.bin", urls[1])
    os.utime(cache.root / shas[0], (1, 1))  # 0 used long ago, 1 recently
    os.utime(cache.root / shas[1], (2, 2))
    with cache.pinned([shas[0]]):
        cache.fetch(shas[2], "2.bin", urls[2])  # over budget: 1 goes, pinned 0 stays
    assert [cache.is_cached(s) for s in shas[:3]] == [True, False, True]
    cache.fetch(shas[3], "3.bin", urls[3])  # 0 is the oldest and no longer pinned
    assert [cache.is_cached(s) for s in shas] == [False, False, True, True]
    assert cache.size_bytes() <= cache.budget_bytes


def test_concurrent_jobs_download_one_file_once(cache: ModelCache, file_server: FileServer):
    data = os.urandom(200_000)
    url = file_server.serve("/concurrent.bin", data)
    file_server.get_delay_s = 0.3
    results: list[Path] = []
    try:
        threads = [threading.Thread(target=lambda: results.append(cache.fetch(sha256_of(data), "c.bin", url)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        file_server.get_delay_s = 0.0
    assert len(results) == 4 and len(set(results)) == 1 and results[0].read_bytes() == data
    assert file_server.gets["/concurrent.bin"] == 1


def test_model_file_problem_checks_the_kind(tiny_models_dir: Path, tmp_path: Path):
    checkpoint = tiny_models_dir / "Stable-diffusion" / "tiny-sd.safetensors"
    lora = tiny_models_dir / "Lora" / "tiny-lora.safetensors"
    assert model_file_problem(checkpoint, "a.safetensors", "Stable-diffusion") is None
    assert model_file_problem(lora, "b.safetensors", "Lora") is None
    assert model_file_problem(lora, "b.safetensors", "Stable-diffusion") == (
        "b.safetensors is not a model of type Stable-diffusion: it is a lora")
    text = tmp_path / "notes.ckpt"
    text.write_bytes(b"hello")
    assert "notes.ckpt" in model_file_problem(text, "notes.ckpt", "Stable-diffusion")
    assert "expected one of" in model_file_problem(text, "notes.txt", "Stable-diffusion")


def test_model_file_problem_reads_safetensors_and_refuses_non_pickles_without_torch(tiny_models_dir: Path,
                                                                                    tmp_path: Path):
    """The cache check of a safetensors file (and of a .ckpt that is no pickle) never imports torch."""
    (tmp_path / "notes.ckpt").write_bytes(b"hello")
    code = f"""
import sys
from pathlib import Path
from aws_extension.worker.models_dir import model_file_problem
lora = Path({str(tiny_models_dir / "Lora" / "tiny-lora.safetensors")!r})
print(model_file_problem(lora, "l.safetensors", "Lora"))
print(model_file_problem(lora, "l.safetensors", "VAE"))
print(model_file_problem(lora, "l.safetensors", "hypernetworks"))
print(model_file_problem(Path({str(tmp_path / "notes.ckpt")!r}), "notes.ckpt", "Stable-diffusion"))
print("torch" in sys.modules, "safetensors" in sys.modules)
"""
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "None",
        "l.safetensors is not a model of type VAE: it is a lora",
        "None",
        "notes.ckpt is not a PyTorch checkpoint (neither a torch zip archive nor a pickle).",
        "False False",
    ]
