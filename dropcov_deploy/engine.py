"""The engine step: a precision ONNX (any that `build` wrote) becomes a TensorRT plan.

Kept apart from `build` because it is the part that runs where the engine will run (a
Jetson, a GPU server): it needs the precision ONNX and its manifest, no calibration data
and no PyTorch. `build --backend tensorrt` is the precision step followed by this one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dropcov_deploy.errors import BackendUnavailable
from dropcov_deploy.manifest import Manifest, sha256_file
from dropcov_deploy.steps import StepReporter, quiet_step


def parse_profile(batch: str, workspace_gib: float | None = None):
    """The engine's batch profile from MIN:OPT:MAX or N, with the workspace checked too: one
    InputError line when either is malformed, before any slow work (the precision ONNX included)."""
    from dropcov_deploy.backends.tensorrt.profile import BatchProfile, check_workspace

    check_workspace(workspace_gib)
    return BatchProfile.parse(batch)


def plan_path_for(precision_onnx: Path) -> Path:
    return precision_onnx.with_name(precision_onnx.name[: -len(".onnx")] + ".plan")


def engine_step(
    precision_onnx: Path,
    manifest: Manifest,
    *,
    batch: str,
    workspace_gib: float | None,
    timing_cache: Path | None,
    calibration_sha256: str | None,
    step: StepReporter = quiet_step,
    log: Callable[[str], Any] = print,
) -> tuple[Path, Manifest]:
    """Build, check and publish the plan and its manifest; BackendUnavailable (exit 3) without TensorRT or a GPU."""
    from dropcov_deploy.backends import tensorrt as trt_backend

    profile = parse_profile(batch, workspace_gib)
    available, reason = trt_backend.tensorrt_status()
    if not available:
        raise BackendUnavailable(
            f"no TensorRT engine built: {reason}; the {manifest.precision} ONNX for TensorRT is written to {precision_onnx} "
            "(build the engine where TensorRT and a GPU exist); `--backend onnxruntime` works here"
        )
    plan = plan_path_for(precision_onnx)
    with step(f"building the TensorRT engine {plan.name}"):
        engine_manifest = trt_backend.build_engine(
            precision_onnx,
            plan,
            precision=manifest.precision,
            profile=profile,
            workspace_gib=workspace_gib,
            timing_cache=timing_cache,
            onnx_sha256=sha256_file(precision_onnx),
            calibration_sha256=calibration_sha256,
            log=log,
            model_manifest=manifest,
        )
    return plan, engine_manifest
