"""`export`: the ONNX inference graph, its parity with a float64 reference, its manifest."""

import json

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from onnx import numpy_helper
from reference import logits as reference_logits
from reference import relative_error

from dropcov_deploy import manifest as manifests
from dropcov_deploy import onnx_io
from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner
from dropcov_deploy.errors import InputError
from dropcov_deploy.export import FORBIDDEN_OPS, export_onnx


def _ort_vs_reference(onnx_path, state, arch, size, batches=(1, 3)):
    runner = OnnxRuntimeRunner(onnx_path)
    gen = torch.Generator().manual_seed(7)
    for batch in batches:
        images = torch.randn(batch, 3, size, size, generator=gen)
        got = runner(images.numpy())
        assert got.shape == (batch, state["fc.bias"].shape[0])
        assert relative_error(got, reference_logits(state, arch, images)) < 1e-4


@pytest.mark.slow
def test_resnet50_d128_authors_checkpoint_exports_and_matches_float64_reference(authors_checkpoint, tmp_path):
    path, state = authors_checkpoint(arch="resnet50_ACD", dim=128, num_classes=1000)
    result = export_onnx(path, tmp_path / "r50.onnx", image_size=224)
    assert result.manifest["parity"]["passed"]
    _ort_vs_reference(result.path, state, "resnet50_ACD", 224)


@pytest.mark.slow
def test_resnet18_d256_authors_checkpoint_exports_and_matches_float64_reference(authors_checkpoint, tmp_path):
    path, state = authors_checkpoint(arch="resnet18_ACD", dim=256, num_classes=10)
    result = export_onnx(path, tmp_path / "r18.onnx", image_size=64)
    _ort_vs_reference(result.path, state, "resnet18_ACD", 64)


@pytest.mark.parametrize("size", [32, pytest.param(448, marks=pytest.mark.slow)])
def test_other_image_sizes(authors_checkpoint, tmp_path, size):
    path, state = authors_checkpoint(arch="resnet18_ACD", dim=16, num_classes=5)
    result = export_onnx(path, tmp_path / f"r18_{size}.onnx", image_size=size)
    assert result.manifest["input"]["shape"] == ["batch", 3, size, size]
    _ort_vs_reference(result.path, state, "resnet18_ACD", size, batches=(2,))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One small export shared by the graph-rule and manifest tests."""

    from reference import authors_state_dict

    folder = tmp_path_factory.mktemp("exported")
    state = authors_state_dict("resnet34_ACD", dim=24, num_classes=7)
    ckpt = folder / "r34.pth.tar"
    torch.save({"arch": "resnet34_ACD", "epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, ckpt)
    result = export_onnx(ckpt, folder / "r34.onnx", image_size=96)
    return ckpt, result


def test_graph_has_nothing_of_training_mode_and_no_fallback_ops(exported):
    _, result = exported
    model = onnx.load(str(result.path))
    ops = {node.op_type for node in model.graph.node}
    for op in FORBIDDEN_OPS + ("RandomUniform", "RandomUniformLike", "Bernoulli", "Sigmoid", "If", "Loop"):
        assert op not in ops, op
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)  # no custom/ATen domains
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv":
            assert inits[node.input[1]].ndim == 4  # no Conv1d: the ECA branch is gone


def test_triu_is_one_constant_gather_on_the_flat_covariance(exported):
    _, result = exported
    model = onnx.load(str(result.path))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    gathers = [n for n in graph.node if n.op_type == "Gather"]
    assert len(gathers) == 1
    (gather,) = gathers
    axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
    assert axis == 1
    index = inits[gather.input[1]]  # a constant initializer, not computed
    rows, cols = np.triu_indices(24)
    np.testing.assert_array_equal(index.reshape(-1), rows * 24 + cols)
    flat = producers[gather.input[0]]
    assert flat.op_type == "Reshape"
    matmul = producers[flat.input[0]]
    assert matmul.op_type == "MatMul"
    # (X / sqrt(N)) (X / sqrt(N))^T: both MatMul inputs come from the same scaled tensor
    left, right = producers[matmul.input[0]], producers[matmul.input[1]]
    assert right.op_type == "Transpose" and right.input[0] == matmul.input[0]
    assert left.op_type == "Mul"
    scale = [inits[name] for name in left.input if name in inits]
    n_positions = (96 // 16) ** 2
    assert scale and float(np.asarray(scale[0]).reshape(-1)[0]) == pytest.approx(1 / np.sqrt(n_positions), rel=1e-6)
    assert producers[left.input[0]].op_type == "Sub"  # centring before scaling


def test_checker_and_shape_inference_pass(exported):
    _, result = exported
    onnx.checker.check_model(str(result.path), full_check=True)
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(result.path)), strict_mode=True)
    out_dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[0].dim_param == "batch" and out_dims[1].dim_value == 7


def test_manifest_sidecar_and_metadata_props(exported):
    ckpt, result = exported
    sidecar = json.loads((result.path.parent / "r34.onnx.json").read_text())
    assert sidecar["arch"] == "resnet34_ACD" and sidecar["dim"] == 24 and sidecar["num_classes"] == 7
    assert sidecar["input"]["batch"]["dynamic"] is True and sidecar["input"]["shape"] == ["batch", 3, 96, 96]
    assert sidecar["preprocessing"]["crop"] == 96 and sidecar["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert sidecar["opset"] == 18
    assert sidecar["source"]["sha256"] == manifests.sha256_file(ckpt)
    assert sidecar["sha256"] == manifests.sha256_file(result.path)
    assert {"torch", "onnx", "onnxruntime", "dropcov_deploy"} <= set(sidecar["versions"])
    assert sidecar["parity"]["passed"] and sidecar["parity"]["max_relative_error"] < 1e-4
    assert sidecar["parity"]["batch_sizes"] == [1, 1, 4]
    props = {p.key: p.value for p in onnx.load(str(result.path), load_external_data=False).metadata_props}
    assert json.loads(props["dropcov.arch"]) == "resnet34_ACD"
    assert json.loads(props["dropcov.source"])["sha256"] == sidecar["source"]["sha256"]
    assert json.loads(props["dropcov.preprocessing"])["std"] == [0.229, 0.224, 0.225]


def test_fixed_batch(authors_checkpoint, tmp_path):
    path, _ = authors_checkpoint(dim=8, num_classes=3)
    result = export_onnx(path, tmp_path / "fixed.onnx", image_size=64, batch="2")
    model = onnx.load(str(result.path))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 64, 64]
    assert result.manifest["input"]["batch"] == {"dynamic": False, "min": 2, "max": 2}


def test_failed_parity_leaves_no_file(authors_checkpoint, tmp_path):
    path, _ = authors_checkpoint(dim=8, num_classes=3)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="parity check failed"):
        export_onnx(path, out / "m.onnx", image_size=64, tolerance=0.0)
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_external_data_for_large_models(authors_checkpoint, tmp_path):
    path, _ = authors_checkpoint(dim=8, num_classes=3)
    result = export_onnx(path, tmp_path / "m.onnx", image_size=64)
    model = onnx.load(str(result.path))
    big = tmp_path / "big"
    big.mkdir()
    written = onnx_io.save(model, big / "m.onnx", threshold=1024)  # as if over 2 GB
    assert [p.name for p in written] == ["m.onnx", "m.onnx.data"]
    assert (big / "m.onnx").stat().st_size < 1_000_000 < 40_000_000 < (big / "m.onnx.data").stat().st_size
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    np.testing.assert_array_equal(OnnxRuntimeRunner(big / "m.onnx")(x), OnnxRuntimeRunner(result.path)(x))


def test_inspect_onnx_shows_ops_bytes_and_io(exported):
    _, result = exported
    cli = run_cli("inspect", result.path, "--json")
    assert cli.returncode == 0, cli.stderr
    data = json.loads(cli.stdout)
    assert data["manifest"]["arch"] == "resnet34_ACD" and data["manifest_source"] == "sidecar"
    assert data["op_counts"]["Gather"] == 1 and data["op_counts"]["Conv"] > 30
    assert data["parameter_bytes"] > 4 * 21_000_000
    assert data["inputs"][0]["shape"] == ["batch", 3, 96, 96] and data["outputs"][0]["name"] == "logits"


def test_export_cli_bad_inputs_leave_no_file(authors_checkpoint, tmp_path):
    path, _ = authors_checkpoint(dim=8, num_classes=3)
    nowhere = tmp_path / "no" / "such" / "m.onnx"
    assert_one_line_error(run_cli("export", "-c", path, "--out", nowhere), 2, str(nowhere), "does not exist")
    small = tmp_path / "small.onnx"
    assert_one_line_error(run_cli("export", "-c", path, "--image-size", "16", "--out", small), 2, "--image-size 16", "too small")
    assert_one_line_error(run_cli("export", "-c", tmp_path / "absent.pth", "--out", small), 2, "absent.pth", "no such file")
    assert_one_line_error(run_cli("export", "-c", path, "--arch", "resnet50_ACD", "--out", small), 2, "do not fit resnet50_ACD")
    assert_one_line_error(run_cli("export", "-c", path, "--batch", "zero", "--out", small), 2, "--batch")
    assert_one_line_error(run_cli("export", "-c", path, "--opset", "9", "--out", small), 2, "--opset 9")
    assert not small.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_export_cli_writes_model_and_manifest(authors_checkpoint, tmp_path):
    path, _ = authors_checkpoint(dim=8, num_classes=3)
    out = tmp_path / "cli.onnx"
    result = run_cli("export", "-c", path, "--image-size", "64", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "parity" in result.stdout and out.exists() and (tmp_path / "cli.onnx.json").exists()
