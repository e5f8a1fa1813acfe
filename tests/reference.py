"""An independent float64 DropCov forward, written from the spec, for the tests.

It shares no code with the package: it reads a plain state_dict (authors' key names)
and computes the eval-mode logits with torch.nn.functional and numpy in float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BLOCK_COUNTS = {
    "resnet18_ACD": ("basic", (2, 2, 2, 2)),
    "resnet34_ACD": ("basic", (3, 4, 6, 3)),
    "resnet50_ACD": ("bottleneck", (3, 4, 6, 3)),
}


def _bn(x, sd, prefix, eps=1e-5):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=eps,
    )


def _block(x, sd, prefix, kind, stride):
    if f"{prefix}.downsample.0.weight" in sd:
        identity = _bn(F.conv2d(x, sd[f"{prefix}.downsample.0.weight"], stride=stride), sd, f"{prefix}.downsample.1")
    else:
        identity = x
    if kind == "basic":
        out = F.relu(_bn(F.conv2d(x, sd[f"{prefix}.conv1.weight"], stride=stride, padding=1), sd, f"{prefix}.bn1"))
        out = _bn(F.conv2d(out, sd[f"{prefix}.conv2.weight"], padding=1), sd, f"{prefix}.bn2")
    else:
        out = F.relu(_bn(F.conv2d(x, sd[f"{prefix}.conv1.weight"]), sd, f"{prefix}.bn1"))
        out = F.relu(_bn(F.conv2d(out, sd[f"{prefix}.conv2.weight"], stride=stride, padding=1), sd, f"{prefix}.bn2"))
        out = _bn(F.conv2d(out, sd[f"{prefix}.conv3.weight"]), sd, f"{prefix}.bn3")
    return F.relu(out + identity)


def reduced_features(state_dict, arch, images):
    """Backbone (layer4 at stride 1) -> layer_reduce -> bn -> relu, in float64."""
    sd = {k: v.double() for k, v in state_dict.items()}
    kind, counts = BLOCK_COUNTS[arch]
    x = images.double()
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for layer, (count, stride) in enumerate(zip(counts, (1, 2, 2, 1)), start=1):
        for index in range(count):
            x = _block(x, sd, f"layer{layer}.{index}", kind, stride if index == 0 else 1)
    x = F.conv2d(x, sd["layer_reduce.weight"])
    return F.relu(_bn(x, sd, "layer_reduce_bn"))


def covariance_np(x: np.ndarray) -> np.ndarray:
    """(B, d, H, W) -> (B, d, d): centred, (1/N) X X^T, float64 loops over the batch."""
    b, d = x.shape[:2]
    flat = x.reshape(b, d, -1).astype(np.float64)
    n = flat.shape[2]
    out = np.empty((b, d, d))
    for i in range(b):
        centred = flat[i] - flat[i].mean(axis=1, keepdims=True)
        out[i] = centred @ centred.T / n
    return out


def triu_np(c: np.ndarray) -> np.ndarray:
    """Row-major upper triangle with the diagonal, by explicit loops."""
    d = c.shape[-1]
    return np.stack([np.array([m[i, j] for i in range(d) for j in range(i, d)]) for m in c])


def head_logits(state_dict, reduced: np.ndarray) -> np.ndarray:
    vec = triu_np(covariance_np(reduced))
    weight = state_dict["fc.weight"].double().numpy()
    bias = state_dict["fc.bias"].double().numpy()
    return vec @ weight.T + bias


def logits(state_dict, arch, images) -> np.ndarray:
    return head_logits(state_dict, reduced_features(state_dict, arch, images).numpy())


def torchvision_backbone_keys(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's ResNet (the authors' backbone), without its fc."""
    import torchvision

    name = arch.replace("_ACD", "")
    model = getattr(torchvision.models, name)(weights=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}


def authors_state_dict(arch: str, dim: int, num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict with the authors' key layout, random weights and non-trivial BN statistics."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torchvision_backbone_keys(arch)
    width = 2048 if BLOCK_COUNTS[arch][0] == "bottleneck" else 512
    shapes.update(
        {
            "layer_reduce.weight": (dim, width, 1, 1),
            "layer_reduce_bn.weight": (dim,),
            "layer_reduce_bn.bias": (dim,),
            "layer_reduce_bn.running_mean": (dim,),
            "layer_reduce_bn.running_var": (dim,),
            "layer_reduce_bn.num_batches_tracked": (),
            "eca_layer.conv.weight": (1, 1, 3),
            "fc.weight": (num_classes, dim * (dim + 1) // 2),
            "fc.bias": (num_classes,),
        }
    )
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000)
        elif key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith(".bias"):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # BN weight
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key == "fc.weight":
            state[key] = 0.01 * torch.randn(shape, generator=gen)
        else:  # conv
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=gen) * (1.0 / fan_in) ** 0.5
    return state


def relative_error(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())
