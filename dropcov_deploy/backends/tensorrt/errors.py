"""The TensorRT backend's errors: what TensorRT refused (exit 2) and what failed while it ran (exit 4)."""

from __future__ import annotations

from typing import Any

from dropcov_deploy.errors import EXIT_BACKEND_FAILED, EXIT_BAD_INPUT, BackendFailed, DropCovError


class TensorRTError(DropCovError):
    """TensorRT refused a model, an engine or a run (exit code 2); the message says which and why."""

    exit_code = EXIT_BAD_INPUT


class TensorRTBuildError(TensorRTError):
    """TensorRT could not build a usable engine from this ONNX (exit code 2: fix the model or options)."""


class OnnxParseError(TensorRTBuildError):
    """TensorRT's ONNX parser rejected the model; `errors` holds every parser error."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


class TensorRTRunError(TensorRTError, BackendFailed):
    """A loaded engine failed while it ran (execute_async_v3 returned false): exit code 4, not the user's input."""

    exit_code = EXIT_BACKEND_FAILED
