"""How close a timed run is to the machine's limit: multiply-accumulates per image from the
ONNX graph, and a GEMM rate measured once per machine.

MACs come from running the graph once at batch 1 in ONNX Runtime (optimizations off) with
every intermediate tensor exposed, so every shape is the one the model really computes,
whatever ops the graph holds (QLinearConv, an ORT-optimized FusedConv, ...). Each Conv,
Gemm and MatMul counts output elements x the reduction length. A node counts as INT8 when
it is an integer op (QLinear*, *Integer) or reads both its data and its weight through a
DequantizeLinear; everything else is float. Every op of our models is per-image, so a batch
of B costs B times the batch-1 count.

The rate is the best sustained GEMM this machine reaches (square matrix products of 512, 1024
and 2048, FP32 and INT8 u8xs8, in each CPU runtime installed; the best of them), cached per CPU, thread count and
runtime versions. `fraction` = the time the MACs would take at those rates (INT8 MACs at the
INT8 rate, float at the FP32 rate) / the measured latency: 1.0 would be every MAC at GEMM
speed, with no memory traffic, no im2col, no non-GEMM ops and no framework overhead.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

GEMM_SIZES = (512, 1024, 2048)  # square GEMMs; the rate is the best of them (512 fits the caches, 2048 amortizes more)
GEMM_REPEATS = 8
RATES_FILE = "gemm-rates.json"
COMPUTE_OPS = {
    "Conv",
    "ConvInteger",
    "QLinearConv",
    "FusedConv",
    "NhwcFusedConv",
    "Gemm",
    "FusedGemm",
    "QGemm",
    "MatMul",
    "MatMulInteger",
    "QLinearMatMul",
    "FusedMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
}
INTEGER_OPS = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3}  # where the second operand is (else input 1)
TRANSPOSING_OPS = {"Gemm", "FusedGemm", "QGemm", "FusedMatMul"}  # a transA attribute puts the reduction on the first operand's axis -2


@dataclass
class MacCount:
    """Multiply-accumulates for one image: INT8 ones and float ones."""

    int8: int
    float: int

    @property
    def total(self) -> int:
        return self.int8 + self.float


def node_macs(op_type: str, inputs: list[tuple[int, ...] | None], output: tuple[int, ...] | None, weight_position: int = 1) -> int:
    """MACs of one compute node from its real shapes: output elements x reduction length.

    Conv-like: the weight is [out, in/groups, k...], each output element reads in/groups x k...
    values. Gemm/MatMul-like: the reduction is the first operand's last axis (Gemm's transA is
    read by the caller as a transposed shape)."""
    if output is None:
        return 0
    outputs = int(np.prod(output))
    if "Conv" in op_type:
        weight = inputs[weight_position] if len(inputs) > weight_position else None
        return outputs * int(np.prod(weight[1:])) if weight else 0
    first = inputs[0] if inputs else None
    return outputs * int(first[-1]) if first else 0


def _is_int8(node, made_by: dict[str, Any]) -> bool:
    if node.op_type in INTEGER_OPS:
        return True
    position = WEIGHT_INPUT.get(node.op_type, 1)
    operands = [node.input[0], node.input[position] if len(node.input) > position else ""]
    return all(made_by.get(name) is not None and made_by[name].op_type == "DequantizeLinear" for name in operands)


def count_macs(path: Path) -> MacCount:
    """MACs per image of the ONNX model at `path` (see the module docstring for how)."""
    import onnx
    import onnxruntime as ort

    from dropcov_deploy import onnx_io

    model = onnx_io.load(path)
    made_by = onnx_io.producers(model)
    initializers = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    wanted = sorted({name for n in compute for name in [*n.input, n.output[0]] if name and name not in initializers})
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    shape = [1 if not isinstance(d, int) else d for d in graph_input.shape]
    dtype = np.float16 if graph_input.type == "tensor(float16)" else np.float32
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, {graph_input.name: np.zeros(shape, dtype=dtype)})))
    shapes: dict[str, tuple[int, ...]] = {**initializers, **{k: tuple(v.shape) for k, v in values.items()}}
    batch = shape[0] or 1
    count = MacCount(0, 0)
    for node in compute:
        inputs = [shapes.get(name) for name in node.input]
        if node.op_type in TRANSPOSING_OPS and inputs and inputs[0]:
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            inputs[0] = (*inputs[0][:-2], inputs[0][-1], inputs[0][-2]) if trans_a and len(inputs[0]) >= 2 else inputs[0]
        macs = node_macs(node.op_type, inputs, shapes.get(node.output[0]), WEIGHT_INPUT.get(node.op_type, 1)) // batch
        if _is_int8(node, made_by):
            count.int8 += macs
        else:
            count.float += macs
    return count


# ------------------------------------------------------------------ the machine's rate
@dataclass
class GemmRates:
    """Sustained GEMM rates in GOP/s (2 ops per MAC), the best over the runtimes measured."""

    fp32: float | None
    int8: float | None
    measured_with: dict[str, dict[str, float | None]]  # runtime -> {"fp32", "int8"}
    machine: str
    threads: int | None
    gemm: str = "best square GEMM of " + "/".join(map(str, GEMM_SIZES))


def fraction(macs: MacCount, batch_size: int, latency_ms: float | None, rates: GemmRates | None) -> float | None:
    """The time `macs` x batch would take at the measured rates, over the measured latency (None when unknown)."""
    if not latency_ms or rates is None or rates.fp32 is None:
        return None
    int8_rate = rates.int8 or rates.fp32
    ideal_s = batch_size * (2 * macs.int8 / (int8_rate * 1e9) + 2 * macs.float / (rates.fp32 * 1e9))
    return ideal_s / (latency_ms / 1000.0)


def achieved_gops(macs: MacCount, batch_size: int, latency_ms: float | None) -> float | None:
    return None if not latency_ms else 2 * macs.total * batch_size / (latency_ms / 1000.0) / 1e9


def machine_key(threads: int | None, versions: dict[str, str]) -> str:
    """What the rate depends on: the CPU (model name and flags), the cores, threads and runtime versions."""
    cpu, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()  # /proc/cpuinfo names the model; platform often only "x86_64"
    text = f"{cpu}|{hashlib.sha256(flags.encode()).hexdigest()[:12]}|{os.cpu_count()}|{threads}|gemm {GEMM_SIZES}|" + "|".join(
        f"{k}={v}" for k, v in sorted(versions.items())
    )
    return text


def runtime_versions() -> dict[str, str]:
    """The CPU runtimes that import here, with their versions."""
    import importlib

    found = {}
    for name in ("onnxruntime", "openvino"):
        try:
            found[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
        except ImportError:
            continue
    return found


def _matmul_graphs(size: int):
    """FP32 MatMul, and an INT8 one as a CPU runtime takes it: ONNX Runtime's MatMulInteger
    (u8 x s8), and for OpenVINO the same product as Q/DQ (which it runs as an INT8 GEMM)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((size, size)).astype(np.float32)
    fp32 = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "gemm_fp32",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
            [numpy_helper.from_array(weight, "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    integer = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMulInteger", ["x", "w"], ["y"])],
            "gemm_int8",
            [helper.make_tensor_value_info("x", TensorProto.UINT8, [size, size])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])],
            [numpy_helper.from_array(rng.integers(-127, 127, (size, size), dtype=np.int8), "w")],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    qdq_nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    qdq = helper.make_model(
        helper.make_graph(
            qdq_nodes,
            "gemm_qdq",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
            [
                numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                numpy_helper.from_array(np.array(128, np.uint8), "xz"),
                numpy_helper.from_array(rng.integers(-127, 127, (size, size), dtype=np.int8), "wq"),
                numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
                numpy_helper.from_array(np.array(0, np.int8), "wz"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    return fp32, integer, qdq


def _best_seconds(run: Callable[[], Any], repeats: int = GEMM_REPEATS) -> float:
    """The fastest of `repeats` runs after two warm-ups: a sustained rate, not a mean over interruptions."""
    run()
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _ort_call(session: Any, feed: np.ndarray) -> Callable[[], Any]:
    return lambda: session.run(None, {"x": feed})


def _ov_call(request: Any, feed: np.ndarray) -> Callable[[], Any]:
    return lambda: request.infer({0: feed})


def measure_cpu_rates(
    threads: int | None, runtimes: tuple[str, ...] = ("onnxruntime", "openvino"), sizes: tuple[int, ...] = GEMM_SIZES
) -> dict[str, dict[str, float | None]]:
    """GOP/s of the best square GEMM of `sizes`, FP32 and INT8, per CPU runtime that imports here."""
    found: dict[str, dict[str, float | None]] = {}
    for size in sizes:
        for runtime, rates in _measure_size(threads, runtimes, size).items():
            best = found.setdefault(runtime, {})
            for label, value in rates.items():
                values = [v for v in (best.get(label), value) if v is not None]
                best[label] = max(values) if values else None
    return found


def _measure_size(threads: int | None, runtimes: tuple[str, ...], size: int) -> dict[str, dict[str, float | None]]:
    """GOP/s of one size^3 GEMM, FP32 and INT8, per CPU runtime that is usable here; a runtime that
    fails on a plain MatMul gets None rates, not an exception (the timings do not depend on it)."""
    from dropcov_deploy.backends.openvino import compile_options, openvino_status

    fp32, integer, qdq = _matmul_graphs(size)
    ops = 2.0 * size**3
    rng = np.random.default_rng(1)
    x_float = rng.standard_normal((size, size)).astype(np.float32)
    x_u8 = rng.integers(0, 255, (size, size), dtype=np.uint8)
    found: dict[str, dict[str, float | None]] = {}
    if "onnxruntime" in runtimes:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        rates: dict[str, float | None] = {}
        for label, graph, feed in (("fp32", fp32, x_float), ("int8", integer, x_u8)):
            try:
                session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
                rates[label] = ops / _best_seconds(_ort_call(session, feed)) / 1e9
            except Exception:  # ORT raises its own types; no rate from this runtime for this precision
                rates[label] = None
        found["onnxruntime"] = rates
    if "openvino" in runtimes and openvino_status()[0]:  # a broken install is skipped, as the runner would refuse it
        import openvino as ov

        core = ov.Core()
        rates = {}
        for label, graph in (("fp32", fp32), ("int8", qdq)):
            try:
                compiled = core.compile_model(core.read_model(graph.SerializeToString(), b""), "CPU", compile_options(threads))
                rates[label] = ops / _best_seconds(_ov_call(compiled.create_infer_request(), x_float)) / 1e9
            except Exception:  # OpenVINO raises RuntimeError and its own types
                rates[label] = None
        found["openvino"] = rates
    return found


def cpu_rates(threads: int | None, cache_dir: Path | None = None, measure: Callable[..., dict[str, dict[str, float | None]]] = measure_cpu_rates) -> GemmRates:
    """The machine's GEMM rates: read from the cache when this CPU, thread count and runtime
    versions were measured before, else measured now (a few seconds) and cached."""
    from dropcov_deploy.cache_paths import default_cache_dir

    versions = runtime_versions()
    key = machine_key(threads, versions)
    path = Path(cache_dir or default_cache_dir()) / RATES_FILE
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key) if isinstance(cached, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("measured_with"), dict):
        entry = {"measured_with": measure(threads, tuple(name for name in ("onnxruntime", "openvino") if name in versions))}
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cached, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs a re-measurement next time
    measured = entry["measured_with"]

    def best(label: str) -> float | None:
        values = [float(r[label]) for r in measured.values() if isinstance(r, dict) and isinstance(r.get(label), (int, float))]
        return max(values) if values else None

    return GemmRates(fp32=best("fp32"), int8=best("int8"), measured_with=measured, machine=key.split("|")[0], threads=threads)


def rates_dict(rates: GemmRates | None) -> dict[str, Any] | None:
    return None if rates is None else asdict(rates)
