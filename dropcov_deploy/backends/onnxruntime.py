"""ONNX Runtime: loader, runner and the CPU target's extra artifact. Imports neither torch
nor training code (the edge path)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.errors import BackendUnavailable, InputError, first_line

PROVIDERS = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider")}


# A float16 x = 0.050018310546875 over a float16 scale 0.0999755859375 is 0.5003: ONNX's
# round-to-nearest gives 1, a truncating kernel 0.
_PROBE_X, _PROBE_SCALE = 0.050018310546875, 0.0999755859375


@functools.lru_cache(maxsize=1)
def fp16_quantize_truncates() -> bool:
    """Whether this ONNX Runtime's CPU QuantizeLinear truncates a float16 x / scale toward zero
    instead of rounding to nearest (microsoft/onnxruntime#18576, fixed by #32452; 1.24.4 does).
    A truncating Q doubles the rounding error of every FP16 Q/DQ pair: the TensorRT target's INT8
    graph with its FP16 rest would be judged on the CPU as worse than TensorRT computes it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.array(_PROBE_SCALE, np.float16), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1])],
        [helper.make_tensor_value_info("q", TensorProto.INT8, [1])],
        [scale, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return int(session.run(None, {"x": np.array([_PROBE_X], np.float16)})[0][0]) != 1
    except Exception:  # a build without a float16 QuantizeLinear kernel: nothing to rewrite, and no session may fail for it
        return False


def exact_fp16_quantize(model) -> int:
    """Rewrite each QuantizeLinear with a float16 initializer scale to quantize in float32 (x cast
    to float32, the same scale in float32): round-to-nearest as ONNX says, on a runtime whose
    float16 kernel truncates. Nearly the values of exact float16 arithmetic: ONNX Runtime computes
    float16 Add/MatMul in float32 and may hand the Cast that un-rounded value (measured: 1 element
    in 128 one step apart, against half of them with the truncating kernel). The artifact is
    untouched; only the copy ONNX Runtime runs changes. A scale made by a node is left as it is.
    Returns how many were rewritten."""
    from onnx import TensorProto, helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    taken = {*initializers, *(i.name for i in model.graph.input), *(n.name for n in model.graph.node)}
    taken.update(name for n in model.graph.node for name in n.output)

    def fresh(base: str) -> str:
        name, count = base, 1
        while name in taken:
            name, count = f"{base}_{count}", count + 1
        taken.add(name)
        return name

    rewritten: list[tuple[Any, Any]] = []
    scales32: dict[str, str] = {}
    for node in model.graph.node:
        scale = initializers.get(node.input[1]) if node.op_type == "QuantizeLinear" and len(node.input) > 1 else None
        if scale is None or scale.data_type != TensorProto.FLOAT16:
            continue
        if scale.name not in scales32:
            scales32[scale.name] = fresh(f"{scale.name}_float32")
            model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(scale).astype(np.float32), scales32[scale.name]))
        cast = helper.make_node(
            "Cast", [node.input[0]], [fresh(f"{node.input[0]}_float32")], name=fresh(f"{node.name or 'QuantizeLinear'}_float32_input"), to=TensorProto.FLOAT
        )
        node.input[0], node.input[1] = cast.output[0], scales32[scale.name]
        rewritten.append((node, cast))
    if rewritten:  # each Cast just before its Q: the order stays topological
        casts = {id(node): cast for node, cast in rewritten}
        ordered = []
        for node in model.graph.node:
            if id(node) in casts:
                ordered.append(casts[id(node)])
            ordered.append(node)
        copies = [type(node)() for node in ordered]
        for copy, node in zip(copies, ordered):
            copy.CopyFrom(node)
        del model.graph.node[:]
        model.graph.node.extend(copies)
    return len(rewritten)


def _session_model(path: Path) -> str | bytes:
    """What ONNX Runtime loads for `path`: the file, or (an INT8 graph with float16 Q on a runtime
    whose float16 Q truncates) a rewritten copy in memory (`exact_fp16_quantize`)."""
    from dropcov_deploy.manifest import sidecar_precision

    if sidecar_precision(path) not in (None, "int8") or not fp16_quantize_truncates():
        return str(path)
    from dropcov_deploy import onnx_io

    try:
        model = onnx_io.load(path)
    except Exception:  # unreadable here: ONNX Runtime's own load below says what is wrong
        return str(path)
    if not exact_fp16_quantize(model) or model.ByteSize() >= onnx_io.PROTOBUF_LIMIT:
        return str(path)
    return model.SerializeToString()


def create_session(path: Path, providers: Sequence[str] = PROVIDERS["cpu"], threads: int | None = None, optimize: bool = True):
    """An InferenceSession on the given providers, with a one-line error for a bad model."""
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # a CUDA provider that cannot load logs multi-line errors before the session exists; we say it in one line
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach us as the exception, said in one line below
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = _session_model(Path(path))
    try:
        try:
            return ort.InferenceSession(model, sess_options=options, providers=list(providers))
        except Exception:
            if isinstance(model, str):
                raise
            # the rewritten copy failed: the file as it is, whose own error (if any) is the one to report
            return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise InputError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)})") from None


def provider_fallback(path: Path, requested: Sequence[str], active: Sequence[str]) -> str | None:
    """Why a session asked for `requested` providers did not get the first one (ONNX Runtime falls
    back to the CPU silently when CUDA cannot load), as one line; None when it got it."""
    wanted = requested[0]
    if wanted in active:
        return None
    device = wanted.replace("ExecutionProvider", "")
    return (
        f"{path}: ONNX Runtime could not use {device} here (session providers: {', '.join(active) or 'none'}); "
        "install onnxruntime-gpu with a CUDA matching the driver, or use --device cpu"
    )


class OnnxRuntimeRunner:
    """Runs an ONNX model in ONNX Runtime: infer(dict of arrays) -> dict of arrays."""

    timing = "host wall clock (ONNX Runtime run is synchronous)"

    def __init__(self, path: Path, providers: Sequence[str] = PROVIDERS["cpu"], threads: int | None = None, device: str = "cpu") -> None:
        self.path = Path(path)
        self.backend = f"onnxruntime-{device}"
        self._session = create_session(self.path, providers, threads)
        problem = provider_fallback(self.path, providers, self._session.get_providers())
        if problem:
            self._session = None
            raise BackendUnavailable(problem)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def input_shapes(self) -> dict[str, list[Any]]:
        return {i.name: list(i.shape) for i in self._session.get_inputs()}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise InputError(f"{self.path}: this ONNX Runtime runner is closed")
        results = self._session.run(self.output_names, feeds)
        return dict(zip(self.output_names, results))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The single-input, single-output case: images in, logits out."""
        return self.infer({self.input_names[0]: np.ascontiguousarray(batch, dtype=np.float32)})[self.output_names[0]]

    def close(self) -> None:
        self._session = None

    def __enter__(self) -> OnnxRuntimeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_runner(path: Path, device: str = "cpu", threads: int | None = None, cuda_graph: bool = False) -> OnnxRuntimeRunner:
    """The Target hook. `cuda_graph` is TensorRT's option: an ONNX model refuses it rather than ignore it."""
    if cuda_graph:
        raise InputError(f"{path}: --cuda-graph applies to TensorRT engines, not to ONNX models")
    if device not in PROVIDERS:
        raise InputError(f"--device {device!r}: use {' or '.join(PROVIDERS)}")
    return OnnxRuntimeRunner(path, providers=PROVIDERS[device], threads=threads, device=device)


def onnxruntime_status() -> tuple[bool, str]:
    try:
        import onnxruntime
    except ImportError as exc:
        return False, f"onnxruntime cannot be imported: {first_line(exc)}"
    return True, f"ONNX Runtime {onnxruntime.__version__} on the CPU"


def ort_optimized_path_for(precision_onnx: Path) -> Path:
    """Where the ONNX Runtime-optimized model of a precision ONNX goes: beside it, `.ort.onnx`."""
    from dropcov_deploy.manifest import renamed

    return renamed(precision_onnx, ".ort.onnx")


def write_ort_optimized(staged_onnx: Path, stage: Path) -> dict[str, Any]:
    """Save ONNX Runtime's own optimized graph (portable 'extended' level, CPU provider) beside
    the precision ONNX; returns the manifest entry that describes it."""
    import onnxruntime as ort

    from dropcov_deploy.manifest import sha256_file

    destination = stage / ort_optimized_path_for(staged_onnx).name  # never the precision ONNX's own name, whatever --out was
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(destination)
    options.log_severity_level = 3
    ort.InferenceSession(str(staged_onnx), options, providers=["CPUExecutionProvider"])
    return {"artifact": destination.name, "sha256": sha256_file(destination), "level": "ORT_ENABLE_EXTENDED", "providers": ["CPUExecutionProvider"]}
