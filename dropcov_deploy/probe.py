"""Run an ONNX model with some of its intermediate tensors as extra outputs.

Verification (per-stage errors), calibration (the fc input's range) and the FP16
numerics check all need values from inside a graph; ONNX Runtime only returns graph
outputs, so the tensors are appended as outputs of a temporary copy.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from dropcov_deploy import onnx_io


def expose(model, tensors: Iterable[str]) -> None:
    """Append `tensors` to the graph outputs, typed from shape inference (FP16 stays FP16)."""
    import onnx

    existing = {o.name for o in model.graph.output}
    wanted = [t for t in dict.fromkeys(tensors) if t not in existing]
    if not wanted:
        return
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in inferred.graph.value_info}
    for tensor in wanted:
        model.graph.output.append(infos[tensor] if tensor in infos else onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))


def run_exposed(model, tensors: Iterable[str], batches: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """For each batch, every graph output and every tensor in `tensors`, by name."""
    from onnx import ModelProto

    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner

    probe = ModelProto()
    probe.CopyFrom(model)
    expose(probe, tensors)
    with tempfile.TemporaryDirectory(prefix="dropcov-probe-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx_io.save(probe, path)
        with OnnxRuntimeRunner(path) as runner:
            for batch in batches:
                yield runner.infer({runner.input_names[0]: np.ascontiguousarray(batch, dtype=np.float32)})
