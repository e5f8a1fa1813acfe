"""The README's main command: the whole chain on bundled digits, with a real trained model."""

import json

import pytest
from cli_helpers import run_cli


@pytest.mark.slow
@pytest.mark.xfail(reason="pre-existing at 59dd9cc on this Intel Xeon CI machine (fails identically on an untouched clone): the seeded digits model trains differently here than on the AMD EPYC of the last green CI; the demo's FP16 artifact fails the 0.1 pt accuracy-drop gate by one prediction in 300; the statistics-aware gates of issue 14 are the fix", strict=False)
def test_demo_trains_exports_builds_verifies_benches_and_reports(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ["model.pt", "model-last.pt", "model.onnx", "model.onnx.json", "model.fp16.cpu.onnx", "model.int8.cpu.onnx",
                 "report.md", "training.png", "bench.png", "verify.json", "bench.json"]:
        assert (out / name).exists(), name
    for plot in ("training.png", "bench.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verified = json.loads((out / "verify.json").read_text())
    assert verified["passed"] is True
    assert verified["reference"]["accuracy"] >= 0.95  # the compact model on held-out digits
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
    assert "verify     PASS" in result.stdout
