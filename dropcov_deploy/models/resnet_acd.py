"""ResNet-ACD: torchvision's ResNet with layer4 at stride 1 and the DropCov head.

Module names follow the authors' `ResNet_ACD` exactly (they are the state_dict keys
of their checkpoints): conv1, bn1, layer1..layer4, layer_reduce, layer_reduce_bn,
layer_reduce_relu, eca_layer, cov, fc. There is no avgpool.

This module registers the "resnet" model family (its hooks: creation, head sizes from a
state_dict, graph rules, recipe) and its architectures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropcov_deploy.errors import CheckpointError
from dropcov_deploy.models.families import HeadSizes, ModelFamily, OptionRule, Recipe
from dropcov_deploy.models.layers import (
    ECA,
    AdaptiveChannelDropout,
    CovariancePool,
    TriuVectorize,
    dim_from_triu_size,
    triu_size,
)
from dropcov_deploy.models.registry import ArchSpec, register, register_family

FAMILY = "resnet"
IMAGENET_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock (same names and shapes), without importing torchvision (~2 s)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3 conv, ResNet v1.5), same names and shapes."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS: dict[str, type[nn.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNetACD(nn.Module):
    """A ResNet backbone followed by reduce -> (ECA + adaptive dropout) -> cov -> triu -> fc.

    Train mode runs the full DropCov path; eval mode runs only
    reduce -> covariance -> triu -> fc, which is what export folds the model into.
    """

    def __init__(
        self,
        block: str,
        layers: Sequence[int],
        num_classes: int = 1000,
        dim: int = 256,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        drop_scale: float = 10.0,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; expected one of {sorted(BLOCKS)}")
        if stem not in ("imagenet", "compact"):
            raise ValueError(f"unknown stem {stem!r}; expected 'imagenet' or 'compact'")
        if dim < 2 or num_classes < 1:
            raise ValueError(f"need dim >= 2 and num_classes >= 1, got dim={dim}, num_classes={num_classes}")
        block_cls = BLOCKS[block]
        self.dim = dim
        self.num_classes = num_classes
        self.stem = stem
        self.widths = tuple(widths)
        self.inplanes = widths[0]

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:  # small images (digits, CIFAR): keep resolution, no max-pool
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block_cls, widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block_cls, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block_cls, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block_cls, widths[3], layers[3], stride=1)  # DropCov: stride 1

        self.layer_reduce = nn.Conv2d(self.inplanes, dim, kernel_size=1, bias=False)
        self.layer_reduce_bn = nn.BatchNorm2d(dim)
        self.layer_reduce_relu = nn.ReLU(inplace=True)
        self.eca_layer = ECA(kernel_size=3)
        self.channel_dropout = AdaptiveChannelDropout(scale=drop_scale)
        self.cov = CovariancePool()
        self.triu = TriuVectorize(dim)
        self.fc = nn.Linear(triu_size(dim), num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        expansion = block.expansion  # type: ignore[attr-defined]
        downsample = None
        if stride != 1 or self.inplanes != planes * expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * expansion),
            )
        stack = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * expansion
        stack += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stack)

    def feature_map_size(self, image_size: int) -> int:
        """Side of the layer4 map for a square input: the covariance's N is its square."""
        size = image_size
        if self.stem == "imagenet":
            size = (size + 2 * 3 - 7) // 2 + 1  # conv1 7x7 s2 p3
            size = (size + 2 * 1 - 3) // 2 + 1  # maxpool 3x3 s2 p1
        for _ in range(2):  # layer2 and layer3 open with stride 2; layer4 keeps stride 1
            size = (size - 1) // 2 + 1
        return size

    def input_size_problem(self, image_size: int) -> str | None:
        """Why `image_size` cannot be exported, or None: the covariance needs a 2x2 map at least."""
        side = self.feature_map_size(image_size)
        if side < 2:
            return f"too small: its layer4 map would be {side}x{side}; the covariance needs at least 2x2 positions"
        return None

    # The stages below are separate so verification can compare intermediate tensors.
    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch -> layer4 feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_reduce(self, features: torch.Tensor) -> torch.Tensor:
        """layer4 features -> the d-channel map the covariance is taken of."""
        return self.layer_reduce_relu(self.layer_reduce_bn(self.layer_reduce(features)))

    def forward_head(self, reduced: torch.Tensor) -> torch.Tensor:
        """Reduced map -> logits; the ECA + adaptive dropout branch runs in training only."""
        if self.training:
            reduced, eca_weights = self.eca_layer(reduced)
            reduced = self.channel_dropout(reduced, eca_weights)
        return self.fc(self.triu(self.cov(reduced)))

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode intermediate tensors, named as verify's stages."""
        backbone = self.forward_backbone(x)
        reduced = self.forward_reduce(backbone)
        covariance = self.cov(reduced)
        logits = self.fc(self.triu(covariance))
        return {"backbone": backbone, "reduced": reduced, "covariance": covariance, "logits": logits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_reduce(self.forward_backbone(x)))


# ------------------------------------------------------------------ the "resnet" family
@dataclass(frozen=True)
class ResNetConfig:
    """A ResNet-ACD's layout: block type, blocks per stage, stage widths, stem."""

    block: str
    layers: tuple[int, ...]
    widths: tuple[int, ...] = IMAGENET_WIDTHS
    stem: str = "imagenet"  # "compact": 3x3 stride-1 stem without max-pool, for small images


def _create(
    spec: ArchSpec,
    *,
    num_classes: int,
    dim: int | None,
    heads: int | None,
    widths: Sequence[int] | None,
    image_size: int | None,
    pretrained: bool | str,
    drop_scale: float,
    variant: str | None = None,
) -> ResNetACD:
    config: ResNetConfig = spec.config
    return ResNetACD(
        config.block,
        config.layers,
        num_classes=num_classes,
        dim=spec.default_dim if dim is None else dim,
        widths=tuple(widths) if widths else config.widths,
        stem=config.stem,
        drop_scale=drop_scale,
    )


def _head_sizes(state: Mapping[str, torch.Tensor], path: Path) -> HeadSizes | None:
    """layer_reduce gives d, fc (classes, d(d+1)/2) must take its triu."""
    if "layer_reduce.weight" not in state or "fc.weight" not in state:
        return None
    dim = int(state["layer_reduce.weight"].shape[0])
    fc_out, fc_in = (int(s) for s in state["fc.weight"].shape)
    if dim_from_triu_size(fc_in) != dim:
        raise CheckpointError(f"{path}: fc takes {fc_in} inputs but layer_reduce gives d={dim} (covariance triu of d={dim} has {triu_size(dim)} values)")
    return HeadSizes(FAMILY, dim, fc_out)


def _graph_rules(proto, info) -> list[str]:
    """The triu is one Gather with a constant d(d+1)/2-entry index."""
    size = triu_size(info.dim)
    initializers = {t.name: t for t in proto.graph.initializer}
    gathers = [n for n in proto.graph.node if n.op_type == "Gather"]
    triu = [n for n in gathers if n.input[1] in initializers and list(initializers[n.input[1]].dims) == [size]]
    if len(triu) != 1:
        return [f"expected one Gather with a constant {size}-entry index, found {len(triu)}"]
    return []


def _table_fields(spec: ArchSpec) -> dict[str, Any]:
    return {"block": spec.config.block, "layers": list(spec.config.layers), "heads": None}


register_family(
    ModelFamily(
        name=FAMILY,
        order=0,
        create=_create,
        head_sizes=_head_sizes,
        head_keys=("layer_reduce.weight", "fc.weight"),
        build_kwargs=lambda sizes, widths, image_size: {"widths": widths},
        describe_head=lambda dim, heads: f"d={dim}",
        graph_rules=_graph_rules,
        exporter_note="ECA and adaptive dropout folded away",
        manifest_fields=lambda info: {},
        backbone_text=lambda spec: f"{spec.config.block} {'-'.join(map(str, spec.config.layers))}",
        fc_inputs=lambda spec: triu_size(spec.default_dim),
        table_fields=_table_fields,
        recipe=Recipe("sgd", 0.05, 1e-4),  # upstream ResNet recipe (lr 0.05 here)
        forbidden_ops=("Softmax",),  # ECA's, training only
        train_options={
            "widths": OptionRule(
                lambda widths: len(widths) == 4,
                "--width takes four stage widths like 16,32,64,128 (ResNets only); got {value} for {arch}",
            ),
        },
        reference_dim=128,
    )
)


def _resnet(name: str, block: str, layers: tuple[int, ...], dim: int, summary: str, image_size: int = 224, **config: Any) -> ArchSpec:
    return register(ArchSpec(name, FAMILY, dim, ResNetConfig(block, layers, **config), image_size, summary))


# d: the paper's headline ResNet-34/50/101 models use d = 128 (their parameter counts
# only add up with it); ResNet-18's best result is at d = 256, the authors' code default.
_resnet("resnet18_ACD", "basic", (2, 2, 2, 2), 256, "ResNet-18 + DropCov")
_resnet("resnet34_ACD", "basic", (3, 4, 6, 3), 128, "ResNet-34 + DropCov")
_resnet("resnet50_ACD", "bottleneck", (3, 4, 6, 3), 128, "ResNet-50 + DropCov")
_resnet("resnet101_ACD", "bottleneck", (3, 4, 23, 3), 128, "ResNet-101 + DropCov")
_resnet("resnet152_ACD", "bottleneck", (3, 8, 36, 3), 128, "ResNet-152 + DropCov")
_resnet(
    "resnet10_compact_ACD",
    "basic",
    (1, 1, 1, 1),
    32,
    "compact ResNet-10 + DropCov for small images (3x3 stem, no max-pool)",
    image_size=32,
    widths=(16, 32, 64, 128),
    stem="compact",
)
