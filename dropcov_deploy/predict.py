"""`predict`: the edge runtime. Load an ONNX model or engine, preprocess as its manifest says, run.

This path imports neither torch nor the training code (numpy, Pillow, ONNX Runtime or
TensorRT only), so it runs on a board that has only the runtime installed.
"""

from __future__ import annotations

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


def predict(artifact: str | Path, images: list[str | Path], top_k: int = 5, device: str = "cpu") -> list[dict[str, Any]]:
    """Top-k classes (names from the manifest) for each image."""
    from dropcov_deploy.manifest import Manifest

    artifact = Path(artifact)
    if not artifact.exists():
        raise InputError(f"{artifact}: no such file")
    if not images:
        raise InputError("name at least one image")
    if top_k < 1:
        raise InputError(f"--top {top_k}: show at least one class")
    manifest = Manifest.read(artifact)
    if manifest.preprocessing is None:
        raise InputError(f"{artifact}: its manifest records no preprocessing")
    prep = Preprocessing.from_dict(manifest.preprocessing)
    names = manifest.class_names
    paths = [Path(p) for p in images]
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such image")
    batch = np.stack([preprocess(load_image(p), prep) for p in paths]).astype(np.float32)
    with open_runner(artifact, device) as runner:
        logits = run_batched(runner, batch, manifest.batch, len(batch))
    probabilities = softmax(logits.astype(np.float64))
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
