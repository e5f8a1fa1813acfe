"""Transformer DropCov: a timm backbone with the DropCov head of the authors' ViT family.

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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

LAYOUTS = ("tokens", "NHWC", "NCHW")


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


def _timm_backbone(spec, image_size: int, pretrained: bool | str) -> nn.Module:
    """timm model without its classifier; the image size is passed only when it is not the default.

    `pretrained`: True downloads timm's weights (Hugging Face Hub); a path loads a local timm
    weights file (.safetensors / .pth) the same way, for machines without network access.
    """
    import timm

    from dropcov_deploy.errors import InputError

    kwargs: dict = dict(spec.timm_kwargs)
    if image_size != spec.default_image_size or spec.timm_kwargs:
        kwargs["img_size"] = image_size
    if isinstance(pretrained, (str, Path)):
        if not Path(pretrained).is_file():
            raise InputError(f"{pretrained}: no such backbone weights file")
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained)}
    try:
        return timm.create_model(spec.timm_name, pretrained=bool(pretrained), num_classes=0, **kwargs)
    except TypeError as exc:
        if "img_size" in str(exc):
            raise InputError(f"{spec.name}: timm's {spec.timm_name} takes no image size; use {spec.default_image_size}") from None
        raise
    except RuntimeError as exc:  # weights that do not fit the backbone
        if not pretrained:
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = lines[1] if len(lines) > 1 else lines[0]  # the first mismatch, not the "Error(s) in" header
        source = pretrained if isinstance(pretrained, (str, Path)) else spec.timm_name
        raise InputError(f"{source}: backbone weights do not fit {spec.timm_name} ({detail[:200]})") from None


def _probe_layout(backbone: nn.Module, image_size: int) -> str:
    """How forward_features lays its output out, for a timm model we have no entry for."""
    from dropcov_deploy.errors import InputError

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


def create_vit(spec, *, num_classes: int, dim: int, heads: int, image_size: int, pretrained: bool | str | Path = False) -> DropCovViT:
    """A registered (or `timm:`) transformer with the DropCov head."""
    backbone = _timm_backbone(spec, image_size, pretrained)
    on_meta = next(backbone.parameters()).is_meta
    layout = spec.token_layout or ("tokens" if on_meta else _probe_layout(backbone, image_size))
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
