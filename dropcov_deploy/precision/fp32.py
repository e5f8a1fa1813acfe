"""FP32: the export itself, unchanged (a target's artifact is still built from it)."""

from __future__ import annotations

from typing import Any

from dropcov_deploy import onnx_io
from dropcov_deploy.precision import PrecisionRequest


def precision_graph(request: PrecisionRequest) -> tuple[Any, dict[str, Any]]:
    return onnx_io.load(request.model), {}
