"""ONNX Runtime loader and runner. Imports neither torch nor training code (edge path)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from dropcov_deploy.errors import InputError


def create_session(path: Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None, optimize: bool = True):
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: ONNX Runtime cannot load it ({first})") from None


class OnnxRuntimeRunner:
    """Runs an ONNX model in ONNX Runtime: infer(dict of arrays) -> dict of arrays."""

    backend = "onnxruntime"

    def __init__(self, path: Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = create_session(self.path, providers, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, results))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The single-input, single-output case: images in, logits out."""
        return self.infer({self.input_names[0]: np.ascontiguousarray(batch, dtype=np.float32)})[self.output_names[0]]
