"""Finding the layer that breaks FP16 or INT8 and keeping it in higher precision (issue 15).

The acceptance models are the demo's digits-trained network made hostile by a
function-preserving change: one channel of layer3.0's first BatchNorm scaled up by s before
the ReLU, the same input channel of layer3.0.conv2 scaled down by s. FP32 is unchanged;
INT8's per-tensor activation scale for that tensor is ruined (s = 1000), and in FP16 the
channel overflows (s = 1e7) when AutoCast's range check does not keep it in FP32.
"""

import json

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, run_cli

from dropcov_deploy import layer_names
from dropcov_deploy.errors import InputError
from dropcov_deploy.metrics import compare

BLOCK = "layer3.0"


def _hostile(checkpoint, destination, scale: float):
    """scripts/hostile_channel.py: one channel moved across layer3.0's ReLU by `scale` (FP32 output unchanged)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from hostile_channel import make_hostile

    make_hostile(checkpoint, destination, BLOCK, scale)
    return destination


@pytest.fixture(scope="module")
def hostile_int8(trained_digits, tmp_path_factory):
    from dropcov_deploy.export import export_onnx

    folder = tmp_path_factory.mktemp("hostile_int8")
    checkpoint = _hostile(trained_digits[0], folder / "h.pt", 1000.0)
    return checkpoint, export_onnx(checkpoint, folder / "h.onnx").path


def _verify(checkpoint, artifact, report):
    result = run_cli("verify", "-c", checkpoint, artifact, "--dataset", "digits:test", "--report", report)
    return result, json.loads(report.read_text())["artifacts"][0]


@pytest.mark.slow
def test_int8_debugger_ranks_the_damaged_layer_first_and_its_build_passes(hostile_int8, calibration_dir, tmp_path):
    checkpoint, fp32 = hostile_int8
    plain = tmp_path / "plain.int8.cpu.onnx"
    assert run_cli("build", fp32, "--precision", "int8", "--calib", calibration_dir, "--out", plain).returncode == 0
    failed, artifact = _verify(checkpoint, plain, tmp_path / "plain.json")
    assert failed.returncode == 1 and artifact["gates"]["top1_agreement"]["passed"] is False  # the hostile change breaks INT8

    report = tmp_path / "debug.json"
    found = run_cli("debug", "precision", fp32, "--precision", "int8", "--calib", calibration_dir, "-c", checkpoint,
                    "--dataset", "digits:val", "--report", report)
    assert found.returncode == 0, found.stderr
    data = json.loads(report.read_text())
    assert data["ranking"][0]["layer"] == f"{BLOCK}.conv2" and data["ranking"][0]["nodes"]
    assert data["keep_float"] == [f"{BLOCK}.conv2"] and data["passed"] is True
    assert data["candidates"] <= 100 and data["baseline"]["passed"] is False
    assert f"--keep-float {BLOCK}.conv2" in data["command"] and f"--keep-float {BLOCK}.conv2" in found.stdout
    for row in data["ranking"]:
        assert {"layer", "nodes", "op_type", "metrics_kept_float", "metrics_alone_quantized"} <= set(row)

    # the suggested build, run as printed (with our own output path), passes every gate on the held-out test split
    fixed = tmp_path / "fixed.int8.cpu.onnx"
    words = data["command"].split()[1:] + ["--out", str(fixed)]
    assert run_cli(*words).returncode == 0
    passed, artifact = _verify(checkpoint, fixed, tmp_path / "fixed.json")
    assert passed.returncode == 0, passed.stderr
    kept = json.loads((tmp_path / "fixed.int8.cpu.onnx.json").read_text())["precision_details"]["kept_float"]
    assert [entry["module"] for entry in kept] == [f"{BLOCK}.conv2"]


@pytest.mark.slow
def test_fp16_debugger_finds_the_layer_that_overflows_without_autocast_range_check(trained_digits, calibration_dir, tmp_path):
    from dropcov_deploy.export import export_onnx

    checkpoint = _hostile(trained_digits[0], tmp_path / "f.pt", 1e7)
    fp32 = export_onnx(checkpoint, tmp_path / "f.onnx").path
    guarded = tmp_path / "guarded.fp16.onnx"
    assert run_cli("build", fp32, "--precision", "fp16", "--calib", calibration_dir, "--out", guarded).returncode == 0
    assert _verify(checkpoint, guarded, tmp_path / "g.json")[0].returncode == 0  # AutoCast's range check keeps it in FP32 itself
    forced = tmp_path / "forced.fp16.onnx"
    assert run_cli("build", fp32, "--precision", "fp16", "--calib", calibration_dir, "--no-autocast-range-check", "--out", forced).returncode == 0
    assert _verify(checkpoint, forced, tmp_path / "f.json")[0].returncode == 1  # forced into FP16, that layer breaks it

    report = tmp_path / "debug.json"
    found = run_cli("debug", "precision", fp32, "--precision", "fp16", "--calib", calibration_dir, "-c", checkpoint, "--dataset", "digits:val",
                    "--no-autocast-range-check", "--apply", "--out", tmp_path / "fixed.fp16.onnx", "--report", report)
    assert found.returncode == 0, found.stderr
    data = json.loads(report.read_text())
    assert data["ranking"][0]["layer"] in (f"{BLOCK}.conv1", f"{BLOCK}.conv2")
    assert f"{BLOCK}.conv1" in data["keep_float"] and len(data["keep_float"]) <= 3
    assert data["applied"]["passed"] is True and data["passed"] is True
    assert _verify(checkpoint, tmp_path / "fixed.fp16.onnx", tmp_path / "x.json")[0].returncode == 0  # and on the held-out split


def test_layers_are_named_by_module_path_and_typos_get_near_matches(seeded_digits):
    _, fp32 = seeded_digits
    model = onnx.load(str(fp32))
    table = layer_names.layers(model)
    modules = [layer.module for layer in table]
    assert modules[0] == "conv1" and "layer2.0.downsample.0" in modules and modules[-1] == "fc"  # the conv, not its folded BatchNorm
    assert "layer3.0.conv2" in modules and not any(m and ".bn" in m for m in modules)
    assert [layer.module for layer in layer_names.resolve(["layer3"], model)] == ["layer3.0.downsample.0", "layer3.0.conv1", "layer3.0.conv2"]
    by_node = layer_names.resolve([table[1].name], model)
    assert by_node == [table[1]]
    with pytest.raises(InputError, match=r"'layer3\.0\.conv3': no such layer .* did you mean layer3\.0\.conv2"):
        layer_names.resolve(["layer3.0.conv3"], model)
    with pytest.raises(InputError, match="'Conf': no node of that op type; did you mean Conv"):
        layer_names.resolve_op_types(["Conf"], model)


def test_names_from_a_file(tmp_path):
    names = tmp_path / "keep.txt"
    names.write_text("layer3.0.conv2  # the damaged one\nfc,layer_reduce\n\n")
    assert layer_names.read_names(f"@{names}") == ["layer3.0.conv2", "fc", "layer_reduce"]
    with pytest.raises(InputError, match="cannot read"):
        layer_names.read_names(f"@{tmp_path / 'missing.txt'}")
    with pytest.raises(InputError, match="no names given"):
        layer_names.read_names(" , ")


def test_keep_float_build_records_the_layers_and_refuses_bad_names(seeded_digits, calibration_dir, tmp_path):
    _, fp32 = seeded_digits
    out = tmp_path / "k.int8.cpu.onnx"
    result = run_cli("build", fp32, "--precision", "int8", "--calib", calibration_dir, "--calib-size", "16", "--keep-float", "layer3.0.conv2",
                     "--exclude-op-types", "Gemm", "--runtime", "onnxruntime", "--qdq-form", "u8s8", "--out", out)
    assert result.returncode == 0, result.stderr
    details = json.loads((tmp_path / "k.int8.cpu.onnx.json").read_text())["precision_details"]
    assert [(e["module"], e["why"]) for e in details["kept_float"]] == [("layer3.0.conv2", "--keep-float"), ("fc", "--exclude-op-types")]
    assert details["fc"]["chosen"] == "float" and details["exclude_op_types"] == ["Gemm"]
    model = onnx.load(str(out))
    made_by = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.name == details["kept_float"][0]["node"])
    assert all(made_by.get(i) is None or made_by[i].op_type != "DequantizeLinear" for i in conv.input)  # no Q/DQ on its inputs or weights
    assert_one_line_error(run_cli("build", fp32, "--precision", "int8", "--calib", calibration_dir, "--keep-float", "layer9"), 2,
                          "--keep-float 'layer9': no such layer")
    assert_one_line_error(run_cli("build", fp32, "--precision", "fp32", "--keep-float", "fc"), 2, "apply to fp16 and int8 builds")


def test_debug_precision_refuses_bad_input_in_one_line(seeded_digits, calibration_dir):
    checkpoint, fp32 = seeded_digits
    common = ["debug", "precision", fp32, "--calib", calibration_dir, "-c", checkpoint]
    assert_one_line_error(run_cli(*common, "--dataset", "digits:test"), 2, "held-out test split is for verification only; choose layers on digits:val")
    assert_one_line_error(run_cli(*common, "--precision", "fp32", "--dataset", "digits"), 2, "nothing to debug")
    assert_one_line_error(run_cli(*common, "--target", "gpu", "--dataset", "digits"), 2, "--target 'gpu'")
    assert_one_line_error(run_cli(*common, "--budget", "2", "--dataset", "digits"), 2, "--budget 2")
    assert_one_line_error(run_cli("debug", "precision", fp32, "-c", checkpoint, "--dataset", "digits"), 2, "give the calibration data")


def test_a_nan_output_never_reads_as_agreement():
    reference = np.eye(4) * 3
    broken = np.full_like(reference, np.nan)
    metrics = compare(broken, reference, np.arange(4))
    assert metrics["top1_agreement"] == 0 and metrics["top5_agreement"] == 0 and metrics["cosine_min"] == -1
    assert metrics["accuracy"] == 0 and metrics["reference_accuracy"] == 1 and metrics["nonfinite"] == 16
    one_bad = reference.copy()
    one_bad[0, 0] = np.inf
    assert compare(one_bad, reference)["top1_agreement"] == 0.75


@pytest.mark.slow
def test_locate_traces_every_layer_and_names_the_damaged_block(hostile_int8, calibration_dir, tmp_path):
    """verify --locate on the hostile INT8 build: besides the four stages, every layer against the
    FP32 graph, the worst one in the damaged block, by module path."""
    checkpoint, fp32 = hostile_int8
    plain = tmp_path / "plain.int8.cpu.onnx"
    # the form with the stem float, fixed (the measured choice may take an INT8 stem)
    built = run_cli("build", fp32, "--precision", "int8", "--calib", calibration_dir, "--out", plain, "--runtime", "onnxruntime", "--qdq-form", "u8s8")
    assert built.returncode == 0, built.stderr
    report = tmp_path / "v.json"
    result = run_cli("verify", "-c", checkpoint, fp32, plain, "--dataset", "digits:val", "--locate", "--report", report)
    assert result.returncode == 1
    located = json.loads(report.read_text())["artifacts"][1]["locate"]
    traced = located["layers"]
    assert traced["supported"] and traced["compared"] == 14 and traced["reference"] == str(fp32)
    assert traced["worst"]["layer"].startswith(f"{BLOCK}.conv") and traced["first"] is not None
    assert [row["layer"] for row in traced["layers"]][0] == "conv1" and traced["layers"][0]["relative_error"] == 0  # the stem stays FP32 on this target
    assert "worst: layer3.0.conv" in result.stdout


def test_debug_precision_refuses_a_test_split_reference_and_contradictions(seeded_digits, calibration_dir, tmp_path):
    """A reference saved from the held-out split cannot choose layers either; a bad calibration
    method fails before any work; --keep-float of the fc with --fc int8 is a contradiction."""
    checkpoint, fp32 = seeded_digits
    reference = tmp_path / "ref.npz"
    saved = run_cli("verify", "-c", checkpoint, "--dataset", "digits:test", "--save-reference", reference)
    assert saved.returncode == 0, saved.stderr
    assert_one_line_error(run_cli("debug", "precision", fp32, "--calib", calibration_dir, "--reference", reference), 2, "held-out test split is for verification only")
    assert_one_line_error(
        run_cli("debug", "precision", fp32, "--calib", calibration_dir, "-c", checkpoint, "--dataset", "digits", "--calib-method", "foo"), 2, "--calib-method 'foo'"
    )
    assert_one_line_error(
        run_cli("build", fp32, "--precision", "int8", "--calib", calibration_dir, "--keep-float", "fc", "--fc", "int8", "--out", tmp_path / "x.onnx"),
        2, "contradict",
    )
