"""The `models` report's data: every registered architecture and its size (rendering is the CLI's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TABLE_FORMAT = 2  # bump when the rows' fields or the registered families change (2: authors_vit)


def count_parameters(arch: str, num_classes: int = 1000, dim: int | None = None) -> int:
    """Parameter count, built on the meta device: no memory, no initialisation cost."""
    import torch

    from dropcov_deploy.models import create_model

    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, dim=dim)
    return sum(p.numel() for p in model.parameters())


def _versions_key() -> str:
    """What the table depends on, read without importing torch or timm."""
    from importlib import metadata

    from dropcov_deploy import __version__

    found = []
    for package in ("torch", "timm"):
        try:
            found.append(f"{package}-{metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package}-none")
    return "-".join([f"table{TABLE_FORMAT}", f"dropcov-deploy-{__version__}", *found])


def cached_architecture_rows(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """The table from the cache (no torch import: well under a second), else computed once (building
    every architecture on the meta device takes about 10 s) and kept per package/torch/timm version.
    An unreadable or damaged entry is recomputed; a cache folder that cannot be written is skipped."""
    from dropcov_deploy.cache_paths import default_cache_dir

    path = (cache_dir or default_cache_dir()) / f"models-{_versions_key()}.json"
    try:
        rows = json.loads(path.read_text())
        if isinstance(rows, list) and rows and all(isinstance(r, dict) and "arch" in r and "params" in r for r in rows):
            return rows
    except (OSError, ValueError):
        pass
    rows = architecture_rows()
    try:
        from dropcov_deploy.atomic import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(rows)))
    except OSError:
        pass  # a read-only home: the table is still right, only slower next time
    return rows


def architecture_rows(num_classes: int = 1000) -> list[dict[str, Any]]:
    """One dict per registered architecture: its layout, head sizes and parameter counts."""
    from dropcov_deploy.models.registry import family_of, list_archs

    rows = []
    for spec in list_archs():
        family = family_of(spec)
        fields = family.table_fields(spec)
        rows.append(
            {
                "arch": spec.name,
                "family": spec.family,
                "backbone": family.backbone_text(spec),
                "block": fields["block"],
                "layers": fields["layers"],
                "default_dim": spec.default_dim,
                "heads": fields["heads"],
                "fc_inputs": family.fc_inputs(spec),
                "image_size": spec.default_image_size,
                "params": count_parameters(spec.name, num_classes, spec.default_dim),
                "params_d128": count_parameters(spec.name, num_classes, family.reference_dim) if family.reference_dim else None,
                "summary": spec.summary,
            }
        )
    return rows
