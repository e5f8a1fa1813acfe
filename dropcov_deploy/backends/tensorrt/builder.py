"""Build a strongly typed engine from a precision-baked ONNX, prove its precision, save it.

Both 10.x and 11.x build strongly typed networks: precision comes from the tensor types
in the ONNX (FP16 from a mixed precision graph, INT8 from Q/DQ pairs), never from
builder flags, which 11.x removed. On 10.x the network is created with
NetworkDefinitionCreationFlag.STRONGLY_TYPED; on 11.x `create_network()` takes no flag.
"""

from __future__ import annotations

import time
from pathlib import Path

from dropcov_deploy.atomic import atomic_write, check_writable, staged
from dropcov_deploy.backends.tensorrt.availability import cuda_runtime, import_tensorrt, tensorrt_major
from dropcov_deploy.backends.tensorrt.errors import OnnxParseError, TensorRTBuildError
from dropcov_deploy.backends.tensorrt.inspector import layer_precisions, missing_precision, precision_summary
from dropcov_deploy.backends.tensorrt.log import Log, logged_reason, make_logger, parser_errors, parser_failure_message
from dropcov_deploy.backends.tensorrt.profile import BatchProfile, check_workspace, io_tensors, profile_shapes, shape
from dropcov_deploy.errors import InputError
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


def timing_cache_rejected(path: Path | None) -> str:
    """What we say when TensorRT refuses a timing cache (another TensorRT version or GPU made it)."""
    return f"timing cache {path} does not match this TensorRT/GPU; starting a new one"


def load_timing_cache(config, path: Path | None, log: Log):
    """The builder's timing cache: read from `path` when it exists, else empty (filled by the build).
    A cache TensorRT refuses (set_timing_cache with ignore_mismatch=False returns false) is replaced by an empty one."""
    cache = config.create_timing_cache(timing_cache_data(path))
    if not config.set_timing_cache(cache, False):
        log(timing_cache_rejected(path))
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


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
) -> Manifest:
    """Build, verify and save a TensorRT plan and its sidecar manifest; returns the manifest.

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
    check_writable(plan_path)
    if timing_cache is not None:
        check_writable(Path(timing_cache))
    if model_manifest is not None:
        model_manifest.require_input(onnx_path)  # before the build, not after it

    trt = import_tensorrt()
    cuda = cuda_runtime()
    logger = make_logger(trt, log)

    builder = trt.Builder(logger)
    network = create_network(trt, builder)
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {onnx_path}")
    parsed = parser.parse_from_file(str(onnx_path))
    if not parsed or parser.num_errors > 0:
        errors = parser_errors(parser)
        raise OnnxParseError(parser_failure_message(onnx_path, errors, logger.errors), errors)

    config = builder.create_builder_config()
    if workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * GIB))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    add_batch_profile(builder, network, config, profile, onnx_path)
    load_timing_cache(config, timing_cache, log)

    log(f"building {precision.value} engine (TensorRT {trt.__version__}, batch {profile}); this takes a while")
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        raise TensorRTBuildError(f"{onnx_path}: TensorRT could not build an engine: {logged_reason(logger.errors, 'no error was logged')}")
    plan = bytes(serialized)
    if timing_cache is not None:
        save_timing_cache(config, Path(timing_cache))

    with staged(plan_path) as stage:
        staged_plan = stage / plan_path.name
        staged_plan.write_bytes(plan)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(staged_plan.read_bytes())
        if engine is None:
            reason = logged_reason(logger.errors, "no error was logged")
            raise TensorRTBuildError(f"{plan_path}: the plan TensorRT just built does not deserialize: {reason}")
        inspector = engine.create_engine_inspector()
        layers = layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        problem = missing_precision(precision, layers, plan_path)
        if problem:
            raise TensorRTBuildError(problem)
        facts = {
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
            "plan_sha256": sha256_file(staged_plan),
            "plan_bytes": len(plan),
            "layers": layers,
            "io": io_tensors(trt, engine),
            "build_seconds": round(seconds, 3),
            "timing_cache": str(timing_cache) if timing_cache is not None else None,
            "created": now_utc(),
            "versions": {**library_versions(), "tensorrt": str(trt.__version__)},
        }
        if model_manifest is not None:
            manifest = model_manifest.for_engine(precision=precision, batch_min=profile.min, batch_max=profile.max, engine=facts)
        else:
            manifest = Manifest.from_dict({"format": MANIFEST_FORMAT, "kind": TENSORRT_ENGINE, "precision": precision.value, **facts})
        del inspector, engine, runtime
        manifest.write(stage / sidecar_path(plan_path).name)
    log(f"wrote {plan_path} ({len(plan) / 1e6:.1f} MB, {seconds:.1f} s; layers: {precision_summary(layers)})")
    return manifest
