"""The "xcov" family: a timm backbone with the cross-covariance token head of the authors' ViTs.

The family is named for its head, not its backbone: transformers (DeiT, Swin) and timm
CNNs (`timm:<model>`) alike. This module registers it and its architectures.

Head (dropcov-spec.md, "ViT family"): `wr` (Linear, no bias) maps each visual token to
3 * heads * r values; the first two thirds are q and k (the third is unused, as
upstream). Both are centred over the tokens and P = (1/N) q^T k is taken per head
(r x r, not symmetric, flattened whole). Logits = cls_fc(class token) + visual_fc(vec P).
Training multiplies one token mask into q and k (whole tokens dropped per head,
p = 0.2) and drops P's entries (p = 0.5); in eval mode both are absent, so the exported
graph holds only wr -> centring -> product -> flatten -> visual_fc.

Token layouts: ViT/DeiT (B, T, C) with prefix tokens (the class token goes to cls_fc);
Swin (B, H, W, C) and convnets (B, C, H, W) have no class token, so the average-pooled
token takes its place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dropcov_deploy.errors import CheckpointError, InputError
from dropcov_deploy.models.families import HeadSizes, ModelFamily, OptionRule, Recipe
from dropcov_deploy.models.registry import ArchSpec, register, register_family

FAMILY = "xcov"
LAYOUTS = ("tokens", "NHWC", "NCHW")
TIMM_PREFIX = "timm:"
TIMM_DEFAULT_HEADS, TIMM_DEFAULT_DIM = 6, 24  # DeiT-S's head, the family's reference member


def visual_fc_inputs(heads: int, dim: int) -> int:
    """Length of vec(P): heads r x r matrices."""
    return heads * dim * dim


class DropCovViT(nn.Module):
    """Backbone tokens -> (class token, visual tokens) -> cls_fc + visual_fc(vec(P))."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        width: int,
        num_classes: int,
        heads: int,
        dim: int,
        layout: str,
        prefix_tokens: int,
        image_size: int,
        token_drop: float = 0.2,
        cov_drop: float = 0.5,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown token layout {layout!r}; expected one of {LAYOUTS}")
        if heads < 1 or dim < 1 or num_classes < 1:
            raise ValueError(f"need heads, r and num_classes >= 1, got {heads}, {dim}, {num_classes}")
        self.backbone = backbone
        self.width = width
        self.num_classes = num_classes
        self.heads = heads
        self.dim = dim  # r, the per-head projection size ("wr_dim" upstream)
        self.layout = layout
        self.prefix_tokens = prefix_tokens
        self.image_size = image_size
        self.token_drop = token_drop
        self.wr = nn.Linear(width, 3 * heads * dim, bias=False)
        self.cov_dropout = nn.Dropout(cov_drop)
        self.cls_fc = nn.Linear(width, num_classes)
        self.visual_fc = nn.Linear(visual_fc_inputs(heads, dim), num_classes)
        for layer in (self.wr, self.cls_fc, self.visual_fc):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def input_size_problem(self, image_size: int) -> str | None:
        """Why `image_size` cannot be exported, or None: position embeddings and windows are fixed;
        a convolutional backbone takes any size (vec(P) does not depend on the token count)."""
        if self.layout == "NCHW":
            return None if image_size >= 32 else "a convolutional backbone needs 32x32 inputs or larger"
        if image_size != self.image_size:
            return (
                f"this model was built for {self.image_size}x{self.image_size} inputs "
                f"(its position embeddings / windows are fixed), not {image_size}x{image_size}"
            )
        return None

    # The stages are separate so verification can compare intermediate tensors.
    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> every output token, (B, T, C)."""
        features = self.backbone.forward_features(x)
        if self.layout == "NHWC":
            return features.flatten(1, 2)
        if self.layout == "NCHW":
            return features.flatten(2).transpose(1, 2)
        return features

    def split_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class token, visual tokens); the average token stands in where there is no class token."""
        if self.prefix_tokens:
            return tokens[:, 0], tokens[:, self.prefix_tokens :]
        return tokens.mean(dim=1), tokens

    def forward_reduce(self, visual: torch.Tensor) -> torch.Tensor:
        """Visual tokens (B, N, C) -> wr projections (B, N, 3 * heads * r)."""
        return self.wr(visual)

    def covariance(self, reduced: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """wr projections -> P (B, heads, r, r), in FP32 even under autocast."""
        if torch.is_autocast_enabled(reduced.device.type):
            with torch.autocast(reduced.device.type, enabled=False):
                return self._cross_covariance(reduced.float(), token_mask)
        return self._cross_covariance(reduced, token_mask)

    def _cross_covariance(self, reduced: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        tokens = reduced.shape[1]
        split = reduced.unflatten(-1, (3, self.heads, self.dim))  # (B, N, 3, heads, r)
        q = split[:, :, 0].transpose(1, 2)  # (B, heads, N, r)
        k = split[:, :, 1].transpose(1, 2)
        if token_mask is not None:
            q, k = q * token_mask, k * token_mask
        scale = 1.0 / math.sqrt(tokens)  # (1/N) q^T k, split as two 1/sqrt(N): FP16-safe intermediates
        q = (q - q.mean(dim=2, keepdim=True)) * scale
        k = (k - k.mean(dim=2, keepdim=True)) * scale
        return torch.matmul(q.transpose(-1, -2), k)

    def _token_mask(self, reduced: torch.Tensor) -> torch.Tensor | None:
        """Training only: drop whole tokens per sample and head (upstream's Dropout2d on a ones mask)."""
        if not self.training or self.token_drop <= 0:
            return None
        batch, tokens = reduced.shape[:2]
        ones = reduced.new_ones(batch * self.heads, tokens, 1)
        return F.dropout1d(ones, self.token_drop, training=True).view(batch, self.heads, tokens, 1)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode intermediate tensors, named as verify's stages."""
        cls, visual = self.split_tokens(self.forward_backbone(x))
        reduced = self.forward_reduce(visual)
        covariance = self.covariance(reduced)
        logits = self.cls_fc(cls) + self.visual_fc(covariance.flatten(1))
        return {"backbone": visual, "reduced": reduced, "covariance": covariance, "logits": logits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, visual = self.split_tokens(self.forward_backbone(x))
        reduced = self.forward_reduce(visual)
        covariance = self.covariance(reduced, self._token_mask(reduced))
        return self.cls_fc(cls) + self.visual_fc(self.cov_dropout(covariance.flatten(1)))


@dataclass(frozen=True)
class TokenHeadConfig:
    """An xcov architecture's backbone and head: the timm model, its overrides, heads, token layout."""

    timm_name: str
    heads: int  # the head's number of cross-covariance heads
    token_layout: str = ""  # "tokens", "NHWC" or "NCHW"; probed when empty
    timm_kwargs: tuple[tuple[str, Any], ...] = ()  # overrides of the timm model's defaults


def _timm_backbone(spec: ArchSpec, image_size: int, pretrained: bool | str) -> nn.Module:
    """timm model without its classifier; the image size is passed only when it is not the default.

    `pretrained`: True downloads timm's weights (Hugging Face Hub); a path loads a local timm
    weights file (.safetensors / .pth) the same way, for machines without network access.
    """
    import timm

    config: TokenHeadConfig = spec.config
    kwargs: dict = dict(config.timm_kwargs)
    if image_size != spec.default_image_size or config.timm_kwargs:
        kwargs["img_size"] = image_size
    if isinstance(pretrained, (str, Path)):
        if not Path(pretrained).is_file():
            raise InputError(f"{pretrained}: no such backbone weights file")
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained)}
    try:
        return timm.create_model(config.timm_name, pretrained=bool(pretrained), num_classes=0, **kwargs)
    except TypeError as exc:
        if "img_size" in str(exc):
            raise InputError(f"{spec.name}: timm's {config.timm_name} takes no image size; use {spec.default_image_size}") from None
        raise
    except RuntimeError as exc:  # weights that do not fit the backbone
        if not pretrained:
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = lines[1] if len(lines) > 1 else lines[0]  # the first mismatch, not the "Error(s) in" header
        source = pretrained if isinstance(pretrained, (str, Path)) else config.timm_name
        raise InputError(f"{source}: backbone weights do not fit {config.timm_name} ({detail[:200]})") from None


def _probe_layout(backbone: nn.Module, image_size: int) -> str:
    """How forward_features lays its output out, for a timm model we have no entry for."""
    fmt = getattr(backbone, "output_fmt", None)
    if fmt in ("NHWC", "NCHW"):
        return str(fmt)
    with torch.no_grad():
        probe = backbone.forward_features(torch.zeros(1, 3, image_size, image_size, device=next(backbone.parameters()).device))
    if isinstance(probe, torch.Tensor) and probe.dim() == 3:
        return "tokens"
    if isinstance(probe, torch.Tensor) and probe.dim() == 4:
        return "NCHW" if probe.shape[1] == backbone.num_features else "NHWC"
    raise InputError(f"{backbone.__class__.__name__}: forward_features gives neither tokens nor a feature map")


def create_xcov(
    spec: ArchSpec,
    *,
    num_classes: int,
    dim: int | None = None,
    heads: int | None = None,
    widths: Sequence[int] | None = None,
    image_size: int | None = None,
    pretrained: bool | str | Path = False,
    drop_scale: float = 10.0,
    variant: str | None = None,
) -> DropCovViT:
    """A registered (or `timm:`) backbone with the cross-covariance head; None takes the spec's
    default. `widths`, `drop_scale` and `variant` are other families' and ignored here."""
    config: TokenHeadConfig = spec.config
    dim, heads, image_size = dim or spec.default_dim, heads or config.heads, image_size or spec.default_image_size
    backbone = _timm_backbone(spec, image_size, pretrained)
    on_meta = next(backbone.parameters()).is_meta
    layout = config.token_layout or ("tokens" if on_meta else _probe_layout(backbone, image_size))
    prefix = int(getattr(backbone, "num_prefix_tokens", 0)) if layout == "tokens" else 0
    return DropCovViT(
        backbone,
        width=int(backbone.num_features),
        num_classes=num_classes,
        heads=heads,
        dim=dim,
        layout=layout,
        prefix_tokens=prefix,
        image_size=image_size,
    )


# ------------------------------------------------------------------ the "xcov" family


def _head_sizes(state: Mapping[str, torch.Tensor], path: Path) -> HeadSizes | None:
    """wr is (3 * heads * r, width) and visual_fc (classes, heads * r * r): r and heads follow."""
    if "wr.weight" not in state or "visual_fc.weight" not in state:
        return None  # the authors' own transformers (classifier.representation.wr) are the authors_vit family's
    projections = int(state["wr.weight"].shape[0])
    classes, visual_in = (int(s) for s in state["visual_fc.weight"].shape)
    if projections % 3 or (visual_in * 3) % projections:
        raise CheckpointError(f"{path}: wr gives {projections} values and visual_fc takes {visual_in}: not a DropCov ViT head")
    dim = visual_in * 3 // projections
    heads = projections // (3 * dim) if dim else 0
    if not heads or heads * dim * dim != visual_in:
        raise CheckpointError(f"{path}: wr gives {projections} values and visual_fc takes {visual_in}: not a DropCov ViT head")
    return HeadSizes(FAMILY, dim, classes, heads)


def _graph_rules(proto, info) -> list[str]:
    """The q^T k product feeds a visual_fc that takes heads * r * r values."""
    from dropcov_deploy import head_graph

    expected = visual_fc_inputs(info.heads, info.dim)
    try:
        fc = head_graph.fc_node(proto)
    except InputError as exc:
        return [str(exc)]
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    if expected not in weights.get(fc.input[1], []):
        return [f"the covariance feeds {fc.name}, whose weight {weights.get(fc.input[1])} does not take {expected} values"]
    return []


def _backbone_text(spec: ArchSpec) -> str:
    config: TokenHeadConfig = spec.config
    overrides = ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}" for key, value in config.timm_kwargs)
    return f"timm {config.timm_name}" + (f" ({overrides})" if overrides else "")


def _spec(name: str, timm_name: str, heads: int, r: int, layout: str, summary: str, image_size: int = 224, **timm_kwargs: Any) -> ArchSpec:
    return ArchSpec(name, FAMILY, r, TokenHeadConfig(timm_name, heads, layout, tuple(timm_kwargs.items())), image_size, summary)


def _timm_spec(name: str) -> ArchSpec | None:
    """`timm:<model>`: any timm model whose forward_features yields tokens or a feature map."""
    if not name.startswith(TIMM_PREFIX):
        return None
    model_name = name[len(TIMM_PREFIX) :]
    import timm

    if not model_name or not timm.is_model(model_name):
        raise InputError(f"unknown timm model {model_name!r} in {name!r} (see timm.list_models())")
    size = timm.get_pretrained_cfg_value(model_name, "input_size") or (3, 224, 224)
    return _spec(name, model_name, TIMM_DEFAULT_HEADS, TIMM_DEFAULT_DIM, "", f"timm {model_name} + DropCov head", int(size[-1]))


register_family(
    ModelFamily(
        name=FAMILY,
        order=1,
        create=create_xcov,
        head_sizes=_head_sizes,
        head_keys=("wr.weight", "visual_fc.weight"),
        build_kwargs=lambda sizes, widths, image_size: {"heads": sizes.heads, "image_size": image_size},
        describe_head=lambda dim, heads: f"heads={heads}, r={dim}",
        graph_rules=_graph_rules,
        exporter_note="token mask and covariance dropout folded away",
        manifest_fields=lambda info: {"heads": info.heads},
        backbone_text=_backbone_text,
        fc_inputs=lambda spec: visual_fc_inputs(spec.config.heads, spec.default_dim),
        table_fields=lambda spec: {"block": None, "layers": [], "heads": spec.config.heads},
        recipe=Recipe("adamw", 1e-3, 0.05),  # DeiT's
        gate_overrides={"int8": {"accuracy_drop": {"max": 0.01}}},  # INT8 may lose 1 pt (resnet: 0.5 pt)
        train_options={
            "pretrained_backbone": OptionRule(lambda _: True, "backbone weights are for ViTs (timm backbones); {arch} is a {family}"),
            "heads": OptionRule(lambda heads: heads >= 1, "--heads sizes a ViT head (a positive number); {arch} is a {family}"),
        },
        lookup=_timm_spec,
        name_patterns=(TIMM_PREFIX + "<model>",),
        no_arch_hint="; for a timm backbone give --arch timm:<model>",
    )
)

# timm backbones with the spec's head sizes (heads, r). DeiT-Tiny is timm's (dim 192, the
# authors' own Tiny has dim 240 and a convolutional token stem); Swin-T has no upstream
# configuration: it takes DeiT-S's head, the model of its size class.
register(_spec("deit_tiny_drop", "deit_tiny_patch16_224", 6, 14, "tokens", "DeiT-Ti/16 + DropCov head"))
register(_spec("deit_small_drop", "deit_small_patch16_224", 6, 24, "tokens", "DeiT-S/16 + DropCov head"))
register(_spec("deit_base_drop", "deit_base_patch16_224", 12, 24, "tokens", "DeiT-B/16 + DropCov head"))
register(_spec("swin_tiny_drop", "swin_tiny_patch4_window7_224", 6, 24, "NHWC", "Swin-T (window 7) + DropCov head"))
register(
    _spec(
        "vit_compact_drop",
        "vit_tiny_patch16_224",
        4,
        8,
        "tokens",
        "compact ViT (patch 8, width 128, depth 4) + DropCov head for small images",
        image_size=32,
        patch_size=8,
        embed_dim=128,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
    )
)
