"""The `models` report: every registered architecture and its size."""

from __future__ import annotations

from typing import Any


def count_parameters(arch: str, num_classes: int = 1000, dim: int | None = None) -> int:
    """Parameter count, built on the meta device: no memory, no initialisation cost."""
    import torch

    from dropcov_deploy.models import create_model

    with torch.device("meta"):
        model = create_model(arch, num_classes=num_classes, dim=dim)
    return sum(p.numel() for p in model.parameters())


def _backbone_text(spec) -> str:
    if spec.family != "vit":
        return f"{spec.block} {'-'.join(map(str, spec.layers))}"
    overrides = ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}" for key, value in spec.timm_kwargs)
    return f"timm {spec.timm_name}" + (f" ({overrides})" if overrides else "")


def architecture_rows(num_classes: int = 1000) -> list[dict[str, Any]]:
    from dropcov_deploy.models import list_archs, triu_size
    from dropcov_deploy.models.vit_drop import visual_fc_inputs

    rows = []
    for spec in list_archs():
        vit = spec.family == "vit"
        rows.append(
            {
                "arch": spec.name,
                "family": spec.family,
                "backbone": _backbone_text(spec),
                "block": spec.block or None,
                "layers": list(spec.layers),
                "default_dim": spec.default_dim,
                "heads": spec.heads if vit else None,
                "fc_inputs": visual_fc_inputs(spec.heads, spec.default_dim) if vit else triu_size(spec.default_dim),
                "image_size": spec.default_image_size,
                "params": count_parameters(spec.name, num_classes, spec.default_dim),
                "params_d128": None if vit else count_parameters(spec.name, num_classes, 128),
                "summary": spec.summary,
            }
        )
    return rows


def render_architecture_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from dropcov_deploy.console import out

    table = Table(title="DropCov architectures (1000 classes); any timm model also works as timm:<name>")
    table.add_column("architecture", no_wrap=True)
    for name, justify in (
        ("backbone", "left"),
        ("head", "left"),
        ("fc inputs", "right"),
        ("image", "right"),
        ("params", "right"),
        ("params d=128", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        head = f"{row['heads']} heads, r={row['default_dim']}" if row["family"] == "vit" else f"d={row['default_dim']}"
        table.add_row(
            row["arch"],
            row["backbone"],
            head,
            f"{row['fc_inputs']:,}",
            str(row["image_size"]),
            f"{row['params'] / 1e6:.2f} M",
            f"{row['params_d128'] / 1e6:.2f} M" if row["params_d128"] else "-",
        )
    out.print(table)
