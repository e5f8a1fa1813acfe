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


# ------------------------------------------------------------------ ONNX Runtime's quantizer: in this process or a fresh one
def _python(code: str) -> str:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.slow
def test_modelopt_patches_are_read_from_the_code_not_from_the_import():
    """Importing ModelOpt leaves ONNX Runtime's quantizer as it is (a CPU build then runs in-process);
    ModelOpt's TensorRT INT8 patching it is seen (a CPU build then runs in a fresh process)."""
    pytest.importorskip("modelopt.onnx.quantization")
    said = _python(
        "from dropcov_deploy.precision.quantizers import onnxruntime_patched_by_modelopt as patched\n"
        "import onnxruntime.quantization\n"
        "before = patched()\n"
        "import modelopt.onnx.quantization, modelopt.onnx.autocast\n"
        "imported = patched()\n"
        "from modelopt.onnx.quantization.ort_patching import patch_ort_modules\n"
        "patch_ort_modules()\n"
        "print(before, imported, patched())"
    )
    assert said == "False False True"


def test_cpu_int8_build_imports_no_modelopt(seeded_digits, calibration_dir, tmp_path):
    """An ONNX Runtime INT8 build needs nothing of ModelOpt: not imported (seconds), and so no fresh process either."""
    _, fp32 = seeded_digits
    said = _python(
        "import sys\n"
        "from dropcov_deploy.build import BuildOptions, build\n"
        f"build({str(fp32)!r}, BuildOptions(precision='int8', calib={str(calibration_dir)!r}, calib_size=8, runtime='onnxruntime',"
        f" qdq_form='u8s8', fc='int8', cache_dir={str(tmp_path / 'cache')!r}, out={str(tmp_path / 'm.int8.cpu.onnx')!r}))\n"
        "print(sorted(name for name in sys.modules if name.startswith('modelopt')))"
    )
    assert said == "[]" and (tmp_path / "m.int8.cpu.onnx").exists()


@pytest.mark.slow
def test_the_fresh_process_quantizes_as_this_one_does(seeded_digits, calibration_dir, tmp_path):
    """The entry point a patched process falls back on takes every argument by name (the calibration
    batch included) and writes the same graph as a direct call (made in a fresh process too: this
    one may have run ModelOpt's TensorRT INT8, which patches the quantizer)."""
    import json
    import subprocess
    import sys

    from dropcov_deploy.manifest import Manifest
    from dropcov_deploy.precision.calibration import load_calibration

    _, fp32 = seeded_digits
    calibration = load_calibration(calibration_dir, Manifest.read(fp32), size=8)
    np.save(tmp_path / "data.npy", calibration.data)
    # entropy: its histograms depend on the batch (4 here, 8 by default), so an entry point that dropped it would differ
    request = {"named": str(fp32), "method": "entropy", "exclude": [], "input_name": "input", "activations": "u8s8", "op_types": None, "batch": 4}
    _python(
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from dropcov_deploy.precision.calibration import CalibrationSet\n"
        "from dropcov_deploy.precision.quantizers import ort_quantize_static\n"
        f"data = Path({str(tmp_path / 'data.npy')!r})\n"
        f"ort_quantize_static(calibration=CalibrationSet(data, np.load(data), None, ''), out={str(tmp_path / 'here.onnx')!r}, **{request!r})"
    )
    arguments = tmp_path / "request.json"
    arguments.write_text(json.dumps({**request, "out": str(tmp_path / "there.onnx"), "data": str(tmp_path / "data.npy")}))
    result = subprocess.run([sys.executable, "-m", "dropcov_deploy.precision.ort_quantize", str(arguments)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    here, there = onnx.load(str(tmp_path / "here.onnx")), onnx.load(str(tmp_path / "there.onnx"))
    assert len(here.graph.node) == len(there.graph.node) > 0
    assert {t.name: numpy_helper.to_array(t).tobytes() for t in here.graph.initializer} == {t.name: numpy_helper.to_array(t).tobytes() for t in there.graph.initializer}
