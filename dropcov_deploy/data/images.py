"""Images in, input tensors out: image folders and the manifest's preprocessing.

numpy and Pillow only, no torch: the edge runtime (`predict`), verification and
calibration all preprocess through `preprocess`, and training on images uses it too,
so every stage sees exactly the inputs the manifest describes.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from dropcov_deploy.data.preprocessing import Preprocessing
from dropcov_deploy.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_RESAMPLING = {"bilinear": 2, "bicubic": 3, "nearest": 0, "lanczos": 1}  # PIL.Image.Resampling values


# What an image comes from: a file, or 8-bit pixels already in memory (a bundled dataset's split).
ImageItem = Union[Path, np.ndarray]  # noqa: UP007  # a runtime alias: `X | Y` needs Python 3.10 types here


@dataclass
class ImageSet:
    """Images with labels when known: the files of a folder (labelled when it is an ImageFolder
    tree, one folder per class), or a bundled dataset's split held as pixels (`pixels`, with
    `root` its name, e.g. "digits:test")."""

    root: Path | str
    paths: list[Path]
    labels: list[int] | None
    class_names: list[str] | None
    pixels: list[np.ndarray] | None = None
    pixel_names: list[str] | None = None  # what each in-memory image is called ("digits:train/0059")

    def __len__(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.paths)

    def names(self) -> list[str]:
        """Each image's name: its path under the folder, or the dataset's name for it."""
        if self.pixels is not None:
            return list(self.pixel_names or [f"{self.root}/{i}" for i in range(len(self.pixels))])
        return [p.relative_to(self.root).as_posix() if isinstance(self.root, Path) else str(p) for p in self.paths]

    @property
    def items(self) -> list[ImageItem]:
        return list(self.pixels) if self.pixels is not None else list(self.paths)


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


def model_labels(images: ImageSet, class_names: Sequence[str] | None) -> np.ndarray | None:
    """The folder's labels as the model's class indices, matched by folder name: a folder of
    some of the classes (only "3" and "7") is labelled right, never shifted; a folder the model
    has no class for is one InputError line. Without names on either side, the folder order."""
    if images.labels is None:
        return None
    if not class_names or not images.class_names:
        return np.asarray(images.labels)
    unknown = [name for name in images.class_names if name not in class_names]
    if unknown:
        raise InputError(
            f"{images.root}: class folders {unknown[:5]} are not among the model's {len(class_names)} classes "
            f"({', '.join(list(class_names)[:5])}...); labels would be wrong"
        )
    index = {name: i for i, name in enumerate(class_names)}
    return np.asarray([index[images.class_names[label]] for label in images.labels])


def _as_8bit_rgb(image):
    """Any mode Pillow opens as RGB, scaled rather than clipped: 16-bit and 32-bit greyscale
    ("I;16", "I", "F") are scaled by their range (Pillow's own convert would clip them to 255)."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255) else 255.0
        if image.mode == "F":
            top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        scaled = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent pixels on white, not on black
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: ImageItem):
    """An image file (or in-memory 8-bit pixels) as an RGB PIL image; a bad file is one InputError line."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(path, np.ndarray):
        return _as_8bit_rgb(Image.fromarray(path))
    try:
        with Image.open(path) as image:
            image.load()
            return _as_8bit_rgb(image)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
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


def load_batch(paths: Sequence[ImageItem], prep: Preprocessing) -> np.ndarray:
    """Preprocessed float32 batch (N, 3, crop, crop) from image files (or in-memory pixels)."""
    return np.stack([preprocess(load_image(p), prep) for p in paths]).astype(np.float32, copy=False)


CHUNK = 256  # images decoded at a time: verify's memory is a few of these chunks, whatever the set's size
MAX_DECODE_WORKERS = 8


def decode_workers(count: int, requested: int | None = None, cpus: int | None = None, chunk: int = CHUNK) -> int:
    """How many threads decode `count` images: `requested` when given (0 or 1: the calling thread
    alone), else one per CPU up to MAX_DECODE_WORKERS, and none for a set of one chunk or less,
    which has nothing to decode ahead."""
    if requested is not None:
        if requested < 0:
            raise InputError(f"--workers {requested}: must be 0 (decode in the calling thread) or more")
        return requested
    if count <= chunk:
        return 0
    return min(MAX_DECODE_WORKERS, cpus if cpus is not None else (os.cpu_count() or 1))


def _split(items: Sequence[ImageItem], parts: int) -> list[Sequence[ImageItem]]:
    step = -(-len(items) // max(1, parts))
    return [items[i : i + step] for i in range(0, len(items), step)]


class InputSet:
    """What verify runs every model on, without holding it all: preprocessed arrays already in
    memory (seeded random inputs, a reference's stored inputs), or images (files, or a bundled
    dataset's pixels) decoded `CHUNK` at a time on each pass, by worker threads that keep the
    next chunk ready while the models run on this one: a 50,000-image validation folder needs a
    few chunks' memory."""

    def __init__(
        self, *, arrays: np.ndarray | None = None, paths: Sequence[ImageItem] = (), prep: Preprocessing | None = None, workers: int | None = None
    ) -> None:
        if (arrays is None) == (len(paths) == 0):
            raise ValueError("an InputSet holds arrays or images, not both")
        self.arrays = arrays
        self.items: list[ImageItem] = [p if isinstance(p, np.ndarray) else Path(p) for p in paths]
        self.prep = prep
        self.workers = workers

    @property
    def paths(self) -> list[Path]:
        """The image files (what a files-mode reference lists); empty for in-memory inputs."""
        return [p for p in self.items if isinstance(p, Path)]

    def __len__(self) -> int:
        return len(self.arrays) if self.arrays is not None else len(self.items)

    def chunks(self, size: int = CHUNK) -> Iterator[np.ndarray]:
        """The inputs in order, `size` at a time, as float32 (N, C, H, W) arrays."""
        if self.arrays is not None:
            for start in range(0, len(self), size):
                yield self.arrays[start : start + size]
            return
        assert self.prep is not None
        workers = decode_workers(len(self), self.workers, chunk=size)
        if workers <= 1:
            for start in range(0, len(self), size):
                yield load_batch(self.items[start : start + size], self.prep)
            return
        yield from self._decoded_by(workers, size)

    def _decoded_by(self, workers: int, size: int) -> Iterator[np.ndarray]:
        """Each chunk split among `workers` threads; one chunk decoded ahead of the one being used.
        Threads, not processes: Pillow's decoders and resize release the GIL (2 threads decoded
        500x375 JPEGs at 319 images/s on 2 cores, 2 processes at 249, one thread at 179), and a
        process pool re-runs the caller's __main__ (a script without a guard, a notebook)."""
        from concurrent.futures import ThreadPoolExecutor

        assert self.prep is not None
        prep = self.prep
        pending: deque = deque()
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dropcov-decode") as pool:
            try:
                for start in range(0, len(self), size):
                    pending.append([pool.submit(load_batch, part, prep) for part in _split(self.items[start : start + size], workers)])
                    if len(pending) > 1:
                        yield np.concatenate([future.result() for future in pending.popleft()])
                while pending:
                    yield np.concatenate([future.result() for future in pending.popleft()])
            finally:
                for futures in pending:  # a consumer that stopped early (or an error) leaves nothing running
                    for future in futures:
                        future.cancel()

    def head(self, count: int) -> np.ndarray:
        """The first `count` inputs (what --locate probes)."""
        if self.arrays is not None:
            return self.arrays[: max(1, count)]
        assert self.prep is not None
        return load_batch(self.items[: max(1, count)], self.prep)

    def nbytes(self) -> int:
        first = self.head(1)
        return int(first.nbytes) * len(self)

    def materialize(self) -> np.ndarray:
        """All inputs in one array: only for a reference that stores them (bounded by --max-reference-mb)."""
        return self.arrays if self.arrays is not None else np.concatenate(list(self.chunks()))
