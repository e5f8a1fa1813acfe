"""The README's main command: the whole chain on bundled digits, with a real trained model."""

import json

import pytest
from cli_helpers import EXTRA_MODULES, run_cli_without


@pytest.mark.slow
def test_demo_trains_exports_builds_verifies_benches_and_reports(demo_run):
    out, result = demo_run
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: a gate failed; checked last, after what it wrote
    for name in ["model.pt", "model-last.pt", "model.onnx", "model.onnx.json", "model.fp16.cpu.onnx", "model.int8.cpu.onnx",
                 "report.md", "training.png", "bench.png", "verify.json", "bench.json", "reference.npz"]:
        assert (out / name).exists(), name
    for plot in ("training.png", "bench.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verified = json.loads((out / "verify.json").read_text())
    # the device's path: the demo's FP32, FP16 and INT8 ONNX against its saved reference, without torch or ModelOpt
    device = run_cli_without(EXTRA_MODULES, "verify", "--reference", out / "reference.npz", *(a["path"] for a in verified["artifacts"]), "--json")
    assert device.returncode == (0 if verified["passed"] else 1), device.stderr
    again = json.loads(device.stdout)
    assert [a["metrics"] for a in again["artifacts"]] == [a["metrics"] for a in verified["artifacts"]]
    assert again["reference"]["accuracy"] == verified["reference"]["accuracy"]
    assert verified["reference"]["accuracy"] >= 0.95  # the compact model on held-out digits
    # verified on the held-out test split: no artifact was calibrated on any of it, and every figure carries its interval
    assert verified["samples"] == 500 and verified["reference"]["inputs"] == "500 images of digits:test (labelled)"
    for artifact in verified["artifacts"]:
        assert artifact["calibration_overlap"] == (None if artifact["precision"] == "fp32" else 0)
        spread = artifact["intervals"]
        assert spread["samples"] == 500
        for key in ("accuracy", "reference_accuracy", "accuracy_drop", "top1_agreement", "top5_agreement"):
            low, high = spread[key]
            assert low <= (artifact["metrics"][key] if key != "reference_accuracy" else verified["reference"]["accuracy"]) <= high
    precisions = {a["precision"]: a for a in verified["artifacts"]}
    assert set(precisions) == {"fp32", "fp16", "int8"}
    assert precisions["fp32"]["metrics"]["accuracy"] >= 0.95
    assert precisions["fp16"]["metrics"]["top1_agreement"] >= 0.995 and precisions["fp16"]["metrics"]["nonfinite"] == 0
    assert precisions["int8"]["metrics"]["top1_agreement"] >= 0.97
    assert precisions["int8"]["metrics"]["accuracy_drop"] <= 0.01
    timed = json.loads((out / "bench.json").read_text())
    cells = {(r["backend"], r["batch_size"]) for r in timed["results"]}
    assert {("torch", 1), ("torch", 8), ("onnxruntime-cpu", 1), ("onnxruntime-cpu", 8)} <= cells
    report = (out / "report.md").read_text()
    assert "## Verify" in report and "## Bench" in report and "bench.png" in report and "Backend: " in report
    assert "`digits:test`, the held-out test split" in report and "| calibration overlap |" in report
    assert report.count(" [0.") + report.count(" [1.") >= 7  # accuracy and agreement intervals: the reference's and two per artifact
    assert result.returncode == 0 and verified["passed"] is True, result.stderr[-3000:]
    assert "verify     PASS" in result.stdout
    assert "epoch 10/10: loss" in result.stderr  # piped, training still says how it goes, a line per epoch
