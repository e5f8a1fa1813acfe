"""OpenVINO beside ONNX Runtime: the runtime choice, the Q/DQ forms, the roofline, the compile baseline.

Real runtimes on real graphs: the seeded compact digits model's INT8 build (ONNX Runtime's
quantizer, 16 calibration images) is run in ONNX Runtime and in OpenVINO.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dropcov_deploy.backends import TARGETS, choose_runtime, open_runner, runtime_names
from dropcov_deploy.errors import InputError
from dropcov_deploy.manifest import ONNX, TENSORRT_ENGINE
from dropcov_deploy.precision.cpu_choice import eligible

try:
    import openvino  # noqa: F401

    HAS_OPENVINO = True
except ImportError:
    HAS_OPENVINO = False
# the tests that run OpenVINO; the decision functions are tested without it
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed (pip install 'dropcov-deploy[openvino]')")


def _available(target):
    return (True, "here")


def _missing(target):
    return (False, "openvino cannot be imported")


def test_runtime_choice_obeys_runtime_then_the_build_then_the_default():
    path = Path("m.onnx")
    assert runtime_names() == ("onnxruntime", "openvino")
    assert choose_runtime(path, ONNX, "openvino", None, _missing)[0].name == "openvino"  # asked for: obeyed (the runner says if missing)
    assert choose_runtime(path, ONNX, None, "openvino", _available) == (TARGETS["openvino"], None)
    target, warning = choose_runtime(path, ONNX, None, "openvino", _missing)
    assert target.name == "onnxruntime" and "not available here" in warning and "same graph" in warning
    assert choose_runtime(path, ONNX, None, None, _available) == (TARGETS["onnxruntime"], None)
    assert choose_runtime(path, TENSORRT_ENGINE, None, None, _available)[0].name == "tensorrt"
    with pytest.raises(InputError, match="cannot run a tensorrt"):
        choose_runtime(Path("m.plan"), TENSORRT_ENGINE, "openvino", None, _available)
    with pytest.raises(InputError, match="use one of onnxruntime, openvino"):
        choose_runtime(path, ONNX, "tvm", None, _available)


@needs_openvino
def test_openvino_runs_our_files_like_onnx_runtime(seeded_chain, calibration_dir):
    """The same files in both runtimes: FP32 agrees to float rounding (OpenVINO is pinned to f32,
    not its bf16 default on AMX CPUs); the INT8 graph runs (its accuracy in OpenVINO is verify's
    job on a trained model: test_verify_passes_in_openvino)."""
    from dropcov_deploy.data.images import list_images, load_batch
    from dropcov_deploy.data.preprocessing import Preprocessing
    from dropcov_deploy.manifest import Manifest

    prep = Preprocessing.from_dict(Manifest.read(seeded_chain["fp32"]).preprocessing)
    batch = load_batch(list_images(calibration_dir).items[:12], prep)
    outputs = {}
    for key in ("fp32", "int8"):
        for runtime in ("onnxruntime", "openvino"):
            with open_runner(seeded_chain[key], runtime=runtime) as runner:
                assert runner.backend == f"{runtime}-cpu"
                assert runner.input_shapes()[runner.input_names[0]][1:] == [3, 32, 32]
                outputs[key, runtime] = runner(batch)
    ours, theirs = outputs["fp32", "onnxruntime"], outputs["fp32", "openvino"]
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(ours).max()
    assert outputs["int8", "openvino"].shape == (12, 10) and np.isfinite(outputs["int8", "openvino"]).all()


@pytest.mark.slow
@needs_openvino
def test_verify_passes_in_openvino(trained_digits, calibration_dir, tmp_path):
    """The acceptance item: an INT8 build of the trained digits model, run in OpenVINO, passes
    verify with the same gates as in ONNX Runtime, on the held-out test split."""
    from dropcov_deploy.build import BuildOptions, build
    from dropcov_deploy.verify import verify

    checkpoint, fp32 = trained_digits
    built = build(fp32, BuildOptions(precision="int8", calib=calibration_dir, calib_size=64, cache_dir=tmp_path, out=tmp_path / "m.int8.cpu.onnx"))
    for runtime in ("onnxruntime", "openvino"):
        report = verify(checkpoint, [fp32, built.precision_onnx], dataset="digits:test", runtime=runtime, use_cache=False).to_dict()
        assert report["passed"], (runtime, [a["gates"] for a in report["artifacts"]])
        assert {a["backend"] for a in report["artifacts"]} == {f"{runtime}-cpu"}


@needs_openvino
def test_openvino_refuses_cuda_and_a_corrupt_file(tmp_path, seeded_chain):
    from dropcov_deploy.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="runs on the CPU"):
        open_runner(seeded_chain["fp32"], device="cuda", runtime="openvino")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match="broken.onnx"):
        open_runner(broken, runtime="openvino")


def test_forms_each_calibrated_and_close_to_fp32(seeded_chain, calibration_dir):
    """u8s8 and s8s8 are two calibrations (ONNX Runtime folds Relus into uint8 Qs, not into int8
    ones); the stem is float unless the form says -stem; every form stays close to FP32."""
    import onnxruntime as ort

    from dropcov_deploy import onnx_io
    from dropcov_deploy.manifest import Manifest
    from dropcov_deploy.precision.calibration import load_calibration
    from dropcov_deploy.precision.cpu_choice import form_graph
    from dropcov_deploy.precision.quantizers import quantize_cpu, stem_conv

    fp32 = seeded_chain["fp32"]
    calibration = load_calibration(calibration_dir, Manifest.read(fp32), 16)
    calibrated = {act: quantize_cpu(fp32, calibration, "max", quantize_stem=True, activations=act)[0] for act in ("u8s8", "s8s8")}
    source = onnx_io.load(fp32)
    onnx_io.ensure_node_names(source)
    stem = stem_conv(source)
    zero_points = [t for t in calibrated["s8s8"].graph.initializer if t.name.endswith("zero_point")]
    assert zero_points and all(t.data_type != 2 for t in zero_points)  # 2: UINT8
    relus = {act: sum(n.op_type == "Relu" for n in graph.graph.node) for act, graph in calibrated.items()}
    assert relus["s8s8"] > relus["u8s8"]
    outputs = {}
    for form in ("u8s8", "s8s8", "u8s8-stem", "s8s8-stem"):
        graph = form_graph(calibrated, source, form, stem)
        reads_image = [n for n in graph.graph.node if n.name == stem[0]][0].input[0]
        assert (reads_image == source.graph.input[0].name) != form.endswith("-stem")  # float stem: the image itself, no Q/DQ
        session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs[form] = session.run(None, {session.get_inputs()[0].name: calibration.data})[0]
    session = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = session.run(None, {session.get_inputs()[0].name: calibration.data})[0]
    for form, out in outputs.items():
        cosine = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() > 0.98, form


def test_covariance_block_reads_the_relu_output_not_the_conv_output(seeded_chain, calibration_dir, tmp_path):
    """ONNX Runtime's quantizer folds the reduce conv's Relu into a uint8 Q; bypassing that Q to
    keep the covariance block float must put the Relu back (it read pre-ReLU values before).
    Built as u8s8 in ONNX Runtime, the form where the Relu is folded."""
    from dropcov_deploy import head_graph, onnx_io
    from dropcov_deploy.build import BuildOptions, build

    options = BuildOptions(
        precision="int8", calib=calibration_dir, calib_size=16, cache_dir=tmp_path, out=tmp_path / "u8.onnx", runtime="onnxruntime", qdq_form="u8s8", fc="float"
    )
    graph = onnx_io.load(build(seeded_chain["fp32"], options).precision_onnx)
    block = set(head_graph.covariance_block(graph))
    made_by = onnx_io.producers(graph)
    feeding = [made_by[t] for n in graph.graph.node if n.name in block for t in n.input if t in made_by and made_by[t].name not in block]
    assert feeding and all(node.op_type != "Conv" for node in feeding), [n.op_type for n in feeding]
    assert any(node.op_type == "Relu" for node in feeding)


@needs_openvino
def test_build_records_the_runtime_and_every_candidate(seeded_chain, calibration_dir, tmp_path):
    from dropcov_deploy.build import BuildOptions, build

    fp32 = seeded_chain["fp32"]
    manifest = json.loads(Path(str(seeded_chain["int8"]) + ".json").read_text())
    choice = manifest["precision_details"]["cpu_choice"]
    assert manifest["runtime"]["chosen"] in ("onnxruntime", "openvino")
    assert {c["runtime"] for c in choice["candidates"]} == {"onnxruntime", "openvino"}
    assert {c["form"] for c in choice["candidates"]} == {"u8s8", "s8s8", "u8s8-stem", "s8s8-stem"}
    assert all(c["cpu_latency_ms_batch1"] > 0 and "gates_passed" in c for c in choice["candidates"])
    chosen = choice["chosen"]
    pool = eligible(choice["candidates"], manifest["calibration"]["images"])
    fastest = min(pool, key=lambda c: c["cpu_latency_ms_batch1"])
    assert (fastest["runtime"], fastest["form"], fastest["fc"]) == (chosen["runtime"], chosen["form"], chosen["fc"])
    assert manifest["runtime"]["chosen"] == chosen["runtime"]
    fixed = build(
        fp32,
        BuildOptions(
            precision="int8",
            calib=calibration_dir,
            calib_size=16,
            cache_dir=tmp_path / "cache",
            out=tmp_path / "ov.onnx",
            runtime="openvino",
            qdq_form="s8s8",
            fc="float",
        ),
    )
    record = fixed.manifest.to_dict()
    assert record["runtime"]["chosen"] == "openvino" and record["runtime"]["why"].startswith("--runtime openvino; openvino s8s8 fc float")
    assert record["precision_details"]["qdq_form"] == "s8s8" and record["precision_details"]["fc"]["chosen"] == "float"
    assert fixed.ort_optimized is None and not (tmp_path / "ov.ort.onnx").exists()
    with open_runner(fixed.precision_onnx) as runner:  # the recorded runtime opens it
        assert runner.backend == "openvino-cpu"
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(fixed.precision_onnx, alone / "ov.onnx")  # no sidecar: the ONNX's own metadata names the runtime
    with open_runner(alone / "ov.onnx") as runner:
        assert runner.backend == "openvino-cpu"
    with open_runner(alone / "ov.onnx", device="cpu", runtime="onnxruntime") as runner:
        assert runner.backend == "onnxruntime-cpu"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"runtime": "tvm"}, "--runtime 'tvm'"),
        ({"qdq_form": "u4"}, "--qdq-form 'u4'"),
        ({"backend": "tensorrt", "runtime": "openvino"}, "choose for the CPU target"),
        ({"backend": "openvino", "runtime": "onnxruntime"}, "contradict"),
        ({"precision": "fp16", "qdq_form": "s8s8"}, "applies to int8"),
    ],
)
def test_build_refuses_runtime_options_that_do_not_fit(seeded_chain, calibration_dir, tmp_path, options, message):
    from dropcov_deploy.build import BuildOptions, build

    settings = {"precision": "int8", "calib": calibration_dir, "calib_size": 8, "cache_dir": tmp_path, "out": tmp_path / "x.onnx", **options}
    with pytest.raises(InputError, match=message):
        build(seeded_chain["fp32"], BuildOptions(**settings))
    assert not (tmp_path / "x.onnx").exists()


def test_mac_count_matches_the_architecture(seeded_chain):
    """MACs from the real shapes: the FP32 and INT8 graphs of one model count the same total, the
    INT8 graph's Q/DQ layers as INT8; a 1x1 conv's count checked by hand."""
    from dropcov_deploy.roofline import count_macs, node_macs

    assert node_macs("Conv", [(1, 64, 8, 8), (128, 64, 1, 1)], (1, 128, 8, 8)) == 128 * 8 * 8 * 64
    assert node_macs("MatMul", [(1, 10, 20), (20, 30)], (1, 10, 30)) == 10 * 30 * 20
    fp32, int8 = count_macs(seeded_chain["fp32"]), count_macs(seeded_chain["int8"])
    assert fp32.int8 == 0 and fp32.float > 1_000_000
    assert int8.total == fp32.total and int8.int8 > 0.5 * int8.total


@needs_openvino
def test_gemm_rate_is_measured_once_and_cached(tmp_path):
    from dropcov_deploy import roofline

    calls = []

    def measure(threads, runtimes):
        calls.append(runtimes)
        return roofline.measure_cpu_rates(threads, runtimes, sizes=(128, 256))

    first = roofline.cpu_rates(None, tmp_path, measure)
    again = roofline.cpu_rates(None, tmp_path, measure)
    assert len(calls) == 1 and first == again
    assert first.fp32 > 0 and first.int8 > 0 and set(first.measured_with) == {"onnxruntime", "openvino"}
    macs = roofline.MacCount(int8=0, float=int(first.fp32 * 1e9 / 2 / 1000))  # one millisecond of MACs at the FP32 rate
    assert roofline.fraction(macs, 1, 2.0, first) == pytest.approx(0.5)
    assert roofline.fraction(macs, 1, None, first) is None


@needs_openvino
def test_bench_times_each_runtime_and_reports_the_roofline(seeded_chain, tmp_path):
    from dropcov_deploy.bench import bench

    report = bench(
        [seeded_chain["fp32"], seeded_chain["int8"]],
        batch_sizes=[1],
        warmup_s=0.05,
        max_time_s=0.2,
        runtimes=["onnxruntime", "openvino"],
        cache_dir=tmp_path,
    )
    backends = {(Path(r["artifact"]).name, r["backend"]) for r in report["results"]}
    assert backends == {(p.name, b) for p in (seeded_chain["fp32"], seeded_chain["int8"]) for b in ("onnxruntime-cpu", "openvino-cpu")}
    for row in report["results"]:
        assert row["macs"] > 0 and row["achieved_gops"] > 0 and 0 < row["fraction_of_gemm_rate"] < 1
    assert report["roofline"]["gemm_rates_gops"]["fp32"] > 0


@pytest.mark.parametrize(
    "options, message", [({"baseline": "jit"}, "--baseline 'jit'"), ({"baseline": "compile"}, "give --checkpoint"), ({"runtimes": ["tvm"]}, "--runtime 'tvm'")]
)
def test_bench_refuses_bad_baseline_and_runtime(seeded_chain, options, message):
    from dropcov_deploy.bench import bench

    with pytest.raises(InputError, match=message):
        bench([seeded_chain["fp32"]], batch_sizes=[1], **options)


@pytest.mark.slow
def test_bench_compile_baseline_is_timed_and_paired(seeded_chain, tmp_path):
    """torch.compile (inductor) of the seeded model, compiled before timing; every row gets its ratio to it."""
    from dropcov_deploy.bench import bench

    report = bench(
        [seeded_chain["fp32"]], checkpoint=seeded_chain["checkpoint"], batch_sizes=[1], warmup_s=0.05, max_time_s=0.3, baseline="both", cache_dir=tmp_path
    )
    backends = [r["backend"] for r in report["results"]]
    assert backends[:2] == ["torch", "torch-compile"], report["warnings"]
    compiled = report["results"][1]
    assert compiled["speedup_vs_compile"] == pytest.approx(1.0) and report["results"][2]["speedup_vs_compile"] > 0


def test_choice_takes_the_fastest_candidate_within_the_gates_and_one_image_of_the_best():
    from dropcov_deploy.precision.cpu_choice import agreement_slack, choose

    def row(runtime, form, agreement, ms, passed=True):
        return {
            "runtime": runtime,
            "form": form,
            "fc": "int8",
            "top1_agreement": agreement,
            "nonfinite": 0,
            "cpu_latency_ms_batch1": ms,
            "gates_passed": passed,
        }

    rows = [row("onnxruntime", "u8s8", 1.0, 16.0), row("openvino", "s8s8", 63 / 64, 6.4), row("openvino", "u8s8", 0.90, 6.0, passed=False)]
    assert agreement_slack(64) == 1 / 64 and agreement_slack(1000) == 0.005
    chosen, why = choose(rows, samples=64)
    assert (chosen["runtime"], chosen["form"]) == ("openvino", "s8s8") and "meets the int8 gates" in why
    assert choose(rows, samples=1000)[0]["runtime"] == "onnxruntime"  # 1000 images: 0.984 is a real difference
    failing = [row("openvino", "u8s8", 0.90, 6.0, passed=False), row("onnxruntime", "u8s8", 0.91, 9.0, passed=False)]
    chosen, why = choose(failing, samples=64)
    assert chosen["runtime"] == "openvino" and "no candidate met the int8 gates" in why


def test_openvino_load_errors_become_one_line():
    from dropcov_deploy.backends.openvino import load_problem

    message = (
        "Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'false' failed at src/frontends/x.cpp:151:\n"
        "FrontEnd API failed with OpConversionFailure:\nModel wasn't fully converted. Failed operations detailed log:\n"
        "-- QLinearConv-18 with a message:\nWhile validating ...\n-- com.microsoft.FusedConv with a message:\nThe input ...\n"
    )
    assert load_problem(message) == (
        "its ONNX frontend cannot convert QLinearConv-18, com.microsoft.FusedConv; an ONNX Runtime-optimized graph (.ort.onnx) is for ONNX Runtime only"
    )
    assert load_problem("Exception from a.cpp:1:\nCheck 'x' failed\nModel file is empty\n") == "Model file is empty"
    assert load_problem("") == "no message"


@needs_openvino
def test_bench_skips_what_one_runtime_cannot_load(seeded_chain, tmp_path):
    """An ORT-optimized graph in OpenVINO: skipped with the reason, timed in ONNX Runtime; a file no
    runtime can load still fails the run."""
    from dropcov_deploy.backends.onnxruntime import ort_optimized_path_for
    from dropcov_deploy.bench import bench

    optimized = ort_optimized_path_for(seeded_chain["int8"])
    if not optimized.exists():  # the build chose OpenVINO for this graph: write ONNX Runtime's optimized copy here
        from dropcov_deploy.backends.onnxruntime import write_ort_optimized

        optimized = tmp_path / write_ort_optimized(seeded_chain["int8"], tmp_path)["artifact"]  # keeps the dropcov.* metadata
    report = bench([seeded_chain["fp32"], optimized], batch_sizes=[1], warmup_s=0.01, max_time_s=0.05, runtimes=["onnxruntime", "openvino"], cache_dir=tmp_path)
    timed = {(Path(r["artifact"]).name, r["backend"]) for r in report["results"]}
    assert (optimized.name, "onnxruntime-cpu") in timed and (optimized.name, "openvino-cpu") not in timed
    assert any(s.get("runtime") == "openvino" and "ONNX Runtime-optimized" in s["reason"] for s in report["skipped"])


def test_choice_never_lets_a_failing_or_nonfinite_candidate_set_the_bar():
    from dropcov_deploy.precision.cpu_choice import choose

    def row(runtime, agreement, ms, passed=True, nonfinite=0, failed=None):
        found = {"runtime": runtime, "form": "u8s8", "fc": "int8", "top1_agreement": agreement, "nonfinite": nonfinite, "cpu_latency_ms_batch1": ms, "gates_passed": passed}
        return {**found, "failed": failed} if failed else found

    passing_slow_best = [row("openvino", 0.99, 10.0, passed=False), row("onnxruntime", 0.975, 6.0)]
    chosen, why = choose(passing_slow_best, samples=1000)
    assert chosen["runtime"] == "onnxruntime" and "meets the int8 gates" in why  # the gate-failing 0.99 does not raise the bar
    with_nan = [row("openvino", 0.5, 1.0, passed=False, nonfinite=3), row("onnxruntime", 0.9, 9.0, passed=False)]
    assert choose(with_nan, samples=64)[0]["runtime"] == "onnxruntime"  # never the non-finite one
    broken = [{"runtime": "openvino", "form": "s8s8", "fc": "int8", "failed": "OpenVINO cannot load it", "gates_passed": False, "nonfinite": None}]
    with pytest.raises(InputError, match="no INT8 candidate ran with finite outputs.*OpenVINO cannot load it"):
        choose(broken, samples=64)


def test_recorded_runtime_is_a_cpu_choice():
    """On --device cuda an artifact the build made for OpenVINO runs in ONNX Runtime's GPU provider."""
    assert choose_runtime(Path("m.onnx"), ONNX, None, "openvino", _available, device="cuda") == (TARGETS["onnxruntime"], None)


def test_verify_checks_runtime_before_pytorch(seeded_chain, tmp_path):
    from dropcov_deploy.verify import verify

    missing = tmp_path / "not-loaded.pt"  # were PyTorch reached first, this would be the error
    with pytest.raises(InputError, match="--runtime 'tvm'"):
        verify(missing, [seeded_chain["fp32"]], random=4, runtime="tvm")
