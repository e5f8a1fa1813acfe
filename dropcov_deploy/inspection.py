"""`inspect`: what an artifact is and where it came from, as a dict and a table.

Checkpoints are described here; ONNX models and engines are added by the export
and build steps. Dispatch is by content type, not trust in the file name.
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
        "arch": info.arch,
        "family": info.family,
        "dim": info.dim,
        **({"heads": info.heads} if info.family == "vit" else {}),
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
    from dropcov_deploy import manifest as manifests
    from dropcov_deploy import onnx_graph

    model = onnx_graph.load(path, load_external_data=False)
    manifest = manifests.read_manifest(path)
    source = "sidecar" if manifest is not None else "metadata_props"
    if manifest is None:
        manifest = manifests.manifest_from_metadata({p.key: p.value for p in model.metadata_props})
    return {
        "kind": "onnx",
        "path": str(path),
        "manifest_source": source if manifest else None,
        "manifest": manifest or None,
        **onnx_graph.describe(model),
    }


def describe_engine(path: Path) -> dict[str, Any]:
    """A TensorRT plan is opaque without TensorRT: its sidecar manifest says what it is."""
    from dropcov_deploy import manifest as manifests

    manifest = manifests.read_manifest(path)
    if manifest is None:
        raise InputError(f"{path}: no manifest beside it ({manifests.sidecar_path(path).name}); build engines with `dropcov-deploy build`")
    keys = ("precision", "tensorrt_version", "gpu_name", "compute_capability", "cuda_runtime_version", "profile", "layers", "io",
            "onnx", "onnx_sha256", "calibration_sha256", "plan_sha256", "arch", "num_classes", "created")
    return {"kind": "tensorrt-engine", "path": str(path), "bytes": path.stat().st_size, **{k: manifest.get(k) for k in keys}}


def describe(path: str | Path, arch: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    from dropcov_deploy.backends import ENGINE_SUFFIXES

    if path.suffix.lower() == ".onnx":
        return describe_onnx(path)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return describe_engine(path)
    return describe_checkpoint(path, arch)


def render(description: dict[str, Any]) -> None:
    from rich.table import Table

    from dropcov_deploy.console import out

    table = Table(title=f"{description['kind']}: {description['path']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in description.items():
        if key in ("kind", "path"):
            continue
        if key == "op_counts":
            continue
        if key in ("inputs", "outputs"):
            value = "; ".join(f"{v['name']} {v['shape']} {v['dtype']}" for v in value)
        elif key == "manifest" and isinstance(value, dict):
            value = _manifest_summary(value)
        elif key == "parameter_bytes":
            value = f"{value / 1e6:.1f} MB"
        elif isinstance(value, list) and len(value) > 12:
            value = ", ".join(map(str, value[:12])) + f", ... ({len(value)} in all)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v not in ({}, None))
        elif isinstance(value, int) and key == "parameters":
            value = f"{value:,}"
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)
    if description["kind"] == "onnx":
        _render_onnx_extras(description)


def _render_onnx_extras(description: dict[str, Any]) -> None:
    from rich.table import Table

    from dropcov_deploy.console import out

    ops = Table(title="operators", show_header=True)
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in description["op_counts"].items():
        ops.add_row(op, str(count))
    out.print(ops)


def _manifest_summary(manifest: dict[str, Any]) -> str:
    parts = []
    for key in ("arch", "dim", "num_classes", "precision", "opset"):
        if key in manifest:
            parts.append(f"{key}={manifest[key]}")
    if isinstance(manifest.get("input"), dict):
        parts.append(f"input={manifest['input'].get('shape')} batch={manifest['input'].get('batch')}")
    if isinstance(manifest.get("preprocessing"), dict):
        prep = manifest["preprocessing"]
        parts.append(f"preprocessing=resize {prep.get('resize')} crop {prep.get('crop')} mean {prep.get('mean')} std {prep.get('std')}")
    if isinstance(manifest.get("source"), dict):
        parts.append(f"source={manifest['source'].get('checkpoint')} (sha256 {str(manifest['source'].get('sha256'))[:12]})")
    if isinstance(manifest.get("parity"), dict) and manifest["parity"].get("checked"):
        parts.append(f"parity={manifest['parity']['max_relative_error']:.1e}")
    if manifest.get("sha256"):
        parts.append(f"sha256={manifest['sha256'][:12]}")
    return "\n".join(parts)
