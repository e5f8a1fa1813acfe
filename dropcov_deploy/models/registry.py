"""The architecture registry and `create_model`, the one way to build a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from dropcov_deploy.errors import InputError

IMAGENET_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture name means: backbone layout and sensible defaults."""

    name: str
    family: str
    block: str
    layers: tuple[int, int, int, int]
    default_dim: int
    widths: tuple[int, int, int, int] = IMAGENET_WIDTHS
    stem: str = "imagenet"
    default_image_size: int = 224
    summary: str = ""


_REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


# d: the paper's headline ResNet-34/50/101 models use d = 128 (their parameter counts
# only add up with it); ResNet-18's best result is at d = 256, the authors' code default.
register(ArchSpec("resnet18_ACD", "resnet", "basic", (2, 2, 2, 2), 256, summary="ResNet-18 + DropCov"))
register(ArchSpec("resnet34_ACD", "resnet", "basic", (3, 4, 6, 3), 128, summary="ResNet-34 + DropCov"))
register(ArchSpec("resnet50_ACD", "resnet", "bottleneck", (3, 4, 6, 3), 128, summary="ResNet-50 + DropCov"))
register(ArchSpec("resnet101_ACD", "resnet", "bottleneck", (3, 4, 23, 3), 128, summary="ResNet-101 + DropCov"))
register(ArchSpec("resnet152_ACD", "resnet", "bottleneck", (3, 8, 36, 3), 128, summary="ResNet-152 + DropCov"))
register(
    ArchSpec(
        "resnet10_compact_ACD",
        "resnet",
        "basic",
        (1, 1, 1, 1),
        32,
        widths=(16, 32, 64, 128),
        stem="compact",
        default_image_size=32,
        summary="compact ResNet-10 + DropCov for small images (3x3 stem, no max-pool)",
    )
)


def list_archs() -> list[ArchSpec]:
    return list(_REGISTRY.values())


def get_arch(name: str) -> ArchSpec:
    """Look an architecture up by name (case-insensitive); unknown names list the known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    by_lower = {key.lower(): spec for key, spec in _REGISTRY.items()}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    raise InputError(f"unknown architecture {name!r}; known: {', '.join(_REGISTRY)}")


def create_model(
    arch: str,
    num_classes: int = 1000,
    dim: int | None = None,
    widths: Sequence[int] | None = None,
    drop_scale: float = 10.0,
):
    """Build an architecture by name, in train mode with fresh weights, like timm.create_model.

    `widths` overrides the four stage widths (narrower models for small data).
    """
    from dropcov_deploy.models.resnet_acd import ResNetACD

    spec = get_arch(arch)
    model = ResNetACD(
        spec.block,
        spec.layers,
        num_classes=num_classes,
        dim=spec.default_dim if dim is None else dim,
        widths=tuple(widths) if widths else spec.widths,
        stem=spec.stem,
        drop_scale=drop_scale,
    )
    model.arch = spec.name
    return model
