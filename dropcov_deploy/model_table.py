"""The `models` report's data: every registered architecture and its size (rendering is the CLI's)."""

from __future__ import annotations

from typing import Any


def count_parameters(arch: str, num_classes: int = 1000, dim: int | None = None) -> int:
    """Parameter count, built on the meta device: no memory, no initialisation cost."""
    import torch

    from dropcov_deploy.models import create_model

    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, dim=dim)
    return sum(p.numel() for p in model.parameters())


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
