"""An independent float64 forward of the authors' DropCov transformers, for the tests.

Written from dropcov-spec.md and the reference code's structure, sharing no code with the
package: it reads a plain state_dict (the authors' key names) and computes eval-mode logits
with torch.nn.functional in float64. `authors_state_dict` makes such a state_dict with random
weights (and random BatchNorm statistics) from the shapes alone, and `timm_saver_checkpoint`
writes it the way the authors' training script does (timm 0.4.12's CheckpointSaver, model EMA on).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

# name -> (embed, depth, attention heads, mlp hidden, head heads, r)
ARCHS = {
    "Deit_drop_Tiny": (240, 12, 4, 600, 6, 14),
    "Deit_drop_Small": (384, 12, 6, 1536, 6, 24),
    "Deit_drop_Base": (768, 12, 12, 3072, 12, 24),
    "T2T_ViT_14": (384, 14, 6, 1152, 6, 24),
}
STEM = "visual_tokens.tokens"


def _position_table(n: int, d: int) -> np.ndarray:
    table = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table[None]


def authors_state_dict(arch: str, num_classes: int = 1000, seed: int = 0, dense_norm: str = "relu") -> dict[str, torch.Tensor]:
    """Random weights under the authors' key names; BatchNorm statistics random too."""
    embed, depth, _, hidden, heads, r = ARCHS[arch]
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return torch.randn(*shape, generator=g) * (scale if scale is not None else 1.0 / math.sqrt(fan_in))

    def bn(prefix, c):
        return {
            f"{prefix}.weight": 1 + 0.1 * torch.randn(c, generator=g),
            f"{prefix}.bias": 0.1 * torch.randn(c, generator=g),
            f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=g),
            f"{prefix}.running_var": 0.5 + torch.rand(c, generator=g),
            f"{prefix}.num_batches_tracked": torch.tensor(1000),
        }

    sd: dict[str, torch.Tensor] = {
        "cls_token": 0.02 * torch.randn(1, 1, embed, generator=g),
        "pos_embed": torch.from_numpy(_position_table(197, embed)).float(),
        f"{STEM}.stem.0.weight": w(64, 3, 3, 3),
        f"{STEM}.stem.0.bias": 0.1 * torch.randn(64, generator=g),
    }
    channels = 64
    for stage in range(3):
        for i in range(6):
            layer = f"{STEM}.stage.{2 * stage}.denselayer{i + 1}"
            c = channels + 16 * i
            if dense_norm == "batchnorm":
                sd.update(bn(f"{layer}.norm1", c))
                sd.update(bn(f"{layer}.norm2", 32))
            sd[f"{layer}.conv1.weight"] = w(32, c, 1, 1)
            sd[f"{layer}.conv2.weight"] = w(16, 32, 3, 3)
        transition = f"{STEM}.stage.{2 * stage + 1}"
        sd.update(bn(f"{transition}.norm", channels + 96))
        sd[f"{transition}.conv.weight"] = w(128, channels + 96, 1, 1)
        channels = 128
    sd[f"{STEM}.transition.weight"] = w(embed, 128, 1, 1)
    sd[f"{STEM}.transition.bias"] = 0.1 * torch.randn(embed, generator=g)
    for b in range(depth):
        p = f"blocks.{b}"
        sd.update(
            {
                f"{p}.norm1.weight": 1 + 0.1 * torch.randn(embed, generator=g),
                f"{p}.norm1.bias": 0.1 * torch.randn(embed, generator=g),
                f"{p}.attn.qkv.weight": w(3 * embed, embed),
                f"{p}.attn.proj.weight": w(embed, embed),
                f"{p}.attn.proj.bias": 0.02 * torch.randn(embed, generator=g),
                f"{p}.norm2.weight": 1 + 0.1 * torch.randn(embed, generator=g),
                f"{p}.norm2.bias": 0.1 * torch.randn(embed, generator=g),
                f"{p}.mlp.fc1.weight": w(hidden, embed),
                f"{p}.mlp.fc1.bias": 0.02 * torch.randn(hidden, generator=g),
                f"{p}.mlp.fc2.weight": w(embed, hidden),
                f"{p}.mlp.fc2.bias": 0.02 * torch.randn(embed, generator=g),
            }
        )
    sd.update(
        {
            "classifier.representation.wr.weight": w(3 * heads * r, embed),
            "classifier.visual_fc.weight": w(num_classes, heads * r * r),
            "classifier.visual_fc.bias": 0.02 * torch.randn(num_classes, generator=g),
            "classifier.cls_fc.weight": w(num_classes, embed),
            "classifier.cls_fc.bias": 0.02 * torch.randn(num_classes, generator=g),
            "norm.weight": 1 + 0.1 * torch.randn(embed, generator=g),
            "norm.bias": 0.1 * torch.randn(embed, generator=g),
        }
    )
    return sd


def timm_saver_checkpoint(path, arch: str, ema: dict[str, torch.Tensor], raw: dict[str, torch.Tensor] | None = None, saved_as: str | None = None):
    """What the authors' train script writes: timm 0.4.12's CheckpointSaver, model EMA on
    ("state_dict" the raw weights, "state_dict_ema" the EMA the evaluation uses), args a Namespace."""
    torch.save(
        {
            "epoch": 299,
            "arch": saved_as or arch,
            "state_dict": raw if raw is not None else {k: v + 0.01 if v.is_floating_point() else v for k, v in ema.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "weight_decay": 0.03, "params": [0, 1]}]},
            "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7},
            "version": 2,
            "args": argparse.Namespace(model=saved_as or arch, lr=1e-3, weight_decay=0.03, batch_size=128, img_size=224, model_ema=True, model_ema_decay=0.99996),
            "state_dict_ema": ema,
            "metric": 72.5,
        },
        path,
    )
    return path


def _bn(x, sd, prefix):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], training=False, eps=1e-5)


def logits(sd: dict[str, torch.Tensor], arch: str, images: torch.Tensor) -> np.ndarray:
    """Eval-mode logits in float64."""
    embed, depth, attn_heads, _, heads, r = ARCHS[arch]
    sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    x = images.double()
    x = F.conv2d(x, sd[f"{STEM}.stem.0.weight"], sd[f"{STEM}.stem.0.bias"], padding=1)
    x = F.max_pool2d(x, 3, 2, 1)
    for stage in range(3):
        features = [x]
        for i in range(6):
            layer = f"{STEM}.stage.{2 * stage}.denselayer{i + 1}"
            y = torch.cat(features, 1)
            y = F.relu(_bn(y, sd, f"{layer}.norm1")) if f"{layer}.norm1.weight" in sd else F.relu(y)
            y = F.conv2d(y, sd[f"{layer}.conv1.weight"])
            y = F.relu(_bn(y, sd, f"{layer}.norm2")) if f"{layer}.norm2.weight" in sd else F.relu(y)
            features.append(F.conv2d(y, sd[f"{layer}.conv2.weight"], padding=1))
        x = torch.cat(features, 1)
        transition = f"{STEM}.stage.{2 * stage + 1}"
        x = F.avg_pool2d(F.conv2d(_bn(x, sd, f"{transition}.norm"), sd[f"{transition}.conv.weight"]), 2, 2)
    x = F.conv2d(x, sd[f"{STEM}.transition.weight"], sd[f"{STEM}.transition.bias"])
    tokens = x.flatten(2).transpose(1, 2)  # (B, 196, E)
    batch = tokens.shape[0]
    x = torch.cat([sd["cls_token"].expand(batch, -1, -1), tokens], 1) + sd["pos_embed"]
    hd = embed // attn_heads
    for b in range(depth):
        p = f"blocks.{b}"
        y = F.layer_norm(x, (embed,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"])
        qkv = (y @ sd[f"{p}.attn.qkv.weight"].T).reshape(batch, -1, 3, attn_heads, hd).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(qkv[0] @ qkv[1].transpose(-1, -2) / math.sqrt(hd), dim=-1)
        y = (attention @ qkv[2]).transpose(1, 2).reshape(batch, -1, embed) @ sd[f"{p}.attn.proj.weight"].T + sd[f"{p}.attn.proj.bias"]
        x = x + y
        y = F.layer_norm(x, (embed,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"])
        y = F.gelu(y @ sd[f"{p}.mlp.fc1.weight"].T + sd[f"{p}.mlp.fc1.bias"]) @ sd[f"{p}.mlp.fc2.weight"].T + sd[f"{p}.mlp.fc2.bias"]
        x = x + y
    x = F.layer_norm(x, (embed,), sd["norm.weight"], sd["norm.bias"])
    cls, visual = x[:, 0], x[:, 1:]
    n = visual.shape[1]
    qk = (visual @ sd["classifier.representation.wr.weight"].T).reshape(batch, n, 3, heads, r).permute(2, 0, 3, 1, 4)
    q, k = qk[0].reshape(batch * heads, n, r), qk[1].reshape(batch * heads, n, r)
    q = q - q.mean(dim=(1, 2), keepdim=True)  # one scalar per sample and head (upstream's adaptive_avg_pool2d on a 3-D tensor)
    k = k - k.mean(dim=(1, 2), keepdim=True)
    p_matrix = q.transpose(1, 2) @ k / n  # (B * heads, r, r)
    visual_head = p_matrix.reshape(batch, -1) @ sd["classifier.visual_fc.weight"].T + sd["classifier.visual_fc.bias"]
    cls_head = cls @ sd["classifier.cls_fc.weight"].T + sd["classifier.cls_fc.bias"]
    return (visual_head + cls_head).numpy()
