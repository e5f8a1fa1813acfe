"""ONNX Runtime: loader, runner and the CPU target's extra artifact. Imports neither torch
nor training code (the edge path)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.errors import InputError, first_line

PROVIDERS = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider")}


def create_session(path: Path, providers: Sequence[str] = PROVIDERS["cpu"], threads: int | None = None, optimize: bool = True):
    """An InferenceSession on the given providers, with a one-line error for a bad model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise InputError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)})") from None


class OnnxRuntimeRunner:
    """Runs an ONNX model in ONNX Runtime: infer(dict of arrays) -> dict of arrays."""

    timing = "host wall clock (ONNX Runtime run is synchronous)"

    def __init__(self, path: Path, providers: Sequence[str] = PROVIDERS["cpu"], threads: int | None = None, device: str = "cpu") -> None:
        self.path = Path(path)
        self.backend = f"onnxruntime-{device}"
        self._session = create_session(self.path, providers, threads)
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


def open_runner(path: Path, device: str = "cpu", threads: int | None = None) -> OnnxRuntimeRunner:
    if device not in PROVIDERS:
        raise InputError(f"--device {device!r}: use {' or '.join(PROVIDERS)}")
    return OnnxRuntimeRunner(path, providers=PROVIDERS[device], threads=threads, device=device)


def onnxruntime_status() -> tuple[bool, str]:
    try:
        import onnxruntime
    except ImportError as exc:
        return False, f"onnxruntime cannot be imported: {first_line(exc)}"
    return True, f"ONNX Runtime {onnxruntime.__version__} on the CPU"


def write_ort_optimized(staged_onnx: Path, stage: Path) -> dict[str, Any]:
    """Save ONNX Runtime's own optimized graph (portable 'extended' level, CPU provider) beside
    the precision ONNX; returns the manifest entry that describes it."""
    import onnxruntime as ort

    from dropcov_deploy.manifest import sha256_file

    stem = staged_onnx.name[: -len(".onnx")] if staged_onnx.name.endswith(".onnx") else staged_onnx.name
    destination = stage / f"{stem}.ort.onnx"  # never the precision ONNX's own name, whatever --out was
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(destination)
    options.log_severity_level = 3
    ort.InferenceSession(str(staged_onnx), options, providers=["CPUExecutionProvider"])
    return {"artifact": destination.name, "sha256": sha256_file(destination), "level": "ORT_ENABLE_EXTENDED", "providers": ["CPUExecutionProvider"]}
