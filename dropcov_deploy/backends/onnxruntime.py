"""ONNX Runtime: loader, runner and the CPU target's extra artifact. Imports neither torch
nor training code (the edge path)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.errors import BackendUnavailable, InputError, first_line

PROVIDERS = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider")}


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
    try:
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
