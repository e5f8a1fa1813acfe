"""INT8 with explicit Q/DQ, for two targets, the covariance block never quantized.

- TensorRT: ModelOpt's Q/DQ placement (symmetric, per-channel weights) on the FP32
  graph, then the unquantized rest to the chosen high precision by AutoCast (FP16 by
  default) with the covariance block pinned to FP32 by node name. (ModelOpt's own FP16
  pass pins by op type only, which in a transformer would also pin every attention
  MatMul and reshape.)
- CPU: ONNX Runtime's own `quantize_static` QDQ graph, which its CPU kernels fuse
  (ModelOpt's TensorRT-shaped graph runs about 3x slower than FP32 there).

The fc gets one of three treatments, derived from one calibrated graph by surgery so
that calibration runs once: "int8" (weights and input quantized), "weight-only" (INT8
weights, float input) or "float" (the original weights in the graph's high precision).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from dropcov_deploy import onnx_graph
from dropcov_deploy.errors import InputError
from dropcov_deploy.precision.calibration import CalibrationSet, ort_reader
from dropcov_deploy.precision.fp16 import _quiet_modelopt, require_modelopt

TARGETS = ("tensorrt", "cpu")
FC_MODES = ("int8", "weight-only", "float")
CALIB_METHODS = ("entropy", "max", "percentile")


def _named_copy(onnx_path: Path, folder: Path):
    """The model with every node named (exclusions address nodes by name), saved for the quantizers."""
    model = onnx_graph.load(onnx_path)
    onnx_graph.ensure_node_names(model)
    path = folder / "named.onnx"
    onnx_graph.save(model, path)
    return path, model


def stem_conv(model) -> list[str]:
    """The Conv that reads the image. On the CPU target it stays FP32: ONNX Runtime's fused
    INT8 conv also quantizes its pre-ReLU output, which cost 3 points of accuracy on digits
    (measured: 0.15 relative logit error from this one layer, < 0.02 from any other)."""
    graph_inputs = {i.name for i in model.graph.input}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in graph_inputs][:1]


def quantize_cpu(onnx_path: Path, calibration: CalibrationSet, method: str = "entropy", input_name: str = "input"):
    """ONNX Runtime QDQ for its CPU kernels: per-channel symmetric INT8 weights, UINT8 activations
    (the U8S8 pair that ONNX Runtime fuses into QLinearConv on x86), returns a ModelProto."""
    with tempfile.TemporaryDirectory(prefix="dropcov-int8-cpu-") as tmp:
        named, model = _named_copy(onnx_path, Path(tmp))
        pinned, stem = onnx_graph.covariance_block(model), stem_conv(model)
        out = Path(tmp) / "int8.onnx"
        if "modelopt.onnx.quantization" in sys.modules:
            # ModelOpt patches onnxruntime.quantization's calibrators in-process for TensorRT;
            # run ONNX Runtime's own quantizer where those patches do not exist.
            data = Path(tmp) / "calibration.npy"
            np.save(data, calibration.data)
            code = (
                "import sys, json, numpy as np; from pathlib import Path;"
                "from dropcov_deploy.precision.calibration import CalibrationSet;"
                "from dropcov_deploy.precision.int8 import _ort_quantize_static as q;"
                "a = json.loads(sys.argv[1]);"
                "q(Path(a['named']), CalibrationSet(Path(a['data']), np.load(a['data']), None, ''), Path(a['out']), a['method'], a['exclude'], a['input'])"
            )
            args = {"named": str(named), "data": str(data), "out": str(out), "method": method, "exclude": [*pinned, *stem], "input": input_name}
            result = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"ONNX Runtime quantization failed: {result.stderr.strip().splitlines()[-1:]}")
        else:
            _ort_quantize_static(named, calibration, out, method, [*pinned, *stem], input_name)
        model = onnx_graph.load(out)
        unquantize_block_inputs(model, pinned)
        return model, pinned


def _ort_quantize_static(named: Path, calibration: CalibrationSet, out: Path, method: str, exclude: list[str], input_name: str) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    with _quiet():
        quantize_static(
            str(named),
            str(out),
            ort_reader(calibration, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=methods[method],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )


def quantize_tensorrt(
    onnx_path: Path, calibration: CalibrationSet, method: str = "entropy", high_precision: str = "fp16", input_name: str = "input"
):
    """ModelOpt INT8 Q/DQ for TensorRT, the rest in `high_precision`; returns a ModelProto."""
    require_modelopt()
    _quiet_modelopt()
    if method not in ("entropy", "max"):
        raise InputError(f"--calib-method {method} is not supported by ModelOpt for TensorRT; use entropy or max")
    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory(prefix="dropcov-int8-trt-") as tmp:
        named, model = _named_copy(onnx_path, Path(tmp))
        pinned = onnx_graph.covariance_block(model)
        out = Path(tmp) / "int8.onnx"
        with _quiet():
            quantize(
                str(named),
                quantize_mode="int8",
                calibration_data=calibration.data,
                calibration_shapes=f"{input_name}:{'x'.join(map(str, (calibration.batch_size(), *calibration.data.shape[1:])))}",
                calibration_method=method,
                calibration_eps=["cpu"],
                nodes_to_exclude=list(pinned),  # a copy: ModelOpt appends to the list it is given
                high_precision_dtype="fp32",
                output_path=str(out),
                log_level="ERROR",
            )
        model = onnx_graph.load(out)
        unquantize_block_inputs(model, pinned)
        if high_precision == "fp16":
            from dropcov_deploy.precision.fp16 import autocast_fp16

            onnx_graph.save(model, out)
            model = autocast_fp16(out, calibration, pinned, input_name, opset=max(19, onnx_graph.opset(model)))
        return model, pinned


@contextlib.contextmanager
def _quiet():
    """Quantizers print per-node progress; keep our CLI's output readable."""
    levels = {name: logging.getLogger(name).level for name in ("modelopt", "onnxruntime", "root")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    tqdm_was = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # ModelOpt's calibration bars write to stderr
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if tqdm_was is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_was


# ------------------------------------------------------------------ fc surgery
def _bypass_activation_qdq(model, fc) -> bool:
    """fc input: X -> Q -> DQ -> fc becomes X -> fc. True when there was a pair to remove."""
    made_by = onnx_graph.producers(model)
    dq = made_by.get(fc.input[0])
    if dq is None or dq.op_type != "DequantizeLinear":
        return False
    q = made_by.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return False
    fc.input[0] = q.input[0]
    consumers = onnx_graph.consumers(model)
    if not [n for n in consumers.get(dq.output[0], []) if n is not fc]:
        model.graph.node.remove(dq)
    if not [n for n in consumers.get(q.output[0], []) if n is not dq]:
        model.graph.node.remove(q)
    return True


def _float_weights(model, fc, source_fc, source_initializers) -> None:
    """Replace the fc's dequantized weight (and bias) by the original weights, in the fc's float type."""
    from onnx import TensorProto, numpy_helper

    made_by = onnx_graph.producers(model)
    initializers = {t.name: t for t in model.graph.initializer}
    for position in (1, 2):
        if position >= len(fc.input) or position >= len(source_fc.input):
            continue
        original = numpy_helper.to_array(source_initializers[source_fc.input[position]])
        producer = made_by.get(fc.input[position])
        current_name = fc.input[position]
        if producer is not None and producer.op_type == "DequantizeLinear":
            scale = initializers.get(producer.input[1])
            dtype = np.float16 if scale is not None and scale.data_type == TensorProto.FLOAT16 else np.float32
        elif current_name in initializers:
            dtype = numpy_helper.to_array(initializers[current_name]).dtype
        else:
            continue
        name = f"{source_fc.input[position]}_float"
        model.graph.initializer.append(numpy_helper.from_array(original.astype(dtype), name=name))
        fc.input[position] = name
    onnx_graph.drop_unused_initializers(model)
    _drop_dead_nodes(model)


def _drop_dead_nodes(model) -> None:
    outputs = {o.name for o in model.graph.output}
    changed = True
    while changed:
        changed = False
        used = {name for node in model.graph.node for name in node.input} | outputs
        for node in list(model.graph.node):
            if not any(out in used for out in node.output):
                model.graph.node.remove(node)
                changed = True
    onnx_graph.drop_unused_initializers(model)


def unquantize_block_inputs(model, block: list[str]) -> int:
    """Feed the covariance block float values: X -> Q -> DQ -> block becomes X -> block.

    Quantizers put a Q/DQ pair on the reduce conv's output, which would make the
    covariance a product of INT8-rounded activations (the rounding error squared).
    Returns the number of pairs bypassed.
    """
    made_by = onnx_graph.producers(model)
    names = set(block)
    bypassed = 0
    for node in model.graph.node:
        if node.name not in names:
            continue
        for position, tensor in enumerate(node.input):
            dq = made_by.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = made_by.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            node.input[position] = q.input[0]
            bypassed += 1
    _drop_dead_nodes(model)
    return bypassed


def fp32_pass(onnx_path: Path, calibration: CalibrationSet) -> tuple[np.ndarray, float]:
    """One pass of the FP32 graph over the calibration set: its logits (the reference every
    precision graph is scored against) and the largest |fc input| (the covariance vector's range)."""
    from dropcov_deploy.probe import run_exposed

    model = onnx_graph.load(onnx_path)
    tensor, logits_name = onnx_graph.fc_input(model), model.graph.output[0].name
    logits, amax = [], 0.0
    for outputs in run_exposed(model, [tensor], calibration.batches()):
        logits.append(outputs[logits_name])
        amax = max(amax, float(np.abs(outputs[tensor]).max()))
    return np.concatenate(logits), amax


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
    nodes = [helper.make_node("DequantizeLinear", [f"{base}_w_int8", f"{base}_w_scale", f"{base}_w_zero"], [f"{base}_w_dq"], name=f"{base}_w_DequantizeLinear", axis=axis)]
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
    fc = onnx_graph.fc_node(model)
    source_fc = onnx_graph.fc_node(source)
    initializers = {t.name: t for t in source.graph.initializer}
    _bypass_activation_qdq(model, fc)
    _float_weights(model, fc, source_fc, initializers)
    fc = onnx_graph.fc_node(model)
    if mode != "float":
        if mode == "int8" and act_amax is None:
            raise ValueError("int8 fc needs the calibrated input range")
        _add_fc_qdq(model, fc, source_fc, initializers, act_amax if mode == "int8" else None)
    _drop_dead_nodes(model)
    return model


def fc_treatment(model) -> str:
    """Which treatment the fc in `model` has, read back from the graph."""
    made_by = onnx_graph.producers(model)
    fc = onnx_graph.fc_node(model)

    def dequantized(tensor: str) -> bool:
        return tensor in made_by and made_by[tensor].op_type == "DequantizeLinear"

    weight_dq, input_dq = dequantized(fc.input[1]), dequantized(fc.input[0])
    if weight_dq and input_dq:
        return "int8"
    return "weight-only" if weight_dq else "float"
