"""Calibration data: real images or preprocessed arrays, checked, hashed, never random.

The images are preprocessed exactly as the model's manifest says, through the same
`preprocess` that verification and the edge runtime use. The set's hash (of the
preprocessed arrays) keys the calibration cache, so a rebuild does not recalibrate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dropcov_deploy.data.datasets import DatasetSpec
from dropcov_deploy.data.preprocessing import Preprocessing
from dropcov_deploy.errors import InputError, first_line
from dropcov_deploy.manifest import Manifest
from dropcov_deploy.memory import available_memory_bytes

MIN_CALIBRATION_IMAGES = 8
DEFAULT_CALIBRATION_SIZE = 512
CALIBRATION_BATCH = 16  # independent of the engine's deploy batch


FINGERPRINT_HEX = 16  # 64 bits of SHA-256 per input: no accidental match among millions


def input_fingerprints(inputs: np.ndarray) -> list[str]:
    """A short hash of each preprocessed input's float32 bytes. The same image preprocessed the same
    way has the same fingerprint, so a precision artifact's manifest can list what it was calibrated
    on and verify can count how many of its own inputs are among them (a leak, not a held-out test)."""
    data = np.ascontiguousarray(inputs, dtype=np.float32)
    return [hashlib.sha256(row.tobytes()).hexdigest()[:FINGERPRINT_HEX] for row in data]


@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs (N, 3, H, W) float32, with labels when known."""

    source: Path | str  # a folder or file, or a bundled dataset's split ("digits:train")
    data: np.ndarray
    labels: np.ndarray | None
    sha256: str
    names: list[str] | None = None  # each input's file (or dataset) name, where it came from images

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def fingerprints(self) -> list[str]:
        """One fingerprint per calibration input (`input_fingerprints`): what verify matches its own inputs against."""
        return input_fingerprints(self.data)

    def batch_size(self, limit: int = CALIBRATION_BATCH) -> int:
        """The largest batch up to `limit` that divides the set: histogram calibrators need equal batches."""
        return next(size for size in range(min(limit, len(self)), 0, -1) if len(self) % size == 0)

    def batches(self, batch_size: int = CALIBRATION_BATCH) -> Iterator[np.ndarray]:
        batch_size = self.batch_size(batch_size)
        for start in range(0, len(self), batch_size):
            yield self.data[start : start + batch_size]


@dataclass
class ReferencePass:
    """The FP32 graph on the calibration set: its logits (what every precision graph is scored
    against) and the largest |fc input| (the covariance vector's range, for an INT8 fc)."""

    logits: np.ndarray
    fc_input_amax: float


def reference_pass(onnx_path: Path, calibration: CalibrationSet) -> ReferencePass:
    """One pass of the FP32 graph over the calibration set gives both."""
    from dropcov_deploy import head_graph, onnx_io
    from dropcov_deploy.probe import run_exposed

    model = onnx_io.load(onnx_path)
    tensor, logits_name = head_graph.fc_input(model), model.graph.output[0].name
    logits, amax = [], 0.0
    for outputs in run_exposed(model, [tensor], calibration.batches()):
        logits.append(outputs[logits_name])
        amax = max(amax, float(np.abs(outputs[tensor]).max()))
    return ReferencePass(np.concatenate(logits), amax)


def _subsample(count: int, size: int | None) -> np.ndarray:
    """A fixed, class-mixing subset: a seeded permutation, first `size` of it."""
    order = np.random.default_rng(0).permutation(count)
    return np.sort(order[: size or count])


def _from_arrays(path: Path, input_name: str) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy/.npz file ({exc.__class__.__name__}: {first_line(exc)})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if input_name in names:
                return np.asarray(loaded[input_name])
            if len(names) == 1:
                return np.asarray(loaded[names[0]])
            raise InputError(f"{path}: holds arrays {names}; expected one named {input_name!r} or a single array")
    return np.asarray(loaded)


def calibration_memory_problem(count: int, image_shape: tuple[int, int, int], available: int | None) -> str | None:
    """Why `count` preprocessed images cannot be calibrated on here (one line), or None. The set is
    held once as float32 plus about as much again in copies (the reference pass, the quantizer's
    reader); the calibrators themselves stream one batch at a time, so that is the part that grows."""
    needed = 2 * count * int(np.prod(image_shape)) * 4
    if available is not None and needed > available // 2:
        fits = max(MIN_CALIBRATION_IMAGES, count * (available // 2) // max(needed, 1))
        return f"{count} calibration images of {list(image_shape)} need about {needed / 1e9:.1f} GB, {available / 1e9:.1f} GB is available; use --calib-size {fits} or fewer"
    return None


def load_calibration(
    source: str | Path | DatasetSpec,
    manifest: Manifest,
    size: int | None = DEFAULT_CALIBRATION_SIZE,
) -> CalibrationSet:
    """Load an image folder, .npy/.npz arrays or a bundled dataset's split, checked against the model's input."""
    from dropcov_deploy.data.datasets import dataset_images
    from dropcov_deploy.data.images import list_images, load_batch, model_labels

    dataset = source if isinstance(source, DatasetSpec) else None
    source = str(source) if isinstance(source, DatasetSpec) else Path(source)
    if isinstance(source, Path) and not source.exists():
        raise InputError(f"{source}: no such calibration folder or file")
    if size is not None and size < MIN_CALIBRATION_IMAGES:
        raise InputError(f"--calib-size {size} is too small; use at least {MIN_CALIBRATION_IMAGES}")
    spec = manifest.require_input(Path(source))
    channels, height, width = spec.image_shape
    labels = names = None
    if dataset is not None or (isinstance(source, Path) and source.is_dir()):
        images = dataset_images(dataset) if dataset is not None else list_images(source)
        chosen = _subsample(len(images), size)
        problem = calibration_memory_problem(len(chosen), spec.image_shape, available_memory_bytes())
        if problem:
            raise InputError(f"{source}: {problem}")
        prep = Preprocessing.from_dict(manifest.preprocessing or {})
        items = images.items
        data = load_batch([items[i] for i in chosen], prep)
        every_name = images.names()
        names = [every_name[i] for i in chosen]
        found = model_labels(images, manifest.class_names)
        if found is not None:
            labels = found[chosen]
    elif isinstance(source, Path) and source.suffix.lower() in (".npy", ".npz"):
        data = _from_arrays(source, spec.name)
        if data.ndim != 4 or tuple(data.shape[1:]) != (channels, height, width):
            raise InputError(f"{source}: arrays of shape {tuple(data.shape)} do not fit the model's input (N, {channels}, {height}, {width})")
        if not np.issubdtype(data.dtype, np.floating):
            raise InputError(f"{source}: arrays are {data.dtype}; expected preprocessed float32 inputs")
        data = data[_subsample(len(data), size)].astype(np.float32)
    else:
        raise InputError(f"{source}: calibration data must be an image folder or a .npy/.npz file")
    if len(data) < MIN_CALIBRATION_IMAGES:
        raise InputError(f"{source}: only {len(data)} calibration inputs; need at least {MIN_CALIBRATION_IMAGES} real images")
    if not np.isfinite(data).all():
        raise InputError(f"{source}: calibration inputs contain NaN or Inf")
    data = np.ascontiguousarray(data, dtype=np.float32)
    digest = hashlib.sha256(str(data.shape).encode() + data.tobytes()).hexdigest()
    return CalibrationSet(source=source, data=data, labels=labels, sha256=digest, names=names)


CALIBRATION_MEMORY_SHARE = 0.25  # of the available memory, for one calibration batch's intermediate tensors


def activation_bytes_per_image(model) -> int:
    """Every intermediate tensor of one image, summed from ONNX shape inference (the batch axis as
    1): what a calibrator that exposes them all holds per image of a batch."""
    from onnx import shape_inference

    from dropcov_deploy.onnx_io import element_bytes

    inferred = shape_inference.infer_shapes(model)
    total = 0
    for value in inferred.graph.value_info:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tensor.shape.dim]
        total += int(np.prod(dims, dtype=np.int64)) * element_bytes(tensor.elem_type)
    return total


def calibration_batch_limit(per_image: int, available: int | None, share: float = CALIBRATION_MEMORY_SHARE, cap: int = CALIBRATION_BATCH) -> int:
    """The largest batch (at most `cap`) whose intermediate tensors fit in `share` of the available
    memory. Calibrators and AutoCast's reference run take a batch with every tensor they range
    exposed: the authors' Deit_drop_Base holds about 1 GiB per image at 224, and a TensorRT-target
    INT8 build of it on 32 images was killed for memory on a 24 GiB machine."""
    if not available or per_image <= 0:
        return cap
    return max(1, min(cap, int(available * share) // per_image))


def memory_bounded_batch(model, cap: int = CALIBRATION_BATCH) -> int:
    """`calibration_batch_limit` for this model on this machine: its intermediate bytes per image
    against the memory available now."""
    from dropcov_deploy.memory import available_memory_bytes

    return calibration_batch_limit(activation_bytes_per_image(model), available_memory_bytes(), cap=cap)


def ort_reader(calibration: CalibrationSet, input_name: str, batch_size: int = CALIBRATION_BATCH):
    """An onnxruntime.quantization CalibrationDataReader over `calibration` (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self):
            return next(self._iterator, None)

        def rewind(self) -> None:
            self._iterator = ({input_name: batch} for batch in calibration.batches(batch_size))

    return _Reader()
