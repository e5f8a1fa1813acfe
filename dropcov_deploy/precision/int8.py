"""INT8: the target's quantizer, then the fc treatment chosen by measurement.

The quantizer (per target, `quantizers`) places Q/DQ with the covariance block left in
FP32 and unquantized; `fc_choice` then derives and scores the fc's treatments from that
one calibrated graph. The manifest records both.
"""

from __future__ import annotations

from typing import Any

from dropcov_deploy import head_graph, onnx_io
from dropcov_deploy.backends import load_hook
from dropcov_deploy.errors import InputError
from dropcov_deploy.precision import PrecisionRequest
from dropcov_deploy.precision.fc_choice import choose_fc_variant


def precision_graph(request: PrecisionRequest) -> tuple[Any, dict[str, Any]]:
    calibration, reference, target = request.calibration, request.reference, request.target
    if calibration is None or reference is None:
        raise InputError("INT8 needs calibration images")
    source = onnx_io.load(request.model)
    onnx_io.ensure_node_names(source)
    quantize = load_hook(target.int8_quantizer)
    with request.step(f"calibrating and quantizing for {target.tag} ({len(calibration)} images, {request.calib_method})"):
        quantized, pinned, quantizer_record = quantize(request.model, calibration, request.calib_method, request.high_precision, keep_float=request.keep_float)
    fc = request.fc
    if head_graph.fc_node(source).name in request.keep_float:  # --keep-float fc: no INT8 there
        if fc not in ("auto", "float"):
            raise InputError(f"--fc {fc} and --keep-float of the fc contradict each other; keep one")
        fc = "float"
    modes = "int8, weight-only, float" if fc == "auto" else fc
    with request.step(f"measuring fc treatments ({modes})"):
        chosen, fc_record = choose_fc_variant(
            quantized,
            source,
            fc=fc,
            policy=target.fc_policy,
            fc_amax=reference.fc_input_amax,
            calibration=calibration,
            reference=reference.logits,
            work=request.work,
        )
    record = {
        "target": target.tag,
        "calibration_method": request.calib_method,
        "high_precision": quantizer_record.pop("high_precision"),
        "covariance_block_fp32": pinned,
        "fc": fc_record,
        **quantizer_record,
    }
    return chosen, record
