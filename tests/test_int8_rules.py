"""What the INT8 quantizers leave in float, and the ONNX Runtime float16 QuantizeLinear fix, on small real graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dropcov_deploy import head_graph
from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner, exact_fp16_quantize, fp16_quantize_truncates
from dropcov_deploy.precision.quantizers import LAYER_OP_TYPES, quantized_op_types


def _attention_and_covariance(layer_norm: bool = True) -> onnx.ModelProto:
    """tokens -> [LayerNorm] -> q, k, v projections -> softmax(q k^T) v -> the covariance q^T k -> fc."""
    rng = np.random.default_rng(0)
    weights = {name: numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), name) for name in ("wq", "wk", "wv", "wr")}
    fc = numpy_helper.from_array(rng.standard_normal((64, 3)).astype(np.float32), "fc")
    gamma, beta = (numpy_helper.from_array(np.full(8, v, np.float32), n) for n, v in (("gamma", 1.0), ("beta", 0.0)))
    shape = numpy_helper.from_array(np.array([1, 64], np.int64), "flat")
    start = "x"
    nodes = []
    if layer_norm:
        nodes.append(helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1))
        start = "ln"
    nodes += [
        helper.make_node("MatMul", [start, "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", [start, "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", [start, "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[1, 0]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Softmax", ["scores"], ["attn"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["mixed"], name="sv"),
        helper.make_node("MatMul", ["mixed", "wr"], ["r"], name="wr"),
        helper.make_node("Transpose", ["r"], ["rt"], name="rt", perm=[1, 0]),
        helper.make_node("MatMul", ["rt", "r"], ["cov"], name="covariance"),
        helper.make_node("Reshape", ["cov", "flat"], ["vec"], name="flatten"),
        helper.make_node("MatMul", ["vec", "fc"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [*weights.values(), fc, gamma, beta, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_attention_products_are_every_activation_product_but_the_covariance():
    model = _attention_and_covariance()
    assert head_graph.covariance_product(model).name == "covariance"
    assert head_graph.attention_products(model) == ["qk", "sv"]  # not the weight products, not the covariance


def test_a_weight_reached_through_a_transpose_is_still_a_weight():
    """Some exporters feed a linear layer Transpose(W): that layer is not an attention product (it
    would be left unquantized), and the covariance is still the last product of two activations."""
    model = _attention_and_covariance()
    node = next(n for n in model.graph.node if n.name == "v_proj")
    model.graph.node.insert(0, helper.make_node("Transpose", ["wv"], ["wv_t"], name="wv_t", perm=[1, 0]))
    node.input[1] = "wv_t"
    assert head_graph.attention_products(model) == ["qk", "sv"]
    assert head_graph.covariance_product(model).name == "covariance"


def test_only_a_transformer_graph_restricts_the_quantized_op_types():
    assert quantized_op_types(_attention_and_covariance(layer_norm=True)) == list(LAYER_OP_TYPES)
    assert quantized_op_types(_attention_and_covariance(layer_norm=False)) is None  # a CNN keeps the quantizer's defaults


def _fp16_quantize_model(scale: float) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="q")],
        "q16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None])],
        [helper.make_tensor_value_info("q", TensorProto.INT8, [None])],
        [numpy_helper.from_array(np.array(scale, np.float16), "scale"), numpy_helper.from_array(np.array(0, np.int8), "zero")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def _onnx_rounding(x: np.ndarray, scale: float) -> np.ndarray:
    """ONNX QuantizeLinear: round half to even of x / scale, saturated to int8."""
    return np.clip(np.rint(x.astype(np.float64) / float(np.float16(scale))), -128, 127)


def test_fp16_quantize_rewrite_rounds_as_onnx_says(tmp_path):
    """The rewritten graph gives ONNX's round-to-nearest on all of a sweep; the probe agrees with
    what this ONNX Runtime's own float16 kernel does on the same sweep."""
    scale = 0.02078
    x = np.linspace(-2.5, 2.5, 4001).astype(np.float16)
    expected = _onnx_rounding(x, scale)
    model = _fp16_quantize_model(scale)
    raw = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert fp16_quantize_truncates() == bool((raw != expected).any())
    assert exact_fp16_quantize(model) == 1
    onnx.checker.check_model(model)
    fixed = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(fixed, expected)


@pytest.mark.skipif(not fp16_quantize_truncates(), reason="this ONNX Runtime's float16 QuantizeLinear already rounds to nearest")
def test_the_runner_runs_an_int8_graph_with_fp16_quantize_exactly(tmp_path):
    """The file stays as written (it is TensorRT's graph); the runner's session computes ONNX's values."""
    path = tmp_path / "q16.onnx"
    onnx.save(_fp16_quantize_model(0.02078), path)
    before = path.read_bytes()
    x = np.linspace(-2.5, 2.5, 4001).astype(np.float16)
    with OnnxRuntimeRunner(path) as runner:
        np.testing.assert_array_equal(runner.infer({"x": x})["q"], _onnx_rounding(x, 0.02078))
    assert path.read_bytes() == before


def test_rewrite_keeps_names_unique_for_unnamed_quantizers_of_one_tensor():
    """Two unnamed Qs (one per-axis) reading the same tensor: the checker passes and both round to nearest."""
    scale = numpy_helper.from_array(np.array(0.02078, np.float16), "scale")
    axis_scale = numpy_helper.from_array(np.array([0.02078, 0.0417], np.float16), "axis_scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    axis_zero = numpy_helper.from_array(np.zeros(2, np.int8), "axis_zero")
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
            helper.make_node("QuantizeLinear", ["x", "axis_scale", "axis_zero"], ["q_axis"], axis=1),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None, 2])],
        [helper.make_tensor_value_info("q", TensorProto.INT8, [None, 2]), helper.make_tensor_value_info("q_axis", TensorProto.INT8, [None, 2])],
        [scale, axis_scale, zero, axis_zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    assert exact_fp16_quantize(model) == 2
    onnx.checker.check_model(model, full_check=True)
    x = np.linspace(-2.5, 2.5, 4000).astype(np.float16).reshape(-1, 2)
    q, q_axis = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(q, _onnx_rounding(x, 0.02078))
    np.testing.assert_array_equal(q_axis[:, 1], _onnx_rounding(x[:, 1], 0.0417))


def test_calibration_batches_shrink_to_what_memory_holds():
    """Intermediate bytes per image from shape inference; the batch is the most that fits in a quarter
    of the available memory, at least 1, at most the cap (16 for calibration, 64 for AutoCast)."""
    from dropcov_deploy.precision.calibration import activation_bytes_per_image, calibration_batch_limit

    model = _attention_and_covariance()
    per_image = activation_bytes_per_image(model)
    assert per_image > 8 * 8 * 4  # the scores, softmax and covariance maps at least
    gib = 1024**3
    assert calibration_batch_limit(1 * gib, 24 * gib) == 6  # the authors' Deit_drop_Base at 224 on a 24 GiB machine
    assert calibration_batch_limit(300 * 1024**2, 24 * gib) == 16 and calibration_batch_limit(300 * 1024**2, 24 * gib, cap=64) == 20
    assert calibration_batch_limit(30 * gib, 24 * gib) == 1 and calibration_batch_limit(1 * gib, None) == 16
