"""scikit-learn's bundled handwritten digits: real data that ships with the package.

1797 8x8 grey images in 10 classes, split once with a fixed seed:
- test (50 per class): held out from everything, training, checkpoint selection,
  calibration and the choice of a precision treatment; the figures we publish come from it;
- val (20% of the rest): picks the best epoch;
- train (the rest); calibration (30 per class) is a subset of it, the repository's
  `calibration/digits`, so calibrating never touches what verification scores.
Images become 8-bit PIL images first, so training sees exactly what a PNG of the
same digit gives at deploy time.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dropcov_deploy.data.preprocessing import Preprocessing

CLASS_NAMES = [str(i) for i in range(10)]
SPLIT_SEED = 0
TEST_PER_CLASS = 50
CALIBRATION_PER_CLASS = 30
VAL_FRACTION = 0.2
SPLITS = ("train", "val", "test", "calibration")  # calibration is part of train
# what a checkpoint trained on these splits records: verify's test split is held out only for it
SPLIT_ID = f"digits/2 (seed {SPLIT_SEED}, test {TEST_PER_CLASS} per class, val {VAL_FRACTION})"
PREPROCESSING = Preprocessing(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")


@dataclass
class DigitsSplit:
    images: np.ndarray  # (N, 8, 8) uint8, 0..255
    labels: np.ndarray  # (N,) int64
    indices: np.ndarray | None = None  # (N,) positions in scikit-learn's load_digits(): names the files written


def _as_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)


def _per_class(order: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """The first `count` of each class in `order`: a stratified, seeded pick."""
    return np.concatenate([order[labels[order] == c][:count] for c in range(len(CLASS_NAMES))])


def load_splits(seed: int = SPLIT_SEED) -> dict[str, DigitsSplit]:
    """train / val / test, disjoint and covering the 1797 images once; calibration, a stratified
    subset of train (30 per class). Every split is sorted by scikit-learn's index."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = _as_uint8(bunch.images), bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    test = _per_class(order, labels, TEST_PER_CLASS)
    rest = np.setdiff1d(order, test, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    n_val = int(round(len(rest) * VAL_FRACTION))
    train, val = rest[n_val:], rest[:n_val]
    calibration = _per_class(train, labels, CALIBRATION_PER_CLASS)
    parts = {"train": train, "val": val, "test": test, "calibration": calibration}
    return {name: DigitsSplit(images[np.sort(idx)], labels[np.sort(idx)], np.sort(idx)) for name, idx in parts.items()}


def to_pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image, mode="L")


def write_image_folder(split: DigitsSplit, root: Path) -> int:
    """Write PNGs in an ImageFolder layout: root/<class>/digit_<index>.png (scikit-learn's index
    when the split has it, so a file names its source image)."""
    root = Path(root)
    for c in CLASS_NAMES:
        (root / c).mkdir(parents=True, exist_ok=True)
    names = split.indices if split.indices is not None else range(len(split.labels))
    for index, image, label in zip(names, split.images, split.labels):
        to_pil(image).save(root / CLASS_NAMES[label] / f"digit_{int(index):04d}.png")
    return len(split.labels)


def preprocessed(split: DigitsSplit, prep: Preprocessing = PREPROCESSING) -> np.ndarray:
    """(N, 3, 32, 32) float32, through the same `preprocess` as image files."""
    from dropcov_deploy.data.images import preprocess

    return np.stack([preprocess(to_pil(image), prep) for image in split.images]).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    """`python -m dropcov_deploy.data.digits OUT [--split calibration]`: write a split as PNGs
    (the repository's calibration/digits is exactly this, byte for byte)."""
    parser = argparse.ArgumentParser(prog="python -m dropcov_deploy.data.digits", description=main.__doc__)
    parser.add_argument("out", nargs="?", default="calibration/digits", type=Path)
    parser.add_argument("--split", choices=SPLITS, default="calibration")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out}: not empty; write a split into a new folder")
    count = write_image_folder(load_splits()[args.split], args.out)
    print(f"wrote {count} {args.split} images to {args.out}")


if __name__ == "__main__":
    main()
