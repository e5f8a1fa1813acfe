"""Reference files: what verification needs from PyTorch, saved once so it can travel.

`verify --checkpoint ... --save-reference ref.npz` (on the host, with PyTorch) stores the
inputs, labels, PyTorch logits and what they belong to; `verify --reference ref.npz`
(on the device, no PyTorch) checks artifacts against them. The file is a plain .npz read
with allow_pickle=False: arrays `logits`, optional `labels` and `inputs`, and `meta`, a
JSON string. Past a size limit the inputs are not stored: the image files' names and
SHA-256 hashes are, with the preprocessing, and `--data DIR` on the device finds them
again (a changed or missing image is refused, never silently replaced).
numpy, Pillow and the manifest only: this module runs where PyTorch does not.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.data.images import InputSet
from dropcov_deploy.errors import InputError, first_line
from dropcov_deploy.manifest import Manifest, now_utc, sha256_file

REFERENCE_FORMAT = "dropcov-deploy/reference/1"
DEFAULT_MAX_INPUT_MB = 256.0  # past this, the inputs are recorded as image files with hashes
RANDOM_SEED = 0


def random_inputs(count: int, image_shape: tuple[int, int, int]) -> np.ndarray:
    """The seeded random inputs `verify --random N` uses (and regenerates from a reference)."""
    rng = np.random.default_rng(RANDOM_SEED)
    return rng.standard_normal((count, *image_shape), dtype=np.float32)


@dataclass
class Reference:
    """PyTorch's answer on a fixed set of inputs, and what it belongs to.

    `meta` holds: checkpoint {path, sha256}, arch, family, class_names, num_classes,
    input_shape [C, H, W], preprocessing, inputs (a description), family_gates (the
    model family's gate overrides, so the device needs no model code), accuracy,
    artifacts {file name: sha256} given when it was saved, and how the inputs are stored
    (`inputs_stored`: "arrays", "files" or "random")."""

    inputs: InputSet
    logits: np.ndarray
    labels: np.ndarray | None
    meta: dict[str, Any]
    path: Path | None = None
    model: Any = None  # the PyTorch model when PyTorch made it in this process (verify --locate)
    image_root: Path | None = None  # the folder the inputs were read from: a files-mode reference lists them relative to it

    @property
    def checkpoint_sha256(self) -> str | None:
        return (self.meta.get("checkpoint") or {}).get("sha256")

    @property
    def input_shape(self) -> list[int]:
        return [int(d) for d in self.meta["input_shape"]]

    @property
    def described(self) -> str:
        return str(self.meta.get("inputs", f"{len(self.inputs)} inputs"))

    # ------------------------------------------------------------------ belonging
    def mismatch(self, artifact: Path, manifest: Manifest) -> str | None:
        """Why this reference is not the one for `artifact` (one line), or None when it is:
        the model (checkpoint hash, else the artifact's own hash among those saved), the
        classes and the input shape must all agree."""
        where = f"{artifact}: the reference {self.path or ''}".rstrip()
        source = manifest.get("source") or {}
        model_sha = source.get("sha256") if isinstance(source, dict) else None
        known_hashes = set((self.meta.get("artifacts") or {}).values())
        if model_sha and self.checkpoint_sha256:
            if model_sha != self.checkpoint_sha256:
                return (
                    f"{where} was made from checkpoint {self.checkpoint_sha256[:12]}, this artifact from {model_sha[:12]}; save a reference from its checkpoint"
                )
        elif sha256_file(artifact) not in known_hashes:  # the file's own hash, not what its manifest claims
            return f"{where} cannot be tied to this artifact: its manifest records no checkpoint hash and its hash is not among the reference's artifacts"
        if manifest.class_names and self.meta.get("class_names") and list(manifest.class_names) != list(self.meta["class_names"]):
            return f"{where} has classes {self.meta['class_names'][:4]}..., the artifact {list(manifest.class_names)[:4]}..."
        classes = manifest.num_classes
        if classes is not None and classes != self.logits.shape[1]:
            return f"{where} has {self.logits.shape[1]} classes, the artifact {classes}"
        if manifest.input is not None and manifest.input.shape and list(manifest.input.image_shape) != self.input_shape:
            return f"{where} holds {self.input_shape} inputs, the artifact takes {list(manifest.input.image_shape)}"
        return None

    # ------------------------------------------------------------------ writing
    def save(self, path: Path, max_input_mb: float = DEFAULT_MAX_INPUT_MB) -> dict[str, Any]:
        """Write the .npz atomically; returns what was stored (for the report)."""
        from dropcov_deploy.atomic import atomic_write

        path = Path(path)
        if path.suffix != ".npz":
            raise InputError(f"{path}: a reference file must end in .npz")
        meta = dict(self.meta)
        arrays: dict[str, np.ndarray] = {"logits": np.asarray(self.logits, dtype=np.float32)}
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels, dtype=np.int64)
        megabytes = self.inputs.nbytes() / 1e6
        if meta.get("random") is not None:
            meta["inputs_stored"] = "random"  # regenerated from the seed: nothing to store
        elif megabytes <= max_input_mb or self.image_root is None:
            arrays["inputs"] = np.ascontiguousarray(self.inputs.materialize(), dtype=np.float32)
            meta["inputs_stored"] = "arrays"
        else:
            meta["inputs_stored"] = "files"
            meta["files"] = image_files_record(self.inputs.paths, self.image_root)  # hashed only when they are what is saved
        meta.setdefault("format", REFERENCE_FORMAT)
        meta.setdefault("created", now_utc())
        arrays["meta"] = np.array(json.dumps(meta))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # np.savez would append .npz to a name without it
                np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle in **kwds

        atomic_write(path, write)
        return {"path": str(path), "inputs_stored": meta["inputs_stored"], "samples": len(self.logits), "input_megabytes": round(megabytes, 3)}


def image_files_record(paths: list[Path], root: Path) -> list[dict[str, str]]:
    """Each image as its path relative to `root` and its SHA-256 (what a files-mode reference keeps)."""
    return [{"path": str(Path(p).relative_to(root)), "sha256": sha256_file(Path(p))} for p in paths]


def _check_contents(path: Path, meta: dict[str, Any], logits: Any, labels: Any) -> str | None:
    """What is wrong with a reference's record (one line), or None: every field is checked for
    type and agreement before anything is computed from it (a file may be damaged or edited)."""
    if logits is None or logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating) or len(logits) == 0 or logits.shape[1] == 0:
        return "holds no logits (a non-empty float array of shape (N, classes))"
    count, classes = logits.shape
    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        return f"input_shape must be [C, H, W] positive integers, got {str(shape)[:40]}"
    if labels is not None:
        if labels.ndim != 1 or len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
            return f"labels must be {count} integers, got an array of shape {labels.shape} and type {labels.dtype}"
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            return f"labels must lie in 0..{classes - 1}, got {int(labels.min())}..{int(labels.max())}"
    checkpoint = meta.get("checkpoint")
    if checkpoint is not None and not (isinstance(checkpoint, dict) and isinstance(checkpoint.get("sha256", ""), (str, type(None)))):
        return "checkpoint must be {path, sha256}"
    artifacts = meta.get("artifacts") or {}
    if not (isinstance(artifacts, dict) and all(isinstance(v, str) for v in artifacts.values())):
        return "artifacts must map file names to SHA-256 strings"
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == classes and all(isinstance(n, str) for n in names)):
        return f"class_names must be {classes} strings (one per logit)"
    gates = meta.get("family_gates") or {}
    if not isinstance(gates, dict):
        return "family_gates must be an object keyed by precision"
    stored = meta.get("inputs_stored")
    if stored == "random":
        random = meta.get("random")
        if not (isinstance(random, int) and not isinstance(random, bool) and random == count):
            return f"random must be the number of seeded inputs ({count}), got {random!r}"
    elif stored == "files":
        files = meta.get("files")
        if not (
            isinstance(files, list)
            and len(files) == count
            and all(isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("sha256"), str) for f in files)
        ):
            return f"files must list {count} entries of {{path, sha256}}"
        if not isinstance(meta.get("preprocessing"), dict):
            return "a reference that lists image files needs their preprocessing"
    elif stored != "arrays":
        return f"unknown inputs_stored {stored!r}"
    return None


def load_reference(path: Path, data: Path | None = None) -> Reference:
    """Read a reference file; its inputs from the file, the seed, or (files mode) `data`.
    One InputError line for a missing, corrupt, foreign or edited file, or images that changed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such reference file")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single array (.npy), not an .npz archive")
        with archive:
            contents = {name: archive[name] for name in archive.files}
        meta = json.loads(str(contents["meta"]))
    except ValueError as exc:
        why = "it holds Python objects, which are never loaded" if "pickle" in str(exc) else first_line(exc)
        raise InputError(f"{path}: not a dropcov-deploy reference file ({why})") from None
    except (OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a dropcov-deploy reference file ({first_line(exc) or type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != REFERENCE_FORMAT:
        raise InputError(f"{path}: not a dropcov-deploy reference file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    logits, labels = contents.get("logits"), contents.get("labels")
    problem = _check_contents(path, meta, logits, labels)
    if problem:
        raise InputError(f"{path}: {problem}")
    assert logits is not None  # checked above
    stored = meta["inputs_stored"]
    shape = tuple(meta["input_shape"])
    if data is not None and stored != "files":
        raise InputError(f"--data {data}: the reference {path} holds its inputs; give --data only for a reference that lists image files")
    if not np.isfinite(logits).all():
        raise InputError(f"{path}: holds NaN or Inf in its logits; a reference must be finite")
    if stored == "arrays":
        arrays = contents.get("inputs")
        if arrays is None or arrays.shape != (len(logits), *shape) or not np.issubdtype(arrays.dtype, np.floating):
            raise InputError(f"{path}: its inputs do not match its logits and input shape")
        if not np.isfinite(arrays).all():
            raise InputError(f"{path}: holds NaN or Inf in its inputs; a reference must be finite")
        inputs = InputSet(arrays=arrays)
    elif stored == "random":
        inputs = InputSet(arrays=random_inputs(len(logits), shape))  # type: ignore[arg-type]
    else:
        inputs = _inputs_from_files(path, meta, data, len(logits))
        first = inputs.head(1)
        if first.shape[1:] != shape:
            raise InputError(f"{path}: its preprocessing gives {list(first.shape[1:])} inputs, its input_shape says {list(shape)}")
    return Reference(inputs=inputs, logits=logits, labels=labels, meta=meta, path=path)


def _inputs_from_files(path: Path, meta: dict[str, Any], data: Path | None, count: int) -> InputSet:
    from dropcov_deploy.data.preprocessing import Preprocessing

    files = meta["files"]  # checked by _check_contents: `count` entries of {path, sha256}
    if data is None:
        raise InputError(f"{path}: lists {len(files)} image files instead of storing them; give --data DIR (the folder they were read from)")
    paths = []
    for entry in files:
        image = Path(data) / entry["path"]
        if not image.is_file():
            raise InputError(f"{image}: listed in the reference {path.name} but missing under {data}")
        if sha256_file(image) != entry["sha256"]:
            raise InputError(f"{image}: changed since the reference {path.name} was saved (SHA-256 differs)")
        paths.append(image)
    return InputSet(paths=paths, prep=Preprocessing.from_dict(meta["preprocessing"]))  # decoded a chunk at a time
