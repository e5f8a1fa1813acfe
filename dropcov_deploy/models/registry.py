"""The family and architecture registries and `create_model`, the one way to build a model.

An `ArchSpec` holds what every architecture has (name, family, default d or r, image
size, summary) and its family's own `config`. The family modules register their
`ModelFamily` and architectures on import: resnet_acd.py the CNN family "resnet",
vit_drop.py "xcov" (timm backbones with the cross-covariance token head), authors_vit.py
"authors_vit" (the authors' own transformers). Names a family
resolves itself (`timm:<model>`) get their spec on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dropcov_deploy.errors import InputError
from dropcov_deploy.models.families import ModelFamily, canonical_family

# The modules that register families and architectures, imported on first lookup.
FAMILY_MODULES = ("dropcov_deploy.models.resnet_acd", "dropcov_deploy.models.vit_drop", "dropcov_deploy.models.authors_vit")


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture name means: common defaults plus its family's `config`."""

    name: str
    family: str
    default_dim: int  # d for the resnet family, r (the head's per-head projection) for xcov
    config: Any  # the family's own layout: resnet_acd.ResNetConfig, vit_drop.TokenHeadConfig
    default_image_size: int = 224
    summary: str = ""


_FAMILIES: dict[str, ModelFamily] = {}
_REGISTRY: dict[str, ArchSpec] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name} registered twice")
    _FAMILIES[family.name] = family
    return family


def register(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture {spec.name} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def list_families() -> list[ModelFamily]:
    _ensure_loaded()
    return sorted(_FAMILIES.values(), key=lambda family: family.order)


def find_family(name: str | None) -> ModelFamily | None:
    """The family of that name (older names too, see `families.FAMILY_ALIASES`); None if unknown."""
    if not name:
        return None
    _ensure_loaded()
    return _FAMILIES.get(canonical_family(name))


def get_family(name: str) -> ModelFamily:
    """The family of that name (older names too); unknown names are an InputError."""
    found = find_family(name)
    if found is None:
        raise InputError(f"unknown model family {name!r}; known: {', '.join(f.name for f in list_families())}")
    return found


def family_of(spec: ArchSpec) -> ModelFamily:
    return get_family(spec.family)


def list_archs(family: str | None = None) -> list[ArchSpec]:
    """Registered architectures, family by family in registration order; only `family`'s if given."""
    families = [get_family(family)] if family else list_families()
    return [spec for f in families for spec in _REGISTRY.values() if spec.family == f.name]


def get_arch(name: str) -> ArchSpec:
    """Look an architecture up by name (case-insensitive); unknown names list the known ones."""
    _ensure_loaded()
    if name in _REGISTRY:
        return _REGISTRY[name]
    for family in list_families():
        found = family.lookup(name) if family.lookup else None
        if found is not None:
            return found
    by_lower = {key.lower(): spec for key, spec in _REGISTRY.items()}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    patterns = [pattern for family in list_families() for pattern in family.name_patterns]
    known = ", ".join(spec.name for spec in list_archs()) + (f", or {' or '.join(patterns)}" if patterns else "")
    raise InputError(f"unknown architecture {name!r}; known: {known}")


def check_options(spec: ArchSpec, **options: Any) -> None:
    """One-line errors for family options (TrainConfig fields, None when not given) that
    `spec`'s family does not take or whose values it refuses; checked in the order given."""
    own = family_of(spec).train_options
    for option, value in options.items():
        if value is None:
            continue
        rule = own.get(option) or next((f.train_options[option] for f in list_families() if option in f.train_options), None)
        if rule is None:
            raise ValueError(f"no model family takes the option {option!r}")
        if option not in own or not rule.valid(value):
            raise InputError(rule.message.format(arch=spec.name, family=spec.family, value=value))


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
    variant: str | None = None,
):
    """Build an architecture by name, in train mode with fresh weights, like timm.create_model.

    resnet: `widths` overrides the four stage widths (narrower models for small data).
    xcov: `heads` and `dim` (r) size the head; `image_size` rebuilds the backbone's position
    embeddings; `pretrained_backbone` loads timm's ImageNet weights: True downloads them (network
    access), a path reads a local timm weights file. authors_vit: `variant` is the dense layers'
    norm ("relu", timm 0.4.12's layout, or "batchnorm"). Options of the other families are ignored.
    """
    spec = get_arch(arch)
    model = family_of(spec).create(
        spec,
        num_classes=num_classes,
        dim=dim,
        heads=heads,
        widths=widths,
        image_size=image_size,
        pretrained=pretrained_backbone,
        drop_scale=drop_scale,
        variant=variant,
    )
    model.arch = spec.name
    return model
