"""The covariance fc's INT8 treatment: derive the candidates, score them, choose one.

The fc reads the covariance vector, whose entries span a wide range of magnitudes, so
full INT8 is not a safe default (deployment-notes.md): three treatments are derived by
graph surgery from one calibrated graph (calibration runs once), "int8" (weights and
input quantized), "weight-only" (INT8 weights, float input) and "float" (the original
weights in the graph's high precision); each is scored on the calibration images, and
the choice follows the target's policy ("fastest": as accurate as the best, then the
fastest on this CPU; "smallest": as accurate as the best, then int8 > weight-only > float).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import head_graph, onnx_io
from dropcov_deploy.precision.keep_float import bypass_input_qdq, restore_float_weights

FC_MODES = ("int8", "weight-only", "float")
FC_CHOICES = ("auto", *FC_MODES)
# candidates within this much top-1 agreement of the best one are "as accurate"
FC_AGREEMENT_SLACK = 0.005
LATENCY_WARMUP, LATENCY_RUNS = 3, 15


# ------------------------------------------------------------------ surgery
def _add_fc_qdq(model, fc, source_fc, source_initializers, act_amax: float | None) -> None:
    """Per-channel symmetric INT8 weights (Q/DQ) and, with `act_amax`, a per-tensor input Q/DQ."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.to_array(source_initializers[source_fc.input[1]]).astype(np.float32)
    trans_b = next((a.i for a in fc.attribute if a.name == "transB"), 0) if fc.op_type == "Gemm" else 0
    axis = 0 if trans_b else 1  # the output-channel axis of the weight
    reduce_axes = tuple(i for i in range(weight.ndim) if i != axis)
    scale = np.maximum(np.abs(weight).max(axis=reduce_axes), 1e-12) / 127.0
    shape = [-1 if i == axis else 1 for i in range(weight.ndim)]
    quantized = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
    value_types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.value_info) + list(model.graph.input)}
    float_type = TensorProto.FLOAT16 if value_types.get(fc.input[0]) == TensorProto.FLOAT16 else TensorProto.FLOAT
    np_float = np.float16 if float_type == TensorProto.FLOAT16 else np.float32
    base = f"{fc.name}_fc"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(quantized, f"{base}_w_int8"),
            numpy_helper.from_array(scale.astype(np_float), f"{base}_w_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{base}_w_zero"),
        ]
    )
    nodes = [
        helper.make_node(
            "DequantizeLinear", [f"{base}_w_int8", f"{base}_w_scale", f"{base}_w_zero"], [f"{base}_w_dq"], name=f"{base}_w_DequantizeLinear", axis=axis
        )
    ]
    fc.input[1] = f"{base}_w_dq"
    if len(fc.input) > 2 and len(source_fc.input) > 2:
        bias = numpy_helper.to_array(source_initializers[source_fc.input[2]]).astype(np_float)
        model.graph.initializer.append(numpy_helper.from_array(bias, f"{base}_bias"))
        fc.input[2] = f"{base}_bias"
    if act_amax is not None:
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(max(act_amax, 1e-12) / 127.0, dtype=np_float), f"{base}_x_scale"),
                numpy_helper.from_array(np.array(0, dtype=np.int8), f"{base}_x_zero"),
            ]
        )
        nodes += [
            helper.make_node("QuantizeLinear", [fc.input[0], f"{base}_x_scale", f"{base}_x_zero"], [f"{base}_x_q"], name=f"{base}_x_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{base}_x_q", f"{base}_x_scale", f"{base}_x_zero"], [f"{base}_x_dq"], name=f"{base}_x_DequantizeLinear"),
        ]
        fc.input[0] = f"{base}_x_dq"
    position = list(model.graph.node).index(fc)
    for offset, node in enumerate(nodes):
        model.graph.node.insert(position + offset, node)


def fc_variant(quantized, source, mode: str, act_amax: float | None = None):
    """A copy of `quantized` with the fc in `mode` (int8, weight-only, float).

    Start from the float fc (original weights), then add what the mode quantizes, so
    every variant comes from one calibrated graph whatever the quantizer did to the fc.
    """
    from onnx import ModelProto

    if mode not in FC_MODES:
        raise ValueError(mode)
    model = ModelProto()
    model.CopyFrom(quantized)
    fc = head_graph.fc_node(model)
    source_fc = head_graph.fc_node(source)
    initializers = {t.name: t for t in source.graph.initializer}
    bypass_input_qdq(model, fc, 0)
    restore_float_weights(model, fc, source_fc, initializers, (1, 2))
    fc = head_graph.fc_node(model)
    if mode != "float":
        if mode == "int8" and act_amax is None:
            raise ValueError("int8 fc needs the calibrated input range")
        _add_fc_qdq(model, fc, source_fc, initializers, act_amax if mode == "int8" else None)
    onnx_io.drop_dead_nodes(model)
    return model


# ------------------------------------------------------------------ scoring and choice
def score(
    path: Path, calibration, reference: np.ndarray, latency_batch: np.ndarray | None = None, opener: Callable[[Path], Any] | None = None
) -> dict[str, Any]:
    """Agreement (and accuracy, when labelled) of a graph with the FP32 logits on the calibration
    images, run by `opener`'s runner (ONNX Runtime on the CPU by default); with `latency_batch`,
    also its median latency on it."""
    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from dropcov_deploy.metrics import compare

    with (opener or OnnxRuntimeRunner)(path) as runner:
        outputs = np.concatenate([runner(batch) for batch in calibration.batches()])
        parity = compare(outputs, reference, calibration.labels)
        result: dict[str, Any] = {k: parity[k] for k in ("top1_agreement", "nonfinite", "cosine_min", "relative_error")}
        if calibration.labels is not None:
            result["accuracy"] = parity["accuracy"]
            result["accuracy_drop"] = parity["accuracy_drop"]
        if latency_batch is not None:
            for _ in range(LATENCY_WARMUP):
                runner(latency_batch)
            times = []
            for _ in range(LATENCY_RUNS):
                started = time.perf_counter()
                runner(latency_batch)
                times.append(time.perf_counter() - started)
            result["cpu_latency_ms_batch1"] = float(np.median(times) * 1000)
    return result


def choose_fc(candidates: dict[str, dict[str, Any]], policy: str) -> tuple[str, str]:
    """Pick the fc treatment: as accurate as the best (within the slack), then by the target's policy."""
    best = max(c["top1_agreement"] for c in candidates.values())
    eligible = [mode for mode, c in candidates.items() if c["top1_agreement"] >= best - FC_AGREEMENT_SLACK and c["nonfinite"] == 0]
    if policy == "fastest" and all("cpu_latency_ms_batch1" in candidates[m] for m in eligible):
        chosen = min(eligible, key=lambda m: candidates[m]["cpu_latency_ms_batch1"])
        why = (
            f"{chosen}: top-1 agreement {candidates[chosen]['top1_agreement']:.4f} within {FC_AGREEMENT_SLACK} of the best "
            f"({best:.4f}) and the fastest of those on this CPU ({candidates[chosen]['cpu_latency_ms_batch1']:.2f} ms at batch 1)"
        )
    else:
        chosen = next(m for m in FC_MODES if m in eligible)
        why = (
            f"{chosen}: top-1 agreement {candidates[chosen]['top1_agreement']:.4f} within {FC_AGREEMENT_SLACK} of the best "
            f"({best:.4f}); preferred order int8 > weight-only > float (bytes and math; TensorRT latency cannot be measured here)"
        )
    return chosen, why


def choose_fc_variant(quantized, source, *, fc: str, policy: str, fc_amax: float, calibration, reference: np.ndarray, work: Path):
    """Derive the candidate(s), score them, and return (the chosen graph, its manifest record)."""
    modes = list(FC_MODES) if fc == "auto" else [fc]
    candidates: dict[str, dict[str, Any]] = {}
    variants = {}
    for mode in modes:
        variant = fc_variant(quantized, source, mode, fc_amax)
        path = work / f"fc-{mode}.onnx"
        onnx_io.save(variant, path)
        candidates[mode] = score(path, calibration, reference, calibration.data[:1] if policy == "fastest" else None)
        variants[mode] = variant
    chosen, why = choose_fc(candidates, policy) if fc == "auto" else (fc, "chosen with --fc")
    return variants[chosen], {"chosen": chosen, "why": why, "candidates": candidates}
