"""PyTorch's reference logits, kept per (checkpoint, input set): a second `verify` of new
artifacts on the same data reuses them instead of running PyTorch over the set again.

The key is the checkpoint's SHA-256, the preprocessing, and the input set's identity: each
image file's path, size and modification time (what `make` trusts; hashing 50,000 images
would cost more than the forward pass it saves), or a bundled split's definition, or the
random inputs' count and seed. Entries are .npy files written atomically under the cache
folder; one that is unreadable or of the wrong shape is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.cache_paths import default_cache_dir

FORMAT = "1"


def inputs_identity(items: list[Any], description: str) -> str:
    """What identifies an input set: files by (path, size, mtime); in-memory images by content."""
    digest = hashlib.sha256(description.encode())
    for item in items:
        if isinstance(item, Path):
            stat = item.stat()
            digest.update(f"{item.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        else:
            digest.update(np.ascontiguousarray(item).tobytes())
    return digest.hexdigest()


def cache_key(checkpoint_sha256: str, preprocessing: dict[str, Any], identity: str) -> str:
    text = json.dumps([FORMAT, checkpoint_sha256, preprocessing, identity], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _path(key: str, cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / "reference-logits" / f"{key}.npy"


def load_logits(key: str, count: int, cache_dir: Path | None = None) -> np.ndarray | None:
    """The cached logits for `key`, or None (absent, unreadable, not `count` finite rows)."""
    try:
        logits = np.load(_path(key, cache_dir), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if logits.ndim != 2 or len(logits) != count or not np.isfinite(logits).all():
        return None
    return logits


def store_logits(key: str, logits: np.ndarray, cache_dir: Path | None = None) -> None:
    """Keep the logits; a cache folder that cannot be written is skipped (only slower next time)."""
    from dropcov_deploy.atomic import atomic_write

    path = _path(key, cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, np.asarray(logits, dtype=np.float32))

        atomic_write(path, write)
    except OSError:
        pass
