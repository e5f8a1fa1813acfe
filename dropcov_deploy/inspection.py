"""`inspect`: what an artifact is and where it came from, as a dict (the CLI renders it).

A checkpoint is described by loading it; an ONNX model by its graph and its manifest
(the sidecar, else its metadata_props); a TensorRT plan, opaque without TensorRT, by its
sidecar manifest. Which of the three a file is follows its suffix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dropcov_deploy.errors import InputError


def describe_checkpoint(path: Path, arch: str | None = None) -> dict[str, Any]:
    from dropcov_deploy.models import load_checkpoint_with_info

    loaded = load_checkpoint_with_info(path, arch)
    info = loaded.info
    return {
        "kind": "checkpoint",
        "path": str(path),
        "source_format": info.source_format,
        "weights": info.weights,  # state_dict_ema where timm's saver kept a model EMA (loaded in preference)
        **({"variant": info.variant} if info.variant is not None else {}),
        "arch": info.arch,
        "family": info.family,
        "dim": info.dim,
        **({"heads": info.heads} if info.heads is not None else {}),
        "num_classes": info.num_classes,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "input_size": info.resolved_input_size(),
        "preprocessing": info.resolved_preprocessing().to_dict(),
        "class_names": info.class_names,
        "epoch": info.epoch,
        "accuracy": info.accuracy,
        "sha256": info.sha256,
    }


def describe_onnx(path: Path) -> dict[str, Any]:
    from dropcov_deploy import onnx_io
    from dropcov_deploy.manifest import Manifest

    model = onnx_io.load(path, load_external_data=False)
    manifest = Manifest.find(path)
    return {
        "kind": "onnx",
        "path": str(path),
        "manifest_source": manifest.origin if manifest else None,
        "manifest": manifest.to_dict() if manifest else None,
        **onnx_io.describe(model),
    }


def describe_engine(path: Path) -> dict[str, Any]:
    """A TensorRT plan is opaque without TensorRT: its sidecar manifest says what it is."""
    from dropcov_deploy.manifest import Manifest, sidecar_path

    manifest = Manifest.find(path)
    if manifest is None:
        raise InputError(f"{path}: no manifest beside it ({sidecar_path(path).name}); build engines with `dropcov-deploy build`")
    keys = (
        "precision",
        "tensorrt_version",
        "gpu_name",
        "compute_capability",
        "cuda_runtime_version",
        "profile",
        "layers",
        "io",
        "onnx",
        "onnx_sha256",
        "calibration_sha256",
        "plan_sha256",
        "arch",
        "num_classes",
        "created",
    )
    return {"kind": "tensorrt-engine", "path": str(path), "bytes": path.stat().st_size, **{k: manifest.get(k) for k in keys}}


def describe(path: str | Path, arch: str | None = None) -> dict[str, Any]:
    from dropcov_deploy.manifest import ENGINE_SUFFIXES, ONNX_SUFFIXES

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() in ONNX_SUFFIXES:
        return describe_onnx(path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return describe_engine(path)
    if path.suffix.lower() == ".json":
        return describe_json(path)
    return describe_checkpoint(path, arch)


def describe_json(path: Path) -> dict[str, Any]:
    """A manifest (a sidecar), said for what it is and what it describes; any other JSON is refused."""
    import json

    from dropcov_deploy.manifest import MANIFEST_FORMAT

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path}: a JSON file, but not a dropcov-deploy manifest; inspect takes checkpoints, ONNX models, plans and their manifests")
    described = path.with_name(path.name[: -len(".json")]) if path.name.endswith(".json") else path
    return {
        "kind": "manifest",
        "path": str(path),
        "describes": f"{described.name} ({'present' if described.exists() else 'not beside it'}); inspect {described.name} for the model itself",
        "manifest": data,
    }
