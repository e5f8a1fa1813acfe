"""What a newcomer trips over (issue 16): defaults that make sense, aliases, quiet quantizers,
the `models` table fast from its cache."""

import json

from cli_helpers import EXTRA_MODULES, run_cli, run_cli_without

from dropcov_deploy.manifest import Manifest


def test_build_defaults_to_the_useful_precision_and_takes_minmax(seeded_digits, calibration_dir, tmp_path):
    """No --precision on the CPU target is INT8 (FP16 runs slower than FP32 there, and build says so
    when asked for it); `minmax` is the max calibrator; --no-cache recalibrates."""
    _, fp32 = seeded_digits
    env = {"DROPCOV_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "m.onnx"
    result = run_cli("build", fp32, "--calib", calibration_dir, "--calib-size", "8", "--calib-method", "minmax", "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    manifest = Manifest.read(out)
    assert manifest.precision.value == "int8" and manifest.get("calibration")["method"] == "max"
    again = run_cli(  # one runtime and form: what is under test here is --no-cache
        "build", fp32, "--calib", calibration_dir, "--calib-size", "8", "--calib-method", "max", "--out", tmp_path / "n.onnx", "--no-cache",
        "--runtime", "onnxruntime", "--qdq-form", "u8s8", "--fc", "int8", env=env,
    )
    assert again.returncode == 0 and "from cache" not in again.stdout
    fp16 = run_cli("build", fp32, "-p", "fp16", "--calib", calibration_dir, "--calib-size", "8", "--out", tmp_path / "h.onnx", env=env)
    assert fp16.returncode == 0 and "runs slower than FP32 on the CPU" in fp16.stderr


def test_tensorrt_int8_build_draws_no_progress_bars(seeded_digits, calibration_dir, tmp_path):
    """ModelOpt's calibration draws an unlabelled tqdm bar per pass; build's output has only its own lines."""
    _, fp32 = seeded_digits
    result = run_cli("build", fp32, "-p", "int8", "--backend", "tensorrt", "--calib", calibration_dir, "--calib-size", "8",
                     "--out", tmp_path / "t.onnx", env={"DROPCOV_CACHE": str(tmp_path / "cache")})
    assert result.returncode in (0, 3), result.stderr  # 3: no TensorRT here for the engine step
    assert "it/s" not in result.stderr and "%|" not in result.stderr


def test_models_answers_from_its_cache_without_torch(tmp_path):
    """The first `models` builds every architecture on the meta device and keeps the table per
    package, torch and timm version; the next answers from it without importing torch."""
    env = {"DROPCOV_CACHE": str(tmp_path / "cache")}
    first = run_cli("models", "--json", env=env)
    assert first.returncode == 0, first.stderr
    [entry] = list((tmp_path / "cache").glob("models-*.json"))
    again = run_cli_without(EXTRA_MODULES, "models", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
    entry.write_text("{not json")  # a damaged entry is recomputed, never trusted
    assert json.loads(run_cli("models", "--json", env=env).stdout) == json.loads(first.stdout)


def test_inspect_shows_provenance_and_knows_a_manifest(seeded_chain, tmp_path):
    int8 = seeded_chain["int8"]
    shown = run_cli("inspect", int8)
    assert shown.returncode == 0, shown.stderr
    for fragment in ("built from=", "calibration=", "16 images", "fc=", "pinned to fp32=", "check on calibration images=top-1 agreement"):
        assert fragment in shown.stdout, fragment
    sidecar = run_cli("inspect", f"{int8}.json")
    assert sidecar.returncode == 0 and f"{int8.name} (present); inspect {int8.name} for the model itself" in sidecar.stdout
    other = tmp_path / "other.json"
    other.write_text("{}")
    from cli_helpers import assert_one_line_error

    assert_one_line_error(run_cli("inspect", other), 2, "not a dropcov-deploy manifest")


def test_bench_reports_the_batch_sizes_it_could_not_time(seeded_digits, tmp_path):
    checkpoint, fp32 = seeded_digits
    fixed = tmp_path / "fixed4.onnx"
    assert run_cli("export", "-c", checkpoint, "--batch", "4", "--out", fixed, "--no-check").returncode == 0
    result = run_cli("bench", fp32, fixed, "--batch-sizes", "1,4", "--max-time", "0.1", "--warmup", "0", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"artifact": str(fixed), "batch_sizes": [1], "reason": "accepts batch 4..4"} in report["skipped"]
    assert "benchmarking onnxruntime-cpu fixed4.onnx batch 4 end-to-end" in result.stderr  # piped: a line per measurement
