"""Transformer DropCov: the head against the spec, the registry, checkpoints, export and FP16.

No weights can be downloaded here: these models are seeded or trained on digits.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli

from dropcov_deploy.errors import CheckpointError, InputError
from dropcov_deploy.models import create_model, get_arch, load_checkpoint_with_info, save_checkpoint

CALIBRATION = Path(__file__).resolve().parents[1] / "calibration" / "digits"


def _spec_logits(model, images):
    """The spec's head in float64, written independently: upstream's reshape/permute split of
    wr into q and k, centring over tokens, P = (1/N) q^T k per head, cls_fc + visual_fc."""
    with torch.no_grad():
        tokens = model.forward_backbone(images).double()
        if model.prefix_tokens:
            cls, visual = tokens[:, 0], tokens[:, model.prefix_tokens :]
        else:
            cls, visual = tokens.mean(dim=1), tokens
        batch, count, _ = visual.shape
        heads, r = model.heads, model.dim
        qk = (visual @ model.wr.weight.double().T).reshape(batch, count, 3, heads, r).permute(2, 0, 3, 1, 4)
        q = qk[0].reshape(batch * heads, count, r)
        k = qk[1].reshape(batch * heads, count, r)
        q, k = q - q.mean(dim=1, keepdim=True), k - k.mean(dim=1, keepdim=True)
        cov = (1.0 / count) * q.transpose(1, 2).bmm(k)
        fc = lambda layer, x: x @ layer.weight.double().T + layer.bias.double()  # noqa: E731
        return fc(model.cls_fc, cls) + fc(model.visual_fc, cov.reshape(batch, -1))


@pytest.mark.parametrize("arch, layout", [("vit_compact_drop", "tokens"), pytest.param("swin_tiny_drop", "NHWC", marks=pytest.mark.slow), ("timm:resnet10t", "NCHW")])
def test_head_computes_the_spec(arch, layout):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=7).eval()
    assert model.layout == layout
    for layer in (model.cls_fc, model.visual_fc):  # non-zero biases, so a dropped bias would show
        torch.nn.init.normal_(layer.bias)
    images = torch.randn(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        logits = model(images)
    expected = _spec_logits(model, images)
    assert torch.allclose(logits.double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    stages = model.forward_stages(images)
    assert stages["covariance"].shape == (2, model.heads, model.dim, model.dim)
    assert torch.equal(stages["logits"], logits)


def test_training_drops_tokens_and_covariance_eval_is_deterministic():
    torch.manual_seed(0)
    model = create_model("vit_compact_drop", num_classes=5)
    images = torch.randn(4, 3, 32, 32)
    model.train()
    mask = model._token_mask(torch.zeros(4, 16, 3 * model.heads * model.dim))
    assert mask.shape == (4, model.heads, 16, 1)
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0 / 0.8}
    assert (mask == 0).any()  # 64 tokens x heads at p=0.2: some are dropped
    assert not torch.equal(model(images), model(images))
    model.eval()
    assert torch.equal(model(images), model(images))


def test_registered_sizes_follow_the_spec():
    # heads x r x r values in P: DeiT-S 6 x 24 x 24 = 3456, DeiT-Ti 6 x 14 x 14, DeiT-B 12 x 24 x 24
    for arch, heads, r, backbone in [
        ("deit_tiny_drop", 6, 14, "deit_tiny_patch16_224"),
        ("deit_small_drop", 6, 24, "deit_small_patch16_224"),
        ("deit_base_drop", 12, 24, "deit_base_patch16_224"),
        ("swin_tiny_drop", 6, 24, "swin_tiny_patch4_window7_224"),
    ]:
        spec = get_arch(arch)
        assert (spec.family, spec.config.heads, spec.default_dim, spec.config.timm_name, spec.default_image_size) == ("xcov", heads, r, backbone, 224)
    with torch.device("meta"):
        model = create_model("deit_small_drop", num_classes=1000)
    assert model.visual_fc.in_features == 3456 and model.wr.out_features == 3 * 6 * 24
    timm_spec = get_arch("timm:convnext_atto")
    assert (timm_spec.family, timm_spec.config.timm_name) == ("xcov", "convnext_atto")
    with pytest.raises(InputError, match="unknown timm model 'nosuchmodel'"):
        get_arch("timm:nosuchmodel")


def test_vit_checkpoints_round_trip_and_infer_their_architecture(tmp_path):
    torch.manual_seed(0)
    model = create_model("vit_compact_drop", num_classes=4).eval()
    images = torch.randn(2, 3, 32, 32)
    ours, bare = tmp_path / "ours.pt", tmp_path / "bare.pt"
    save_checkpoint(ours, model, arch="vit_compact_drop", input_size=32)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, bare)
    for path in (ours, bare):
        loaded = load_checkpoint_with_info(path)
        assert (loaded.info.arch, loaded.info.family, loaded.info.dim, loaded.info.heads) == ("vit_compact_drop", "xcov", 8, 4)
        with torch.no_grad():
            assert torch.equal(loaded.model(images), model(images))
    with pytest.raises(CheckpointError, match="holds a DropCov model of the xcov family, not a resnet18_ACD"):
        load_checkpoint_with_info(ours, "resnet18_ACD")


def test_timm_backbone_checkpoint_needs_its_name(tmp_path):
    model = create_model("timm:resnet10t", num_classes=3)
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="give --arch timm:<model>"):
        load_checkpoint_with_info(bare)
    assert load_checkpoint_with_info(bare, "timm:resnet10t").info.heads == 6  # the authors' own ViTs: tests/test_authors_vit.py


def test_local_backbone_weights_load_and_wrong_ones_are_one_line(tmp_path):
    import timm

    spec = get_arch("vit_compact_drop")
    source = timm.create_model(spec.config.timm_name, num_classes=0, img_size=32, **dict(spec.config.timm_kwargs))
    weights = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), weights)
    model = create_model("vit_compact_drop", num_classes=3, pretrained_backbone=str(weights))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), model.backbone.state_dict().values()))
    with pytest.raises(InputError, match="backbone weights do not fit deit_tiny_patch16_224"):
        create_model("deit_tiny_drop", num_classes=3, pretrained_backbone=str(weights))


def test_models_lists_the_transformers(models_json):
    rows = {row["arch"]: row for row in models_json}
    assert rows["deit_small_drop"]["fc_inputs"] == 3456 and rows["deit_small_drop"]["heads"] == 6
    assert rows["swin_tiny_drop"]["family"] == "xcov"


def test_export_refuses_another_image_size(tmp_path):
    model = create_model("vit_compact_drop", num_classes=3).eval()
    path = tmp_path / "vit.pt"
    save_checkpoint(path, model, arch="vit_compact_drop", input_size=32)
    assert_one_line_error(run_cli("export", "-c", path, "--image-size", "64", "--out", tmp_path / "x.onnx"), 2, "built for 32x32 inputs")
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------ export and FP16 of the real sizes
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deit_small_drop", "swin_tiny_drop"])
def test_transformer_exports_with_dynamic_batch_and_fp16_stays_finite(arch, tmp_path):
    import onnx

    from dropcov_deploy import head_graph
    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from dropcov_deploy.build import BuildOptions, build
    from dropcov_deploy.export import export_onnx

    torch.manual_seed(0)
    model = create_model(arch, num_classes=10).eval()
    checkpoint = tmp_path / f"{arch}.pt"
    save_checkpoint(checkpoint, model, arch=arch, input_size=224)
    exported = export_onnx(checkpoint, tmp_path / f"{arch}.onnx")
    assert exported.manifest["input"]["batch"]["dynamic"] and exported.manifest["parity"]["max_relative_error"] <= 1e-4
    proto = onnx.load(str(exported.path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    images = np.random.default_rng(1).standard_normal((3, 3, 224, 224), dtype=np.float32)  # a batch parity did not use
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    actual = OnnxRuntimeRunner(exported.path)(images)
    assert np.abs(actual - expected).max() / np.abs(expected).max() <= 1e-4
    names = {n.name: n.op_type for n in proto.graph.node}
    block = head_graph.covariance_block(proto)
    assert {names[n] for n in block} >= {"ReduceMean", "Sub", "MatMul"} and "Softmax" not in {names[n] for n in block}

    # 8 images (the minimum): the numerics check reads 8 either way, and AutoCast's reference run at 224 is most of this test
    result = build(exported.path, BuildOptions(precision="fp16", calib=CALIBRATION, calib_size=8, cache_dir=tmp_path / "cache"))
    details = result.manifest["precision_details"]
    assert details["check"]["nonfinite"] == 0 and details["check"]["cosine_min"] >= 0.999
    numerics = details["sensitive_ops"]
    assert numerics["LayerNormalization"]["nodes"] >= 9 and numerics["Softmax"]["nodes"] == 12
    for op in ("LayerNormalization", "Softmax"):
        assert numerics[op]["nonfinite"] == 0 and numerics[op]["fp16_nodes"] > 0 and numerics[op]["max_relative_error"] < 1e-2
    assert set(details["covariance_block_fp32"]) == set(block)


# ------------------------------------------------------------------ a trained ViT through build and verify
@pytest.fixture(scope="module")
def trained_vit(tmp_path_factory):
    """vit_compact_drop trained on digits (20 epochs, ~35 s on 2 cores), its export and builds."""
    from dropcov_deploy.build import BuildOptions, build
    from dropcov_deploy.errors import BackendUnavailable
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("vit")
    trained = train(TrainConfig(arch="vit_compact_drop", dataset="digits", epochs=20, lr=2e-3, out=folder / "vit.pt"))
    fp32 = export_onnx(trained.best_path, folder / "vit.onnx").path
    cache = folder / "cache"
    artifacts = {"fp32": fp32}
    for name, options in {
        "fp16": BuildOptions(precision="fp16", calib=CALIBRATION),
        # one runtime and form: the CPU choice among all of them is tests/test_cpu_runtimes.py's
        "int8-cpu": BuildOptions(precision="int8", calib=CALIBRATION, runtime="onnxruntime", qdq_form="u8s8"),
        "int8-trt": BuildOptions(precision="int8", calib=CALIBRATION, backend="tensorrt"),
    }.items():
        options.cache_dir, options.out = cache, folder / f"vit.{name}.onnx"
        try:
            build(fp32, options)
        except BackendUnavailable:  # no TensorRT here: its precision ONNX is written all the same
            assert name == "int8-trt"
        artifacts[name] = options.out
    return trained, artifacts


@pytest.mark.slow
def test_trained_vit_passes_the_default_fp16_and_int8_gates(trained_vit, tmp_path):
    trained, artifacts = trained_vit
    assert trained.best_accuracy >= 0.94  # on the 259 val images (one image is 0.39 points), trained on 1038
    report = tmp_path / "report.json"
    result = run_cli("verify", "-c", trained.best_path, *artifacts.values(), "--dataset", "digits:test", "--report", report)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert data["passed"] and data["reference"]["accuracy"] >= 0.93
    by_path = {Path(a["path"]).name: a for a in data["artifacts"]}
    int8_gates = by_path["vit.int8-cpu.onnx"]["gates"]
    assert int8_gates["accuracy_drop"]["max"] == 0.01  # the ViT INT8 gate, 1 pt (CNNs: 0.5 pt)


@pytest.mark.slow
def test_locate_reads_the_vit_stages_from_every_precision_graph(trained_vit):
    from dropcov_deploy.data.digits import PREPROCESSING
    from dropcov_deploy.data.images import list_images, load_batch
    from dropcov_deploy.verify import locate_divergence

    trained, artifacts = trained_vit
    model = load_checkpoint_with_info(trained.best_path).model
    batch = load_batch(list_images(CALIBRATION).paths[:8], PREPROCESSING)
    for name, path in artifacts.items():
        found = locate_divergence(model, path, batch, name.split("-")[0])
        assert found["supported"] and set(found["relative_error"]) == {"backbone", "reduced", "covariance", "logits"}
        if name == "fp32":
            assert found["first_diverging_tensor"] is None and max(found["relative_error"].values()) < 1e-4
        else:  # drift starts in the backbone; the FP32 covariance adds none of its own
            assert found["relative_error"]["backbone"] > 0


@pytest.mark.slow
def test_vit_precision_graphs_keep_the_head_in_fp32_and_layers_in_low_precision(trained_vit):
    import onnx
    from onnx import TensorProto

    from dropcov_deploy import onnx_io

    _, artifacts = trained_vit
    for name in ("fp16", "int8-trt"):
        model = onnx.load(str(artifacts[name]))
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
        types.update({t.name: t.data_type for t in model.graph.initializer})
        manifest = json.loads(Path(f"{artifacts[name]}.json").read_text())
        nodes = {n.name: n for n in model.graph.node}
        for node_name in manifest["precision_details"]["covariance_block_fp32"]:
            node = nodes[node_name]
            assert all(types[t] == TensorProto.FLOAT for t in node.output if types.get(t) in (TensorProto.FLOAT, TensorProto.FLOAT16)), node_name
        numerics = manifest["precision_details"]["sensitive_ops"]
        assert numerics["Softmax"]["nodes"] == 4 and numerics["Softmax"]["nonfinite"] == 0
        assert numerics["LayerNormalization"]["fp16_nodes"] > 0
        made_by = onnx_io.producers(model)
        linears = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.name not in manifest["precision_details"]["covariance_block_fp32"]]
        assert sum(types[n.output[0]] == TensorProto.FLOAT16 for n in linears) >= len(linears) - 1
        if name == "int8-trt":  # TensorRT fuses DQ -> layer; a Cast in between would keep the layer out of INT8
            dequantized = [n for n in linears if made_by.get(n.input[1]) is not None and made_by[n.input[1]].op_type == "DequantizeLinear"]
            assert len(dequantized) >= 16  # 4 blocks x (qkv, proj, fc1, fc2)
            consumers = onnx_io.consumers(model)
            for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
                assert all(c.op_type != "Cast" for c in consumers[dq.output[0]]), dq.name
