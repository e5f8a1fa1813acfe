"""The two-machine path: engine step decisions, reference files, and the device's base install.

Host: export, build, `verify --checkpoint ... --save-reference`. Device: `engine`,
`verify --reference`, `bench`, `predict`, `inspect` with only the base install (no torch,
no ModelOpt, no matplotlib, no TensorRT here). The engine itself needs TensorRT and a GPU
(tests/test_tensorrt_gpu.py); everything decided before TensorRT is tested here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import EXTRA_MODULES, assert_one_line_error, run_cli, run_cli_subprocess, run_cli_without

from dropcov_deploy.backends import run_batched
from dropcov_deploy.engine import EngineOptions, batch_problem, default_batch, device_command, plan_path_for
from dropcov_deploy.errors import BackendUnavailable, InputError, missing_extra
from dropcov_deploy.manifest import BatchRange, Manifest, sidecar_path
from dropcov_deploy.precision import Precision
from dropcov_deploy.reference import load_reference

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ batches an artifact accepts


@pytest.mark.parametrize(
    ("limits", "count", "preferred", "expected"),
    [
        (BatchRange(True, 1, 32), 70, 32, [(0, 32, 32), (32, 64, 32), (64, 70, 6)]),
        (BatchRange(True, 1, 16), 40, 32, [(0, 16, 16), (16, 32, 16), (32, 40, 8)]),  # engine 1:8:16: never past max
        (BatchRange(True, 4, 16), 10, 8, [(0, 8, 8), (8, 10, 4)]),  # a tail short of min runs padded to min
        (BatchRange(False, 4, 4), 10, 32, [(0, 4, 4), (4, 8, 4), (8, 10, 4)]),  # fixed batch: always 4
        (BatchRange(True, 1, None), 5, 2, [(0, 2, 2), (2, 4, 2), (4, 5, 1)]),
    ],
)
def test_batches_are_split_to_the_artifacts_range(limits, count, preferred, expected):
    assert limits.split(count, preferred) == expected


def test_run_batched_pads_and_drops_the_padding():
    seen = []

    def runner(chunk):
        seen.append(len(chunk))
        return chunk.reshape(len(chunk), -1)[:, :2] * 2

    inputs = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    logits = run_batched(runner, inputs, BatchRange(True, 4, 8), 8)
    assert seen == [8, 4]  # the tail of 2 ran as 4
    np.testing.assert_array_equal(logits, inputs[:, :2] * 2)


# ------------------------------------------------------------------ engine step decisions


def test_default_profile_follows_the_onnx():
    assert default_batch(None) == "1:8:32"
    assert default_batch(BatchRange(True, 1, 64)) == "1:8:32"
    assert default_batch(BatchRange(True, 1, 16)) == "1:8:16"
    assert default_batch(BatchRange(False, 4, 4)) == "4"


def test_profile_outside_the_onnx_range_is_refused(tmp_path):
    from dropcov_deploy.backends.tensorrt.profile import BatchProfile

    onnx = tmp_path / "m.onnx"
    assert batch_problem(onnx, BatchRange(True, 1, 64), BatchProfile(1, 8, 32)) is None
    assert "fixed batch of 4" in batch_problem(onnx, BatchRange(False, 4, 4), BatchProfile(1, 8, 32))
    assert batch_problem(onnx, BatchRange(False, 4, 4), BatchProfile(4, 4, 4)) is None
    assert "up to 16" in batch_problem(onnx, BatchRange(True, 1, 16), BatchProfile(1, 8, 32))


def test_device_command_is_the_exact_line_to_run(tmp_path):
    options = EngineOptions(workspace_gib=2.0, timing_cache=tmp_path / "t cache.bin", builder_optimization_level=5, dla_core=0)
    line = device_command(tmp_path / "model.int8.trt.onnx", options, "1:8:32")
    assert line.startswith(f"dropcov-deploy engine {tmp_path}/model.int8.trt.onnx --batch 1:8:32 --workspace 2.0 ")
    assert f"--timing-cache '{tmp_path}/t cache.bin'" in line and "--builder-optimization-level 5 --dla-core 0" in line
    assert plan_path_for(tmp_path / "model.int8.trt.onnx").name == "model.int8.trt.plan"


def _tensorrt_target_copy(fp32, folder, precision="int8"):
    """A precision ONNX as `build --backend tensorrt` names and describes it (the graph is the FP32
    one: what is tested is the dispatch before TensorRT, which reads only the manifest)."""
    onnx = folder / f"model.{precision}.trt.onnx"
    shutil.copyfile(fp32, onnx)
    manifest = Manifest.read(fp32).for_precision(artifact=onnx.name, precision=Precision.parse(precision), target="tensorrt")
    manifest.write(sidecar_path(onnx))
    return onnx


def test_engine_without_tensorrt_names_the_command_for_the_device(seeded_digits, tmp_path):
    _, fp32 = seeded_digits
    onnx = _tensorrt_target_copy(fp32, tmp_path)
    result = run_cli("engine", onnx, "--batch", "1:4:8", "--builder-optimization-level", "4")
    assert_one_line_error(result, 3, "no TensorRT engine built here", f"on the device run: dropcov-deploy engine {onnx} --batch 1:4:8 --builder-optimization-level 4")
    assert not plan_path_for(onnx).exists() and sorted(p.name for p in tmp_path.iterdir()) == [onnx.name, sidecar_path(onnx).name]
    # build on a TensorRT-target precision ONNX is the engine step alone (no refusal, no recalibration)
    built = run_cli("build", onnx, "--backend", "tensorrt")
    assert_one_line_error(built, 3, f"dropcov-deploy engine {onnx} --batch 1:8:32")
    # the FP32 export may become an engine too
    assert_one_line_error(run_cli("engine", fp32), 3, f"dropcov-deploy engine {fp32} --batch 1:8:32")


def test_engine_refuses_what_cannot_become_an_engine(seeded_chain, tmp_path):
    fp32, int8_cpu = seeded_chain["fp32"], seeded_chain["int8"]
    assert_one_line_error(run_cli("engine", int8_cpu), 2, "built for cpu", "--backend tensorrt")
    assert_one_line_error(run_cli("engine", fp32, "--out", fp32), 2, "a TensorRT plan must end in .plan")
    assert_one_line_error(run_cli("engine", fp32, "--timing-cache", fp32), 2, "would overwrite the input")
    assert_one_line_error(run_cli("engine", fp32, "--timing-cache", sidecar_path(fp32)), 2, "would overwrite the manifest of the input")
    assert_one_line_error(run_cli("engine", fp32, "--out", tmp_path / "p.plan", "--timing-cache", tmp_path / "p.plan"), 2, "two outputs")
    assert_one_line_error(run_cli("engine", fp32, "--workspace", "inf"), 2, "up to 4096")
    assert_one_line_error(run_cli("engine", fp32, "--batch", "8:4:2"), 2, "min <= opt <= max")
    assert_one_line_error(run_cli("engine", fp32, "--builder-optimization-level", "9"), 2)
    assert_one_line_error(run_cli("engine", tmp_path / "none.onnx"), 2, "none.onnx")
    assert_one_line_error(run_cli("build", int8_cpu, "--backend", "tensorrt"), 2, "not for tensorrt; build the FP32 export with --backend tensorrt")
    assert_one_line_error(run_cli("build", int8_cpu, "--backend", "tensorrt", "--fc", "bogus"), 2, "--fc")
    assert_one_line_error(run_cli("build", int8_cpu), 2, "is already a int8 graph for cpu; --backend onnxruntime builds from the FP32 export")


def test_missing_extra_names_the_pip_line():
    found = missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch"))
    assert isinstance(found, BackendUnavailable) and found.exit_code == 3 and "pip install 'dropcov-deploy[torch]'" in str(found)
    assert "dropcov-deploy[build]" in str(missing_extra(ModuleNotFoundError("x", name="modelopt.onnx.autocast")))
    assert missing_extra(ModuleNotFoundError("x", name="some_typo_module")) is None  # a bug stays a bug
    assert missing_extra(ImportError("x")) is None


def test_base_install_is_inference_only():
    """pyproject's dependencies: what a device needs, and nothing that trains."""
    import re
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=;\[ ]", d, maxsplit=1)[0] for d in project["dependencies"]}
    assert names == {"numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "typer", "rich", "pillow"}
    extras = project["optional-dependencies"]
    assert {"torch", "build", "plot", "tensorrt-cu12", "tensorrt-cu13", "dev"} <= set(extras)
    assert any(d.startswith("tensorrt-cu12>=10.3,<11") for d in extras["tensorrt-cu12"])


# ------------------------------------------------------------------ reference files


@pytest.fixture(scope="module")
def saved_reference(seeded_chain, calibration_dir, tmp_path_factory):
    """`verify --checkpoint ... --save-reference` on 40 real digits, with the report it gave."""
    folder = tmp_path_factory.mktemp("reference")
    images = folder / "images"
    for digit in ("3", "7"):
        (images / digit).mkdir(parents=True)
        for png in sorted((calibration_dir / digit).glob("*.png"))[:20]:
            shutil.copyfile(png, images / digit / png.name)
    # the seeded model's classes are "0".."9": a labelled folder of two digits would not match
    flat = folder / "flat"
    flat.mkdir()
    for png in images.rglob("*.png"):
        shutil.copyfile(png, flat / f"{png.parent.name}-{png.name}")
    ref = folder / "ref.npz"
    report = folder / "host.json"
    result = run_cli("verify", "-c", seeded_chain["checkpoint"], seeded_chain["fp32"], seeded_chain["int8"], "--data", flat, "--save-reference", ref, "--report", report)
    assert result.returncode in (0, 1), result.stderr
    return {"ref": ref, "report": json.loads(report.read_text()), "flat": flat, "folder": folder}


def test_reference_holds_inputs_logits_and_what_it_belongs_to(saved_reference, seeded_chain):
    ref = load_reference(saved_reference["ref"])
    assert ref.inputs.materialize().shape == (40, 3, 32, 32) and ref.logits.shape == (40, 10) and ref.labels is None
    assert ref.meta["inputs_stored"] == "arrays" and ref.meta["class_names"] == [str(i) for i in range(10)]
    source = Manifest.read(seeded_chain["fp32"]).get("source")
    assert ref.checkpoint_sha256 == source["sha256"]
    assert set(ref.meta["artifacts"]) == {seeded_chain["fp32"].name, seeded_chain["int8"].name}
    for path in (seeded_chain["fp32"], seeded_chain["int8"]):
        assert ref.mismatch(path, Manifest.read(path)) is None


def test_verify_against_a_reference_gives_the_same_numbers_without_torch(saved_reference, seeded_chain, tmp_path):
    """The device: no torch, no ModelOpt, no matplotlib; the same metrics as verify --checkpoint."""
    report = tmp_path / "device.json"
    device = run_cli_without(EXTRA_MODULES, "verify", "--reference", saved_reference["ref"], seeded_chain["fp32"], seeded_chain["int8"], "--report", report)
    assert device.returncode in (0, 1), device.stderr
    assert "imported" not in device.stderr
    host, here = saved_reference["report"], json.loads(report.read_text())
    assert here["reference"]["source"].startswith("reference file")
    for a, b in zip(host["artifacts"], here["artifacts"]):
        assert a["metrics"] == b["metrics"] and a["gates"] == b["gates"] and a["passed"] == b["passed"]
    assert device.returncode == (0 if host["passed"] else 1)


def test_device_commands_run_without_the_extras(seeded_chain, calibration_dir, tmp_path):
    """predict, inspect and bench of artifacts with the base install alone; a command that needs
    an extra exits 3 with the pip line."""
    images = [next((calibration_dir / d).glob("*.png")) for d in ("3", "7")]
    for args in (
        ("predict", seeded_chain["int8"], *images),
        ("inspect", seeded_chain["int8"]),
        ("bench", seeded_chain["fp32"], seeded_chain["int8"], "--batch-sizes", "1", "--warmup", "0", "--max-time", "0.2", "--json"),
    ):
        result = run_cli_without(EXTRA_MODULES, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert "imported" not in result.stderr
    needs_torch = run_cli_without(EXTRA_MODULES, "verify", "-c", seeded_chain["checkpoint"], seeded_chain["fp32"], "--random", "2")
    assert_one_line_error(needs_torch, 3, "pip install 'dropcov-deploy[torch]'")
    needs_plot = run_cli_without(EXTRA_MODULES, "bench", seeded_chain["fp32"], "--batch-sizes", "1", "--warmup", "0", "--max-time", "0.1", "--plot", tmp_path / "b.png")
    assert_one_line_error(needs_plot, 3, "dropcov-deploy[plot]")


def test_a_reference_for_another_model_is_refused(saved_reference, seeded_chain, tmp_path):
    fp32 = seeded_chain["fp32"]
    other = tmp_path / "other.onnx"
    shutil.copyfile(fp32, other)
    manifest = Manifest.read(fp32).to_dict()
    manifest["source"] = {**manifest["source"], "sha256": "0" * 64}
    sidecar_path(other).write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("verify", "--reference", saved_reference["ref"], other), 2, "other.onnx", "was made from checkpoint")
    manifest["source"]["sha256"] = Manifest.read(fp32).get("source")["sha256"]
    manifest["class_names"] = list("abcdefghij")
    sidecar_path(other).write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("verify", "--reference", saved_reference["ref"], other), 2, "has classes")
    manifest["class_names"] = [str(i) for i in range(10)]
    manifest["input"]["shape"] = [manifest["input"]["shape"][0], 3, 64, 64]
    sidecar_path(other).write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("verify", "--reference", saved_reference["ref"], other), 2, "inputs, the artifact takes [3, 64, 64]")


def test_bad_reference_files_and_options(saved_reference, seeded_chain, tmp_path):
    fp32, ref = seeded_chain["fp32"], saved_reference["ref"]
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(run_cli("verify", "--reference", corrupt, fp32), 2, "corrupt.npz", "not a dropcov-deploy reference file")
    assert_one_line_error(run_cli("verify", "--reference", tmp_path / "none.npz", fp32), 2, "none.npz")
    assert_one_line_error(run_cli("verify", "--reference", ref, "-c", seeded_chain["checkpoint"], fp32), 2, "exactly one of --checkpoint")
    assert_one_line_error(run_cli("verify", "--reference", ref, fp32, "--save-reference", tmp_path / "x.npz"), 2, "--save-reference needs --checkpoint")
    assert_one_line_error(run_cli("verify", "--reference", ref, fp32, "--report", ref), 2, "would overwrite the input")
    assert_one_line_error(run_cli("verify", "--reference", ref, fp32, "--report", sidecar_path(fp32)), 2, "would overwrite the manifest of the input")
    assert_one_line_error(run_cli("verify", "--reference", ref, fp32, "--data", tmp_path), 2, "holds its inputs")


def test_large_inputs_are_referenced_as_image_files_with_hashes(saved_reference, seeded_chain, tmp_path):
    """Past --max-reference-mb the reference lists the images (relative path, SHA-256); the device
    reads them again from --data and refuses an image that changed."""
    flat = tmp_path / "flat"
    shutil.copytree(saved_reference["flat"], flat)
    ref = tmp_path / "files.npz"
    host = tmp_path / "host.json"
    saved = run_cli("verify", "-c", seeded_chain["checkpoint"], seeded_chain["fp32"], "--data", flat, "--save-reference", ref, "--max-reference-mb", "0", "--report", host)
    assert saved.returncode in (0, 1), saved.stderr
    loaded = load_reference(ref, flat)
    assert loaded.meta["inputs_stored"] == "files" and len(loaded.meta["files"]) == 40
    assert ref.stat().st_size < 20_000  # logits and a file list, not 40 x 3 x 32 x 32 floats
    device = tmp_path / "device.json"
    again = run_cli("verify", "--reference", ref, "--data", flat, seeded_chain["fp32"], "--report", device)
    assert again.returncode == saved.returncode, again.stderr
    assert json.loads(device.read_text())["artifacts"][0]["metrics"] == json.loads(host.read_text())["artifacts"][0]["metrics"]
    assert_one_line_error(run_cli("verify", "--reference", ref, seeded_chain["fp32"]), 2, "give --data DIR")
    changed = sorted(flat.glob("*.png"))[5]
    changed.write_bytes(next(p for p in sorted(flat.glob("*.png")) if p != changed).read_bytes())
    assert_one_line_error(run_cli("verify", "--reference", ref, "--data", flat, seeded_chain["fp32"]), 2, changed.name, "changed since")
    with pytest.raises(InputError, match="missing under"):
        changed.unlink()
        load_reference(ref, flat)


# ------------------------------------------------------------------ ONNX Runtime's silent CPU fallback


def test_provider_fallback_is_named_never_labelled_cuda(tmp_path):
    from dropcov_deploy.backends.onnxruntime import provider_fallback

    cuda = ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert provider_fallback(tmp_path / "m.onnx", cuda, ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    problem = provider_fallback(tmp_path / "m.onnx", cuda, ["CPUExecutionProvider"])
    assert "could not use CUDA" in problem and "session providers: CPUExecutionProvider" in problem and "--device cpu" in problem
    assert provider_fallback(tmp_path / "m.onnx", ("CPUExecutionProvider",), ["CPUExecutionProvider"]) is None


def test_cuda_device_without_cuda_exits_3_in_one_line(seeded_digits):
    """ONNX Runtime asked for CUDA on a machine where its CUDA provider cannot load falls back to
    the CPU silently; we refuse instead (this machine: onnxruntime-gpu without CUDA libraries)."""
    from dropcov_deploy.backends.onnxruntime import create_session

    _, fp32 = seeded_digits
    if "CUDAExecutionProvider" in create_session(fp32, ("CUDAExecutionProvider", "CPUExecutionProvider")).get_providers():
        pytest.skip("ONNX Runtime's CUDA provider works here")
    result = run_cli_subprocess("bench", fp32, "--device", "cuda", "--batch-sizes", "1", "--warmup", "0", "--max-time", "0.1")
    assert_one_line_error(result, 3, fp32.name, "could not use CUDA")
    assert ":onnxruntime:" not in result.stderr  # ONNX Runtime's own multi-line log (C++, on fd 2: a real process) is silenced


def test_verify_and_predict_run_a_fixed_batch_artifact_in_its_own_batches(seeded_digits, calibration_dir, tmp_path):
    """A fixed batch of 4, 10 inputs, --batch-size 32: three padded runs of 4, the same logits as PyTorch."""
    from dropcov_deploy.export import export_onnx

    checkpoint, _ = seeded_digits
    fixed = export_onnx(checkpoint, tmp_path / "fixed4.onnx", batch=4).path
    report = tmp_path / "v.json"
    result = run_cli("verify", "-c", checkpoint, fixed, "--random", "10", "--batch-size", "32", "--report", report)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(report.read_text())["artifacts"][0]["metrics"]
    assert metrics["relative_error"] <= 1e-4 and metrics["top1_agreement"] == 1.0
    images = sorted((calibration_dir / "5").glob("*.png"))[:5]
    predicted = run_cli("predict", fixed, *images, "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)) == 5


def _edited(ref, folder, name, meta_edit=None, arrays_edit=None):
    """A copy of the reference with its meta or arrays changed, as a damaged or edited file would be."""
    with np.load(ref, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    if meta_edit:
        meta_edit(meta)
    if arrays_edit:
        arrays_edit(arrays)
    arrays["meta"] = np.array(json.dumps(meta))
    out = folder / name
    with open(out, "wb") as handle:
        np.savez(handle, **arrays)
    return out


@pytest.mark.parametrize(
    ("meta_edit", "arrays_edit", "fragment"),
    [
        (lambda m: m.update(input_shape="abc"), None, "input_shape must be [C, H, W]"),
        (lambda m: m.update(input_shape=[3, "x", 32]), None, "input_shape must be [C, H, W]"),
        (lambda m: m.update(checkpoint="x"), None, "checkpoint must be"),
        (lambda m: m.update(family_gates="x"), None, "family_gates must be"),
        (lambda m: m.update(family_gates={"fp16": {"accuracy_drop": {"max": "1"}}}), None, "must be a finite number"),
        (lambda m: m.update(artifacts=["x"]), None, "artifacts must map"),
        (lambda m: m.update(inputs_stored="random", random=-3), None, "random must be the number of seeded inputs"),
        (lambda m: m.update(inputs_stored="files", files=["x"]), None, "files must list"),
        (lambda m: m.update(inputs_stored="nope"), None, "unknown inputs_stored"),
        (None, lambda a: a.update(labels=np.full(40, 100)), "labels must lie in 0..9"),
        (None, lambda a: a.update(labels=np.arange(7)), "labels must be 40 integers"),
        (None, lambda a: a.update(labels=np.array(["a"] * 40)), "labels must be 40 integers"),
        (None, lambda a: a.update(logits=np.zeros((0, 10), np.float32), inputs=np.zeros((0, 3, 32, 32), np.float32)), "holds no logits"),
        (None, lambda a: a.update(logits=np.array([["x"] * 10] * 40)), "holds no logits"),
    ],
)
def test_an_edited_or_damaged_reference_is_one_line(saved_reference, seeded_chain, tmp_path, meta_edit, arrays_edit, fragment):
    edited = _edited(saved_reference["ref"], tmp_path, "edited.npz", meta_edit, arrays_edit)
    assert_one_line_error(run_cli("verify", "--reference", edited, seeded_chain["fp32"]), 2, "edited.npz", fragment)


def test_a_reference_is_tied_by_the_files_real_hash_not_its_manifests_claim(saved_reference, seeded_chain, tmp_path):
    """An artifact whose manifest has no checkpoint hash is tied to a reference only by its own
    bytes' hash among those the reference saw, whatever its manifest's sha256 says."""
    lie = tmp_path / "lie.onnx"
    shutil.copyfile(seeded_chain["int8"], lie)
    manifest = Manifest.read(seeded_chain["int8"]).to_dict()
    del manifest["source"]
    manifest["sha256"] = Manifest.read(seeded_chain["fp32"]).sha256
    sidecar_path(lie).write_text(json.dumps(manifest))
    no_source = _edited(saved_reference["ref"], tmp_path, "r.npz", lambda m: m.update(artifacts={"model.onnx": manifest["sha256"]}))
    assert_one_line_error(run_cli("verify", "--reference", no_source, lie), 2, "cannot be tied to this artifact")


# ------------------------------------------------------------------ calibration overlap (a leak, not a held-out test)


def test_verify_counts_the_inputs_an_artifact_was_calibrated_on(seeded_chain, calibration_dir, tmp_path):
    """The INT8 build recorded a fingerprint of each of its 16 calibration inputs; verify on the
    whole folder finds exactly those 16, says so, and --strict fails the artifact; on other
    images the overlap is 0."""
    int8, fp32, checkpoint = seeded_chain["int8"], seeded_chain["fp32"], seeded_chain["checkpoint"]
    recorded = Manifest.read(int8).calibration_fingerprints()
    assert len(recorded) == 16
    report = tmp_path / "v.json"
    result = run_cli("verify", "-c", checkpoint, fp32, int8, "--data", calibration_dir, "--report", report)
    assert result.returncode in (0, 1), result.stderr  # the untrained model's gates are not the point here
    artifacts = {a["precision"]: a for a in json.loads(report.read_text())["artifacts"]}
    assert artifacts["int8"]["calibration_overlap"] == 16 and artifacts["fp32"]["calibration_overlap"] is None
    assert any("16 of the 300 inputs were calibration inputs" in w for w in artifacts["int8"]["warnings"])
    strict = run_cli("verify", "-c", checkpoint, int8, "--data", calibration_dir, "--strict", "--report", report)
    assert strict.returncode == 1 and "calibration_overlap" in strict.stderr
    assert json.loads(report.read_text())["artifacts"][0]["gates"]["calibration_overlap"] == {"max": 0, "value": 16, "passed": False}
    held_out = run_cli("verify", "-c", checkpoint, int8, "--random", "8", "--strict", "--report", report)
    assert json.loads(report.read_text())["artifacts"][0]["calibration_overlap"] == 0 and "calibration_overlap" not in held_out.stderr


# ------------------------------------------------------------------ verify streams its inputs


@pytest.mark.slow
def test_verify_on_20000_images_keeps_memory_bounded(seeded_chain, tmp_path):
    """verify decodes its image folder a chunk at a time, in worker threads: on 20,000 images
    (the bundled digits, shifted copies, written once here) the peak memory of its whole process
    tree stays within 0.15 GiB of the same run on 300, and the two runs agree."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from verify_memory import run_sampled, write_folder

    big = write_folder(tmp_path, 20_000)
    small = write_folder(tmp_path, 300)

    def peak_gib(folder, workers):
        command = [sys.executable, "-m", "dropcov_deploy", "verify", "-c", str(seeded_chain["checkpoint"]), str(seeded_chain["fp32"]),
                   str(seeded_chain["int8"]), "--data", str(folder), "--workers", str(workers), "--report", str(tmp_path / f"{folder.name}-{workers}.json")]
        code, peak, seconds, stderr = run_sampled(command)
        assert code in (0, 1), stderr
        return peak / 2**30

    small_peak, big_peak = peak_gib(small, 2), peak_gib(big, 2)
    print(f"verify peak RSS of the process tree: 300 images {small_peak:.2f} GiB, 20,000 images {big_peak:.2f} GiB")
    # the issue asks for < 1 GiB beyond the models; 20,000 inputs of 3x32x32 float32 are 0.25 GB, so holding
    # them (as verify did before streaming: 1.02 GiB against 0.69) fails this tighter bound
    assert big_peak - small_peak < 0.15
    in_process = peak_gib(small, 0)
    first = json.loads((tmp_path / "images-300-2.json").read_text())["artifacts"]
    again = json.loads((tmp_path / "images-300-0.json").read_text())["artifacts"]
    assert [a["metrics"] for a in first] == [a["metrics"] for a in again]  # workers change nothing but the time
    assert in_process > 0
