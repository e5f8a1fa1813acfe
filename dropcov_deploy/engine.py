"""The engine step: an FP32 export or a precision ONNX that `build` wrote becomes a TensorRT plan.

Kept apart from `build` because it is the part that runs where the engine will run (a
Jetson, a GPU server): plans are tied to the GPU and the TensorRT version, so they are
compiled there, from the ONNX and its manifest alone: no calibration data, no PyTorch.
`dropcov-deploy engine` is this step; `build --backend tensorrt` is the precision step
followed by it. Everything decided here (which ONNX may become an engine, the batch
profile, the command to run on the device) is plain Python that runs without TensorRT.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropcov_deploy.errors import BackendUnavailable, InputError
from dropcov_deploy.manifest import BatchRange, Manifest, renamed, sha256_file, sidecar_path
from dropcov_deploy.precision import Precision
from dropcov_deploy.steps import StepReporter, quiet_step

DEFAULT_BATCH = "1:8:32"
ENGINE_TARGET = "tensorrt"  # the manifest "target" of precision graphs shaped for TensorRT


@dataclass
class EngineOptions:
    """What `dropcov-deploy engine` takes besides the ONNX; None means "derive it"."""

    batch: str | None = None  # MIN:OPT:MAX or N; None: the ONNX's fixed batch, else 1:8:32 within its range
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    builder_optimization_level: int | None = None
    dla_core: int | None = None
    out: Path | None = None


@dataclass
class EngineResult:
    source: Path
    plan: Path
    manifest: Manifest
    seconds: float


def parse_profile(batch: str, workspace_gib: float | None = None):
    """The engine's batch profile from MIN:OPT:MAX or N, with the workspace checked too: one
    InputError line when either is malformed, before any slow work (the precision ONNX included)."""
    from dropcov_deploy.backends.tensorrt.profile import BatchProfile, check_workspace

    check_workspace(workspace_gib)
    return BatchProfile.parse(batch)


def plan_path_for(precision_onnx: Path) -> Path:
    return renamed(precision_onnx, ".plan")


def default_batch(limits: BatchRange | None) -> str:
    """The profile when --batch is not given: a fixed-batch ONNX's own batch, else 1:8:32 capped to what the ONNX accepts."""
    if limits is None:
        return DEFAULT_BATCH
    if not limits.dynamic and limits.max:
        return str(limits.max)
    low, best, high = (max(v, limits.min) for v in (1, 8, 32))
    if limits.max:
        low, best, high = (min(v, limits.max) for v in (low, best, high))
    return f"{low}:{best}:{high}"


def batch_problem(source: Path, limits: BatchRange | None, profile) -> str | None:
    """Why the profile cannot apply to this ONNX's batch axis (one line), or None."""
    if limits is None:
        return None
    if not limits.dynamic and limits.max and (profile.min, profile.max) != (limits.max, limits.max):
        return f"{source}: has a fixed batch of {limits.max}, so --batch {profile} cannot apply; use --batch {limits.max} or export with --batch dynamic"
    if limits.max and profile.max > limits.max:
        return f"{source}: accepts batches up to {limits.max}; --batch {profile} asks for {profile.max}"
    if profile.min < limits.min:
        return f"{source}: accepts batches from {limits.min}; --batch {profile} asks for {profile.min}"
    return None


def engine_source(model: Path) -> Manifest:
    """The manifest of an ONNX that may become an engine: an FP32 export, or a precision ONNX
    built for TensorRT (a CPU-target graph is shaped for ONNX Runtime's kernels, not TensorRT's)."""
    if not model.is_file():
        raise InputError(f"{model}: no such ONNX file")
    if model.suffix.lower() != ".onnx":
        raise InputError(f"{model}: not an ONNX model (expected the .onnx written by export or build)")
    from dropcov_deploy import onnx_io

    onnx_io.load(model, load_external_data=False)  # a corrupt file, or weights kept beside it that are missing, say so first
    found = Manifest.find(model) or Manifest()
    found.require_input(model)
    found.require_describes(model)
    if found.precision is not Precision.FP32 and found.target != ENGINE_TARGET:
        raise InputError(
            f"{model}: is a {found.precision} graph built for {found.target or 'an unknown target'} (ONNX Runtime); "
            f"for an engine build it with `dropcov-deploy build <fp32 export> --precision {found.precision} --backend tensorrt`"
        )
    return found


def device_command(model: Path, options: EngineOptions, profile: str) -> str:
    """The exact `dropcov-deploy engine ...` line that compiles this plan on a machine with TensorRT."""
    shown = str(model) if not str(model).startswith("-") else f"./{model}"  # a path that looks like an option would not run
    words = ["dropcov-deploy", "engine", shown, "--batch", profile]
    for flag, value in (
        ("--workspace", options.workspace_gib),
        ("--timing-cache", options.timing_cache),
        ("--builder-optimization-level", options.builder_optimization_level),
        ("--dla-core", options.dla_core),
        ("--out", options.out),
    ):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def _check_outputs(model: Path, plan: Path, timing_cache: Path | None) -> None:
    """The plan, its manifest and the timing cache (written too) never replace the ONNX or its
    manifest, nor each other; a plan is named as one (verify, bench and predict go by suffix)."""
    from dropcov_deploy.atomic import check_writable, spare_inputs
    from dropcov_deploy.manifest import ENGINE_SUFFIXES

    if plan.suffix.lower() not in ENGINE_SUFFIXES:
        raise InputError(f"--out {plan}: a TensorRT plan must end in {', '.join(ENGINE_SUFFIXES)}")
    try:
        spare_inputs([plan, sidecar_path(plan), timing_cache], [model])
    except InputError as exc:
        raise InputError(f"--out/--timing-cache: {exc}") from None
    check_writable(plan)
    if timing_cache is not None:
        check_writable(Path(timing_cache))


def _checked_profile(model: Path, manifest: Manifest, options: EngineOptions) -> tuple[Any, str]:
    from dropcov_deploy.backends.tensorrt.profile import check_builder_options

    text = options.batch if options.batch is not None else default_batch(manifest.batch)
    profile = parse_profile(text, options.workspace_gib)
    check_builder_options(options.builder_optimization_level, options.dla_core)
    problem = batch_problem(model, manifest.batch, profile)
    if problem:
        raise InputError(problem)
    return profile, str(profile)


def compile_engine(
    model: str | Path,
    options: EngineOptions | None = None,
    *,
    step: StepReporter = quiet_step,
    log: Callable[[str], Any] = print,
    unavailable_hint: str = "",
) -> EngineResult:
    """Build, check and publish a plan and its manifest from `model`. Every input is checked
    before TensorRT is looked for; without TensorRT or a GPU, BackendUnavailable (exit 3)
    whose one line is the command to run on the device."""
    from dropcov_deploy.backends import tensorrt as trt_backend

    started = time.perf_counter()
    model = Path(model)
    options = options or EngineOptions()
    manifest = engine_source(model)
    profile, profile_text = _checked_profile(model, manifest, options)
    plan = Path(options.out) if options.out is not None else plan_path_for(model)
    _check_outputs(model, plan, options.timing_cache)
    available, reason = trt_backend.tensorrt_status()
    if not available:
        raise BackendUnavailable(
            f"no TensorRT engine built here ({reason}){unavailable_hint}; on the device run: {device_command(model, options, profile_text)}"
        )
    calibration = manifest.get("calibration")
    with step(f"building the TensorRT engine {plan.name}"):
        engine_manifest = trt_backend.build_engine(
            model,
            plan,
            precision=manifest.precision,
            profile=profile,
            workspace_gib=options.workspace_gib,
            timing_cache=options.timing_cache,
            onnx_sha256=sha256_file(model),
            calibration_sha256=calibration.get("sha256") if isinstance(calibration, dict) else None,
            log=log,
            model_manifest=manifest,
            builder_optimization_level=options.builder_optimization_level,
            dla_core=options.dla_core,
        )
    return EngineResult(source=model, plan=plan, manifest=engine_manifest, seconds=time.perf_counter() - started)


def engine_step(
    precision_onnx: Path,
    manifest: Manifest,
    *,
    batch: str | None,
    workspace_gib: float | None,
    timing_cache: Path | None,
    step: StepReporter = quiet_step,
    log: Callable[[str], Any] = print,
) -> tuple[Path, Manifest]:
    """The Target hook `build --backend tensorrt` calls once the precision ONNX is published:
    the same step as `dropcov-deploy engine` (BackendUnavailable, exit 3, names the command)."""
    options = EngineOptions(batch=batch, workspace_gib=workspace_gib, timing_cache=timing_cache)
    hint = f"; the {manifest.precision} ONNX for TensorRT is {precision_onnx} (--backend onnxruntime builds for this machine's CPU instead)"
    result = compile_engine(precision_onnx, options, step=step, log=log, unavailable_hint=hint)
    return result.plan, result.manifest
