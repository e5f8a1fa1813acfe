"""The DropCov building blocks against float64 references written from the spec."""

import math

import numpy as np
import pytest
import torch
from reference import covariance_np, triu_np

from dropcov_deploy.models.layers import (
    ECA,
    AdaptiveChannelDropout,
    CovariancePool,
    TriuVectorize,
    adaptive_drop_rate,
    dim_from_triu_size,
    triu_size,
)


def test_covariance_matches_float64_reference():
    torch.manual_seed(0)
    x = 3.0 * torch.randn(4, 12, 5, 7) + 1.5  # non-zero means: centring must matter
    got = CovariancePool()(x).double().numpy()
    expected = covariance_np(x.numpy())
    assert got.shape == (4, 12, 12)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(got, np.swapaxes(got, 1, 2), atol=1e-5)  # symmetric


def test_covariance_removes_the_spatial_mean_per_channel():
    x = torch.randn(2, 3, 4, 4)
    shifted = x + torch.tensor([5.0, -2.0, 100.0])[None, :, None, None]
    np.testing.assert_allclose(CovariancePool()(x), CovariancePool()(shifted), atol=1e-3)


def test_triu_is_row_major_upper_triangle_with_diagonal():
    torch.manual_seed(1)
    c = torch.randn(3, 9, 9, dtype=torch.float64)
    got = TriuVectorize(9)(c).numpy()
    np.testing.assert_array_equal(got, triu_np(c.numpy()))
    small = torch.arange(9.0).reshape(1, 3, 3)
    assert TriuVectorize(3)(small).tolist() == [[0.0, 1.0, 2.0, 4.0, 5.0, 8.0]]


def test_triu_index_is_a_constant_buffer_outside_the_state_dict():
    triu = TriuVectorize(5)
    assert "index" in dict(triu.named_buffers())
    assert triu.state_dict() == {}


@pytest.mark.parametrize("dim", [1, 2, 64, 128, 256])
def test_triu_size_roundtrip(dim):
    assert dim_from_triu_size(triu_size(dim)) == dim
    assert triu_size(256) == 32896 and triu_size(128) == 8256


def test_dim_from_triu_size_rejects_non_triangular():
    assert dim_from_triu_size(8257) is None


def test_eca_matches_spec():
    torch.manual_seed(2)
    eca = ECA()
    with torch.no_grad():
        eca.conv.weight.copy_(torch.tensor([[[0.2, -0.5, 0.9]]]))
    x = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        out, y = eca(x)
    g = x.double().mean(dim=(2, 3)).numpy()
    w = [0.2, -0.5, 0.9]
    padded = np.pad(g, ((0, 0), (1, 1)))
    conv = np.stack([w[0] * padded[:, i] + w[1] * padded[:, i + 1] + w[2] * padded[:, i + 2] for i in range(6)], 1)
    expected_y = np.exp(conv) / np.exp(conv).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(y.numpy(), expected_y, rtol=1e-5)
    expected_out = x.double().numpy() * (1 + expected_y[:, :, None, None])
    np.testing.assert_allclose(out.numpy(), expected_out, rtol=1e-5, atol=1e-6)


def _rate_reference(x: np.ndarray, y: np.ndarray, scale=10.0) -> float:
    cov = covariance_np(x)
    r = cov.sum(axis=2)
    cos = (y * r).sum(1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(r, axis=1))
    return float(np.clip(1 - scale / math.log2(x.shape[1]) * cos.mean(), 0, 1))


def test_adaptive_rate_matches_formula_on_fixed_inputs():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 64, 5, 5, generator=gen) ** 2
    # y anti-aligned with the row sums of the covariance keeps rho strictly inside (0, 1)
    y = torch.softmax(torch.randn(4, 64, generator=gen), dim=1)
    rate = float(adaptive_drop_rate(x, y))
    expected = _rate_reference(x.numpy(), y.numpy())
    assert rate == pytest.approx(expected, abs=1e-6)


def test_adaptive_rate_inside_the_clamp():
    # Constructed so that mean cosine = 0.3 exactly: rho = 1 - 10/log2(16) * 0.3 = 0.25.
    d = 16
    torch.manual_seed(4)
    x = torch.randn(2, d, 6, 6)
    r = CovariancePool()(x).sum(dim=2).double()
    r_unit = r / r.norm(dim=1, keepdim=True)
    ortho = torch.randn(2, d, dtype=torch.float64)
    ortho = ortho - (ortho * r_unit).sum(1, keepdim=True) * r_unit
    ortho = ortho / ortho.norm(dim=1, keepdim=True)
    y = 0.3 * r_unit + math.sqrt(1 - 0.09) * ortho
    rate = float(adaptive_drop_rate(x.double(), y))
    assert rate == pytest.approx(0.25, abs=1e-6)
    assert rate == pytest.approx(_rate_reference(x.numpy(), y.numpy()), abs=1e-6)


def test_adaptive_rate_clamps_to_zero_and_one():
    torch.manual_seed(5)
    x = torch.randn(2, 16, 4, 4)
    r = CovariancePool()(x).sum(dim=2)
    assert float(adaptive_drop_rate(x, r)) == 0.0  # cos = 1 -> 1 - 2.5 < 0
    assert float(adaptive_drop_rate(x, -r)) == 1.0  # cos = -1 -> 3.5 > 1


def test_channel_dropout_identity_in_eval_and_drops_whole_channels_in_train():
    drop = AdaptiveChannelDropout()
    x = torch.rand(8, 64, 4, 4) + 0.1
    y = torch.softmax(torch.randn(8, 64), dim=1)
    drop.eval()
    assert torch.equal(drop(x, y), x)
    drop.train()
    torch.manual_seed(6)
    out = drop(x, y)
    rate = drop.last_rate
    assert rate == pytest.approx(float(adaptive_drop_rate(x, y)), abs=1e-6)
    assert 0.0 < rate < 1.0
    zero_channels = (out.flatten(2).abs().sum(2) == 0)
    kept = ~zero_channels
    assert zero_channels.any()  # whole channels zeroed
    np.testing.assert_allclose(out[kept].numpy(), (x[kept] / (1 - rate)).numpy(), rtol=1e-5)
