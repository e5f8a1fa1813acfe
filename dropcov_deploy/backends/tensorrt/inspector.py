"""The engine inspector's JSON (10.x and 11.x shapes): each layer's compute precision.

IEngineInspector.get_engine_information(JSON) lists layers with their input and output
tensors. 10.x writes "Bindings" and a combined "Format/Datatype" string; 11.x writes
"I/O Tensors" and separate "Format"/"Datatype" keys. Everything here reads plain JSON.

For an engine with dynamic shapes the inspector writes "N/A due to dynamic shapes" in
place of every tensor's format and type unless an execution context with all input
shapes set is attached; such JSON says nothing about precision, so `layer_precisions`
refuses it (TensorRTBuildError) instead of counting those tensors as UNKNOWN.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from dropcov_deploy.backends.tensorrt.errors import TensorRTBuildError
from dropcov_deploy.precision import Precision

# The precision a build must show in the inspector's layer list to count as that build.
REQUIRED_LAYER_PRECISION = {Precision.FP16.value: "FP16", Precision.INT8.value: "INT8"}

# Data-type words the inspector writes ("Float", "Half", "Int8", "BFloat16", "FP8", ...)
# and the ones inside 10.x format strings ("Row major linear FP32 format").
_TYPE_WORDS = {
    "float": "FP32",
    "fp32": "FP32",
    "float32": "FP32",
    "kfloat": "FP32",
    "half": "FP16",
    "fp16": "FP16",
    "float16": "FP16",
    "khalf": "FP16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "kbf16": "BF16",
    "int8": "INT8",
    "kint8": "INT8",
    "fp8": "FP8",
    "kfp8": "FP8",
    "float8": "FP8",
    "float8e4m3": "FP8",
    "float8e4m3fn": "FP8",
    "e4m3": "FP8",
    "float8e5m2": "FP8",
    "fp4": "FP4",
    "kfp4": "FP4",
    "float4": "FP4",
    "float4e2m1": "FP4",
    "e2m1": "FP4",
    "int4": "INT4",
    "kint4": "INT4",
    "e8m0": "E8M0",
    "ke8m0": "E8M0",
    "uint8": "UINT8",
    "kuint8": "UINT8",
    "int16": "INT16",
    "int32": "INT32",
    "kint32": "INT32",
    "int64": "INT64",
    "kint64": "INT64",
    "bool": "BOOL",
    "kbool": "BOOL",
    "double": "FP64",
    "fp64": "FP64",
}
# Substring fallback, most specific first (as Polygraphy's inspector does).
_TYPE_SUBSTRINGS = (
    ("BFLOAT16", "BF16"),
    ("FLOAT8", "FP8"),
    ("FLOAT4", "FP4"),
    ("FLOAT", "FP32"),
    ("HALF", "FP16"),
    ("FP32", "FP32"),
    ("FP16", "FP16"),
    ("FP8", "FP8"),
    ("FP4", "FP4"),
    ("UINT8", "UINT8"),
    ("INT64", "INT64"),
    ("INT32", "INT32"),
    ("INT16", "INT16"),
    ("INT8", "INT8"),
    ("INT4", "INT4"),
    ("BOOL", "BOOL"),
)
# A layer computes in the narrowest type among its tensors: a Q/DQ convolution reads
# Int8 even when its fused output is Float; index tensors (Int32/Int64) count last.
_NARROWEST_FIRST = ("FP4", "E8M0", "INT4", "FP8", "INT8", "FP16", "BF16", "FP32", "FP64", "UINT8", "INT16", "INT32", "INT64", "BOOL")


def data_type_from_text(text: Any) -> str | None:
    """'Half' -> 'FP16', 'Row major linear FP32 format' -> 'FP32', unknown -> None."""
    if not isinstance(text, str):
        return None
    for word in re.findall(r"[A-Za-z0-9]+", text):
        if word.lower() in _TYPE_WORDS:
            return _TYPE_WORDS[word.lower()]
    upper = text.upper()
    return next((name for needle, name in _TYPE_SUBSTRINGS if needle in upper), None)


# What the inspector writes instead of a format or type it could not resolve
# ("N/A due to dynamic shapes" without an execution context).
NOT_AVAILABLE = "N/A"
_TENSOR_TYPE_KEYS = ("datatype", "format/datatype", "format")


def _tensor_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """A layer tensor's keys normalised: "Format/Datatype", "Datatype", "DataType", "Format" -> lower case, no spaces."""
    return {str(k).lower().replace(" ", ""): v for k, v in entry.items()}


def unresolved_tensors(data: Any) -> list[str]:
    """'layer / tensor: text' for every layer tensor whose format or type the inspector wrote as N/A."""
    found = []
    layers = data.get("Layers", []) if isinstance(data, dict) else []
    for layer in layers if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        for entry in (t for key in ("Inputs", "Outputs") for t in (layer.get(key) or []) if isinstance(t, dict)):
            fields = _tensor_fields(entry)
            texts = [str(fields[key]) for key in _TENSOR_TYPE_KEYS if isinstance(fields.get(key), str) and NOT_AVAILABLE in fields[key]]
            if texts:
                found.append(f"{layer.get('Name', '?')} / {entry.get('Name', '?')}: {texts[0]}")
    return found


def inspector_problem(engine_information: str | dict[str, Any]) -> str | None:
    """Why this inspector output cannot tell layer precisions (one line), or None: not JSON, N/A as a
    whole, or tensors whose format/type is N/A (no execution context with the input shapes attached)."""
    if isinstance(engine_information, str):
        if engine_information.strip().strip('"').startswith(NOT_AVAILABLE):
            return f"the engine inspector returned {engine_information.strip()[:60]!r} instead of layer information"
        try:
            data = json.loads(engine_information)
        except ValueError as exc:
            return f"the engine inspector's output is not JSON ({exc})"
    else:
        data = engine_information
    if not isinstance(data, dict):
        return f"the engine inspector's output is not a JSON object ({str(data)[:60]!r})"
    if not isinstance(data.get("Layers", []), list):
        return f"the engine inspector's 'Layers' is not a list ({str(data.get('Layers'))[:60]!r})"
    unresolved = unresolved_tensors(data)
    if unresolved:
        return (
            f"the engine inspector reports {len(unresolved)} layer tensor(s) as N/A (first: {unresolved[0]}); it needs an "
            "execution context with every input shape set to read formats and types"
        )
    return None


def tensor_data_type(entry: dict[str, Any]) -> str | None:
    """A layer tensor's type: 11.x "Datatype"/"DataType", else 10.x "Format/Datatype", else "Format"."""
    keyed = _tensor_fields(entry)
    for key in _TENSOR_TYPE_KEYS:
        found = data_type_from_text(keyed.get(key))
        if found:
            return found
    return None


def layer_precision(layer: Any) -> str:
    if not isinstance(layer, dict):
        return "UNKNOWN"  # a bare layer name: the engine was not built with DETAILED verbosity
    entries = [t for key in ("Inputs", "Outputs") for t in (layer.get(key) or []) if isinstance(t, dict)]
    found = {t for t in (tensor_data_type(entry) for entry in entries) if t}
    return next((name for name in _NARROWEST_FIRST if name in found), "UNKNOWN")


def layer_precisions(engine_information: str | dict[str, Any], source: str | Path = "engine inspector") -> dict[str, Any]:
    """Count an engine's layers per compute precision from IEngineInspector JSON (10.x or 11.x).
    TensorRTBuildError naming `source` when the JSON cannot tell (`inspector_problem`): N/A is never a precision."""
    problem = inspector_problem(engine_information)
    if problem:
        raise TensorRTBuildError(f"{source}: {problem}")
    data = json.loads(engine_information) if isinstance(engine_information, str) else engine_information
    layers = data.get("Layers", [])
    counts = Counter(layer_precision(layer) for layer in layers)
    schema = "unknown"
    if isinstance(data, dict) and "I/O Tensors" in data:
        schema = "11.x (I/O Tensors)"
    elif isinstance(data, dict) and "Bindings" in data:
        schema = "10.x (Bindings)"
    return {"total": len(layers), "precisions": dict(sorted(counts.items())), "inspector_schema": schema}


def precision_summary(layers: dict[str, Any]) -> str:
    """'FP16 40, FP32 3' from `layer_precisions`' result ('' when it counted nothing)."""
    return ", ".join(f"{k} {v}" for k, v in layers["precisions"].items())


def missing_precision(precision: str | Precision, layers: dict[str, Any], plan_path: Path) -> str | None:
    """Why a `precision` build whose layers are `layers` (from `layer_precisions`) is not that
    build (one line), or None: an FP16 build needs FP16 layers and an INT8 build INT8 layers."""
    precision = Precision.parse(precision, "precision").value
    required = REQUIRED_LAYER_PRECISION.get(precision)
    if required is None or layers["precisions"].get(required, 0) > 0:
        return None
    source = "a mixed-precision (AutoCast) ONNX" if precision == Precision.FP16.value else "a Q/DQ (explicitly quantized) ONNX"
    return (
        f"{plan_path}: the {precision} build has no {required} layers (layers: {precision_summary(layers) or 'none'}); TensorRT "
        f"builds strongly typed networks, so precision must come from the ONNX: build from {source}; no engine written"
    )
