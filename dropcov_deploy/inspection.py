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
        "dim": info.dim,
        "num_classes": info.num_classes,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "input_size": info.resolved_input_size(),
        "preprocessing": info.resolved_preprocessing().to_dict(),
        "class_names": info.class_names,
        "epoch": info.epoch,
        "accuracy": info.accuracy,
        "sha256": info.sha256,
    }


def describe(path: str | Path, arch: str | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
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
        if isinstance(value, list) and len(value) > 12:
            value = ", ".join(map(str, value[:12])) + f", ... ({len(value)} in all)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v not in ({}, None))
        elif isinstance(value, int) and key == "parameters":
            value = f"{value:,}"
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)
