"""DropCov's building blocks as plain modules, written to export cleanly.

No autograd.Function, no nonzero() at forward time: every op here maps onto a
standard ONNX operator, and the triu index is a constant buffer that the exporter
turns into one Gather.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def triu_size(dim: int) -> int:
    """Length of the upper triangle (with diagonal) of a dim x dim matrix."""
    return dim * (dim + 1) // 2


def dim_from_triu_size(size: int) -> int | None:
    """Invert `triu_size`; None when `size` is not a triangular number."""
    dim = int((math.isqrt(8 * size + 1) - 1) // 2)
    return dim if triu_size(dim) == size else None


class CovariancePool(nn.Module):
    """Global covariance pooling: (B, d, H, W) -> (B, d, d).

    Each channel's spatial mean is removed, then C = (1/N) X X^T with N = H*W.
    X is scaled by 1/sqrt(N) before the product: the same value, but the
    intermediate stays ~N times smaller, which keeps FP16 engines from overflowing.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # AMP training: keep the product in FP32
            with torch.autocast(x.device.type, enabled=False):
                return self._covariance(x.float())
        return self._covariance(x)

    @staticmethod
    def _covariance(x: torch.Tensor) -> torch.Tensor:
        positions = x.shape[-2] * x.shape[-1]
        x = x.flatten(2)
        x = x - x.mean(dim=2, keepdim=True)
        x = x * (1.0 / math.sqrt(positions))
        return torch.bmm(x, x.transpose(1, 2))


class TriuVectorize(nn.Module):
    """Row-major upper triangle with the diagonal: (B, d, d) -> (B, d(d+1)/2).

    The order (0,0), (0,1), ..., (0,d-1), (1,1), ... is the one the authors' fc
    weights expect. The flat indices live in a non-persistent buffer, so the
    state_dict keys match upstream checkpoints and export sees a constant Gather.
    """

    index: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        rows, cols = torch.triu_indices(dim, dim, device="cpu")  # explicit: meta-device builds stay fast
        self.register_buffer("index", rows * dim + cols, persistent=False)

    def forward(self, cov: torch.Tensor) -> torch.Tensor:
        return cov.flatten(1).index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class ECA(nn.Module):
    """The ECA branch of DropCov's training path (module name `eca_layer`).

    g = GAP(X); y = softmax over channels of Conv1d_k3(g); returns (X*y + X, y).
    Used in training only: the exported inference graph never contains it.
    """

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = x.mean(dim=(2, 3))
        weights = torch.softmax(self.conv(pooled.unsqueeze(1)).squeeze(1), dim=1)
        return x * weights[:, :, None, None] + x, weights


def adaptive_drop_rate(x: torch.Tensor, eca_weights: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """DropCov's batch drop rate rho (a 0-d tensor in [0, 1]).

    r_b = rowsum(cov(X_b)); cos_b = <y_b, r_b> / (|y_b||r_b|);
    rho = clamp(1 - scale / log2(d) * mean_b cos_b, 0, 1).
    """
    dim = x.shape[1]
    row_sums = CovariancePool()(x).sum(dim=2)
    cosine = (eca_weights * row_sums).sum(dim=1) / (eca_weights.norm(dim=1) * row_sums.norm(dim=1))
    return torch.clamp(1.0 - (scale / math.log2(dim)) * cosine.mean(), 0.0, 1.0)


class AdaptiveChannelDropout(nn.Module):
    """Dropout2d whose rate follows `adaptive_drop_rate` (training only).

    Whole channels are zeroed with probability rho and survivors scaled by
    1/(1-rho), so eval mode needs no rescaling and is the identity.
    """

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        self.scale = scale
        self.last_rate: float | None = None

    def forward(self, x: torch.Tensor, eca_weights: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        with torch.no_grad():
            rate = float(adaptive_drop_rate(x, eca_weights, self.scale))
        self.last_rate = rate
        return F.dropout2d(x, p=rate, training=True)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
