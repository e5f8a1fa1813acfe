"""TensorRT: build an engine from a precision-baked ONNX, prove its precision, run it.

The one place TensorRT is used. `import tensorrt` happens inside functions only, so
importing this module loads neither TensorRT, torch nor CUDA (the CLI's --help and
machines without a GPU stay fast and working). CUDA memory, streams and events go
through ctypes on libcudart (`dropcov_deploy.backends.cuda`), as Polygraphy does.

Works with TensorRT 10.x (10.3 on JetPack 6 and later) and 11.x. Both build strongly
typed networks: precision comes from the tensor types in the ONNX (FP16 from a mixed
precision graph, INT8 from Q/DQ pairs), never from builder flags, which 11.x removed.
On 10.x the network is created with NetworkDefinitionCreationFlag.STRONGLY_TYPED; on
11.x `create_network()` takes no flag (the flag is deprecated and ignored there). The
engine inspector's JSON differs too (10.x: "Bindings" and a combined "Format/Datatype";
11.x: "I/O Tensors" and separate "Format"/"Datatype"); `layer_precisions` reads both.

Naming convention relied on by tests/test_tensorrt_api.py, which collects every
TensorRT attribute this file uses and checks it against the real bindings' names:
the module is always bound to `trt`, and TensorRT objects live in variables (or
`self._<name>` attributes) named builder, network, config, parser, optimization_profile,
cache, runtime, engine, context, inspector, error or tensor (not `logger`: our logger
subclass's own attributes are ours).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dropcov_deploy import manifest as manifests
from dropcov_deploy.atomic import atomic_write, check_writable, staged
from dropcov_deploy.errors import BackendUnavailable, DropCovError, InputError

BACKEND = "tensorrt"
KIND = "tensorrt-engine"
PRECISIONS = ("fp32", "fp16", "int8")
# The precision a build must show in the inspector's layer list to count as that build.
REQUIRED_LAYER_PRECISION = {"fp16": "FP16", "int8": "INT8"}
GIB = 1 << 30

Log = Callable[[str], Any]


class TensorRTError(DropCovError):
    """TensorRT refused a model, an engine or a run (exit code 2); the message says which and why."""

    exit_code = 2


class TensorRTBuildError(TensorRTError):
    """TensorRT could not build a usable engine from this ONNX (exit code 2: fix the model or options)."""


class OnnxParseError(TensorRTBuildError):
    """TensorRT's ONNX parser rejected the model; `errors` holds every parser error."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


# ---------------------------------------------------------------------------------------
# Availability
# ---------------------------------------------------------------------------------------
def import_tensorrt():
    """The tensorrt module, or BackendUnavailable with a one-line reason."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] not in ("tensorrt", "tensorrt_bindings", "tensorrt_libs"):
            raise BackendUnavailable(f"tensorrt cannot be imported: {_first_line(exc)}") from None
        raise BackendUnavailable("tensorrt not installed (pip install 'dropcov-deploy[tensorrt]', or JetPack's python3-libnvinfer)") from None
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(f"tensorrt cannot be imported: {_first_line(exc)}") from None
    return trt


def tensorrt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def cuda_runtime():
    """The ctypes libcudart wrapper (BackendUnavailable when no library, driver or GPU)."""
    from dropcov_deploy.backends.cuda import runtime

    return runtime()


def tensorrt_status() -> tuple[bool, str]:
    """(True, "TensorRT X on <GPU>") or (False, a one-line reason)."""
    try:
        trt = import_tensorrt()
        cuda = cuda_runtime()
        return True, f"TensorRT {trt.__version__} on {cuda.device_name()}"
    except BackendUnavailable as exc:
        return False, _first_line(exc)


def _one_line(text: Any) -> str:
    """Collapse whitespace: TensorRT messages can span lines, our errors are one line."""
    return "" if text is None else " ".join(str(text).split())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------
# Batch profile
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchProfile:
    """min/opt/max of the batch axis: the engine accepts min..max and is tuned for opt."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        values = (self.min, self.opt, self.max)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise InputError(f"batch profile {values}: min, opt and max must be integers")
        if self.min < 1:
            raise InputError(f"batch profile {self}: batch sizes must be at least 1")
        if not self.min <= self.opt <= self.max:
            raise InputError(f"batch profile {self}: needs min <= opt <= max")

    @classmethod
    def parse(cls, text: str | int) -> BatchProfile:
        """'MIN:OPT:MAX' (e.g. '1:8:32') or a single 'N' (a fixed batch of N)."""
        raw = str(text).strip()
        parts = raw.split(":")
        if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
            raise InputError(f"batch profile {raw!r}: expected MIN:OPT:MAX (e.g. 1:8:32) or one batch size N")
        values = [int(p) for p in parts]
        return cls(*(values * 3 if len(values) == 1 else values))

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


# ---------------------------------------------------------------------------------------
# Engine inspector JSON (10.x and 11.x shapes)
# ---------------------------------------------------------------------------------------
# Data-type words the inspector writes ("Float", "Half", "Int8", "BFloat16", "FP8", ...)
# and the ones inside 10.x format strings ("Row major linear FP32 format").
_TYPE_WORDS = {
    "float": "FP32", "fp32": "FP32", "float32": "FP32", "kfloat": "FP32",
    "half": "FP16", "fp16": "FP16", "float16": "FP16", "khalf": "FP16",
    "bfloat16": "BF16", "bf16": "BF16", "kbf16": "BF16",
    "int8": "INT8", "kint8": "INT8",
    "fp8": "FP8", "kfp8": "FP8", "float8": "FP8", "float8e4m3": "FP8", "float8e4m3fn": "FP8", "e4m3": "FP8", "float8e5m2": "FP8",
    "fp4": "FP4", "kfp4": "FP4", "float4": "FP4", "float4e2m1": "FP4", "e2m1": "FP4",
    "int4": "INT4", "kint4": "INT4",
    "e8m0": "E8M0", "ke8m0": "E8M0",
    "uint8": "UINT8", "kuint8": "UINT8",
    "int16": "INT16", "int32": "INT32", "kint32": "INT32", "int64": "INT64", "kint64": "INT64",
    "bool": "BOOL", "kbool": "BOOL", "double": "FP64", "fp64": "FP64",
}
# Substring fallback, most specific first (as Polygraphy's inspector does).
_TYPE_SUBSTRINGS = (
    ("BFLOAT16", "BF16"), ("FLOAT8", "FP8"), ("FLOAT4", "FP4"), ("FLOAT", "FP32"), ("HALF", "FP16"),
    ("FP32", "FP32"), ("FP16", "FP16"), ("FP8", "FP8"), ("FP4", "FP4"), ("UINT8", "UINT8"),
    ("INT64", "INT64"), ("INT32", "INT32"), ("INT16", "INT16"), ("INT8", "INT8"), ("INT4", "INT4"), ("BOOL", "BOOL"),
)
# A layer computes in the narrowest type among its tensors: a Q/DQ convolution reads
# Int8 even when its fused output is Float; index tensors (Int32/Int64) count last.
_NARROWEST_FIRST = ("FP4", "E8M0", "INT4", "FP8", "INT8", "FP16", "BF16", "FP32", "FP64", "UINT8", "INT16", "INT32", "INT64", "BOOL")


def data_type_from_text(text: Any) -> str | None:
    """'Half' -> 'FP16', 'Row major linear FP32 format' -> 'FP32', unknown -> None."""
    if not isinstance(text, str):
        return None
    for word in re.findall(r"[A-Za-z0-9]+", text):
        if word.lower() in _TYPE_WORDS:
            return _TYPE_WORDS[word.lower()]
    upper = text.upper()
    return next((name for needle, name in _TYPE_SUBSTRINGS if needle in upper), None)


def tensor_data_type(entry: dict[str, Any]) -> str | None:
    """A layer tensor's type: 11.x "Datatype"/"DataType", else 10.x "Format/Datatype", else "Format"."""
    keyed = {str(k).lower().replace(" ", ""): v for k, v in entry.items()}
    for key in ("datatype", "format/datatype", "format"):
        found = data_type_from_text(keyed.get(key))
        if found:
            return found
    return None


def layer_precision(layer: Any) -> str:
    if not isinstance(layer, dict):
        return "UNKNOWN"  # a bare layer name: the engine was not built with DETAILED verbosity
    entries = [t for key in ("Inputs", "Outputs") for t in (layer.get(key) or []) if isinstance(t, dict)]
    found = {t for t in (tensor_data_type(entry) for entry in entries) if t}
    return next((name for name in _NARROWEST_FIRST if name in found), "UNKNOWN")


def layer_precisions(engine_information: str | dict[str, Any]) -> dict[str, Any]:
    """Count an engine's layers per compute precision from IEngineInspector JSON (10.x or 11.x)."""
    data = json.loads(engine_information) if isinstance(engine_information, str) else engine_information
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    counts = Counter(layer_precision(layer) for layer in layers)
    schema = "unknown"
    if isinstance(data, dict) and "I/O Tensors" in data:
        schema = "11.x (I/O Tensors)"
    elif isinstance(data, dict) and "Bindings" in data:
        schema = "10.x (Bindings)"
    return {"total": len(layers), "precisions": dict(sorted(counts.items())), "inspector_schema": schema}


# ---------------------------------------------------------------------------------------
# Logger, parser errors
# ---------------------------------------------------------------------------------------
def _make_logger(trt, log: Log):
    """A TensorRT logger that keeps errors (for our one exception) and passes warnings to `log`."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.seen: set[str] = set()

        def log(self, severity, msg) -> None:  # called by TensorRT; must not raise
            try:
                text = _one_line(msg)
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors.append(text)
                elif severity == trt.ILogger.Severity.WARNING and text not in self.seen:
                    self.seen.add(text)
                    log(f"TensorRT warning: {text}")
            except Exception:  # noqa: BLE001 - a logger that raises would abort TensorRT
                pass

    return CapturingLogger()


def _value(member: Any) -> Any:
    """ParserError fields are methods in the bindings; tolerate properties too."""
    return member() if callable(member) else member


def parser_errors(parser) -> list[dict[str, Any]]:
    """Every error the ONNX parser recorded, as plain dicts."""
    found = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        record: dict[str, Any] = {
            "code": str(_value(error.code)).split(".")[-1],
            "desc": _one_line(_value(error.desc)),
            "node": _value(error.node),
            "node_name": _one_line(_value(error.node_name)),
            "node_operator": _one_line(_value(error.node_operator)),
            "func": _one_line(_value(error.func)),
            "file": _one_line(_value(error.file)),
            "line": _value(error.line),
        }
        stack = _value(error.local_function_stack)
        if stack:
            record["local_function_stack"] = [str(s) for s in stack]
        found.append(record)
    return found


def format_parser_error(record: dict[str, Any]) -> str:
    node = record.get("node")
    where = f"node {node}" if isinstance(node, int) and node >= 0 else "model"
    if record.get("node_name"):
        where += f" {record['node_name']!r}"
    if record.get("node_operator"):
        where += f" ({record['node_operator']})"
    if record.get("local_function_stack"):
        where += f" in function {'/'.join(record['local_function_stack'])}"
    origin = f" [{record['func']} at {Path(str(record['file'])).name}:{record['line']}]" if record.get("func") else ""
    return f"{where}: {record['code']}: {record['desc']}{origin}"


# ---------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------
def _create_network(trt, builder):
    """A strongly typed network: flag on 10.x, the only mode on 11.x (where the flag is deprecated)."""
    if tensorrt_major(trt) < 11:
        return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    return builder.create_network()


def _shape(dims) -> list[int]:
    return [int(d) for d in dims]


def _add_batch_profile(builder, network, config, batch: BatchProfile, onnx_path: Path) -> None:
    """One optimization profile: the batch axis from `batch`, every other axis from the network."""
    optimization_profile = builder.create_optimization_profile()
    dynamic = False
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = _shape(tensor.shape)
        if not shape:
            raise InputError(f"{onnx_path}: input {tensor.name!r} is a scalar; there is no batch axis to profile")
        if any(d < 0 for d in shape[1:]):
            raise InputError(f"{onnx_path}: input {tensor.name!r} has dynamic axes besides the batch ({shape}); export with a fixed image size")
        if shape[0] >= 0:
            if (batch.min, batch.max) != (shape[0], shape[0]):
                raise InputError(
                    f"{onnx_path}: input {tensor.name!r} has a fixed batch of {shape[0]}, so --batch {batch} cannot apply; "
                    f"use --batch {shape[0]} or export with a dynamic batch"
                )
            continue
        dynamic = True
        rest = shape[1:]
        optimization_profile.set_shape(tensor.name, [batch.min, *rest], [batch.opt, *rest], [batch.max, *rest])
    if dynamic:
        config.add_optimization_profile(optimization_profile)


def _load_timing_cache(config, path: Path | None, log: Log):
    """The builder's timing cache: read from `path` when it exists, else empty (filled by the build)."""
    data = b""
    if path is not None and Path(path).exists():
        data = Path(path).read_bytes()
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        log(f"timing cache {path} does not match this TensorRT/GPU; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config, path: Path) -> None:
    cache = config.get_timing_cache()
    data = bytes(cache.serialize())
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def _profile_shapes(engine, name: str) -> tuple[list[int], list[int], list[int]]:
    """Profile 0's min/opt/max for an input; its fixed shape when the engine has no range for it."""
    fixed = _shape(engine.get_tensor_shape(name))
    try:
        low, best, high = (_shape(dims) for dims in engine.get_tensor_profile_shape(name, 0))
    except (RuntimeError, ValueError, TypeError):
        return fixed, fixed, fixed
    if any(len(dims) != len(fixed) or any(d < 0 for d in dims) for dims in (low, best, high)):
        return fixed, fixed, fixed
    return low, best, high


def _io_tensors(trt, engine) -> list[dict[str, Any]]:
    """Name, mode, shape (-1 = dynamic), dtype and profile 0's min/opt/max of every I/O tensor."""
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        record: dict[str, Any] = {
            "name": name,
            "mode": "input" if is_input else "output",
            "shape": _shape(engine.get_tensor_shape(name)),
            "dtype": engine.get_tensor_dtype(name).name,
        }
        if is_input:
            low, best, high = _profile_shapes(engine, name)
            record["profile"] = {"min": low, "opt": best, "max": high}
        tensors.append(record)
    return tensors


def _check_precision(precision: str, layers: dict[str, Any], plan_path: Path) -> None:
    required = REQUIRED_LAYER_PRECISION.get(precision)
    if required is None or layers["precisions"].get(required, 0) > 0:
        return
    summary = ", ".join(f"{k} {v}" for k, v in layers["precisions"].items()) or "none"
    source = "a mixed-precision (AutoCast) ONNX" if precision == "fp16" else "a Q/DQ (explicitly quantized) ONNX"
    raise TensorRTBuildError(
        f"{plan_path}: the {precision} build has no {required} layers (layers: {summary}); TensorRT builds strongly "
        f"typed networks, so precision must come from the ONNX: build from {source}; no engine written"
    )


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    precision: str,
    profile: BatchProfile,
    workspace_gib: float | None,
    timing_cache: Path | None,
    onnx_sha256: str,
    calibration_sha256: str | None,
    log: Log = print,
    model_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build, verify and save a TensorRT plan and its sidecar manifest; returns the manifest.

    `model_fields` (architecture, classes, input, preprocessing, ...) from the precision
    ONNX's manifest are copied in, so verify, bench and predict can use the engine alone.

    The plan bytes are saved untouched (trtexec can load them); metadata goes to
    `<plan>.json`. Both are published together only after the engine was deserialized
    and its layer precisions checked, so a failed build leaves no plan behind.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such ONNX file")
    if workspace_gib is not None and not workspace_gib > 0:
        raise InputError(f"workspace {workspace_gib} GiB: must be positive")
    check_writable(plan_path)
    if timing_cache is not None:
        check_writable(Path(timing_cache))

    trt = import_tensorrt()
    cuda = cuda_runtime()
    logger = _make_logger(trt, log)

    builder = trt.Builder(logger)
    network = _create_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {onnx_path}")
    parsed = parser.parse_from_file(str(onnx_path))
    if not parsed or parser.num_errors > 0:
        errors = parser_errors(parser)
        details = "; ".join(f"[{i + 1}] {format_parser_error(e)}" for i, e in enumerate(errors)) or "; ".join(logger.errors) or "no details"
        raise OnnxParseError(f"{onnx_path}: TensorRT's ONNX parser failed with {len(errors)} error(s): {details}", errors)

    config = builder.create_builder_config()
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * GIB))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    _add_batch_profile(builder, network, config, profile, onnx_path)
    _load_timing_cache(config, timing_cache, log)

    log(f"building {precision} engine (TensorRT {trt.__version__}, batch {profile}); this takes a while")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        reason = "; ".join(logger.errors[-5:]) or "no error was logged"
        raise TensorRTBuildError(f"{onnx_path}: TensorRT could not build an engine: {reason}")
    plan = bytes(serialized)
    if timing_cache is not None:
        _save_timing_cache(config, Path(timing_cache))

    with staged(plan_path) as stage:
        staged_plan = stage / plan_path.name
        staged_plan.write_bytes(plan)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(staged_plan.read_bytes())
        if engine is None:
            reason = "; ".join(logger.errors[-5:]) or "no error was logged"
            raise TensorRTBuildError(f"{plan_path}: the plan TensorRT just built does not deserialize: {reason}")
        inspector = engine.create_engine_inspector()
        layers = layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        _check_precision(precision, layers, plan_path)
        manifest = {
            "format": manifests.MANIFEST_FORMAT,
            "kind": KIND,
            "precision": precision,
            "tensorrt_version": str(trt.__version__),
            "strongly_typed": True,
            "cuda_runtime_version": cuda.runtime_version(),
            "cuda_driver_version": cuda.driver_version(),
            "gpu_name": cuda.device_name(),
            "compute_capability": cuda.compute_capability(),
            "profile": profile.to_dict(),
            "workspace_gib": workspace_gib,
            "onnx": onnx_path.name,
            "onnx_sha256": onnx_sha256,
            "calibration_sha256": calibration_sha256,
            "plan_sha256": manifests.sha256_file(staged_plan),
            "plan_bytes": len(plan),
            "layers": layers,
            "io": _io_tensors(trt, engine),
            "build_seconds": round(seconds, 3),
            "timing_cache": str(timing_cache) if timing_cache is not None else None,
            "created": manifests.now_utc(),
            "versions": {**manifests.library_versions(), "tensorrt": str(trt.__version__)},
        }
        manifest.update({key: value for key, value in (model_fields or {}).items() if key not in manifest})
        del inspector, engine, runtime
        manifests.write_manifest(stage / manifests.sidecar_path(plan_path).name, manifest)
    counts = ", ".join(f"{k} {v}" for k, v in layers["precisions"].items())
    log(f"wrote {plan_path} ({len(plan) / 1e6:.1f} MB, {seconds:.1f} s; layers: {counts})")
    return manifest


# ---------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------
class TensorRTRunner:
    """Runs a TensorRT plan: infer(dict of arrays) -> dict of arrays, like OnnxRuntimeRunner.

    `last_gpu_ms` is the GPU time of the last execute_async_v3 (CUDA events around it,
    copies excluded); `infer_device_only()` re-runs the engine on the inputs already on
    the device, for benchmarks that separate GPU compute from host latency.
    """

    backend = BACKEND

    def __init__(self, plan_path: Path) -> None:
        self.path = Path(plan_path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such engine file")
        self.manifest = manifests.read_manifest(self.path)
        trt = import_tensorrt()
        self._cuda = cuda_runtime()
        self._trt = trt
        self._check_environment(trt)
        self._logger = _make_logger(trt, lambda _: None)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            reason = "; ".join(self._logger.errors[-3:]) or "not a TensorRT plan"
            raise InputError(f"{self.path}: TensorRT {trt.__version__} cannot load this engine ({reason})")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailable(f"{self.path}: could not create an execution context (GPU memory?)")
        self._stream = self._cuda.stream_create()
        self._start = self._cuda.event_create()
        self._end = self._cuda.event_create()
        self._buffers: dict[str, Any] = {}
        self.io = _io_tensors(trt, self._engine)
        self.input_names = [t["name"] for t in self.io if t["mode"] == "input"]
        self.output_names = [t["name"] for t in self.io if t["mode"] == "output"]
        self._dtypes = {t["name"]: self._numpy_dtype(t["name"]) for t in self.io}
        self._ready = False
        self.last_gpu_ms: float | None = None

    def _check_environment(self, trt) -> None:
        """Plans are tied to the TensorRT version and GPU model: refuse a mismatch by name."""
        if not self.manifest:
            return
        recorded = (str(self.manifest.get("tensorrt_version")), str(self.manifest.get("gpu_name")))
        current = (str(trt.__version__), self._cuda.device_name())
        if recorded != current:
            raise InputError(
                f"{self.path}: built with TensorRT {recorded[0]} on {recorded[1]}, but this machine has TensorRT "
                f"{current[0]} on {current[1]}; rebuild the engine here (plans are tied to both)"
            )

    def _numpy_dtype(self, name: str) -> np.dtype:
        dtype = self._engine.get_tensor_dtype(name)
        try:
            return np.dtype(self._trt.nptype(dtype))
        except TypeError:
            raise InputError(f"{self.path}: I/O tensor {name!r} is {dtype.name}, which numpy cannot hold") from None

    def _buffer(self, name: str):
        from dropcov_deploy.backends.cuda import DeviceBuffer

        if name not in self._buffers:
            self._buffers[name] = DeviceBuffer(self._cuda)
        return self._buffers[name]

    def _set_input(self, name: str, array: np.ndarray) -> None:
        low, _, high = _profile_shapes(self._engine, name)
        if array.ndim != len(low) or any(not lo <= n <= hi for n, lo, hi in zip(array.shape, low, high)):
            raise InputError(f"{self.path}: input {name!r} has shape {list(array.shape)}; the engine accepts {low} to {high}")
        if not self._context.set_input_shape(name, array.shape):
            raise InputError(f"{self.path}: TensorRT refused input shape {list(array.shape)} for {name!r}")

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy inputs in, run the engine, copy outputs out; synchronised before returning."""
        self._require_open()
        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self.input_names]
        if missing or unknown:
            raise InputError(f"{self.path}: inputs {sorted(feeds)} do not match the engine's {self.input_names}")
        cuda, stream = self._cuda, self._stream
        hosts = {name: np.ascontiguousarray(feeds[name], dtype=self._dtypes[name]) for name in self.input_names}
        for name, array in hosts.items():
            self._set_input(name, array)
        outputs: dict[str, np.ndarray] = {}
        for name in self.output_names:
            shape = tuple(_shape(self._context.get_tensor_shape(name)))
            if any(d < 0 for d in shape):
                raise InputError(f"{self.path}: output {name!r} shape {list(shape)} is unresolved after setting the inputs")
            outputs[name] = np.empty(shape, dtype=self._dtypes[name])
        for name, array in (*hosts.items(), *outputs.items()):
            pointer = self._buffer(name).ensure(array.nbytes)
            if not self._context.set_tensor_address(name, pointer):
                raise InputError(f"{self.path}: TensorRT refused the device address for {name!r}")
        for name, array in hosts.items():
            cuda.memcpy_htod_async(self._buffers[name].pointer, array.ctypes.data, array.nbytes, stream)
        self._ready = True
        self._execute()
        for name, array in outputs.items():
            cuda.memcpy_dtoh_async(array.ctypes.data, self._buffers[name].pointer, array.nbytes, stream)
        cuda.stream_synchronize(stream)
        self.last_gpu_ms = cuda.event_elapsed_ms(self._start, self._end)
        return outputs

    def _require_open(self) -> None:
        if getattr(self, "_context", None) is None or getattr(self, "_cuda", None) is None:
            raise InputError(f"{self.path}: this TensorRT runner is closed")

    def _execute(self) -> None:
        cuda = self._cuda
        cuda.event_record(self._start, self._stream)
        if not self._context.execute_async_v3(self._stream):
            raise TensorRTError(f"{self.path}: execute_async_v3 failed: {'; '.join(self._logger.errors[-3:]) or 'no details'}")
        cuda.event_record(self._end, self._stream)

    def infer_device_only(self) -> float:
        """Re-run the engine on the inputs already on the GPU; returns (and keeps) its GPU milliseconds."""
        self._require_open()
        if not self._ready:
            raise InputError("infer_device_only() needs one infer() first, to place inputs on the GPU")
        self._execute()
        self._cuda.event_synchronize(self._end)
        self.last_gpu_ms = self._cuda.event_elapsed_ms(self._start, self._end)
        return self.last_gpu_ms

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The single-input, single-output case: images in, logits out."""
        return self.infer({self.input_names[0]: batch})[self.output_names[0]]

    def close(self) -> None:
        """Free device memory, events and the stream; drop the context before the engine."""
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        if getattr(self, "_stream", 0):
            cuda.stream_synchronize(self._stream)
        for buffer in getattr(self, "_buffers", {}).values():
            buffer.free()
        self._buffers = {}
        for attr in ("_start", "_end"):
            cuda.event_destroy(getattr(self, attr, 0))
            setattr(self, attr, 0)
        cuda.stream_destroy(getattr(self, "_stream", 0))
        self._stream = 0
        self._context = None
        self._engine = None
        self._runtime = None
        self._ready = False
        self._cuda = None

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
