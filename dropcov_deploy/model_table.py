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


def architecture_rows(num_classes: int = 1000) -> list[dict[str, Any]]:
    from dropcov_deploy.models import list_archs, triu_size

    rows = []
    for spec in list_archs():
        rows.append(
            {
                "arch": spec.name,
                "block": spec.block,
                "layers": list(spec.layers),
                "default_dim": spec.default_dim,
                "fc_inputs": triu_size(spec.default_dim),
                "image_size": spec.default_image_size,
                "params": count_parameters(spec.name, num_classes, spec.default_dim),
                "params_d128": count_parameters(spec.name, num_classes, 128),
                "summary": spec.summary,
            }
        )
    return rows


def render_architecture_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from dropcov_deploy.console import out

    table = Table(title="DropCov architectures (1000 classes)")
    table.add_column("architecture", no_wrap=True)
    for name, justify in (
        ("block", "left"),
        ("layers", "left"),
        ("default d", "right"),
        ("fc inputs", "right"),
        ("image", "right"),
        ("params", "right"),
        ("params d=128", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row["arch"],
            row["block"],
            "-".join(str(n) for n in row["layers"]),
            str(row["default_dim"]),
            f"{row['fc_inputs']:,}",
            str(row["image_size"]),
            f"{row['params'] / 1e6:.2f} M",
            f"{row['params_d128'] / 1e6:.2f} M",
        )
    out.print(table)
