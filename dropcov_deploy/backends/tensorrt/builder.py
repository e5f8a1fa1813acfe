"""Build a strongly typed engine from a precision-baked ONNX, prove its precision, save it.

Both 10.x and 11.x build strongly typed networks: precision comes from the tensor types
in the ONNX (FP16 from a mixed precision graph, INT8 from Q/DQ pairs), never from
builder flags, which 11.x removed. On 10.x the network is created with
NetworkDefinitionCreationFlag.STRONGLY_TYPED; on 11.x `create_network()` takes no flag.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from dropcov_deploy.atomic import atomic_write, check_writable, staged
from dropcov_deploy.backends.tensorrt.availability import create_builder, create_runtime, cuda_runtime, import_tensorrt, tensorrt_major
from dropcov_deploy.backends.tensorrt.errors import OnnxParseError, TensorRTBuildError
from dropcov_deploy.backends.tensorrt.inspector import layer_precisions, missing_precision, precision_summary
from dropcov_deploy.backends.tensorrt.log import Log, Sink, capture, logged_reason, parser_errors, parser_failure_message
from dropcov_deploy.backends.tensorrt.profile import (
    BatchProfile,
    check_builder_options,
    check_dla_core,
    check_workspace,
    inspection_shapes,
    io_tensors,
    profile_shapes,
    shape,
)
from dropcov_deploy.errors import BackendFailed, InputError
from dropcov_deploy.manifest import (
    MANIFEST_FORMAT,
    TENSORRT_ENGINE,
    Manifest,
    library_versions,
    now_utc,
    sha256_file,
    sidecar_path,
)
from dropcov_deploy.precision import Precision

GIB = 1 << 30


def create_network(trt, builder):
    """A strongly typed network: flag on 10.x, the only mode on 11.x (where the flag is deprecated)."""
    if tensorrt_major(trt) < 11:
        return builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    return builder.create_network()


def add_batch_profile(builder, network, config, batch: BatchProfile, onnx_path: Path) -> None:
    """One optimization profile: the batch axis from `batch`, every other axis from the network
    (`profile_shapes` decides; no profile is added when no input has a dynamic batch)."""
    inputs = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        inputs[tensor.name] = shape(tensor.shape)
    shapes = profile_shapes(onnx_path, inputs, batch)
    if not shapes:
        return
    optimization_profile = builder.create_optimization_profile()
    for name, (low, best, high) in shapes.items():
        optimization_profile.set_shape(name, low, best, high)
    config.add_optimization_profile(optimization_profile)


def timing_cache_data(path: Path | None) -> bytes:
    """What to seed the builder's timing cache with: the file at `path` when it exists, else nothing."""
    if path is not None and Path(path).exists():
        return Path(path).read_bytes()
    return b""


def timing_cache_rejected(path: Path | None, logged: Sequence[str] = ()) -> str:
    """What we say when TensorRT refuses a timing cache (another TensorRT version or GPU made it,
    or the file is damaged); `logged` is what TensorRT said about it."""
    said = f" (TensorRT: {logged_reason(logged, '', last=2)})" if logged else ""
    return f"timing cache {path} does not match this TensorRT/GPU{said}; starting a new one"


def timing_cache_failure(path: Path | None, logged: Sequence[str]) -> str:
    """The one line when TensorRT cannot create even an empty timing cache: names the cache file."""
    where = f"timing cache {path}" if path is not None else "timing cache"
    return f"{where}: TensorRT could not create a timing cache ({logged_reason(logged, 'no error was logged', last=3)}); build without --timing-cache"


def load_timing_cache(config, path: Path | None, log: Log, sink: Sink):
    """The builder's timing cache: read from `path` when it exists, else empty (filled by the build).
    A cache TensorRT refuses (create_timing_cache returns None, or set_timing_cache with
    ignore_mismatch=False returns false) is replaced by an empty one, with a warning. What TensorRT
    logged during this step is taken out of `sink.errors`, so it never reads as the build's failure;
    an empty cache TensorRT cannot create is BackendFailed (exit 4) naming the file."""
    mark = sink.mark()
    cache = config.create_timing_cache(timing_cache_data(path))
    if cache is None or not config.set_timing_cache(cache, False):
        log(timing_cache_rejected(path, sink.take_errors_since(mark)))
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise BackendFailed(timing_cache_failure(path, sink.take_errors_since(mark)))
    complaints = sink.take_errors_since(mark)  # a cache TensorRT accepted with complaints: not the build's errors
    if complaints:
        log(f"timing cache {path}: TensorRT reported {logged_reason(complaints, '', last=2)} (the build goes on)")
    return cache


def configure_builder(trt, builder, config, builder_optimization_level: int | None, dla_core: int | None) -> None:
    """The optional builder settings: optimization level (0..5, TensorRT's default 3) and a DLA core.

    DLA only exists on Jetson AGX/NX (Xavier, Orin); `builder.num_DLA_cores` says how many this
    machine has (0 elsewhere: BackendUnavailable). With a DLA core, layers run on it by default
    (config.default_device_type = DLA) and BuilderFlag.GPU_FALLBACK lets those it cannot run use the GPU."""
    if builder_optimization_level is not None:
        config.builder_optimization_level = int(builder_optimization_level)
    if dla_core is not None:
        check_dla_core(dla_core, int(builder.num_DLA_cores))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


def inspect_layers(trt, engine, plan_path: Path) -> dict[str, object]:
    """Layer precisions read with an execution context attached and each dynamic input at its
    profile's opt shape: without them the inspector writes "N/A due to dynamic shapes" for every
    format and type (which `layer_precisions` refuses)."""
    context = engine.create_execution_context()
    if context is None:
        raise TensorRTBuildError(f"{plan_path}: TensorRT could not create an execution context to inspect the engine (GPU memory?)")
    for name, dims in inspection_shapes(io_tensors(trt, engine)).items():
        if not context.set_input_shape(name, dims):
            raise TensorRTBuildError(f"{plan_path}: TensorRT refused the opt shape {dims} for input {name!r} while inspecting the engine")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    information = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    del inspector, context
    return layer_precisions(information, plan_path)


def save_timing_cache(config, path: Path) -> None:
    cache = config.get_timing_cache()
    data = bytes(cache.serialize())
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    precision: str | Precision,
    profile: BatchProfile,
    workspace_gib: float | None,
    timing_cache: Path | None,
    onnx_sha256: str,
    calibration_sha256: str | None,
    log: Log = print,
    model_manifest: Manifest | None = None,
    builder_optimization_level: int | None = None,
    dla_core: int | None = None,
) -> Manifest:
    """Build, verify and save a TensorRT plan and its sidecar manifest; returns the manifest.

    `builder_optimization_level` (0..5) and `dla_core` (Jetson AGX/NX only; see
    `configure_builder`) are TensorRT's defaults when None; both are recorded in the manifest.

    With `model_manifest` (the precision ONNX's), the engine's manifest is derived from it
    (`Manifest.for_engine`: the model fields and the input, its batch range narrowed to
    `profile`), so verify, bench and predict can use the engine alone.

    The plan bytes are saved untouched (trtexec can load them); metadata goes to
    `<plan>.json`. Both are published together only after the engine was deserialized
    and its layer precisions checked, so a failed build leaves no plan behind.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    precision = Precision.parse(precision, "precision")
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: no such ONNX file")
    check_workspace(workspace_gib)
    check_builder_options(builder_optimization_level, dla_core)
    check_writable(plan_path)
    if timing_cache is not None:
        check_writable(Path(timing_cache))
    if model_manifest is not None:
        model_manifest.require_input(onnx_path)  # before the build, not after it

    trt = import_tensorrt()
    cuda = cuda_runtime()
    with capture(trt, log) as sink:
        builder = create_builder(trt, sink)
        network = create_network(trt, builder)
        parser = trt.OnnxParser(network, sink.logger)
        log(f"parsing {onnx_path}")
        parsed = parser.parse_from_file(str(onnx_path))
        if not parsed or parser.num_errors > 0:
            errors = parser_errors(parser)
            raise OnnxParseError(parser_failure_message(onnx_path, errors, sink.errors), errors)

        config = builder.create_builder_config()
        if workspace_gib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * GIB))
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        configure_builder(trt, builder, config, builder_optimization_level, dla_core)
        add_batch_profile(builder, network, config, profile, onnx_path)
        load_timing_cache(config, timing_cache, log, sink)

        log(f"building {precision.value} engine (TensorRT {trt.__version__}, batch {profile}); this takes a while")
        started = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - started
        if serialized is None:
            raise TensorRTBuildError(f"{onnx_path}: TensorRT could not build an engine: {logged_reason(sink.errors, 'no error was logged')}")
        plan = bytes(serialized)
        if timing_cache is not None:
            save_timing_cache(config, Path(timing_cache))

        with staged(plan_path) as stage:
            staged_plan = stage / plan_path.name
            staged_plan.write_bytes(plan)
            manifest = _check_and_describe(
                trt,
                cuda,
                sink,
                staged_plan,
                plan_path,
                precision=precision,
                facts={
                    "profile": profile.to_dict(),
                    "workspace_gib": workspace_gib,
                    "builder_optimization_level": builder_optimization_level,
                    "dla_core": dla_core,
                    "onnx": onnx_path.name,
                    "onnx_sha256": onnx_sha256,
                    "calibration_sha256": calibration_sha256,
                    "plan_sha256": sha256_file(staged_plan),
                    "plan_bytes": len(plan),
                    "build_seconds": round(seconds, 3),
                    "timing_cache": str(timing_cache) if timing_cache is not None else None,
                },
                profile=profile,
                model_manifest=model_manifest,
            )
            manifest.write(stage / sidecar_path(plan_path).name)
    log(f"wrote {plan_path} ({len(plan) / 1e6:.1f} MB, {seconds:.1f} s; layers: {precision_summary(manifest.get('layers'))})")
    return manifest


def _check_and_describe(
    trt,
    cuda,
    sink: Sink,
    staged_plan: Path,
    plan_path: Path,
    *,
    precision: Precision,
    facts: dict[str, object],
    profile: BatchProfile,
    model_manifest: Manifest | None,
) -> Manifest:
    """Deserialize the staged plan, prove its precision from the inspector, and return its manifest
    (the build's `facts` plus what the engine and this machine say)."""
    runtime = create_runtime(trt, sink)
    engine = runtime.deserialize_cuda_engine(staged_plan.read_bytes())
    if engine is None:
        reason = logged_reason(sink.errors, "no error was logged")
        raise TensorRTBuildError(f"{plan_path}: the plan TensorRT just built does not deserialize: {reason}")
    layers = inspect_layers(trt, engine, plan_path)
    problem = missing_precision(precision, layers, plan_path)
    if problem:
        raise TensorRTBuildError(problem)
    io = io_tensors(trt, engine)
    del engine, runtime
    return _manifest(trt, cuda, precision, {**facts, "layers": layers, "io": io}, profile, model_manifest)


def _manifest(trt, cuda, precision: Precision, build: dict[str, object], profile: BatchProfile, model_manifest: Manifest | None) -> Manifest:
    """The engine's manifest: this machine's TensorRT, CUDA and GPU, then the build's facts; derived
    from the model's manifest when given (its input's batch range narrowed to `profile`), else standalone."""
    facts = {
        "tensorrt_version": str(trt.__version__),
        "strongly_typed": True,
        "cuda_runtime_version": cuda.runtime_version(),
        "cuda_driver_version": cuda.driver_version(),
        "gpu_name": cuda.device_name(),
        "compute_capability": cuda.compute_capability(),
        **build,
        "created": now_utc(),
        "versions": {**library_versions(), "tensorrt": str(trt.__version__)},
    }
    if model_manifest is not None:
        return model_manifest.for_engine(precision=precision, batch_min=profile.min, batch_max=profile.max, engine=facts)
    return Manifest.from_dict({"format": MANIFEST_FORMAT, "kind": TENSORRT_ENGINE, "precision": precision.value, **facts})
