"""ResNet-ACD: torchvision's ResNet with layer4 at stride 1 and the DropCov head.

Module names follow the authors' `ResNet_ACD` exactly (they are the state_dict keys
of their checkpoints): conv1, bn1, layer1..layer4, layer_reduce, layer_reduce_bn,
layer_reduce_relu, eca_layer, cov, fc. There is no avgpool.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from dropcov_deploy.models.layers import (
    ECA,
    AdaptiveChannelDropout,
    CovariancePool,
    TriuVectorize,
    triu_size,
)



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
