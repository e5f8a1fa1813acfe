"""The "authors_vit" family: the authors' own DropCov transformers (DeiT-Ti/S/B and T2T-ViT-14).

Written for this project from the paper and the structure of the public reference code
(github.com/mingzeG/DropCov, Transformers/src), with the module and tensor names of their
state_dict, so that checkpoints of their training script load strictly:

- `visual_tokens.tokens`: a convolutional visual-token stem, not a patch embedding: a 3x3
  conv (64 channels, bias) and a 3x3/2 max pool, then three DenseNet blocks (6 layers, growth
  16, bottleneck 2x16) each followed by a transition (BatchNorm, 1x1 conv to 128, 2x2 average
  pool), then a 1x1 conv (bias) to the embedding width: 14 x 14 tokens at 224 x 224, the only
  input size (the token grid and position table are fixed).
- a class token and a fixed sinusoidal position table (a frozen parameter: it is in the state_dict);
- pre-norm ViT blocks (`qkv` without bias), then a LayerNorm (`norm`);
- `classifier`: `representation.wr` (no bias) maps each visual token to 3 * heads * r values; the
  first two thirds are q and k (the third is unused, as upstream). Each is centred by its mean
  over all tokens *and* channels of a head (upstream's adaptive_avg_pool2d on a 3-D tensor: one
  scalar per sample and head, unlike the xcov family's per-channel mean), P = (1/N) q^T k per
  head; logits = visual_fc(vec P) + cls_fc(class token). Training drops whole tokens per sample
  and head from q and k (p 0.2) and P's entries (p 0.5); in eval mode both are identity.

The dense layers' norms: with the timm the authors pin (0.4.12) they are ReLUs (no tensors);
timm >= 0.5 made them BatchNorm + ReLU (`norm1`/`norm2` tensors). Both layouts are built on
request (`variant`) and detected from a state_dict's keys. Every constructor takes its sizes as
arguments: building one model never changes another (upstream's constructors mutate module-level
configuration dictionaries).
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

FAMILY = "authors_vit"
IMAGE_SIZE = 224
TOKEN_GRID = 14  # 224 -> 112 (max pool) -> 56 -> 28 -> 14 (three transitions)
STEM_WIDTH, DENSE_LAYERS, GROWTH, BOTTLENECK, TRANSITION_WIDTH = 64, 6, 16, 2, 128
DENSE_NORMS = ("relu", "batchnorm")  # timm 0.4.12's DenseBlock default, and timm >= 0.5's
ALIASES = {"T2T_ViT_Drop_14": "T2T_ViT_14"}  # the name the authors' training script uses; their code registers T2T_ViT_14


@dataclass(frozen=True)
class AuthorsViTConfig:
    """One architecture: the transformer's width, depth, attention heads and MLP ratio, and the head's heads."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    head_heads: int


def sinusoid_table(positions: int, width: int) -> torch.Tensor:
    """The fixed position table: angle = p / 10000^(2 floor(j/2) / width), sin on even j, cos on odd j,
    computed in float64 and stored as float32, shape (1, positions, width)."""
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    exponent = 2 * torch.div(torch.arange(width), 2, rounding_mode="floor").to(torch.float64) / width
    angles = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)[None, :]
    table = torch.where(torch.arange(width)[None, :] % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.to(torch.float32).unsqueeze(0)


class BatchNormReLU(nn.BatchNorm2d):
    """timm >= 0.5's BatchNormAct2d in a dense layer: BatchNorm, then ReLU (its tensors are a BatchNorm's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class DenseLayer(nn.Module):
    """norm1 -> 1x1 conv to BOTTLENECK * GROWTH -> norm2 -> 3x3 conv to GROWTH, on the concatenated inputs."""

    def __init__(self, channels: int, dense_norm: str) -> None:
        super().__init__()
        width = BOTTLENECK * GROWTH
        self.norm1 = BatchNormReLU(channels) if dense_norm == "batchnorm" else nn.ReLU()
        self.conv1 = nn.Conv2d(channels, width, kernel_size=1, bias=False)
        self.norm2 = BatchNormReLU(width) if dense_norm == "batchnorm" else nn.ReLU()
        self.conv2 = nn.Conv2d(width, GROWTH, kernel_size=3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv2(self.norm2(self.conv1(self.norm1(torch.cat(features, 1)))))


class DenseBlock(nn.ModuleDict):
    """DENSE_LAYERS layers, each reading every earlier output; returns them all, concatenated."""

    def __init__(self, channels: int, dense_norm: str) -> None:
        super().__init__({f"denselayer{i + 1}": DenseLayer(channels + i * GROWTH, dense_norm) for i in range(DENSE_LAYERS)})
        self.out_channels = channels + DENSE_LAYERS * GROWTH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BatchNorm -> 1x1 conv (no bias) -> 2x2 average pool (no activation, as upstream)."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(channels))
        self.add_module("conv", nn.Conv2d(channels, out_channels, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseTokenStem(nn.Module):
    """Image (B, 3, 224, 224) -> visual tokens (B, 196, embed_dim)."""

    def __init__(self, embed_dim: int, dense_norm: str) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, STEM_WIDTH, kernel_size=3, padding=1), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        stages: list[nn.Module] = []
        channels = STEM_WIDTH
        for _ in range(3):
            block = DenseBlock(channels, dense_norm)
            stages += [block, Transition(block.out_channels, TRANSITION_WIDTH)]
            channels = TRANSITION_WIDTH
        self.stage = nn.Sequential(*stages)
        self.transition = nn.Conv2d(TRANSITION_WIDTH, embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transition(self.stage(self.stem(x))).flatten(2).transpose(1, 2)


class VisualTokens(nn.Module):
    """The `visual_tokens` wrapper of the upstream layout (its stem lives under `.tokens`)."""

    def __init__(self, embed_dim: int, dense_norm: str) -> None:
        super().__init__()
        self.tokens = DenseTokenStem(embed_dim, dense_norm)
        self.num_patches = TOKEN_GRID * TOKEN_GRID

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; stochastic depth (whole residual branches dropped per sample) in training only."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.drop_path = drop_path

    def _branch(self, y: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path <= 0:
            return y
        keep = 1.0 - self.drop_path
        return y * y.new_empty((y.shape[0],) + (1,) * (y.dim() - 1)).bernoulli_(keep) / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._branch(self.attn(self.norm1(x)))
        return x + self._branch(self.mlp(self.norm2(x)))


class CrossCovariancePooling(nn.Module):
    """`classifier.representation`: wr -> q, k per head -> scalar-centred -> P = (1/N) q^T k (B, heads, r, r)."""

    def __init__(self, width: int, heads: int, dim: int, token_drop: float = 0.2, cov_drop: float = 0.5) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.wr = nn.Linear(width, 3 * heads * dim, bias=False)
        self.token_drop, self.cov_drop = token_drop, cov_drop

    def reduce(self, visual: torch.Tensor) -> torch.Tensor:
        return self.wr(visual)

    def covariance(self, reduced: torch.Tensor) -> torch.Tensor:
        """wr projections (B, N, 3 * heads * r) -> P, in FP32 even under autocast."""
        if torch.is_autocast_enabled(reduced.device.type):
            with torch.autocast(reduced.device.type, enabled=False):
                return self._covariance(reduced.float())
        return self._covariance(reduced)

    def _covariance(self, reduced: torch.Tensor) -> torch.Tensor:
        tokens = reduced.shape[1]
        split = reduced.unflatten(-1, (3, self.heads, self.dim))  # (B, N, 3, heads, r)
        q, k = split[:, :, 0].transpose(1, 2), split[:, :, 1].transpose(1, 2)  # (B, heads, N, r)
        if self.training and self.token_drop > 0:  # one mask for q and k: whole tokens per sample and head
            mask = F.dropout(q.new_ones(q.shape[0], self.heads, tokens, 1), self.token_drop, training=True)
            q, k = q * mask, k * mask
        scale = 1.0 / math.sqrt(tokens)  # (1/N) q^T k as two 1/sqrt(N): FP16-safe intermediates
        q = (q - q.mean(dim=(2, 3), keepdim=True)) * scale
        k = (k - k.mean(dim=(2, 3), keepdim=True)) * scale
        return torch.matmul(q.transpose(-1, -2), k)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        pooled = self.covariance(self.reduce(visual)).flatten(1)
        return F.dropout(pooled, self.cov_drop, training=self.training)


class Classifier(nn.Module):
    """`classifier`: visual_fc(vec P) + cls_fc(class token)."""

    def __init__(self, width: int, num_classes: int, heads: int, dim: int) -> None:
        super().__init__()
        self.representation = CrossCovariancePooling(width, heads, dim)
        self.visual_fc = nn.Linear(heads * dim * dim, num_classes)
        self.cls_fc = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.visual_fc(self.representation(tokens[:, 1:])) + self.cls_fc(tokens[:, 0])


class AuthorsViT(nn.Module):
    """The authors' DropCov transformer; parameter names as their state_dict's."""

    def __init__(self, config: AuthorsViTConfig, *, num_classes: int, dim: int, heads: int, dense_norm: str = "relu", drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if dense_norm not in DENSE_NORMS:
            raise ValueError(f"dense_norm {dense_norm!r}: use one of {DENSE_NORMS}")
        if heads < 1 or dim < 1 or num_classes < 1:
            raise ValueError(f"need heads, r and num_classes >= 1, got {heads}, {dim}, {num_classes}")
        width = config.embed_dim
        self.num_classes, self.dim, self.heads, self.width = num_classes, dim, heads, width
        self.image_size, self.dense_norm = IMAGE_SIZE, dense_norm
        self.visual_tokens = VisualTokens(width, dense_norm)
        rates = [drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]  # plain floats: also on the meta device
        self.blocks = nn.ModuleList(Block(width, config.num_heads, config.mlp_ratio, rate) for rate in rates)
        self.classifier = Classifier(width, num_classes, heads, dim)
        self.norm = nn.LayerNorm(width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(sinusoid_table(self.visual_tokens.num_patches + 1, width), requires_grad=False)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def input_size_problem(self, image_size: int) -> str | None:
        if image_size != IMAGE_SIZE:
            return f"the authors' transformers take {IMAGE_SIZE}x{IMAGE_SIZE} inputs only (a fixed {TOKEN_GRID}x{TOKEN_GRID} token grid), not {image_size}x{image_size}"
        return None

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> every output token after the final norm, (B, 1 + 196, C)."""
        tokens = self.visual_tokens(x)
        x = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode intermediate tensors, named as verify's stages."""
        tokens = self.forward_backbone(x)
        representation = self.classifier.representation
        reduced = representation.reduce(tokens[:, 1:])
        covariance = representation.covariance(reduced)
        logits = self.classifier.visual_fc(covariance.flatten(1)) + self.classifier.cls_fc(tokens[:, 0])
        return {"backbone": tokens[:, 1:], "reduced": reduced, "covariance": covariance, "logits": logits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_backbone(x))


# ------------------------------------------------------------------ the family
_WR = "classifier.representation.wr.weight"
_VISUAL_FC = "classifier.visual_fc.weight"


def dense_norm_of(state: Mapping[str, Any]) -> str:
    """Which dense-layer layout a state_dict holds: BatchNorm tensors in the dense layers (timm >= 0.5) or none."""
    return "batchnorm" if any(".denselayer1.norm1." in key for key in state) else "relu"


def _head_sizes(state: Mapping[str, torch.Tensor], path: Path) -> HeadSizes | None:
    """wr is (3 * heads * r, width) and visual_fc (classes, heads * r * r): r and heads follow."""
    if _WR not in state or _VISUAL_FC not in state:
        return None
    projections = int(state[_WR].shape[0])
    classes, visual_in = (int(s) for s in state[_VISUAL_FC].shape)
    dim = visual_in * 3 // projections if projections % 3 == 0 and (visual_in * 3) % projections == 0 else 0
    heads = projections // (3 * dim) if dim else 0
    if not heads or heads * dim * dim != visual_in:
        raise CheckpointError(f"{path}: classifier.representation.wr gives {projections} values and visual_fc takes {visual_in}: not a DropCov head")
    return HeadSizes(FAMILY, dim, classes, heads, variant=dense_norm_of(state))


def create_authors_vit(
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
) -> AuthorsViT:
    """The architecture in train mode with fresh weights. `variant` is the dense layers' norm
    (relu: timm 0.4.12's layout, the default; batchnorm: timm >= 0.5's)."""
    config: AuthorsViTConfig = spec.config
    if image_size not in (None, IMAGE_SIZE):
        raise InputError(f"{spec.name}: takes {IMAGE_SIZE}x{IMAGE_SIZE} inputs only (a fixed {TOKEN_GRID}x{TOKEN_GRID} token grid), not {image_size}")
    if pretrained:
        raise InputError(f"{spec.name}: has no backbone weights to download; load an authors' checkpoint instead")
    return AuthorsViT(config, num_classes=num_classes, dim=dim or spec.default_dim, heads=heads or config.head_heads, dense_norm=variant or "relu")


def _graph_rules(proto, info) -> list[str]:
    """The q^T k product feeds a visual_fc that takes heads * r * r values."""
    from dropcov_deploy import head_graph

    expected = (info.heads or 0) * info.dim * info.dim
    try:
        fc = head_graph.fc_node(proto)
    except InputError as exc:
        return [str(exc)]
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    if expected not in weights.get(fc.input[1], []):
        return [f"the covariance feeds {fc.name}, whose weight {weights.get(fc.input[1])} does not take {expected} values"]
    return []


def _lookup(name: str) -> ArchSpec | None:
    """The training script's name for T2T-ViT-14 (their code registers it as T2T_ViT_14)."""
    from dropcov_deploy.models.registry import get_arch

    return get_arch(ALIASES[name]) if name in ALIASES else None


def _spec(name: str, embed: int, depth: int, heads: int, mlp_ratio: float, head_heads: int, r: int, summary: str) -> ArchSpec:
    return ArchSpec(name, FAMILY, r, AuthorsViTConfig(embed, depth, heads, mlp_ratio, head_heads), IMAGE_SIZE, summary)


register_family(
    ModelFamily(
        name=FAMILY,
        order=2,
        create=create_authors_vit,
        head_sizes=_head_sizes,
        head_keys=(_WR, _VISUAL_FC),
        build_kwargs=lambda sizes, widths, image_size: {"heads": sizes.heads, "variant": sizes.variant},
        describe_head=lambda dim, heads: f"heads={heads}, r={dim}",
        graph_rules=_graph_rules,
        exporter_note="token mask, covariance dropout and stochastic depth folded away",
        manifest_fields=lambda info: {"heads": info.heads},
        backbone_text=lambda spec: (
            f"authors' ViT: DenseNet token stem, {spec.config.depth} blocks of {spec.config.embed_dim}, {spec.config.num_heads} heads, MLP x{spec.config.mlp_ratio:g}"
        ),
        fc_inputs=lambda spec: spec.config.head_heads * spec.default_dim * spec.default_dim,
        table_fields=lambda spec: {"block": None, "layers": [], "heads": spec.config.head_heads},
        recipe=Recipe("adamw", 1e-3, 0.03),  # the authors' scripts: AdamW, lr 1e-3 (batch 128 x 8), weight decay 0.03
        gate_overrides={"int8": {"accuracy_drop": {"max": 0.01}}},  # INT8 may lose 1 pt, as the xcov family
        train_options={"heads": OptionRule(lambda heads: heads >= 1, "--heads sizes a ViT head (a positive number); {arch} is a {family}")},
        lookup=_lookup,
        name_patterns=tuple(ALIASES),
    )
)

register(_spec("Deit_drop_Tiny", 240, 12, 4, 2.5, 6, 14, "authors' DeiT-Ti + DropCov (DenseNet token stem)"))
register(_spec("Deit_drop_Small", 384, 12, 6, 4.0, 6, 24, "authors' DeiT-S + DropCov (DenseNet token stem)"))
register(_spec("Deit_drop_Base", 768, 12, 12, 4.0, 12, 24, "authors' DeiT-B + DropCov (DenseNet token stem)"))
register(_spec("T2T_ViT_14", 384, 14, 6, 3.0, 6, 24, "authors' T2T-ViT-14 + DropCov (their DenseNet token stem, depth 14, MLP x3)"))
