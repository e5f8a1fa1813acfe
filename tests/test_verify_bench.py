"""verify, bench and predict on a real trained model and its artifacts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, run_cli, run_cli_subprocess
from onnx import numpy_helper

from dropcov_deploy import head_graph, onnx_io
from dropcov_deploy.build import BuildOptions, build
from dropcov_deploy.verify import stage_tensors

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "calibration" / "digits"


@pytest.fixture(scope="module")
def chain(trained_digits, tmp_path_factory):
    """The trained digits model, its FP32 export, FP16 and INT8 (CPU) artifacts."""
    checkpoint, fp32 = trained_digits
    folder = tmp_path_factory.mktemp("chain")
    cache = folder / "cache"
    fp16 = build(fp32, BuildOptions(precision="fp16", calib=CALIBRATION, cache_dir=cache, out=folder / "model.fp16.cpu.onnx")).precision_onnx
    int8 = build(fp32, BuildOptions(precision="int8", calib=CALIBRATION, cache_dir=cache, out=folder / "model.int8.cpu.onnx")).precision_onnx
    return {"checkpoint": checkpoint, "fp32": fp32, "fp16": fp16, "int8": int8, "folder": folder}


def _perturbed(source: Path, destination: Path, which: str) -> Path:
    """A copy of the FP32 ONNX with the fc or the reduction conv's weights perturbed."""
    model = onnx.load(str(source))
    onnx_io.ensure_node_names(model)
    initializers = {t.name: t for t in model.graph.initializer}
    if which == "fc":
        name = head_graph.fc_node(model).input[1]
    else:
        made_by = onnx_io.producers(model)
        reduced = stage_tensors(model)["reduced"]
        name = made_by[made_by[reduced].input[0]].input[1]  # Relu <- Conv(layer_reduce, BN folded)
    weights = numpy_helper.to_array(initializers[name])
    noise = np.random.default_rng(0).standard_normal(weights.shape).astype(weights.dtype) * weights.std() * 0.5
    initializers[name].CopyFrom(numpy_helper.from_array(weights + noise, name))
    onnx.save(model, str(destination))  # keeps the dropcov.* metadata: precision fp32
    return destination


@pytest.mark.slow
def test_verify_passes_on_the_chain_and_writes_reports(chain, tmp_path):
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    result = run_cli("verify", "-c", chain["checkpoint"], chain["fp32"], chain["fp16"], chain["int8"],
                     "--dataset", "digits:test", "--report", report, "--junit", junit)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["samples"] == 500
    assert data["reference"]["accuracy"] >= 0.95
    by_precision = {a["precision"]: a for a in data["artifacts"]}
    assert set(by_precision) == {"fp32", "fp16", "int8"}
    for artifact in data["artifacts"]:
        assert {"path", "backend", "precision", "metrics", "gates", "passed"} <= set(artifact)
        metrics = artifact["metrics"]
        for key in ("max_abs_error", "mean_abs_error", "relative_error", "cosine_mean", "cosine_min", "top1_agreement",
                    "top5_agreement", "nonfinite", "accuracy", "reference_accuracy"):
            assert key in metrics
    assert by_precision["fp32"]["metrics"]["relative_error"] < 1e-4
    assert by_precision["fp16"]["gates"]["cosine_min"]["passed"] is True
    assert "precision (vs FP32 ONNX)" in by_precision["int8"]["chain"]  # drift attributed to the precision step
    xml = junit.read_text()
    assert 'tests="3"' in xml and 'failures="0"' in xml


@pytest.mark.slow
def test_verify_fails_and_locates_a_perturbed_fc_and_reduction(chain, tmp_path):
    bad_fc = _perturbed(chain["fp32"], tmp_path / "bad_fc.onnx", "fc")
    bad_reduce = _perturbed(chain["fp32"], tmp_path / "bad_reduce.onnx", "reduce")
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    result = run_cli("verify", "-c", chain["checkpoint"], bad_fc, bad_reduce, "--data", CALIBRATION, "--locate",
                     "--report", report, "--junit", junit)
    assert_one_line_error(result, 1, "verification failed", "bad_fc.onnx: relative_error")
    assert "(needs <= 0.0001" in result.stderr  # the measured value against its bound
    assert "gates fp32: relative_error <= 0.0001" in result.stdout  # the table says which gates were applied
    data = json.loads(report.read_text())
    assert data["passed"] is False
    fc, reduce = data["artifacts"]
    assert fc["gates"]["relative_error"]["passed"] is False
    assert fc["locate"]["stage"] == "fc" and fc["locate"]["first_diverging_tensor"] == "logits"
    assert reduce["locate"]["stage"] == "covariance" and reduce["locate"]["first_diverging_tensor"] == "reduced"
    assert fc["locate"]["relative_error"]["covariance"] < 1e-4 < fc["locate"]["relative_error"]["logits"]
    xml = junit.read_text()
    assert 'failures="2"' in xml and '<property name="relative_error"' in xml and '<property name="gate.relative_error" value="&lt;= 0.0001: FAIL"/>' in xml


def test_gates_file_overrides_and_bad_input(seeded_chain, tmp_path):
    chain = seeded_chain  # gates and option errors need no trained weights
    strict = tmp_path / "gates.json"
    strict.write_text(json.dumps({"fp32": {"relative_error": {"max": 0.0}}}))
    result = run_cli("verify", "-c", chain["checkpoint"], chain["fp32"], "--random", "8", "--gates", strict)
    assert_one_line_error(result, 1, "relative_error")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fp64": {}}))
    assert_one_line_error(run_cli("verify", "-c", chain["checkpoint"], chain["fp32"], "--random", "8", "--gates", bad), 2, "unknown precision")
    assert_one_line_error(run_cli("verify", "-c", chain["checkpoint"], tmp_path / "none.onnx", "--random", "4"), 2, "none.onnx", "no such file")
    assert_one_line_error(run_cli("verify", "-c", chain["checkpoint"], chain["fp32"]), 2, "--data DIR, --dataset digits[:train|val|test] or --random N")
    ok = run_cli("verify", "-c", chain["checkpoint"], chain["fp32"], "--random", "8", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["artifacts"][0]["metrics"]["accuracy"] is None


@pytest.mark.slow
def test_bench_json_plot_and_speedup(chain, tmp_path):
    report, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_cli("bench", chain["fp32"], chain["int8"], "-c", chain["checkpoint"], "--batch-sizes", "1,8",
                     "--warmup", "0.2", "--max-time", "1", "--report", report, "--plot", plot)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert {"cpu", "python"} <= set(data["machine"])
    cells = {(r["backend"], r["precision"], r["batch_size"]) for r in data["results"]}
    for batch in (1, 8):
        assert ("torch", "fp32", batch) in cells and ("onnxruntime-cpu", "fp32", batch) in cells
    for row in data["results"]:
        assert {"backend", "artifact", "precision", "batch_size", "latency_ms", "throughput", "iterations", "speedup_vs_torch"} <= set(row)
        assert set(row["latency_ms"]) == {"p50", "p90", "p99", "mean", "std"}
        assert row["latency_ms"]["p50"] <= row["latency_ms"]["p90"]
        p99 = row["latency_ms"]["p99"]
        assert (p99 is None) == (row["iterations"] < 200) and (p99 is None or row["latency_ms"]["p90"] <= p99)  # p99 from 200 samples or not at all
        assert row["iterations"] >= 3 and row["throughput"] > 0 and row["speedup_vs_torch"] > 0
        assert row["throughput"] == pytest.approx(row["batch_size"] * 1000 / row["latency_ms"]["p50"])
    assert plot.read_bytes()[:4] == b"\x89PNG"
    torch_rows = [r for r in data["results"] if r["backend"] == "torch"]
    assert all(r["speedup_vs_torch"] == 1.0 for r in torch_rows)


@pytest.mark.parametrize("model", ["seeded_chain", pytest.param("chain", marks=pytest.mark.slow)])
def test_predict_runs_without_torch(model, request, tmp_path):
    """The edge path: a `torch` that cannot be imported must not matter to predict.

    A seeded model checks the path and the output's form; the trained one also its answers."""
    chain = request.getfixturevalue(model)
    blocker = tmp_path / "block"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is not on this edge board')\n")
    images = [str(next((CALIBRATION / str(c)).glob("*.png"))) for c in (3, 7)]
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = (
        "import sys, json; from dropcov_deploy.predict import predict;"
        f"r = predict({str(chain['int8'])!r}, {images!r});"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None, 'torch imported';"
        "print(json.dumps(r))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert len(predictions) == 2 and all(len(p["top"]) == 5 for p in predictions)
    for p in predictions:
        probabilities = [t["probability"] for t in p["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
        assert {t["name"] for t in p["top"]} <= {str(i) for i in range(10)}
    if model == "chain":  # trained: the right digits, confidently
        assert [p["top"][0]["name"] for p in predictions] == ["3", "7"]
        assert predictions[0]["top"][0]["probability"] > 0.5
    cli = run_cli_subprocess("predict", chain["int8"], *images, env={"PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert cli.returncode == 0, cli.stderr
    for p in predictions:  # the CLI, also without torch, prints the library's answer per image
        assert f"{p['image']}: {p['top'][0]['name']} {p['top'][0]['probability']:.3f}" in cli.stdout, cli.stdout
    assert_one_line_error(run_cli("predict", chain["int8"], tmp_path / "none.png"), 2, "none.png")


def test_verify_checks_its_inputs_first_and_reuses_pytorch_logits(seeded_chain, tmp_path):
    """No input source, or a folder that is not there: one line before the checkpoint is read.
    A second verify of the same checkpoint on the same inputs reuses PyTorch's logits (same
    figures), and --no-cache runs PyTorch again."""
    missing = tmp_path / "no-such.pt"
    assert_one_line_error(run_cli("verify", "-c", missing, seeded_chain["fp32"]), 2, "give exactly one of --data DIR")
    assert_one_line_error(run_cli("verify", "-c", missing, seeded_chain["fp32"], "--data", tmp_path / "nowhere"), 2, "nowhere: no such folder")
    env = {"DROPCOV_CACHE": str(tmp_path / "cache")}
    args = ("verify", "-c", seeded_chain["checkpoint"], seeded_chain["fp32"], "--random", "8", "--json")
    first, second = run_cli(*args, env=env), run_cli(*args, env=env)
    assert "reused from the cache" not in first.stderr and "reused from the cache" in second.stderr
    assert json.loads(first.stdout)["artifacts"] == json.loads(second.stdout)["artifacts"]
    assert "reused from the cache" not in run_cli(*args, "--no-cache", env=env).stderr
    assert list((tmp_path / "cache" / "reference-logits").glob("*.npy"))
