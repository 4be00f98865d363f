"""Stand-in for A1111 v1.10's modules/hashes.py: sha256 of model files, kept in a cache by title and mtime
(the real one keeps it in cache.json; `--no-hashing` turns computing off)."""

import hashlib
import os.path

from modules import shared

_cache: dict[str, dict[str, dict]] = {"hashes": {}, "hashes-addnet": {}}
computed: list[str] = []  # titles hashed (tests read it)


def calculate_sha256(filename):
    digest = hashlib.sha256()
    with open(filename, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_from_cache(filename, title, use_addnet_hash=False):
    hashes = _cache["hashes-addnet" if use_addnet_hash else "hashes"]
    try:
        ondisk_mtime = os.path.getmtime(filename)
    except FileNotFoundError:
        return None
    entry = hashes.get(title)
    if entry is None or ondisk_mtime > entry.get("mtime", 0) or entry.get("sha256") is None:
        return None
    return entry["sha256"]


def sha256(filename, title, use_addnet_hash=False):
    cached = sha256_from_cache(filename, title, use_addnet_hash)
    if cached is not None:
        return cached
    if getattr(shared.cmd_opts, "no_hashing", False):
        return None
    value = calculate_sha256(filename)
    _cache["hashes-addnet" if use_addnet_hash else "hashes"][title] = {"mtime": os.path.getmtime(filename),
                                                                       "sha256": value}
    computed.append(title)
    return value
