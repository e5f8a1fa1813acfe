"""bench's timing rules (issue 12, items 5 and 6): which figures exist, which compare, when p99 is
reported, when the timed loop stops. The rules are plain functions fed synthetic samples here;
one real run of a tiny ONNX model on the CPU checks that the report says what they decided.

No test asserts a speed: timings depend on the machine, and performance claims live in the
README's measured tables, not in tests. Tests that need CUDA or TensorRT skip with the reason.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import run_cli

from dropcov_deploy import bench as bench_module
from dropcov_deploy.bench import (
    CPU_NO_DEVICE_TIME,
    MIN_SAMPLES,
    P99_MIN_SAMPLES,
    STABLE_WINDOW,
    BenchResult,
    bench,
    engine_cuda_graph,
    engine_facts,
    figure_from_samples,
    measure,
    median_is_stable,
    onnx_cuda_problem,
    pair_speedups,
    speedup,
    stop_reason,
    summarize,
)
from dropcov_deploy.errors import BackendUnavailable


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------
# p99 only from enough samples
# ---------------------------------------------------------------------------------------
def test_p99_is_reported_only_from_200_samples():
    rng = np.random.default_rng(0)
    short = list(rng.uniform(1.0, 2.0, P99_MIN_SAMPLES - 1))
    enough = [*short, 1.5]
    assert P99_MIN_SAMPLES == 200
    few = summarize(short)
    assert few["p99"] is None
    assert few["p50"] == pytest.approx(np.percentile(short, 50)) and few["p90"] == pytest.approx(np.percentile(short, 90))
    assert set(few) == {"p50", "p90", "p99", "mean", "std"}  # the keys stay: null, not absent
    full = summarize(enough)
    assert full["p99"] == pytest.approx(np.percentile(enough, 99))
    assert full["p50"] <= full["p90"] <= full["p99"]


def test_a_short_figure_warns_how_many_samples_it_took():
    figure = figure_from_samples([1.0] * 57, stable=False, max_time_s=0.5, label="device time")
    assert figure.latency_ms["p99"] is None and figure.iterations == 57
    [warning] = figure.warnings
    assert warning.startswith("device time: only 57 samples") and "p99 needs at least 200" in warning and "--max-time 0.5 s" in warning


def test_figure_warnings_for_spread_and_an_unstable_median():
    spread = [1.0, 3.0] * 150  # cv 0.5
    figure = figure_from_samples(spread, stable=False, max_time_s=2.0)
    assert figure.latency_ms["p99"] == pytest.approx(3.0)
    assert figure.cv == pytest.approx(0.5)
    assert any(w.startswith("coefficient of variation 0.50") for w in figure.warnings)
    assert any(w == "median not stable within --max-time 2 s" for w in figure.warnings)
    steady = figure_from_samples([2.0] * 200, stable=True, max_time_s=2.0)
    assert steady.warnings == [] and steady.cv == 0.0 and steady.p50 == 2.0


# ---------------------------------------------------------------------------------------
# The stop rule
# ---------------------------------------------------------------------------------------
def test_median_stability_compares_with_the_median_before_the_last_window():
    assert not median_is_stable([1.0] * (2 * STABLE_WINDOW - 1))  # too few to have a "before"
    assert median_is_stable([1.0] * (2 * STABLE_WINDOW))
    drifting = [1.0] * 50 + [2.0] * 60  # the last window moved the median from 1.5 to 2.0
    assert not median_is_stable(drifting)
    assert median_is_stable([100.0] * 190 + [100.5] * 10)  # +0.5% is within 1%


def test_stop_rule_needs_200_samples_to_stop_early_and_3_past_the_deadline():
    steady = [1.0] * P99_MIN_SAMPLES
    assert stop_reason(steady[:190], elapsed_s=0.1, max_time_s=10) is None  # stable, but p99 needs 200
    assert stop_reason(steady, elapsed_s=0.1, max_time_s=10) == "stable"
    assert stop_reason([*steady, 1.0], elapsed_s=0.1, max_time_s=10) is None  # checked every STABLE_WINDOW samples
    growing = list(np.linspace(1.0, 10.0, P99_MIN_SAMPLES))
    assert stop_reason(growing, elapsed_s=0.1, max_time_s=10) is None  # the median still moves
    assert stop_reason(growing, elapsed_s=10.0, max_time_s=10) == "time"
    assert stop_reason([5.0] * (MIN_SAMPLES - 1), elapsed_s=99.0, max_time_s=1) is None  # never fewer than 3
    assert stop_reason([5.0] * MIN_SAMPLES, elapsed_s=99.0, max_time_s=1) == "time"


class FakeClock:
    """A clock that advances `step` seconds per reading: measure() runs without real time."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_measure_stops_at_200_stable_samples():
    calls = []

    def run() -> float:
        calls.append(1)
        return 2.0  # device ms, as a CUDA-event timer returns them

    samples, stable = measure(run, warmup_s=0.01, max_time_s=1e6, clock=FakeClock(0.001))
    assert stable is True and len(samples) == P99_MIN_SAMPLES and set(samples) == {2.0}
    assert len(calls) > len(samples)  # the warm-up ran and was not recorded


def test_measure_keeps_going_while_the_median_moves_and_stops_at_the_deadline():
    values = iter(np.linspace(1.0, 1000.0, 10_000))
    samples, stable = measure(lambda: float(next(values)), warmup_s=0.0, max_time_s=1.0, clock=FakeClock(0.001))
    assert stable is False and len(samples) > P99_MIN_SAMPLES  # past 200, still drifting, until the deadline
    assert summarize(samples)["p99"] is not None


def test_measure_times_a_call_that_returns_none_with_the_clock():
    samples, stable = measure(lambda: None, warmup_s=0.0, max_time_s=0.05, clock=FakeClock(0.004))
    # each sample: two clock readings 4 ms apart; the deadline (0.05 s) comes well before 200 samples
    assert stable is False and MIN_SAMPLES <= len(samples) < P99_MIN_SAMPLES
    assert samples == pytest.approx([4.0] * len(samples))


# ---------------------------------------------------------------------------------------
# Speed-ups: like with like
# ---------------------------------------------------------------------------------------
def _row(backend: str, batch: int, p50: float, device_p50: float | None) -> BenchResult:
    device = None if device_p50 is None else {"p50": device_p50, "p90": device_p50, "p99": None, "mean": device_p50, "std": 0.0}
    return BenchResult(
        backend,
        f"{backend}.x",
        "fp32",
        batch,
        {"p50": p50, "p90": p50, "p99": None, "mean": p50, "std": 0.0},
        batch * 1000 / p50,
        10,
        0.0,
        True,
        device_ms=device,
    )


def test_speedups_pair_end_to_end_with_end_to_end_and_device_with_device():
    rows = [_row("torch", 1, 10.0, 4.0), _row("onnxruntime-cuda", 1, 5.0, None), _row("tensorrt", 1, 8.0, 1.0), _row("tensorrt", 8, 20.0, 2.0)]
    pair_speedups(rows)
    torch_row, ort, trt, trt8 = rows
    assert torch_row.speedup_vs_torch == 1.0 and torch_row.device_speedup_vs_torch == 1.0
    assert ort.speedup_vs_torch == pytest.approx(2.0) and ort.device_speedup_vs_torch is None
    assert trt.speedup_vs_torch == pytest.approx(1.25)  # 10 / 8, not 10 / 1 (the GPU-only time)
    assert trt.device_speedup_vs_torch == pytest.approx(4.0)
    assert trt8.speedup_vs_torch is None and trt8.device_speedup_vs_torch is None  # no torch at batch 8


def test_a_device_figure_is_never_divided_into_torchs_host_latency():
    rows = [_row("torch", 1, 10.0, None), _row("tensorrt", 1, 8.0, 1.0)]  # torch on the CPU: no device figure
    pair_speedups(rows)
    assert rows[1].speedup_vs_torch == pytest.approx(1.25) and rows[1].device_speedup_vs_torch is None
    assert speedup(None, 1.0) is None and speedup(10.0, None) is None and speedup(10.0, 0.0) is None


# ---------------------------------------------------------------------------------------
# --cuda-graph, engine facts, ONNX Runtime on the GPU
# ---------------------------------------------------------------------------------------
def test_cuda_graph_reaches_engines_only():
    assert engine_cuda_graph(Path("m.plan"), True) is True
    assert engine_cuda_graph(Path("m.engine"), True) is True
    assert engine_cuda_graph(Path("m.onnx"), True) is False
    assert engine_cuda_graph(Path("m.plan"), False) is False


def test_engine_facts_come_from_the_runner_when_it_has_them(tmp_path):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x" * 1234)
    new = SimpleNamespace(plan_bytes=999, deserialize_seconds=0.25, device_memory_bytes=4096)
    assert engine_facts(new, plan, True) == {"plan_bytes": 999, "deserialize_seconds": 0.25, "device_memory_bytes": 4096, "cuda_graph": True}
    old = SimpleNamespace()  # a runner from before these attributes: the file's size, and None (not 0) for the rest
    assert engine_facts(old, plan, False) == {"plan_bytes": 1234, "deserialize_seconds": None, "device_memory_bytes": None, "cuda_graph": False}


def test_onnx_cuda_problem_names_a_cpu_only_build_and_a_silent_fallback():
    assert "no CUDAExecutionProvider" in onnx_cuda_problem(["CPUExecutionProvider"], None)
    fell_back = onnx_cuda_problem(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    assert fell_back and "fell back to CPUExecutionProvider" in fell_back
    assert onnx_cuda_problem(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    assert onnx_cuda_problem(["CUDAExecutionProvider"], None) is None


# ---------------------------------------------------------------------------------------
# The real bench on the CPU
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_report(seeded_digits):
    checkpoint, onnx_path = seeded_digits
    return bench([onnx_path], checkpoint=checkpoint, batch_sizes=[1, 2], warmup_s=0.0, max_time_s=0.3, cuda_graph=True), onnx_path


def test_cpu_bench_reports_end_to_end_only_and_says_why(cpu_report):
    report, onnx_path = cpu_report
    json.dumps(report, allow_nan=False)  # JSON as written: no NaN, p99 null where missing
    assert {(r["backend"], r["batch_size"]) for r in report["results"]} == {("torch", 1), ("torch", 2), ("onnxruntime-cpu", 1), ("onnxruntime-cpu", 2)}
    for row in report["results"]:
        assert set(row["latency_ms"]) == {"p50", "p90", "p99", "mean", "std"}
        assert row["device_ms"] is None and row["device_throughput"] is None and row["device_speedup_vs_torch"] is None
        assert row["device_unavailable"] == CPU_NO_DEVICE_TIME
        assert row["timing"].startswith("end-to-end")
        assert row["iterations"] >= MIN_SAMPLES and row["speedup_vs_torch"] > 0
        short = row["iterations"] < P99_MIN_SAMPLES
        assert (row["latency_ms"]["p99"] is None) == short
        assert any(f"only {row['iterations']} samples" in w for w in row["warnings"]) == short
        if row["stable"]:
            assert row["iterations"] >= P99_MIN_SAMPLES
    assert all(r["speedup_vs_torch"] == 1.0 for r in report["results"] if r["backend"] == "torch")
    assert report["artifacts"] == [
        {"artifact": str(onnx_path), "backend": "onnxruntime-cpu", "kind": "onnx", "precision": "fp32", "bytes": onnx_path.stat().st_size, "engine": None}
    ]
    assert report["skipped"] == []
    settings = report["settings"]
    assert settings["cuda_graph"] is True and settings["p99_min_samples"] == P99_MIN_SAMPLES and "never mixed" in settings["speedups"]
    # --cuda-graph with no engine: ONNX Runtime was not handed it (it would refuse), and the report says it did nothing
    assert report["warnings"] == ["--cuda-graph applies to TensorRT engines only and none was given: it changed nothing"]


def test_cli_table_and_json_on_the_cpu(seeded_digits, tmp_path):
    checkpoint, onnx_path = seeded_digits
    report = tmp_path / "bench.json"
    result = run_cli("bench", onnx_path, "-c", checkpoint, "--batch-sizes", "1", "--warmup", "0", "--max-time", "0.2", "--report", report)
    assert result.returncode == 0, result.stderr
    assert "p99 ms" in result.stdout and "GPU p50 ms" not in result.stdout  # no device columns on the CPU
    data = json.loads(report.read_text())
    assert {r["backend"] for r in data["results"]} == {"torch", "onnxruntime-cpu"}


def test_table_shows_gpu_columns_only_when_a_device_figure_exists(capsys):
    from dropcov_deploy import render

    rows = [_row("torch", 1, 10.0, 4.0), _row("onnxruntime-cuda", 1, 5.0, None), _row("tensorrt", 1, 8.0, 1.6)]
    pair_speedups(rows)
    rows[1].device_unavailable = "ONNX Runtime IOBinding on the GPU failed (test)"
    report = {
        "machine": {"device": "cuda", "gpu": "Test GPU"},
        "results": [vars(r) for r in rows],
        "artifacts": [{"artifact": "m.plan", "engine": {"plan_bytes": 3 * 2**20, "deserialize_seconds": 0.5, "device_memory_bytes": None, "cuda_graph": True}}],
        "warnings": ["m.onnx not timed: because"],
    }
    render.bench_table(report)
    captured = capsys.readouterr()
    assert "GPU p50 ms" in captured.out and "GPU vs torch" in captured.out and "2.50x" in captured.out
    assert "engine m.plan: plan 3.0 MiB, deserialized in 0.50 s, device memory ?, CUDA graph on" in captured.out
    assert "no GPU time for onnxruntime-cuda: ONNX Runtime IOBinding on the GPU failed (test)" in captured.out
    assert "m.onnx not timed: because" in captured.err
    report["machine"]["device"], report["results"] = "cpu", [vars(_row("torch", 1, 10.0, None))]
    render.bench_table(report)
    assert "GPU p50 ms" not in capsys.readouterr().out


@pytest.mark.skipif(_cuda_available(), reason="checks the answer on a machine without a CUDA GPU")
def test_cuda_without_a_gpu_times_nothing_under_a_false_label(seeded_digits):
    checkpoint, onnx_path = seeded_digits
    with pytest.raises(BackendUnavailable) as caught:  # an ONNX model alone: skipped, so nothing to time
        bench([onnx_path], device="cuda", batch_sizes=[1], warmup_s=0.0, max_time_s=0.1)
    assert str(caught.value).startswith("nothing to time: model.onnx: ") and "CUDA" in str(caught.value)
    with pytest.raises(BackendUnavailable, match="torch .* sees no CUDA GPU"):
        bench([onnx_path], checkpoint=checkpoint, device="cuda", batch_sizes=[1], warmup_s=0.0, max_time_s=0.1)


# ---------------------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not _cuda_available(), reason="needs torch with a CUDA GPU")
def test_cuda_bench_has_both_figures_for_torch_and_says_what_onnx_runtime_could_do(seeded_digits):
    checkpoint, onnx_path = seeded_digits
    report = bench([onnx_path], checkpoint=checkpoint, device="cuda", batch_sizes=[1, 4], warmup_s=0.1, max_time_s=0.5)
    json.dumps(report, allow_nan=False)
    assert report["machine"]["gpu"]
    torch_rows = [r for r in report["results"] if r["backend"] == "torch"]
    assert len(torch_rows) == 2
    for row in torch_rows:
        assert row["device_ms"]["p50"] > 0 and row["device_timing"] == bench_module.TORCH_DEVICE_TIMING
        assert row["device_speedup_vs_torch"] == 1.0 and row["speedup_vs_torch"] == 1.0 and row["device_unavailable"] is None
    ort_rows = [r for r in report["results"] if r["backend"] == "onnxruntime-cuda"]
    if report["skipped"]:  # this onnxruntime cannot use the GPU: said, and not timed under a 'cuda' label
        assert not ort_rows and report["skipped"][0]["artifact"] == str(onnx_path) and report["skipped"][0]["reason"]
    else:
        for row in ort_rows:  # a device figure with its speed-up, or the reason there is none
            assert (row["device_ms"] is None) == (row["device_unavailable"] is not None)
            assert (row["device_speedup_vs_torch"] is None) == (row["device_ms"] is None)


@pytest.mark.tensorrt
def test_engine_bench_reports_plan_facts_and_passes_cuda_graph(seeded_digits, tmp_path):
    from dropcov_deploy.backends.tensorrt import TensorRTRunner, tensorrt_status

    available, status = tensorrt_status()
    if not available:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {status}")
    from dropcov_deploy.build import BuildOptions, build

    checkpoint, onnx_path = seeded_digits
    built = build(onnx_path, BuildOptions(precision="fp32", backend="tensorrt", batch="1:2:4", cache_dir=tmp_path / "cache", out=tmp_path / "m.fp32.trt.onnx"))
    plan = built.engine
    assert plan is not None and plan.exists()
    graphs = [False, True] if "cuda_graph" in inspect.signature(TensorRTRunner.__init__).parameters else [False]
    for graph in graphs:
        report = bench([plan], checkpoint=checkpoint, device="cuda", batch_sizes=[1, 4], warmup_s=0.1, max_time_s=0.5, cuda_graph=graph)
        [described] = report["artifacts"]
        assert described["kind"] == "tensorrt-engine" and described["engine"]["plan_bytes"] == plan.stat().st_size
        assert described["engine"]["cuda_graph"] is graph
        for row in (r for r in report["results"] if r["backend"] == "tensorrt"):
            assert row["device_ms"]["p50"] > 0 and row["latency_ms"]["p50"] > 0
            assert row["device_speedup_vs_torch"] is not None and row["speedup_vs_torch"] is not None


def test_stable_in_the_json_agrees_with_the_warnings():
    """A median the stop rule called settled, beside a spread the warnings call unstable, is not
    reported as stable: the two never disagree."""
    noisy = figure_from_samples([1.0, 3.0] * 150, stable=True, max_time_s=2.0)
    assert noisy.stable is False and any("timings unstable" in w for w in noisy.warnings)
    short = figure_from_samples([1.0] * 57, stable=True, max_time_s=0.5)
    assert short.stable is False and short.warnings
    steady = figure_from_samples([2.0] * 200, stable=True, max_time_s=2.0)
    assert steady.stable is True and not steady.warnings
