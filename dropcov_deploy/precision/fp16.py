"""FP16 by ModelOpt AutoCast: convolutions and fc in FP16, the covariance block pinned to FP32.

The pin is by node name (the block found structurally in the graph), not left to
AutoCast's range threshold: the covariance product's depth (N = 196) would not trip
the depth-of-reduction rule, and its values can still overflow FP16. Inputs and
outputs stay FP32. AutoCast's reference run uses real calibration images.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import head_graph, onnx_io
from dropcov_deploy.errors import BackendUnavailable, InputError
from dropcov_deploy.layer_names import with_trailing_activations
from dropcov_deploy.precision import PrecisionRequest
from dropcov_deploy.precision.calibration import CalibrationSet
from dropcov_deploy.precision.quiet import quiet_quantizers

REFERENCE_IMAGES = 64  # AutoCast's reference run: enough real images to see activation ranges


def reference_images(onnx_path: Path) -> int:
    """How many calibration images AutoCast's reference run takes: REFERENCE_IMAGES, fewer when
    their intermediate tensors (all exposed, and AutoCast holds every image's at once) would not fit in memory."""
    import onnx

    from dropcov_deploy.precision.calibration import memory_bounded_batch

    return memory_bounded_batch(onnx.load(str(onnx_path), load_external_data=False), cap=REFERENCE_IMAGES)


def require_modelopt() -> None:
    try:
        import modelopt.onnx  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            f"ModelOpt is not installed ({exc.name}): pip install 'dropcov-deploy[build]' (nvidia-modelopt[onnx]) for FP16 and TensorRT INT8"
        ) from None


def convert_fp16(onnx_path: Path, calibration: CalibrationSet, input_name: str = "input", keep_float: tuple[str, ...] = (), range_check: bool = True):
    """Mixed-precision FP16 ModelProto with FP32 I/O, an FP32 covariance block and the
    `keep_float` nodes in FP32; returns it and the covariance block's node names."""
    full = onnx_io.load(onnx_path)
    onnx_io.ensure_node_names(full)
    pinned = head_graph.covariance_block(full)
    with tempfile.TemporaryDirectory(prefix="dropcov-fp16-") as tmp:
        named = Path(tmp) / "named.onnx"
        onnx_io.save(full, named)
        kept = [*pinned, *(name for name in with_trailing_activations(full, keep_float) if name not in pinned)]
        return autocast_fp16(named, calibration, kept, input_name, range_check=range_check), pinned


def autocast_fp16(
    onnx_path: Path, calibration: CalibrationSet, keep_fp32: list[str], input_name: str = "input", opset: int | None = None, range_check: bool = True
):
    """AutoCast to FP16: the named nodes stay FP32, and so does any node whose values on real
    calibration images pass AutoCast's range limit; inputs and outputs stay FP32.

    A Q/DQ graph needs opset 19 (FP16 scales): below it DequantizeLinear can only output
    FP32, and AutoCast puts a Cast between every DQ and its layer, which TensorRT's Q/DQ
    fusion does not look through. `range_check=False` lifts AutoCast's limits on activations and
    weights: every node not named goes to FP16 (how the precision debugger's tests make a layer
    that FP16 breaks)."""
    require_modelopt()
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with tempfile.TemporaryDirectory(prefix="dropcov-autocast-") as tmp, quiet_quantizers():
        reference = Path(tmp) / "reference.npz"
        arrays: dict[str, Any] = {input_name: calibration.data[: reference_images(onnx_path)]}
        np.savez(reference, **arrays)
        return convert_to_mixed_precision(
            onnx_path=str(onnx_path),
            low_precision_type="fp16",
            nodes_to_exclude=[f"^{re.escape(name)}$" for name in keep_fp32],
            keep_io_types=True,
            calibration_data=str(reference),
            providers=["cpu"],
            opset=opset,
            **({} if range_check else {"data_max": float("inf"), "init_max": float("inf")}),
        )


def precision_graph(request: PrecisionRequest):
    """FP16 for any target: TensorRT builds its engine from this graph, ONNX Runtime runs it."""
    if request.calibration is None:
        raise InputError("FP16 needs calibration images")
    with request.step("converting to FP16 (AutoCast, covariance block pinned to FP32)"):
        proto, pinned = convert_fp16(request.model, request.calibration, keep_float=request.keep_float, range_check=request.autocast_range_check)
    return proto, {"autocast": "modelopt.onnx.autocast", "covariance_block_fp32": pinned, "io": "fp32"}
