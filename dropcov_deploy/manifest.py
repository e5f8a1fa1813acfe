"""Provenance records: the contract between every stage, one typed reader and writer.

A JSON sidecar (`model.onnx.json`) beside every artifact holds everything; the ONNX
`metadata_props` hold the key fields under `dropcov.*` keys, so a model that lost its
sidecar still says what it is. `Manifest.read` prefers the sidecar. Later artifacts
derive their manifest from the one they were made from (`for_precision`,
`for_engine`) instead of rebuilding it. No torch, onnx or numpy at import: the
runtime path reads manifests on an edge board.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropcov_deploy import __version__
from dropcov_deploy.atomic import atomic_write
from dropcov_deploy.errors import InputError, first_line
from dropcov_deploy.precision import Precision

MANIFEST_FORMAT = "dropcov-deploy/manifest/1"
METADATA_PREFIX = "dropcov."
# Fields copied into the ONNX metadata_props (values JSON-encoded).
METADATA_FIELDS = ("arch", "dim", "num_classes", "class_names", "precision", "input", "output", "preprocessing", "opset", "source", "versions", "runtime")

# Artifact kinds, as manifests record them, and the file suffixes that say which a file is.
ONNX = "onnx"
TENSORRT_ENGINE = "tensorrt-engine"
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")
# What a later artifact does not inherit from the one it was made from: its own file's facts.
PER_FILE_FIELDS = ("sha256", "parity", "files", "created", "artifact")
# What an engine carries over from its precision ONNX: the model and its I/O.
MODEL_FIELDS = ("arch", "family", "dim", "heads", "num_classes", "class_names", "preprocessing", "output", "source", "target")


def artifact_kind(path: Path) -> str:
    """ONNX or TENSORRT_ENGINE, by suffix; anything else is not an artifact we run."""
    suffix = Path(path).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return ONNX
    if suffix in ENGINE_SUFFIXES:
        return TENSORRT_ENGINE
    raise InputError(f"{path}: not an artifact we can run (expected .onnx or a TensorRT .plan/.engine)")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def renamed(onnx_path: Path, suffix: str) -> Path:
    """A file beside an ONNX named after it: its `.onnx` ending replaced by `suffix` (appended when it
    has none), e.g. model.int8.trt.onnx -> model.int8.trt.plan, model.int8.cpu.ort.onnx."""
    name = Path(onnx_path).name
    return Path(onnx_path).with_name((name[: -len(".onnx")] if name.endswith(".onnx") else name) + suffix)


def sidecar_path(artifact: Path) -> Path:
    return Path(f"{artifact}.json")


def sidecar_precision(artifact: Path) -> str | None:
    """The precision the artifact's sidecar names; None when there is no readable sidecar (a cheap
    look before loading a whole graph: the full reader is `Manifest.read`)."""
    try:
        data = json.loads(sidecar_path(artifact).read_text())
    except (OSError, ValueError):
        return None
    precision = data.get("precision") if isinstance(data, dict) else None
    return precision.lower() if isinstance(precision, str) else None


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def library_versions(*modules: str) -> dict[str, str]:
    """Versions of the named, already-imported libraries, plus ours and Python's."""
    import importlib
    import sys

    versions = {"dropcov_deploy": __version__, "python": platform.python_version()}
    for name in modules:
        module = sys.modules.get(name) or importlib.import_module(name)
        versions[name] = str(getattr(module, "__version__", "unknown"))
    return versions


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or one InputError line naming the file and the problem."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid {what} (bad JSON: {exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a valid {what} (expected a JSON object)")
    return data


def write_json_file(path: Path, data: dict[str, Any]) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


# ------------------------------------------------------------------ the typed record
def _typed(value: Any, kind: type, field_name: str) -> Any:
    """`value` when it is a `kind` (bools are not ints), else a ValueError naming the field."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{field_name} must be a {kind.__name__}, got {str(value)[:60]!r}")
    return value


@dataclass
class BatchRange:
    """The batch sizes an artifact accepts."""

    dynamic: bool = True
    min: int = 1
    max: int | None = None

    def fits(self, batch_size: int) -> bool:
        return self.min <= batch_size <= (self.max or batch_size)

    def split(self, count: int, preferred: int) -> list[tuple[int, int, int]]:
        """How to run `count` inputs in batches this artifact accepts: (start, stop, run size)
        per chunk. Chunks are `preferred` long, capped to max; a chunk shorter than min is run
        padded to min (run size > stop - start; the caller drops the padded outputs)."""
        if preferred < 1:
            raise ValueError(f"batch size {preferred}: must be positive")
        size = min(max(preferred, self.min), self.max or preferred)
        if not self.dynamic and self.max:
            size = self.max
        return [(start, min(start + size, count), max(min(start + size, count) - start, self.min)) for start in range(0, count, size)]

    def to_dict(self) -> dict[str, Any]:
        return {"dynamic": self.dynamic, "min": self.min, "max": self.max}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchRange:
        low, high, dynamic = data.get("min", 1), data.get("max"), data.get("dynamic", True)
        if not isinstance(low, int) or (high is not None and not isinstance(high, int)):
            raise ValueError(f"input.batch min and max must be integers, got {low!r} and {high!r}")
        if not isinstance(dynamic, bool):
            raise ValueError(f"input.batch dynamic must be true or false, got {dynamic!r}")
        if low < 1 or (high is not None and high < low):
            raise ValueError(f"input.batch must have 1 <= min <= max, got min {low} and max {high}")
        return cls(dynamic=dynamic, min=low, max=high)


@dataclass
class InputSpec:
    """The model's one input: name, shape (batch first, a name when dynamic), dtype, batch range."""

    name: str = "input"
    shape: list[Any] = field(default_factory=list)
    dtype: str = "float32"
    batch: BatchRange | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width): everything after the batch axis."""
        channels, height, width = (int(d) for d in self.shape[1:4])
        return channels, height, width

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.batch is not None:
            data["batch"] = self.batch.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        batch = data.get("batch")
        shape = _typed(data.get("shape") or [], list, "input.shape")
        if shape and (len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:])):
            raise ValueError(f"input.shape must be [batch, channels, height, width], got {shape}")
        return cls(
            name=str(data.get("name", "input")),
            shape=list(data.get("shape") or []),
            dtype=str(data.get("dtype", "float32")),
            batch=BatchRange.from_dict(_typed(batch, dict, "input.batch")) if batch else None,
        )


# Typed fields in the order they are written; every other field lives in `extra`, in its own order.
_TYPED = (
    "format",
    "kind",
    "artifact",
    "precision",
    "arch",
    "family",
    "dim",
    "heads",
    "num_classes",
    "class_names",
    "input",
    "output",
    "preprocessing",
    "target",
    "sha256",
)


@dataclass
class Manifest:
    """What an artifact is and where it came from. Fields every stage reads are typed; the rest
    (provenance, precision details, engine facts) is kept in `extra` exactly as written."""

    kind: str = ONNX
    precision: Precision = Precision.FP32
    arch: str | None = None
    family: str | None = None
    dim: int | None = None
    heads: int | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None
    input: InputSpec | None = None
    output: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    target: str | None = None
    artifact: str | None = None
    sha256: str | None = None
    format: str = MANIFEST_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)
    origin: str = "new"  # where it was read from: "sidecar", "metadata_props" or "new"

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "new") -> Manifest:
        """The typed record; a field of the wrong type is one InputError line naming the field."""
        try:
            return cls._from_dict(data, origin)
        except (TypeError, ValueError, IndexError) as exc:
            raise InputError(f"manifest: {first_line(exc)}") from None

    @classmethod
    def _from_dict(cls, data: dict[str, Any], origin: str) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "origin"}
        values: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        if "precision" in values:
            values["precision"] = Precision.parse(values["precision"], "manifest precision")
        if isinstance(values.get("family"), str):  # older manifests say "vit" for today's "xcov"
            from dropcov_deploy.models.families import canonical_family

            values["family"] = canonical_family(values["family"])
        if "input" in values:
            values["input"] = InputSpec.from_dict(_typed(values["input"], dict, "input"))
        for name in ("dim", "heads", "num_classes"):
            if values.get(name) is not None:
                values[name] = int(_typed(values[name], int, name))
        if values.get("class_names") is not None:
            names = _typed(values["class_names"], list, "class_names")
            if not all(isinstance(n, str) for n in names) or (values.get("num_classes") and len(names) != values["num_classes"]):
                raise ValueError(f"class_names must be {values.get('num_classes') or 'the'} class names (strings), got {str(names)[:60]}")
        if values.get("target") is not None:
            _typed(values["target"], str, "target")
        for name in ("preprocessing", "output"):
            if values.get(name) is not None:
                _typed(values[name], dict, name)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known}, origin=origin)

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> Manifest:
        data: dict[str, Any] = {}
        for key, value in props.items():
            if key.startswith(METADATA_PREFIX):
                try:
                    data[key[len(METADATA_PREFIX) :]] = json.loads(value)
                except json.JSONDecodeError:
                    data[key[len(METADATA_PREFIX) :]] = value
        return cls.from_dict(data, origin="metadata_props")

    @classmethod
    def find(cls, path: Path) -> Manifest | None:
        """The artifact's manifest: its sidecar, else (ONNX) its dropcov.* metadata_props; None when neither says anything."""
        path = Path(path)
        sidecar = sidecar_path(path)
        if sidecar.exists():
            data = read_json_object(sidecar, "manifest")
            try:
                return cls.from_dict(data, origin="sidecar")
            except InputError as exc:
                raise InputError(f"{sidecar}: {exc}") from None
        if path.suffix.lower() in ONNX_SUFFIXES:
            from dropcov_deploy import onnx_io

            proto = onnx_io.load(path, load_external_data=False)
            try:
                found = cls.from_metadata({p.key: p.value for p in proto.metadata_props})
            except InputError as exc:
                raise InputError(f"{path} (dropcov.* metadata): {exc}") from None
            return found if found.to_dict(include_format=False) != {"kind": ONNX, "precision": "fp32"} else None
        return None

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """`find`, or one InputError line when the artifact has no manifest at all."""
        found = cls.find(path)
        if found is None:
            raise InputError(f"{path}: no manifest beside it ({sidecar_path(Path(path)).name}); cannot tell its precision and input")
        return found

    # -- writing ---------------------------------------------------------------------------
    def to_dict(self, include_format: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name in _TYPED:
            value = getattr(self, name)
            if name == "format" and not include_format:
                continue
            if value is None and not (name == "class_names" and self.num_classes is not None):
                continue
            if name == "precision":
                value = value.value
            elif name == "input":
                value = value.to_dict()
            data[name] = value
        data.update(self.extra)
        return data

    def write(self, path: Path) -> Path:
        """Write the sidecar at `path` atomically."""
        return write_json_file(path, self.to_dict())

    def metadata_props(self) -> dict[str, str]:
        data = self.to_dict()
        props = {f"{METADATA_PREFIX}{key}": json.dumps(data[key]) for key in METADATA_FIELDS if key in data}
        props[f"{METADATA_PREFIX}format"] = json.dumps(MANIFEST_FORMAT)
        return props

    # -- what stages ask ------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """Any field by name, typed or extra (as JSON would give it)."""
        return self.to_dict().get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def require_input(self, path: Path) -> InputSpec:
        if self.input is None or not self.input.shape:
            raise InputError(f"{path}: no dropcov-deploy manifest (sidecar .json or dropcov.* metadata); export it with `dropcov-deploy export`")
        return self.input

    def calibration_fingerprints(self) -> set[str]:
        """The fingerprints of the inputs this artifact's precision was calibrated on (empty: none recorded)."""
        calibration = self.extra.get("calibration")
        found = calibration.get("fingerprints") if isinstance(calibration, dict) else self.extra.get("calibration_fingerprints")
        return {str(f) for f in found} if isinstance(found, list) else set()

    def calibration_files(self) -> dict[str, str]:
        """Fingerprint -> the calibration image it is (file or dataset name), where the build recorded names."""
        calibration = self.extra.get("calibration")
        if isinstance(calibration, dict):
            found, names = calibration.get("fingerprints"), calibration.get("files")
        else:
            found, names = self.extra.get("calibration_fingerprints"), self.extra.get("calibration_files")
        if not (isinstance(found, list) and isinstance(names, list) and len(found) == len(names)):
            return {}
        return {str(f): str(n) for f, n in zip(found, names)}

    def require_describes(self, path: Path) -> None:
        """A sidecar that records a hash must be the one written with this file: a sidecar copied
        beside another model would make every later stage trust the wrong precision and target."""
        if self.sha256 and self.origin == "sidecar" and sha256_file(Path(path)) != self.sha256:
            raise InputError(f"{sidecar_path(Path(path))}: describes another file (its sha256 is not {Path(path).name}'s); restore the matching manifest")

    @property
    def batch(self) -> BatchRange | None:
        return self.input.batch if self.input is not None else None

    # -- derivations ------------------------------------------------------------------------
    def for_precision(self, *, artifact: str, precision: Precision, target: str, **provenance: Any) -> Manifest:
        """The manifest of a precision ONNX built from this one: the model fields carried over,
        this file's own facts (hash, parity, file list) dropped, `provenance` added in order."""
        derived = dataclasses.replace(
            self,
            extra={k: v for k, v in self.extra.items() if k not in PER_FILE_FIELDS},
            origin="new",
            sha256=None,
            artifact=artifact,
            precision=precision,
            target=target,
            kind=ONNX,
            input=dataclasses.replace(self.input) if self.input else None,
        )
        derived.extra.update(provenance)
        return derived

    def for_engine(self, *, precision: Precision, batch_min: int, batch_max: int, engine: dict[str, Any]) -> Manifest:
        """The manifest of an engine built from this precision ONNX: the engine's own facts
        (`engine`, in order) and the model fields verify, bench and predict need, with the
        input's batch range narrowed to the engine's profile."""
        carried = {k: v for k, v in self.to_dict().items() if k in MODEL_FIELDS}
        spec = dataclasses.replace(
            self.require_input(Path(self.artifact or "model.onnx")), batch=BatchRange(dynamic=batch_min != batch_max, min=batch_min, max=batch_max)
        )
        data = {"format": MANIFEST_FORMAT, "kind": TENSORRT_ENGINE, "precision": precision.value, **engine}
        data.update({k: v for k, v in carried.items() if k not in data})
        calibration = self.extra.get("calibration")
        if isinstance(calibration, dict) and calibration.get("fingerprints"):
            data["calibration_fingerprints"] = calibration["fingerprints"]  # what the engine's precision was calibrated on
            if calibration.get("files"):
                data["calibration_files"] = calibration["files"]
        data["input"] = spec.to_dict()
        return Manifest.from_dict(data)
