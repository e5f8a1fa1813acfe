"""ResNet-ACD architectures: sizes, module names, train and eval paths."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference import head_logits, relative_error

from dropcov_deploy.errors import InputError
from dropcov_deploy.model_table import count_parameters
from dropcov_deploy.models import create_model, get_arch, list_archs


@pytest.mark.parametrize(
    "arch, millions", [("resnet34_ACD", 29.6), ("resnet50_ACD", 32.0), ("resnet101_ACD", 51.0)]
)
def test_parameter_counts_match_the_paper_at_d128(arch, millions):
    assert count_parameters(arch, num_classes=1000, dim=128) / 1e6 == pytest.approx(millions, abs=0.05)


def test_registry_lists_every_resnet_and_the_compact_variant():
    names = [spec.name for spec in list_archs()]
    for name in ["resnet18_ACD", "resnet34_ACD", "resnet50_ACD", "resnet101_ACD", "resnet152_ACD"]:
        assert name in names
    assert get_arch("RESNET50_acd").name == "resnet50_ACD"
    with pytest.raises(InputError, match="unknown architecture 'resnet9000'"):
        get_arch("resnet9000")


def test_head_module_names_are_the_authors_keys():
    keys = set(create_model("resnet50_ACD", num_classes=7, dim=32).state_dict())
    for key in [
        "conv1.weight",
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer4.2.bn3.running_var",
        "layer_reduce.weight",
        "layer_reduce_bn.running_mean",
        "eca_layer.conv.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys
    assert not any(k.startswith(("avgpool", "triu", "cov", "channel_dropout")) for k in keys)


def test_layer4_keeps_stride_one():
    model = create_model("resnet18_ACD", num_classes=5, dim=8).eval()
    with torch.no_grad():
        features = model.forward_backbone(torch.randn(1, 3, 224, 224))
    assert features.shape == (1, 512, 14, 14)


@pytest.mark.parametrize("num_classes, dim", [(3, 8), (1000, 64)])
def test_any_num_classes_and_dim(num_classes, dim):
    model = create_model("resnet18_ACD", num_classes=num_classes, dim=dim).eval()
    assert model.fc.in_features == dim * (dim + 1) // 2
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, num_classes)


def _randomise_bn(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=gen))


def test_eval_mode_is_the_plain_covariance_head():
    torch.manual_seed(0)
    model = create_model("resnet18_ACD", num_classes=6, dim=12)
    with torch.no_grad():
        _randomise_bn(model)
        model.eca_layer.conv.weight.fill_(5.0)  # would change logits if ECA ran in eval
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reduced = model.forward_reduce(model.forward_backbone(x))
        logits = model(x)
        again = model(x)
    expected = head_logits(model.state_dict(), reduced.numpy())
    assert relative_error(logits.numpy(), expected) < 1e-5
    assert torch.equal(logits, again)  # deterministic: no dropout in eval


def test_train_mode_runs_eca_and_adaptive_dropout_as_the_spec_says():
    torch.manual_seed(0)
    model = create_model("resnet18_ACD", num_classes=6, dim=32).train()
    with torch.no_grad():
        model.eca_layer.conv.weight.copy_(torch.tensor([[[0.3, -0.2, 0.1]]]))
    x = torch.randn(4, 3, 64, 64)
    captured = {}
    handle = model.layer_reduce_relu.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o.detach().clone()))
    torch.manual_seed(123)
    logits = model(x)
    handle.remove()

    # Independent path from the spec, consuming the RNG in the same order (one dropout2d).
    h = captured["h"].double()
    weight = model.eca_layer.conv.weight.detach().double()
    g = h.mean(dim=(2, 3))
    y = torch.softmax(F.conv1d(g[:, None, :], weight, padding=1)[:, 0], dim=1)
    xe = h * y[:, :, None, None] + h
    flat = xe.flatten(2) - xe.flatten(2).mean(2, keepdim=True)
    cov = flat @ flat.transpose(1, 2) / flat.shape[2]
    r = cov.sum(2)
    cos = (y * r).sum(1) / (y.norm(dim=1) * r.norm(dim=1))
    rho = float(torch.clamp(1 - 10 / np.log2(32) * cos.mean(), 0, 1))
    assert model.channel_dropout.last_rate == pytest.approx(rho, abs=1e-5)

    torch.manual_seed(123)
    mask_probe = F.dropout2d(torch.ones(4, 32, 1, 1), p=model.channel_dropout.last_rate, training=True)
    dropped = xe * mask_probe.double()
    flat = dropped.flatten(2) - dropped.flatten(2).mean(2, keepdim=True)
    cov = flat @ flat.transpose(1, 2) / flat.shape[2]
    rows, cols = np.triu_indices(32)
    vec = cov[:, rows, cols]
    expected = vec @ model.fc.weight.detach().double().T + model.fc.bias.detach().double()
    assert relative_error(logits.detach().numpy(), expected.numpy()) < 1e-4
    # and it differs from what eval mode (no ECA, no dropout) would give on the same features
    plain = head_logits(model.state_dict(), captured["h"].numpy())
    assert relative_error(logits.detach().numpy(), plain) > 1e-3
