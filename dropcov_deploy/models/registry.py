"""The architecture registry and `create_model`, the one way to build a model.

Two families: "resnet" (our ResNet-ACD, the authors' CNN layout) and "vit" (a timm
backbone with the transformer DropCov head). `timm:<name>` names any timm model as a
backbone; its spec is made on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from dropcov_deploy.errors import InputError

IMAGENET_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture name means: backbone layout and sensible defaults."""

    name: str
    family: str  # "resnet" or "vit"
    block: str
    layers: tuple[int, ...]
    default_dim: int  # d for ResNets, r (the head's per-head projection) for ViTs
    widths: tuple[int, ...] = IMAGENET_WIDTHS
    stem: str = "imagenet"
    default_image_size: int = 224
    summary: str = ""
    timm_name: str = ""  # vit: the timm backbone
    timm_kwargs: tuple[tuple[str, Any], ...] = ()  # vit: overrides of the timm model's defaults
    heads: int = 0  # vit: the head's number of cross-covariance heads
    token_layout: str = ""  # vit: "tokens", "NHWC" or "NCHW"; probed when empty


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

def _vit(name: str, timm_name: str, heads: int, r: int, layout: str, summary: str, image_size: int = 224, **timm_kwargs: Any) -> ArchSpec:
    return ArchSpec(name, "vit", block="", layers=(), default_dim=r, widths=(), stem="", default_image_size=image_size,
                    summary=summary, timm_name=timm_name, timm_kwargs=tuple(timm_kwargs.items()), heads=heads, token_layout=layout)


# Transformers: timm backbones with the spec's head sizes (heads, r). DeiT-Tiny is timm's
# (dim 192, the authors' own Tiny has dim 240 and a convolutional token stem); Swin-T has no
# upstream configuration: it takes DeiT-S's head, the model of its size class.
register(_vit("deit_tiny_drop", "deit_tiny_patch16_224", 6, 14, "tokens", "DeiT-Ti/16 + DropCov head"))
register(_vit("deit_small_drop", "deit_small_patch16_224", 6, 24, "tokens", "DeiT-S/16 + DropCov head"))
register(_vit("deit_base_drop", "deit_base_patch16_224", 12, 24, "tokens", "DeiT-B/16 + DropCov head"))
register(_vit("swin_tiny_drop", "swin_tiny_patch4_window7_224", 6, 24, "NHWC", "Swin-T (window 7) + DropCov head"))
register(
    _vit(
        "vit_compact_drop", "vit_tiny_patch16_224", 4, 8, "tokens",
        "compact ViT (patch 8, width 128, depth 4) + DropCov head for small images",
        image_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0,
    )
)

TIMM_PREFIX = "timm:"
TIMM_DEFAULT_HEADS, TIMM_DEFAULT_DIM = 6, 24  # DeiT-S's head, the family's reference member


def _timm_spec(name: str) -> ArchSpec:
    """`timm:<model>`: any timm model whose forward_features yields tokens or a feature map."""
    model_name = name[len(TIMM_PREFIX):]
    import timm

    if not model_name or not timm.is_model(model_name):
        raise InputError(f"unknown timm model {model_name!r} in {name!r} (see timm.list_models())")
    size = timm.get_pretrained_cfg_value(model_name, "input_size") or (3, 224, 224)
    return _vit(name, model_name, TIMM_DEFAULT_HEADS, TIMM_DEFAULT_DIM, "", f"timm {model_name} + DropCov head", int(size[-1]))


def list_archs() -> list[ArchSpec]:
    return list(_REGISTRY.values())


def get_arch(name: str) -> ArchSpec:
    """Look an architecture up by name (case-insensitive); unknown names list the known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    by_lower = {key.lower(): spec for key, spec in _REGISTRY.items()}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    raise InputError(f"unknown architecture {name!r}; known: {', '.join(_REGISTRY)}, or timm:<model>")


def create_model(
    arch: str,
    num_classes: int = 1000,
    dim: int | None = None,
    widths: Sequence[int] | None = None,
    drop_scale: float = 10.0,
    *,
    heads: int | None = None,
    image_size: int | None = None,
    pretrained_backbone: bool | str = False,
):
    """Build an architecture by name, in train mode with fresh weights, like timm.create_model.

    ResNets: `widths` overrides the four stage widths (narrower models for small data).
    ViTs: `heads` and `dim` (r) size the head; `image_size` rebuilds the backbone's position
    embeddings; `pretrained_backbone` loads timm's ImageNet weights: True downloads them (network
    access), a path reads a local timm weights file.
    """
    spec = get_arch(arch)
    if spec.family == "vit":
        from dropcov_deploy.models.vit_drop import create_vit

        model = create_vit(
            spec, num_classes=num_classes, dim=dim or spec.default_dim, heads=heads or spec.heads,
            image_size=image_size or spec.default_image_size, pretrained=pretrained_backbone,
        )
    else:
        from dropcov_deploy.models.resnet_acd import ResNetACD

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
