"""Images in, input tensors out: image folders and the manifest's preprocessing.

numpy and Pillow only, no torch: the edge runtime (`predict`), verification and
calibration all preprocess through `preprocess`, and training on images uses it too,
so every stage sees exactly the inputs the manifest describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dropcov_deploy.data.preprocessing import Preprocessing
from dropcov_deploy.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_RESAMPLING = {"bilinear": 2, "bicubic": 3, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


@dataclass
class ImageSet:
    """Image files with labels when the folder is an ImageFolder tree (one folder per class)."""

    root: Path
    paths: list[Path]
    labels: list[int] | None
    class_names: list[str] | None

    def __len__(self) -> int:
        return len(self.paths)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_images(root: str | Path) -> ImageSet:
    """An ImageFolder tree (class sub-folders, labelled) or a flat folder of images (unlabelled)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder of images")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if class_dirs:
        paths: list[Path] = []
        labels: list[int] = []
        for index, folder in enumerate(class_dirs):
            found = _images_in(folder)
            paths += found
            labels += [index] * len(found)
        if paths:
            return ImageSet(root, paths, labels, [d.name for d in class_dirs])
    flat = _images_in(root)
    if not flat:
        raise InputError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}, flat or one folder per class)")
    return ImageSet(root, flat, None, None)


def load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def preprocess(image, prep: Preprocessing) -> np.ndarray:
    """Resize the short side to prep.resize, centre-crop prep.crop, scale to [0,1], normalise: (3, H, W)."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    scale = prep.resize / min(width, height)
    size = (max(prep.crop, round(width * scale)), max(prep.crop, round(height * scale)))
    if size != image.size:
        image = image.resize(size, resample=Image.Resampling(_RESAMPLING.get(prep.interpolation, 2)))
    left = (size[0] - prep.crop) // 2
    top = (size[1] - prep.crop) // 2
    image = image.crop((left, top, left + prep.crop, top + prep.crop))
    array: np.ndarray = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(prep.mean, dtype=np.float32)) / np.asarray(prep.std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_batch(paths: Sequence[Path], prep: Preprocessing) -> np.ndarray:
    """Preprocessed float32 batch (N, 3, crop, crop) from image files."""
    return np.stack([preprocess(load_image(p), prep) for p in paths]).astype(np.float32, copy=False)
