"""scikit-learn's bundled handwritten digits: real data that ships with the package.

1797 8x8 grey images in 10 classes, split with a fixed seed into train, val and a
held-out calibration set (the one written to the repository's `calibration/`).
Images become 8-bit PIL images first, so training sees exactly what a PNG of the
same digit gives at deploy time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dropcov_deploy.data.preprocessing import Preprocessing

CLASS_NAMES = [str(i) for i in range(10)]
SPLIT_SEED = 0
CALIBRATION_PER_CLASS = 30
VAL_FRACTION = 0.2
PREPROCESSING = Preprocessing(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")


@dataclass
class DigitsSplit:
    images: np.ndarray  # (N, 8, 8) uint8, 0..255
    labels: np.ndarray  # (N,) int64


def _as_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)


def load_splits(seed: int = SPLIT_SEED) -> dict[str, DigitsSplit]:
    """train / val / calibration, disjoint, the calibration set stratified (30 per class)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = _as_uint8(bunch.images), bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    calibration = np.concatenate([order[labels[order] == c][:CALIBRATION_PER_CLASS] for c in range(10)])
    rest = np.setdiff1d(order, calibration, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    n_val = int(round(len(rest) * VAL_FRACTION))
    parts = {"train": rest[n_val:], "val": rest[:n_val], "calibration": np.sort(calibration)}
    return {name: DigitsSplit(images[idx], labels[idx]) for name, idx in parts.items()}


def to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image, mode="L")


def write_image_folder(split: DigitsSplit, root: Path) -> int:
    """Write PNGs in an ImageFolder layout: root/<class>/<index>.png."""
    root = Path(root)
    for c in CLASS_NAMES:
        (root / c).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(split.images, split.labels)):
        to_pil(image).save(root / CLASS_NAMES[label] / f"digit_{i:04d}.png")
    return len(split.labels)


def preprocessed(split: DigitsSplit, prep: Preprocessing = PREPROCESSING) -> np.ndarray:
    """(N, 3, 32, 32) float32, through the same `preprocess` as image files."""
    from dropcov_deploy.data.images import preprocess

    return np.stack([preprocess(to_pil(image), prep) for image in split.images]).astype(np.float32)


def main() -> None:
    """`python -m dropcov_deploy.data.digits OUT`: write the held-out calibration images."""
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "calibration/digits")
    count = write_image_folder(load_splits()["calibration"], out)
    print(f"wrote {count} images to {out}")


if __name__ == "__main__":
    main()
