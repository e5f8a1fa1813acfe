"""Loading the authors' checkpoints (and ours) with identical logits, and refusing bad files."""

import argparse

import numpy as np
import pytest
import torch
from reference import authors_state_dict, logits, relative_error

from dropcov_deploy.data.preprocessing import Preprocessing
from dropcov_deploy.errors import CheckpointError, InputError
from dropcov_deploy.models import create_model, load_checkpoint, load_checkpoint_with_info, save_checkpoint


@pytest.mark.parametrize("arch, dim, size", [("resnet18_ACD", 16, 64), ("resnet50_ACD", 24, 64)])
def test_authors_checkpoint_reproduces_reference_logits(authors_checkpoint, arch, dim, size):
    path, state = authors_checkpoint(arch=arch, dim=dim, num_classes=10)
    loaded = load_checkpoint_with_info(path)
    model = loaded.model
    assert not model.training
    assert (loaded.info.arch, loaded.info.dim, loaded.info.num_classes) == (arch, dim, 10)
    assert loaded.info.source_format == "upstream"
    assert loaded.info.epoch == 90 and loaded.info.accuracy == pytest.approx(75.2)
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model(images).numpy()
    expected = logits(state, arch, images)
    assert np.abs(expected).max() > 1e-3  # a meaningful comparison, not zeros
    assert relative_error(got, expected) < 1e-5


def test_arch_is_inferred_from_tensors_when_not_recorded(tmp_path):
    state = authors_state_dict("resnet34_ACD", dim=8, num_classes=4)
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    for path, source in ((bare, "state-dict"), (wrapped, "model-dict")):
        info = load_checkpoint_with_info(path).info
        assert (info.arch, info.dim, info.num_classes, info.source_format) == ("resnet34_ACD", 8, 4, source)


def test_our_format_roundtrip_keeps_metadata_and_logits(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet10_compact_ACD", num_classes=3, dim=8).eval()
    prep = Preprocessing(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    path = save_checkpoint(
        tmp_path / "ours.pt", model, arch="resnet10_compact_ACD", class_names=["a", "b", "c"],
        input_size=32, preprocessing=prep, epoch=4, accuracy=0.97,
    )
    loaded = load_checkpoint_with_info(path)
    info = loaded.info
    assert info.source_format == "dropcov-deploy"
    assert info.class_names == ["a", "b", "c"] and info.input_size == 32 and info.preprocessing == prep
    assert info.epoch == 4 and info.accuracy == pytest.approx(0.97)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left nothing behind


def test_wrong_architecture_lists_the_keys(authors_checkpoint):
    path, _ = authors_checkpoint(arch="resnet50_ACD", dim=8, num_classes=5)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, arch="resnet18_ACD")
    message = str(err.value)
    assert str(path) in message and "do not fit resnet18_ACD" in message
    assert "checkpoint says resnet50_ACD" in message and "tensors fit resnet50_ACD" in message
    assert "unexpected: layer1.0.conv3.weight" in message and "wrong shape" in message


def test_missing_and_extra_keys_are_an_error_not_a_half_random_model(tmp_path):
    state = authors_state_dict("resnet18_ACD", dim=8, num_classes=4)
    del state["layer3.0.bn2.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pth"
    torch.save({"arch": "resnet18_ACD", "state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"1 missing: layer3\.0\.bn2\.weight; 1 unexpected: extra\.weight"):
        load_checkpoint(path)


def test_fc_that_does_not_fit_d_is_refused(tmp_path):
    state = authors_state_dict("resnet18_ACD", dim=8, num_classes=4)
    state["fc.weight"] = torch.zeros(4, 30)
    path = tmp_path / "bad_fc.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="fc takes 30 inputs but layer_reduce gives d=8"):
        load_checkpoint(path)


def test_unknown_arch_name(authors_checkpoint):
    path, _ = authors_checkpoint()
    with pytest.raises(InputError, match="unknown architecture 'vgg16'"):
        load_checkpoint(path, arch="vgg16")


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "no such file"),
        (b"\x00\x13random bytes that are not a checkpoint" * 10, "not a"),
        ("dir", "is a directory"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, content, reason):
    path = tmp_path / "thing.pth"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_checkpoint(authors_checkpoint):
    path, _ = authors_checkpoint()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_pickled_objects_are_never_unpickled(tmp_path):
    """Only argparse.Namespace (timm's saver keeps the training args as one) is allowed besides tensors."""
    from fractions import Fraction

    state = authors_state_dict("resnet18_ACD", dim=8, num_classes=4)
    path = tmp_path / "with_object.pth"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1), "ratio": Fraction(1, 3)}, path)
    with pytest.raises(CheckpointError, match=r"fractions\.Fraction.*weights_only=True"):
        load_checkpoint(path)
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, path)
    assert load_checkpoint(path) is not None


def test_not_a_dropcov_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a DropCov checkpoint"):
        load_checkpoint(path)
