"""FP16 numerics of the ops that break first: LayerNormalization and Softmax.

A transformer's FP16 failures start inside: a LayerNorm whose input has grown past
FP16's comfortable range (its variance squares it), a Softmax whose logits overflow.
The final logits can hide a damaged intermediate for a while, so this check runs the
precision graph and the FP32 graph on real calibration images with every such node's
output exposed, and reports per op type: how many run in FP16, non-finite values,
the worst relative error against FP32, and the largest input magnitude seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import onnx_io

SENSITIVE_OPS = ("LayerNormalization", "Softmax")
CHECK_IMAGES = 8
FP16_MAX = 65504.0


def _fp16_nodes(model) -> set[str]:
    """Nodes whose first input is FP16 after shape inference: they compute in FP16."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return {n.name for n in model.graph.node if n.input and types.get(n.input[0]) == onnx.TensorProto.FLOAT16}


def sensitive_op_report(fp32_onnx: Path, precision_onnx: Path, batch: np.ndarray) -> dict[str, Any]:
    """Per sensitive op type, the precision graph's numerics against the FP32 graph, matched by node name."""
    from dropcov_deploy.metrics import relative_error
    from dropcov_deploy.probe import run_exposed

    reference_model, model = onnx_io.load(fp32_onnx), onnx_io.load(precision_onnx)
    reference_nodes = {n.name: n for n in reference_model.graph.node if n.op_type in SENSITIVE_OPS}
    nodes = [n for n in model.graph.node if n.op_type in SENSITIVE_OPS and n.name in reference_nodes]
    if not nodes:
        return {}
    in_fp16 = _fp16_nodes(model)
    actual = next(run_exposed(model, [n.output[0] for n in nodes], [batch]))
    expected = next(run_exposed(reference_model, [t for n in nodes for t in (reference_nodes[n.name].input[0], reference_nodes[n.name].output[0])], [batch]))
    report: dict[str, Any] = {}
    for op_type in SENSITIVE_OPS:
        typed = [n for n in nodes if n.op_type == op_type]
        if not typed:
            continue
        errors, nonfinite, largest_input = {}, 0, 0.0
        for node in typed:
            reference = reference_nodes[node.name]
            value = np.asarray(actual[node.output[0]], dtype=np.float64)
            nonfinite += int((~np.isfinite(value)).sum())
            errors[node.name] = relative_error(np.nan_to_num(value, posinf=FP16_MAX, neginf=-FP16_MAX), expected[reference.output[0]])
            largest_input = max(largest_input, float(np.abs(expected[reference.input[0]]).max()))
        worst = max(errors, key=errors.__getitem__)
        report[op_type] = {
            "nodes": len(typed),
            "fp16_nodes": sum(n.name in in_fp16 for n in typed),
            "nonfinite": nonfinite,
            "max_relative_error": errors[worst],
            "worst_node": worst,
            "max_abs_input": largest_input,
            "images": len(batch),
        }
    return report
