"""The authors' transformers (issue 18): their checkpoints load with identical logits, and go through the chain."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
import torch
from authors_vit_reference import ARCHS, authors_state_dict, logits, timm_saver_checkpoint

from dropcov_deploy.errors import CheckpointError, InputError
from dropcov_deploy.models import create_model, load_checkpoint_with_info
from dropcov_deploy.models.authors_vit import sinusoid_table


def _relative(actual, expected) -> float:
    return float(np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max())


def _images(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def test_position_table_is_upstreams_formula():
    from authors_vit_reference import _position_table

    assert torch.equal(sinusoid_table(197, 240), torch.from_numpy(_position_table(197, 240)).float())


@pytest.mark.parametrize("arch", ["Deit_drop_Tiny", "Deit_drop_Small", "Deit_drop_Base", "T2T_ViT_14"])
def test_authors_checkpoint_loads_with_identical_logits(arch, tmp_path):
    """Random weights in the authors' format (timm's saver, EMA on): strict load, the EMA weights
    preferred and said so, logits equal to the independent float64 forward."""
    ema = authors_state_dict(arch, num_classes=100, seed=3)
    path = timm_saver_checkpoint(tmp_path / "model_best.pth.tar", arch, ema)
    loaded = load_checkpoint_with_info(path)
    assert (loaded.info.arch, loaded.info.weights, loaded.info.source_format) == (arch, "state_dict_ema", "timm-saver")
    assert loaded.info.family == "authors_vit" and loaded.info.num_classes == 100
    images = _images(1)
    with torch.no_grad():
        ours = loaded.model(images).numpy()
    assert _relative(ours, logits(ema, arch, images)) < 1e-5


def test_dense_layers_with_batchnorm_and_the_training_script_name(tmp_path):
    """timm >= 0.5's dense layers (BatchNorm + ReLU, random statistics), saved under the name the
    training script uses (T2T_ViT_Drop_14): registered as T2T_ViT_14."""
    ema = authors_state_dict("T2T_ViT_14", num_classes=10, seed=5, dense_norm="batchnorm")
    path = timm_saver_checkpoint(tmp_path / "t2t.pth.tar", "T2T_ViT_14", ema, saved_as="T2T_ViT_Drop_14")
    loaded = load_checkpoint_with_info(path)
    assert (loaded.info.arch, loaded.info.variant) == ("T2T_ViT_14", "batchnorm")
    images = _images(2)
    with torch.no_grad():
        assert _relative(loaded.model(images).numpy(), logits(ema, "T2T_ViT_14", images)) < 1e-5


def test_architecture_inferred_from_the_keys_and_raw_weights_without_ema(tmp_path):
    state = authors_state_dict("Deit_drop_Tiny", num_classes=10, seed=7)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "bare.pth.tar")  # no arch, no EMA
    loaded = load_checkpoint_with_info(tmp_path / "bare.pth.tar")
    assert (loaded.info.arch, loaded.info.weights) == ("Deit_drop_Tiny", "state_dict")


def test_only_the_namespace_is_allowed_besides_tensors(tmp_path):
    from fractions import Fraction

    state = authors_state_dict("Deit_drop_Tiny", num_classes=10)
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "args": argparse.Namespace(model="Deit_drop_Tiny"), "other": Fraction(1, 3)}, buffer)
    (tmp_path / "hooked.pth.tar").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="holds a Python object .*Fraction"):
        load_checkpoint_with_info(tmp_path / "hooked.pth.tar")


def test_sizes_are_fixed_and_constructors_independent():
    """Only 224 inputs; building one architecture never changes the next (upstream mutates module-level dicts)."""
    with pytest.raises(InputError, match="224x224 inputs only"):
        create_model("Deit_drop_Small", num_classes=10, image_size=256)
    first = {k: tuple(v.shape) for k, v in create_model("Deit_drop_Tiny", num_classes=10).state_dict().items()}
    create_model("Deit_drop_Base", num_classes=10)
    create_model("T2T_ViT_14", num_classes=10, variant="batchnorm")
    assert {k: tuple(v.shape) for k, v in create_model("Deit_drop_Tiny", num_classes=10).state_dict().items()} == first


def test_models_lists_the_family_with_parameter_counts(models_json):
    rows = {row["arch"]: row for row in (models_json["architectures"] if isinstance(models_json, dict) else models_json)}
    assert {"Deit_drop_Tiny", "Deit_drop_Small", "Deit_drop_Base", "T2T_ViT_14"} <= set(rows)
    assert rows["Deit_drop_Small"]["family"] == "authors_vit"


@pytest.mark.slow
def test_export_matches_at_batch_1_and_3_and_fp16_keeps_cosine(tmp_path, calibration_dir):
    """Deit_drop_Tiny: one ONNX file matches PyTorch at batch 1 and 3 (1e-4); the FP16 build keeps
    cosine >= 0.999 on real images it was not calibrated on, the covariance block in FP32."""
    import onnxruntime as ort

    from dropcov_deploy.build import BuildOptions, build
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.verify import verify

    arch = "Deit_drop_Tiny"
    path = timm_saver_checkpoint(tmp_path / "tiny.pth.tar", arch, authors_state_dict(arch, num_classes=10, seed=11))
    onnx_path = export_onnx(path, tmp_path / "tiny.onnx").path
    model = load_checkpoint_with_info(path).model
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        images = _images(batch, seed=batch)
        with torch.no_grad():
            expected = model(images).numpy()
        assert _relative(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0], expected) < 1e-4
    fp16 = build(onnx_path, BuildOptions(precision="fp16", calib=calibration_dir, calib_size=16, cache_dir=tmp_path / "cache")).precision_onnx
    report = verify(path, [onnx_path, fp16], dataset="digits:val", use_cache=False).to_dict()
    metrics = {a["precision"]: a["metrics"] for a in report["artifacts"]}
    assert metrics["fp16"]["cosine_min"] >= 0.999 and metrics["fp32"]["relative_error"] < 1e-4
    assert set(ARCHS) == {"Deit_drop_Tiny", "Deit_drop_Small", "Deit_drop_Base", "T2T_ViT_14"}


@pytest.mark.slow
def test_fine_tuning_starts_from_an_authors_checkpoint(tmp_path, calibration_dir):
    """train --init: the authors' 1000-class weights start a 10-class run (a small ImageFolder of
    real digits: 2 training and 1 validation image per class, 224 px); every tensor but the
    class-count-dependent fc layers comes from the file, and the run writes our checkpoint."""
    import shutil

    from dropcov_deploy.train import TrainConfig, train

    for label in range(10):
        files = sorted((calibration_dir / str(label)).iterdir())
        for split, chosen in (("train", files[:2]), ("val", files[2:3])):
            (tmp_path / "data" / split / str(label)).mkdir(parents=True)
            for file in chosen:
                shutil.copyfile(file, tmp_path / "data" / split / str(label) / file.name)
    arch = "Deit_drop_Tiny"
    ema = authors_state_dict(arch, num_classes=1000, seed=13)
    init = timm_saver_checkpoint(tmp_path / "authors.pth.tar", arch, ema)
    result = train(TrainConfig(arch=arch, data=tmp_path / "data", epochs=1, batch_size=10, image_size=224, init=init, out=tmp_path / "ft.pt", lr=1e-4))
    assert sorted(result.fresh_tensors) == ["classifier.cls_fc.bias", "classifier.cls_fc.weight", "classifier.visual_fc.bias", "classifier.visual_fc.weight"]
    tuned = load_checkpoint_with_info(result.best_path)
    assert tuned.info.arch == arch and tuned.info.num_classes == 10
    moved = (tuned.model.state_dict()["visual_tokens.tokens.transition.weight"] - ema["visual_tokens.tokens.transition.weight"]).abs().max()
    assert 0 < float(moved) < 0.05  # started from the file, then trained
