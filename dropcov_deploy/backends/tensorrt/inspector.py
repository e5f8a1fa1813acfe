"""The engine inspector's JSON (10.x and 11.x shapes): each layer's compute precision.

IEngineInspector.get_engine_information(JSON) lists layers with their input and output
tensors. 10.x writes "Bindings" and a combined "Format/Datatype" string; 11.x writes
"I/O Tensors" and separate "Format"/"Datatype" keys. Everything here reads plain JSON.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

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


def tensor_data_type(entry: dict[str, Any]) -> str | None:
    """A layer tensor's type: 11.x "Datatype"/"DataType", else 10.x "Format/Datatype", else "Format"."""
    keyed = {str(k).lower().replace(" ", ""): v for k, v in entry.items()}
    for key in ("datatype", "format/datatype", "format"):
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


def layer_precisions(engine_information: str | dict[str, Any]) -> dict[str, Any]:
    """Count an engine's layers per compute precision from IEngineInspector JSON (10.x or 11.x)."""
    data = json.loads(engine_information) if isinstance(engine_information, str) else engine_information
    layers = data.get("Layers", []) if isinstance(data, dict) else []
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
