"""OpenVINO: runs our ONNX artifacts (FP32, FP16, INT8 Q/DQ) unchanged on the CPU.

The `openvino` package is an optional extra (`dropcov-deploy[openvino]`), imported on first
use. OpenVINO reads the ONNX file itself (no IR conversion step, no extra artifact), turns
each Q/DQ pair into its own FakeQuantize and runs INT8 kernels where they pair up.

One setting is not left to OpenVINO: its CPU plugin computes FP32 models in bfloat16 on CPUs
with AMX or AVX512-BF16 (`INFERENCE_PRECISION_HINT` defaults to bf16 there), which would make
an "FP32" figure a bf16 one and break parity by ~1e-2. The runner pins f32, so every artifact
computes in the precision its graph says; `INFERENCE_PRECISION` names the setting. Imports
neither torch nor training code (the edge path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.errors import BackendUnavailable, InputError, first_line, missing_extra

INFERENCE_PRECISION = "f32"  # OpenVINO's INFERENCE_PRECISION_HINT for every artifact (see the module docstring)
DEVICE = "CPU"


def compile_options(threads: int | None) -> dict[str, Any]:
    """OpenVINO's compile_model config: latency mode (one stream, all cores on one request), f32
    compute, and `threads` when given (0 lets OpenVINO choose)."""
    options: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION}
    if threads:
        options["INFERENCE_NUM_THREADS"] = int(threads)
    return options


def shape_of(partial_shape: Any) -> list[Any]:
    """An OpenVINO PartialShape as the runner protocol's list: ints where static, a name where dynamic."""
    return [d.get_length() if d.is_static else f"dim{i}" for i, d in enumerate(partial_shape)]


def load_problem(message: str) -> str:
    """OpenVINO's multi-line load error as one line: the ops its ONNX frontend could not convert
    (each report line starts '-- <op> with a message'), else its first line that is not a source
    location. An ORT-optimized graph (com.microsoft ops) is named as such."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    failed = [line[3:].split(" with a message")[0] for line in lines if line.startswith("-- ") and " with a message" in line]
    if failed:
        hint = "; an ONNX Runtime-optimized graph (.ort.onnx) is for ONNX Runtime only" if any(op.startswith("com.microsoft") for op in failed) else ""
        return f"its ONNX frontend cannot convert {', '.join(dict.fromkeys(failed))}{hint}"
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (useful or lines or ["no message"])[0]


def _import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise missing_extra(exc) or BackendUnavailable(f"openvino cannot be imported: {first_line(exc)}") from None
    return openvino


class OpenVinoRunner:
    """Runs an ONNX model in OpenVINO on the CPU: infer(dict of arrays) -> dict of arrays."""

    timing = "host wall clock (OpenVINO's synchronous infer request)"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.backend = "openvino-cpu"
        ov = _import_openvino()
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
            self._compiled = core.compile_model(model, DEVICE, compile_options(threads))
        except Exception as exc:  # OpenVINO raises RuntimeError/GeneralFailure for a model it cannot read or compile
            raise InputError(f"{self.path}: OpenVINO cannot load it ({load_problem(str(exc))})") from None
        self._request = self._compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self._compiled.inputs]
        self.output_names = [port.get_any_name() for port in self._compiled.outputs]

    def input_shapes(self) -> dict[str, list[Any]]:
        return {port.get_any_name(): shape_of(port.get_partial_shape()) for port in self._compiled.inputs}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._request is None:
            raise InputError(f"{self.path}: this OpenVINO runner is closed")
        results = self._request.infer(feeds)
        # the request reuses its output buffers on the next call: hand out copies
        return {name: np.array(results[port]) for name, port in zip(self.output_names, self._compiled.outputs)}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The single-input, single-output case: images in, logits out."""
        return self.infer({self.input_names[0]: np.ascontiguousarray(batch, dtype=np.float32)})[self.output_names[0]]

    def close(self) -> None:
        self._request = None
        self._compiled = None

    def __enter__(self) -> OpenVinoRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_runner(path: Path, device: str = "cpu", threads: int | None = None, cuda_graph: bool = False) -> OpenVinoRunner:
    """The Target hook: OpenVINO on the CPU only (its GPU plugin is for Intel GPUs)."""
    if cuda_graph:
        raise InputError(f"{path}: --cuda-graph applies to TensorRT engines, not to OpenVINO")
    if device != "cpu":
        raise BackendUnavailable(f"--runtime openvino runs on the CPU; --device {device} needs --runtime onnxruntime or a TensorRT engine")
    return OpenVinoRunner(path, threads=threads)


def openvino_status() -> tuple[bool, str]:
    try:
        import openvino
    except ImportError as exc:
        return False, f"openvino cannot be imported ({first_line(exc)}); pip install 'dropcov-deploy[openvino]'"
    version = openvino.get_version() if hasattr(openvino, "get_version") else getattr(openvino, "__version__", "?")
    try:
        devices = openvino.Core().available_devices
    except Exception as exc:  # a broken install or plugin
        return False, f"OpenVINO {version} cannot start ({first_line(exc)})"
    if DEVICE not in devices:
        return False, f"OpenVINO {version} has no CPU plugin here (devices: {', '.join(devices) or 'none'})"
    return True, f"OpenVINO {version.split('-')[0]} on the CPU"
