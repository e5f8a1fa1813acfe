"""Per-layer tracing for `verify --locate`: every Conv/Gemm/MatMul output of a precision
artifact against the same layer of the FP32 graph, so a failing artifact names the layer
where the error starts and the one where it is largest, by PyTorch module path.

Layers are matched by node name (the quantizers and AutoCast keep them) and compared on
their first output, as the FP32 graph computes it (a quantized layer's output before its
Q/DQ; where ONNX Runtime folded a ReLU into the Q, both sides are read before the ReLU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import layer_names, onnx_io
from dropcov_deploy.metrics import relative_error


def trace_layers(artifact: Path, fp32: Path, batch: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Relative error of each layer's output against FP32 on `batch`; the first past `tolerance`
    and the worst, named by module path where the export recorded it."""
    from dropcov_deploy.probe import run_exposed

    reference_graph, artifact_graph = onnx_io.load(fp32), onnx_io.load(artifact)
    onnx_io.ensure_node_names(reference_graph)
    onnx_io.ensure_node_names(artifact_graph)
    present = {node.name: node for node in artifact_graph.graph.node}
    pairs = []  # (layer, tensor in the FP32 graph, tensor in the artifact)
    for layer in layer_names.layers(reference_graph):
        node = present.get(layer.name)
        source = next(n for n in reference_graph.graph.node if n.name == layer.name)
        if node is not None and node.output:
            pairs.append((layer, source.output[0], node.output[0]))
    if not pairs:
        return {"supported": False, "why": f"no layer of {fp32.name} is found by name in {artifact.name}"}
    expected = next(run_exposed(reference_graph, [p[1] for p in pairs], [batch]))
    actual = next(run_exposed(artifact_graph, [p[2] for p in pairs], [batch]))
    rows: list[dict[str, Any]] = []
    for layer, ours, theirs in pairs:
        got, want = np.asarray(actual[theirs], np.float64), np.asarray(expected[ours], np.float64)
        if got.shape != want.shape:
            continue
        rows.append({"layer": layer.label, "node": layer.name, "op_type": layer.op_type, "relative_error": relative_error(got, want)})
    first = next((row for row in rows if not row["relative_error"] <= tolerance), None)  # NaN counts as past it
    worst = max(rows, key=lambda row: row["relative_error"] if np.isfinite(row["relative_error"]) else np.inf, default=None)
    return {"supported": True, "reference": str(fp32), "tolerance": tolerance, "compared": len(rows), "first": first, "worst": worst, "layers": rows}
