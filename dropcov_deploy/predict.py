"""`predict`: the edge runtime. Load an ONNX model or engine, preprocess as its manifest says, run.

This path imports neither torch nor the training code (numpy, Pillow, ONNX Runtime or
TensorRT only), so it runs on a board that has only the runtime installed.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.backends import open_runner, run_batched
from dropcov_deploy.data.images import load_image, preprocess
from dropcov_deploy.data.preprocessing import Preprocessing
from dropcov_deploy.errors import InputError


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


GLOB_CHARACTERS = set("*?[")
DEFAULT_BATCH = 32


def image_paths(images: list[str | Path]) -> list[Path]:
    """Files as given; a folder's images (recursively, sorted); a glob the shell left unexpanded
    (quoted, or on Windows). Anything else is one InputError line naming it."""
    from dropcov_deploy.data.images import IMAGE_SUFFIXES

    found: list[Path] = []
    for given in images:
        path = Path(given)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise InputError(f"{path}: a folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            found += inside
        elif path.exists():
            found.append(path)
        elif GLOB_CHARACTERS & set(str(given)):
            matches = sorted(Path(p) for p in glob.glob(str(given), recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"{given}: no file matches")
            found += matches
        else:
            raise InputError(f"{path}: no such image")
    return found


def predict(
    artifact: str | Path,
    images: list[str | Path],
    top_k: int = 5,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH,
    runtime: str | None = None,
    warn: Callable[[str], Any] = lambda _: None,
) -> list[dict[str, Any]]:
    """Top-k classes (names from the manifest) for each image; folders and globs expanded, the
    images decoded and run `batch_size` at a time."""
    from dropcov_deploy.manifest import Manifest

    artifact = Path(artifact)
    if not artifact.exists():
        raise InputError(f"{artifact}: no such file")
    if not images:
        raise InputError("name at least one image")
    if top_k < 1:
        raise InputError(f"--top {top_k}: show at least one class")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be positive")
    manifest = Manifest.read(artifact)
    if manifest.preprocessing is None:
        raise InputError(f"{artifact}: its manifest records no preprocessing")
    prep = Preprocessing.from_dict(manifest.preprocessing)
    names = manifest.class_names
    paths = image_paths(images)
    pieces = []
    with open_runner(artifact, device, runtime=runtime, manifest=manifest) as runner:
        for warning in getattr(runner, "warnings", None) or []:  # e.g. the build's runtime is not installed here
            warn(f"{artifact}: {warning}")
        for start in range(0, len(paths), batch_size):
            batch = np.stack([preprocess(load_image(p), prep) for p in paths[start : start + batch_size]]).astype(np.float32)
            pieces.append(run_batched(runner, batch, manifest.batch, batch_size))
    probabilities = softmax(np.concatenate(pieces).astype(np.float64))
    k = min(top_k, probabilities.shape[1])
    results = []
    for path, row in zip(paths, probabilities):
        order = np.argsort(-row)[:k]
        results.append(
            {
                "image": str(path),
                "top": [{"class": int(i), "name": names[i] if names else str(int(i)), "probability": float(row[i])} for i in order],
            }
        )
    return results
