"""Backends: a loader and a runner each (torch, onnxruntime, tensorrt), one runner interface.

A runner takes a dict of named numpy arrays and returns a dict of named numpy arrays,
like Polygraphy's runners; `runner(batch)` is the one-input, one-output shortcut. Each
backend module imports its library lazily, so the runtime path needs neither torch
nor TensorRT unless the artifact does.
"""

from __future__ import annotations

from pathlib import Path

ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


def artifact_kind(path: Path) -> str:
    """'onnx' or 'tensorrt', by suffix; anything else is not an artifact we run."""
    from dropcov_deploy.errors import InputError

    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise InputError(f"{path}: not an artifact we can run (expected .onnx or a TensorRT .plan/.engine)")


def open_runner(path: Path, device: str = "cpu", threads: int | None = None):
    """The runner for an artifact: ONNX Runtime for .onnx, TensorRT for engines."""
    path = Path(path)
    if artifact_kind(path) == "tensorrt":
        from dropcov_deploy.backends.tensorrt import TensorRTRunner

        return TensorRTRunner(path)
    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner

    providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if device == "cuda" else ("CPUExecutionProvider",)
    return OnnxRuntimeRunner(path, providers=providers, threads=threads)
