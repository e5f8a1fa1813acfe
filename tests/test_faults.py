"""Faults a hostile or careless user causes: nothing lost, nothing silently wrong.

Each class of fault ends in one `error:` line with its documented exit code, and the user's
files exactly as they were.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from cli_helpers import assert_one_line_error, run_cli

from dropcov_deploy.manifest import sidecar_path


def _digest(paths) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.exists()}


# ------------------------------------------------------------------ inputs are sacred


def test_no_output_replaces_an_input(seeded_chain, calibration_dir, tmp_path):
    """Every command's outputs (model, manifest, report, JUnit, plot, reference) are checked
    against its inputs and their manifests before any work; the inputs stay byte for byte."""
    checkpoint, fp32, int8 = seeded_chain["checkpoint"], seeded_chain["fp32"], seeded_chain["int8"]
    inputs = [checkpoint, fp32, sidecar_path(fp32), int8, sidecar_path(int8)]
    before = _digest(inputs)
    cases = [
        (("export", "-c", checkpoint, "--out", checkpoint), str(checkpoint)),
        (("build", fp32, "--precision", "int8", "--calib", calibration_dir, "--out", fp32), "would overwrite the input"),
        (("build", fp32, "--precision", "int8", "--calib", calibration_dir, "--out", sidecar_path(fp32)), "manifest of the input"),
        (("verify", "-c", checkpoint, fp32, "--random", "2", "--report", checkpoint), "would overwrite the input"),
        (("verify", "-c", checkpoint, fp32, "--random", "2", "--junit", sidecar_path(fp32)), "manifest of the input"),
        (("verify", "-c", checkpoint, fp32, "--random", "2", "--save-reference", checkpoint), "would overwrite the input"),
        (("bench", fp32, int8, "--batch-sizes", "1", "--max-time", "0.1", "--report", int8), "would overwrite the input"),
        (("bench", fp32, "--batch-sizes", "1", "--max-time", "0.1", "--plot", fp32), "would overwrite the input"),
        (("engine", fp32, "--timing-cache", fp32), "would overwrite"),
        (("verify", "-c", checkpoint, fp32, "--data", calibration_dir, "--report", calibration_dir / "3" / "r.json"), "inside the input folder"),
        (("verify", "-c", checkpoint, fp32, "--random", "2", "--report", fp32.parent / "same.json", "--junit", fp32.parent / "same.json"), "two outputs"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run_cli(*args), 2, fragment)
    assert _digest(inputs) == before


# ------------------------------------------------------------------ gate files mean what they say


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"fp32": 5}', "fp32 must map metrics to bounds"),
        ('{"fp64": {}}', "unknown precision 'fp64'"),
        ('{"int8": {"top1_agrement": {"min": 0.9}}}', "top1_agrement is not a metric verify computes"),
        ('{"int8": {"top1_agreement": {"min": "0.9"}}}', 'top1_agreement.min must be a finite number, got "0.9"'),
        ('{"int8": {"top1_agreement": {"min": null}}}', "got null"),
        ('{"int8": {"top1_agreement": {"min": NaN}}}', "got NaN"),
        ('{"int8": {"top1_agreement": {"min": 0.9, "max": 0.5}}}', "no value could pass"),
        ('{"int8": {"top1_agreement": {"at_least": 0.9}}}', 'must be {"min": x}'),
        ("[1, 2]", "gates file"),
    ],
)
def test_gate_files_are_validated(tmp_path, content, fragment):
    from dropcov_deploy.errors import InputError
    from dropcov_deploy.gates import read_overrides

    gates = tmp_path / "gates.json"
    gates.write_text(content)
    with pytest.raises(InputError, match=None) as raised:
        read_overrides(gates)
    assert fragment in str(raised.value) and str(gates) in str(raised.value)


# ------------------------------------------------------------------ NaN never passes


def test_nan_weights_are_refused_on_load(seeded_digits, tmp_path):
    """A checkpoint with a NaN weight used to export with "parity 0.0e+00, passed"; now no
    command loads it, and an existing export at --out stays as it was."""
    import torch

    checkpoint, fp32 = seeded_digits
    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = data["state_dict"] if "state_dict" in data else data
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[name].view(-1)[3] = float("nan")
    broken = tmp_path / "nan.pt"
    torch.save(data, broken)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"a previous good export")
    assert_one_line_error(run_cli("export", "-c", broken, "--out", out), 2, "nan.pt", "NaN or Inf", name)
    assert out.read_bytes() == b"a previous good export"
    assert_one_line_error(run_cli("verify", "-c", broken, fp32, "--random", "2"), 2, "NaN or Inf")


def test_a_nan_on_either_side_is_counted_and_fails_every_precision():
    import numpy as np

    from dropcov_deploy.gates import DEFAULT_GATES, evaluate
    from dropcov_deploy.metrics import compare

    good = np.eye(4, dtype=np.float32) * 5 + 1
    for artifact, reference in ((np.where(np.eye(4) > 0, np.nan, good), good), (good, np.where(np.eye(4) > 0, np.inf, good))):
        metrics = compare(artifact, reference, labels=np.arange(4))
        assert metrics["nonfinite"] == 4
        for precision, gates in DEFAULT_GATES.items():
            assert not all(g["passed"] is not False for g in evaluate(metrics, gates).values()), precision


# ------------------------------------------------------------------ a cache that heals


def test_a_damaged_cache_entry_is_discarded_and_rebuilt(seeded_digits, calibration_dir, tmp_path):
    """A cache entry truncated by a kill or a full disk used to make every later build of the same
    inputs fail; now it is checked against its hash, discarded in one line, and rebuilt."""
    from dropcov_deploy.build import BuildOptions, build

    _, fp32 = seeded_digits
    cache = tmp_path / "cache"
    # one runtime, form and fc: the cache is under test, not the CPU choice (24 candidates per build)
    options = BuildOptions(
        precision="int8", calib=calibration_dir, calib_size=8, cache_dir=cache, out=tmp_path / "a.int8.cpu.onnx", runtime="onnxruntime", qdq_form="u8s8", fc="int8"
    )
    first = build(fp32, options)
    assert not first.cached
    entry = next(cache.glob("*.onnx"))
    entry.write_bytes(entry.read_bytes()[:1000])  # truncated
    said: list[str] = []
    options.out = tmp_path / "b.int8.cpu.onnx"
    second = build(fp32, options, log=said.append)
    assert not second.cached and any("discarded" in line and entry.stem in line for line in said), said
    assert second.precision_onnx.exists() and second.manifest.precision == first.manifest.precision
    options.out = tmp_path / "c.int8.cpu.onnx"
    assert build(fp32, options).cached  # healed: the next build reuses it
    (cache / f"{entry.stem}.json").write_text("{not json")
    options.out = tmp_path / "d.int8.cpu.onnx"
    assert not build(fp32, options, log=said.append).cached
    assert not list(cache.glob(".*partial"))


# ------------------------------------------------------------------ exit codes that mean one thing each


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("verify", "--nope"), "No such option: --nope"),
        (("bench", "x.onnx", "--batch-sizes", "a,b"), "--batch-sizes takes integers"),
        (("predict",), "Missing argument 'artifact'"),
        (("nope",), "No such command 'nope'"),
        (("export", "-c", "m.pt", "--opset", "x"), "Invalid value for '--opset'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, fragment):
    """A usage error is bad input: one `error:` line, exit 2 (not Typer's usage box), as main() runs it."""
    assert_one_line_error(run_cli(*args), 2, fragment)


def test_usage_error_in_a_real_process():
    from cli_helpers import run_cli_subprocess

    result = run_cli_subprocess("verify", "--nope")
    assert_one_line_error(result, 2, "verify: No such option: --nope")
    assert "╭" not in result.stderr
    assert run_cli_subprocess("--version").returncode == 0


# ------------------------------------------------------------------ inputs validated by meaning


def test_every_image_mode_is_read_as_what_it_shows(tmp_path):
    """16-bit greyscale was clipped to white by Pillow's convert; palette, alpha and CMYK images
    come out as the same picture in RGB."""
    import numpy as np
    from PIL import Image

    from dropcov_deploy.data.images import load_image

    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    got = np.asarray(load_image(tmp_path / "deep.png"))
    assert got.shape == (64, 64, 3) and got[0, 0, 0] == 0 and 250 <= got[-1, -1, 0] <= 255
    assert abs(int(got[32, 0, 0]) - 128) <= 2  # the middle of the ramp is mid-grey, not 255
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[:, :4] = (200, 30, 30)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(np.asarray(load_image(tmp_path / "cmyk.jpg")).astype(int)[:, :2] - (200, 30, 30)).max() <= 12
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 10  # dark, fully transparent: shown as the white background
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png")).min() == 255
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "palette.png")
    assert tuple(np.asarray(load_image(tmp_path / "palette.png"))[0, 0]) == (200, 30, 30)


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    from dropcov_deploy.data.images import load_image
    from dropcov_deploy.errors import InputError

    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 2x the limit: Pillow's DecompressionBombError
    with pytest.raises(InputError, match="bomb.png: refused as a decompression bomb"):
        load_image(tmp_path / "bomb.png")


def test_class_folders_are_matched_to_the_models_classes_by_name(seeded_digits, calibration_dir, tmp_path):
    """A folder of some classes is labelled by name (used to shift every label); a folder the
    model has no class for is refused, in verify and in build alike."""
    import shutil

    checkpoint, fp32 = seeded_digits
    some = tmp_path / "some"
    for digit in ("3", "7"):
        shutil.copytree(calibration_dir / digit, some / digit)
    report = tmp_path / "v.json"
    assert run_cli("verify", "-c", checkpoint, fp32, "--data", some, "--report", report).returncode == 0
    import json

    reference = json.loads(report.read_text())["reference"]
    from dropcov_deploy.data.images import list_images, model_labels

    labels = model_labels(list_images(some), [str(i) for i in range(10)])
    assert sorted(set(labels.tolist())) == [3, 7] and "accuracy" in reference
    extra = tmp_path / "extra"
    shutil.copytree(some, extra)
    shutil.copytree(calibration_dir / "5", extra / "five")
    assert_one_line_error(run_cli("verify", "-c", checkpoint, fp32, "--data", extra), 2, "['five'] are not among the model's 10 classes")
    assert_one_line_error(run_cli("build", fp32, "--precision", "int8", "--calib", extra, "--out", tmp_path / "x.onnx"), 2, "['five']")
    assert not (tmp_path / "x.onnx").exists()


def test_bench_batch_sizes_are_checked_before_any_allocation(seeded_digits):
    from dropcov_deploy.bench import batch_memory_problem

    assert batch_memory_problem(8, (3, 224, 224), 16 * 10**9) is None
    problem = batch_memory_problem(100_000, (3, 224, 224), 16 * 10**9)
    assert "needs about 120.4 GB" in problem and "use at most 3321" in problem
    _, fp32 = seeded_digits
    assert_one_line_error(run_cli("bench", fp32, "--batch-sizes", "1,100000000"), 2, "--batch-sizes 100000000", "GB available")


def test_a_killed_runs_staging_folder_is_cleaned_and_a_running_ones_kept(tmp_path):
    import subprocess
    import sys

    from dropcov_deploy.atomic import staged

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    stale = tmp_path / f".model.onnx.{dead_pid}.abc123.staging"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    running = tmp_path / f".model.onnx.{os.getpid()}.def456.staging"  # this process: alive
    running.mkdir()
    with staged(tmp_path / "model.onnx") as stage:
        (stage / "model.onnx").write_bytes(b"whole")
    assert not stale.exists() and running.exists()
    assert (tmp_path / "model.onnx").read_bytes() == b"whole"


def test_training_folders_need_two_classes_and_no_empty_one(tmp_path, calibration_dir):
    import shutil

    from dropcov_deploy.errors import InputError
    from dropcov_deploy.train import check_class_folders

    split = tmp_path / "train"
    shutil.copytree(calibration_dir / "3", split / "3")
    with pytest.raises(InputError, match="1 class folder"):
        check_class_folders(split)
    (split / "7").mkdir()
    with pytest.raises(InputError, match=r"\['7'\] hold no images"):
        check_class_folders(split)
    shutil.copytree(calibration_dir / "7", split / "7", dirs_exist_ok=True)
    check_class_folders(split)


def test_a_full_disk_or_a_forbidden_path_is_one_line_not_a_bug():
    import errno

    from dropcov_deploy.cli import exit_code_for
    from dropcov_deploy.errors import environment_error

    full = OSError(errno.ENOSPC, "No space left on device", "/data/out/model.onnx")
    assert str(environment_error(full)).startswith("/data/out/model.onnx: No space left on device")
    assert exit_code_for(full) == 2
    assert exit_code_for(PermissionError(errno.EACCES, "Permission denied", "/ro/x.json")) == 2
    assert environment_error(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None  # ours to handle: a bug if it escapes


def test_an_onnx_copied_without_its_weights_file_is_one_line(seeded_digits, calibration_dir, tmp_path):
    import shutil

    import onnx

    _, fp32 = seeded_digits
    onnx.save_model(onnx.load(str(fp32)), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=1024)
    shutil.copyfile(sidecar_path(fp32), sidecar_path(tmp_path / "m.onnx"))
    (tmp_path / "m.onnx.data").unlink()
    image = next((calibration_dir / "3").glob("*.png"))
    for args in (
        ("build", tmp_path / "m.onnx", "--precision", "int8", "--calib", calibration_dir, "--calib-size", "16"),
        ("engine", tmp_path / "m.onnx"),
        ("predict", tmp_path / "m.onnx", image),
    ):
        assert_one_line_error(run_cli(*args), 2, "m.onnx")
    assert_one_line_error(run_cli("build", tmp_path / "m.onnx", "--precision", "int8", "--calib", calibration_dir), 2, "m.onnx.data, which is missing")


def test_a_sidecar_copied_beside_another_model_is_refused(seeded_chain, tmp_path):
    """The sidecar's recorded sha256 must be the file's: a CPU INT8 graph under an FP32 export's
    manifest would otherwise become an "FP32" engine."""
    import shutil

    swapped = tmp_path / "swapped.onnx"
    shutil.copyfile(seeded_chain["int8"], swapped)
    shutil.copyfile(sidecar_path(seeded_chain["fp32"]), sidecar_path(swapped))
    assert_one_line_error(run_cli("engine", swapped), 2, "swapped.onnx.json: describes another file")
    assert_one_line_error(run_cli("build", swapped, "--precision", "fp32"), 2, "describes another file")


@pytest.mark.parametrize(
    ("batch", "fragment"),
    [
        ({"min": 0, "max": 8}, "1 <= min <= max"),
        ({"min": 64, "max": 4}, "1 <= min <= max"),
        ({"dynamic": "false", "min": 1, "max": 4}, "dynamic must be true or false"),
        ("dynamic", "input.batch must be a dict"),
    ],
)
def test_a_manifests_batch_range_is_checked(tmp_path, batch, fragment):
    from dropcov_deploy.errors import InputError
    from dropcov_deploy.manifest import Manifest

    with pytest.raises(InputError, match=fragment):
        Manifest.from_dict({"input": {"name": "input", "shape": ["batch", 3, 32, 32], "batch": batch}})


def test_option_values_that_mean_nothing_are_refused(seeded_chain, calibration_dir):
    image = next((calibration_dir / "3").glob("*.png"))
    assert_one_line_error(run_cli("predict", seeded_chain["int8"], image, "--top", "0"), 2, "--top 0")
    assert_one_line_error(run_cli("bench", seeded_chain["fp32"], "--max-time", "nan"), 2, "--max-time")
    assert_one_line_error(run_cli("bench", seeded_chain["fp32"], "--warmup", "inf"), 2, "--warmup")
    assert_one_line_error(run_cli("verify", "-c", seeded_chain["checkpoint"], seeded_chain["fp32"], "--random", "2", "--max-reference-mb", "-5"), 2, "--max-reference-mb")


def test_calibration_sizes_are_checked_against_memory_first():
    from dropcov_deploy.precision.calibration import calibration_memory_problem

    assert calibration_memory_problem(1024, (3, 224, 224), 16 * 10**9) is None
    problem = calibration_memory_problem(100_000, (3, 224, 224), 16 * 10**9)
    assert "need about 120.4 GB" in problem and "use --calib-size 6643 or fewer" in problem


def test_a_checkpoint_and_an_artifact_of_different_class_counts_are_refused(seeded_digits, tmp_path):
    """This was a broadcast traceback inside the metrics."""
    import json

    checkpoint, fp32 = seeded_digits
    other = tmp_path / "other.onnx"
    other.write_bytes(fp32.read_bytes())
    manifest = json.loads(sidecar_path(fp32).read_text())
    manifest["num_classes"], manifest["class_names"] = 5, list("abcde")
    manifest.pop("sha256")
    sidecar_path(other).write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("verify", "-c", checkpoint, other, "--random", "2"), 2, "other.onnx: has 5 classes", "10")
