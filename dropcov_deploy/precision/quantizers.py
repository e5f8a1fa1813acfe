"""INT8 quantizers, one per target; the covariance block is never quantized.

- TensorRT (`quantize_tensorrt`): ModelOpt's Q/DQ placement (symmetric, per-channel
  weights) on the FP32 graph, then the unquantized rest to the chosen high precision by
  AutoCast (FP16 by default) with the covariance block pinned to FP32 by node name.
  (ModelOpt's own FP16 pass pins by op type only, which in a transformer would also pin
  every attention MatMul and reshape.)
- CPU (`quantize_cpu`): ONNX Runtime's own `quantize_static` QDQ graph, which its CPU
  kernels fuse (ModelOpt's TensorRT-shaped graph runs about 3x slower than FP32 there).

Both leave a transformer's attention products (q k^T, softmax(.) v) in float
(`head_graph.attention_products`): INT8 there costs most of the accuracy and little time,
and TensorRT runs them in its fused FP16 attention.

Each returns (ModelProto, the FP32-pinned covariance nodes, what the manifest should
record about the quantizer, including "attention_float"). The fc's treatment is decided
afterwards (`fc_choice`).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import head_graph, onnx_io
from dropcov_deploy.errors import BackendFailed, InputError
from dropcov_deploy.precision.calibration import CalibrationSet, memory_bounded_batch, ort_reader
from dropcov_deploy.precision.fp16 import autocast_fp16, require_modelopt
from dropcov_deploy.precision.keep_float import keep_layers_float
from dropcov_deploy.precision.quiet import quiet_quantizers


def calibration_batch(model, calibration: CalibrationSet) -> int:
    """The batch the calibrator runs: up to 16 images, fewer when their intermediate tensors
    would not fit in a quarter of the available memory (`calibration_batch_limit`)."""
    return calibration.batch_size(memory_bounded_batch(model))


def _named_copy(onnx_path: Path, folder: Path):
    """The model with every node named (exclusions address nodes by name), saved for the quantizers."""
    model = onnx_io.load(onnx_path)
    onnx_io.ensure_node_names(model)
    path = folder / "named.onnx"
    onnx_io.save(model, path)
    return path, model


def stem_conv(model) -> list[str]:
    """The Conv that reads the image. On the CPU target it stays FP32: ONNX Runtime's fused
    INT8 conv also quantizes its pre-ReLU output, which cost 3 points of accuracy on digits
    (measured: 0.15 relative logit error from this one layer, < 0.02 from any other)."""
    graph_inputs = {i.name for i in model.graph.input}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in graph_inputs][:1]


# A transformer's residual stream (Add), LayerNorm, Softmax, GELU and the attention's reshapes
# all get Q/DQ from the quantizers' defaults: 8-bit rounding at every step of a stream that
# passes 12 blocks. In a graph with LayerNormalization (transformers; a ConvNeXt backbone too,
# whose residual stream is normalised the same way) only the layers that do the arithmetic
# are quantized (measured on Deit_drop_Tiny, CPU target: relative logit error 0.084 with ONNX
# Runtime's defaults, see the README). A CNN keeps the defaults: fused INT8 residual Adds and
# pools are part of its speed.
LAYER_OP_TYPES = ("Conv", "MatMul", "Gemm")


# Where ModelOpt's patch_ort_modules replaces ONNX Runtime's quantizer code (ModelOpt 0.4x):
# (module, class or None for the module's own functions).
_PATCHED_BY_MODELOPT = (
    ("onnxruntime.quantization.calibrate", None),
    ("onnxruntime.quantization.calibrate", "CalibraterBase"),
    ("onnxruntime.quantization.calibrate", "MinMaxCalibrater"),
    ("onnxruntime.quantization.calibrate", "HistogramCalibrater"),
    ("onnxruntime.quantization.calibrate", "HistogramCollector"),
    ("onnxruntime.quantization.qdq_quantizer", "QDQQuantizer"),
    ("onnxruntime.quantization.base_quantizer", "BaseQuantizer"),
)


def onnxruntime_patched_by_modelopt() -> bool:
    """Whether ONNX Runtime's quantizer in this process runs ModelOpt's code: its TensorRT INT8
    replaces calibrator methods on first use (importing ModelOpt does not). Read from the code
    itself, so a process that only imported ModelOpt quantizes in-process (a fresh one is ~3 s)."""
    for module_name, class_name in _PATCHED_BY_MODELOPT:
        module = sys.modules.get(module_name)
        owner = module if class_name is None or module is None else getattr(module, class_name, None)
        if owner is None:
            continue
        if any(callable(value) and str(getattr(value, "__module__", "")).startswith("modelopt") for value in vars(owner).values()):
            return True
    return False


def quantized_op_types(model) -> list[str] | None:
    """The op types to put Q/DQ on: the layers only in a transformer (a graph with
    LayerNormalization), None (the quantizer's defaults) otherwise."""
    return list(LAYER_OP_TYPES) if any(node.op_type == "LayerNormalization" for node in model.graph.node) else None


def quantize_cpu(
    onnx_path: Path,
    calibration: CalibrationSet,
    method: str = "entropy",
    high_precision: str = "fp32",
    input_name: str = "input",
    keep_float: tuple[str, ...] = (),
    quantize_stem: bool = False,
    activations: str = "u8s8",
) -> tuple[Any, list[str], dict[str, Any]]:
    """ONNX Runtime QDQ for its CPU kernels: per-channel symmetric INT8 weights, UINT8 activations
    (the U8S8 pair that ONNX Runtime fuses into QLinearConv on x86). The rest stays FP32 whatever
    `high_precision` says (ONNX Runtime's CPU provider has no fast FP16 kernels). The stem conv
    stays float unless `quantize_stem` (build's CPU choice derives both forms from that graph);
    the record's "fp32_nodes" names it either way. `activations` "s8s8": symmetric INT8
    activations instead (OpenVINO runs them as fast; ONNX Runtime's x86 kernels do not fuse them)."""
    with tempfile.TemporaryDirectory(prefix="dropcov-int8-cpu-") as tmp:
        named, model = _named_copy(onnx_path, Path(tmp))
        pinned, stem, attention = head_graph.covariance_block(model), stem_conv(model), head_graph.attention_products(model)
        out = Path(tmp) / "int8.onnx"
        exclude = [*pinned, *attention, *([] if quantize_stem else stem)]
        op_types, batch = quantized_op_types(model), calibration_batch(model, calibration)
        # ort_quantize_static's arguments but the calibration set, by name (the fresh process passes them on as they are)
        request: dict[str, Any] = {
            "named": str(named),
            "out": str(out),
            "method": method,
            "exclude": exclude,
            "input_name": input_name,
            "activations": activations,
            "op_types": op_types,
            "batch": batch,
        }
        if onnxruntime_patched_by_modelopt():
            # ModelOpt's TensorRT INT8 patched onnxruntime.quantization's calibrators in this process;
            # run ONNX Runtime's own quantizer in a fresh process, where those patches do not exist.
            data = Path(tmp) / "calibration.npy"
            np.save(data, calibration.data)
            arguments = Path(tmp) / "request.json"
            arguments.write_text(json.dumps({**request, "data": str(data)}))
            result = subprocess.run([sys.executable, "-m", "dropcov_deploy.precision.ort_quantize", str(arguments)], capture_output=True, text=True)
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or ["no message"])[-1]
                raise BackendFailed(f"{onnx_path}: ONNX Runtime quantization failed: {last}")
        else:
            ort_quantize_static(calibration=calibration, **request)
        quantized = onnx_io.load(out)
        unquantize_block_inputs(quantized, pinned, model)
        # every layer was calibrated; the kept ones lose their Q/DQ here (as the precision debugger's candidates do)
        model = keep_layers_float(quantized, model, keep_float) if keep_float else quantized
        return (
            model,
            pinned,
            {
                "high_precision": "fp32",
                "fp32_nodes": stem,
                "attention_float": attention,
                "quantized_op_types": op_types or "default",
                "calibration_batch": batch,
            },
        )


@contextlib.contextmanager
def streaming_histograms() -> Iterator[None]:
    """ONNX Runtime's histogram calibrators (entropy, percentile) keep every intermediate output of
    every calibration batch until the end: resnet50_ACD at 224 with 300 images needs over 24 GB.
    Inside this block they take one batch at a time: `collect_data` is called per batch, folding
    each into the persistent HistogramCollector (which merges histograms across calls) and freeing
    the batch's outputs, so peak memory stays one batch's worth whatever the number of images.
    (MinMax keeps only its ReduceMin/ReduceMax outputs, a few numbers per tensor per batch, so it
    needs no streaming; its CalibMaxIntermediateOutputs switch is not used: ONNX Runtime 1.24 clears
    the collected batches there without folding them in, and then finds "No data is collected".)"""
    from onnxruntime.quantization.calibrate import CalibrationDataReader, HistogramCalibrater

    original = HistogramCalibrater.collect_data

    class _One(CalibrationDataReader):
        def __init__(self, feeds: dict[str, Any]) -> None:
            self.feeds: dict[str, Any] | None = feeds

        def get_next(self):
            feeds, self.feeds = self.feeds, None
            return feeds

    def per_batch(self, data_reader):
        while (feeds := data_reader.get_next()) is not None:
            original(self, _One(feeds))

    HistogramCalibrater.collect_data = per_batch  # type: ignore[method-assign]
    try:
        yield
    finally:
        HistogramCalibrater.collect_data = original  # type: ignore[method-assign]


def ort_quantize_static(
    named: Path | str,
    calibration: CalibrationSet,
    out: Path | str,
    method: str,
    exclude: list[str],
    input_name: str,
    activations: str = "u8s8",
    op_types: list[str] | None = None,
    batch: int | None = None,
) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"entropy": CalibrationMethod.Entropy, "max": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
    with quiet_quantizers(), streaming_histograms():
        quantize_static(
            str(named),
            str(out),
            ort_reader(calibration, input_name, batch or calibration.batch_size()),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8 if activations == "s8s8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            op_types_to_quantize=op_types,
            calibrate_method=methods[method],
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": activations == "s8s8"},
        )


def quantize_tensorrt(
    onnx_path: Path,
    calibration: CalibrationSet,
    method: str = "entropy",
    high_precision: str = "fp16",
    input_name: str = "input",
    keep_float: tuple[str, ...] = (),
) -> tuple[Any, list[str], dict[str, Any]]:
    """ModelOpt INT8 Q/DQ for TensorRT, the rest in `high_precision`."""
    require_modelopt()
    if method not in ("entropy", "max"):
        raise InputError(f"--calib-method {method} is not supported by ModelOpt for TensorRT; use entropy or max")
    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory(prefix="dropcov-int8-trt-") as tmp:
        named, model = _named_copy(onnx_path, Path(tmp))
        pinned, attention, op_types = head_graph.covariance_block(model), head_graph.attention_products(model), quantized_op_types(model)
        batch = calibration_batch(model, calibration)
        out = Path(tmp) / "int8.onnx"
        with quiet_quantizers():
            quantize(
                str(named),
                quantize_mode="int8",
                calibration_data=calibration.data,
                calibration_shapes=f"{input_name}:{'x'.join(map(str, (batch, *calibration.data.shape[1:])))}",
                calibration_method=method,
                calibration_eps=["cpu"],
                # exact names: ModelOpt reads each entry as a regex matched at the start of a node's name
                # ("node_MatMul_12" would also exclude node_MatMul_120); a new list, as it appends to it
                nodes_to_exclude=[f"^{re.escape(name)}$" for name in (*pinned, *attention)],
                op_types_to_quantize=list(op_types) if op_types else None,  # a copy: it extends the list with custom ops
                high_precision_dtype="fp32",
                output_path=str(out),
                log_level="ERROR",
            )
        quantized = onnx_io.load(out)
        unquantize_block_inputs(quantized, pinned, model)
        model = keep_layers_float(quantized, model, keep_float) if keep_float else quantized
        if high_precision == "fp16":
            onnx_io.save(model, out)
            model = autocast_fp16(out, calibration, pinned, input_name, opset=max(19, onnx_io.opset(model)))
        return (
            model,
            pinned,
            {"high_precision": high_precision, "attention_float": attention, "quantized_op_types": op_types or "default", "calibration_batch": batch},
        )


def unquantize_block_inputs(model, block: list[str], source=None) -> int:
    """Feed the covariance block float values: X -> Q -> DQ -> block becomes X -> block.

    Quantizers put a Q/DQ pair on the reduce conv's output, which would make the
    covariance a product of INT8-rounded activations (the rounding error squared).
    With `source` (the float graph), an activation the quantizer removed before that Q
    (ONNX Runtime drops a Relu whose uint8 Q clips the negatives) is put back, so the
    block reads what the float graph computed, not the pre-ReLU values.
    Returns the number of pairs bypassed.
    """
    from dropcov_deploy.precision.keep_float import _restored_activation

    source_producers = onnx_io.producers(source) if source is not None else {}
    source_initializers = {t.name: t for t in source.graph.initializer} if source is not None else {}
    made_by = onnx_io.producers(model)
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
            node.input[position] = (
                _restored_activation(model, q.input[0], source_producers, made_by, node.name, source_initializers) if source_producers else q.input[0]
            )
            bypassed += 1
    onnx_io.drop_dead_nodes(model)
    return bypassed
