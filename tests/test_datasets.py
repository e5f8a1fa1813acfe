"""Bundled datasets by name and split, and image decoding that streams: no leak, no copying around."""

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli

from dropcov_deploy.data import digits
from dropcov_deploy.data.datasets import DatasetSpec, dataset_images, parse_dataset
from dropcov_deploy.data.images import InputSet, decode_workers, list_images, load_batch
from dropcov_deploy.errors import InputError
from dropcov_deploy.steps import rate_text


def test_the_repository_calibration_folder_is_the_training_subset_its_generator_writes(calibration_dir, tmp_path):
    """calibration/digits is exactly what `python -m dropcov_deploy.data.digits` writes (names and
    pixels), and none of it is in the held-out test split."""
    digits.main([str(tmp_path / "again")])
    shipped = list_images(calibration_dir)
    regenerated = list_images(tmp_path / "again")
    assert shipped.names() == regenerated.names() and len(shipped) == 300
    assert np.array_equal(load_batch(shipped.paths, digits.PREPROCESSING), load_batch(regenerated.paths, digits.PREPROCESSING))
    splits = digits.load_splits()
    named = {int(name.split("_")[1].split(".")[0]) for name in shipped.names()}
    assert named == set(splits["calibration"].indices.tolist()) and not named & set(splits["test"].indices.tolist())
    with pytest.raises(SystemExit, match="not empty"):
        digits.main([str(tmp_path / "again")])  # never writes over a folder


def test_dataset_names_and_the_refusal_to_calibrate_on_the_test_split():
    assert parse_dataset("digits") == DatasetSpec("digits", "test")
    assert parse_dataset("digits", for_calibration=True) == DatasetSpec("digits", "train")
    assert str(parse_dataset("digits:val", for_calibration=True)) == "digits:val"
    with pytest.raises(InputError, match="held-out test split is for verification only; calibrate on digits:train"):
        parse_dataset("digits:test", for_calibration=True)
    with pytest.raises(InputError, match=r"unknown; bundled: digits\[:train\|val\|test\]"):
        parse_dataset("imagenet")
    with pytest.raises(InputError, match="has splits train, val, test"):
        parse_dataset("digits:calibration")


def test_a_dataset_split_preprocesses_exactly_like_its_png_files(calibration_dir):
    """The same image from `--dataset digits:train` and from calibration/digits gives the same
    array (and so the same calibration fingerprint)."""
    train = dataset_images(parse_dataset("digits:train"))
    files = list_images(calibration_dir)
    by_name = dict(zip(train.names(), train.items))
    first = files.paths[:5]
    pixels = [by_name[f"digits:train/{path.stem.split('_')[1]}"] for path in first]
    assert np.array_equal(load_batch(first, digits.PREPROCESSING), load_batch(pixels, digits.PREPROCESSING))


def test_worker_threads_decode_the_same_inputs_in_the_same_order():
    images = dataset_images(parse_dataset("digits:val"))
    in_process = InputSet(paths=images.items, prep=digits.PREPROCESSING, workers=0)
    by_workers = InputSet(paths=images.items, prep=digits.PREPROCESSING, workers=2)
    chunks = list(by_workers.chunks(100))
    assert [len(c) for c in chunks] == [100, 100, 59]
    assert np.array_equal(np.concatenate(chunks), np.concatenate(list(in_process.chunks(100))))


def test_a_bad_image_decoded_by_a_worker_thread_is_one_line_naming_it(tmp_path):
    good = tmp_path / "a.png"
    digits.to_pil(digits.load_splits()["val"].images[0]).save(good)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"b.png: not a readable image"):
        list(InputSet(paths=[good] * 300 + [bad], prep=digits.PREPROCESSING, workers=2).chunks(100))


@pytest.mark.parametrize(
    "count, requested, cpus, expected",
    [(100, None, 8, 0), (257, None, 2, 2), (50_000, None, 64, 8), (50_000, 0, 8, 0), (10, 3, 8, 3)],
)
def test_decode_workers(count, requested, cpus, expected):
    assert decode_workers(count, requested, cpus) == expected


def test_decode_workers_refuses_a_negative_count():
    with pytest.raises(InputError, match="--workers -1"):
        decode_workers(1000, -1)


def test_rate_text_gives_rate_and_time_left():
    assert rate_text(0, 20_000, 0.0) == "0/20,000 images"
    assert rate_text(2_560, 20_000, 3.2) == "2,560/20,000 images, 800 images/s, ETA 22 s"
    assert rate_text(1_000, 50_000, 10.0).endswith("ETA 8 min")
    assert rate_text(500, 500, 1.0) == "500/500 images, 500 images/s"


def test_verify_bench_and_build_take_a_dataset(seeded_chain, tmp_path):
    """--dataset digits:test on verify (overlap 0 against a build calibrated on calibration/digits),
    digits:train finds the calibration images by their pixels; build refuses the test split and
    --calib with --dataset; bench times real images and says so."""
    import json

    checkpoint, fp32, int8 = seeded_chain["checkpoint"], seeded_chain["fp32"], seeded_chain["int8"]
    report = tmp_path / "v.json"
    result = run_cli("verify", "-c", checkpoint, int8, "--dataset", "digits:test", "--report", report)
    assert result.returncode in (0, 1), result.stderr  # an untrained model's gates are not the point
    data = json.loads(report.read_text())
    assert data["samples"] == 500 and data["artifacts"][0]["calibration_overlap"] == 0
    assert data["reference"]["inputs"] == "500 images of digits:test (labelled)"
    # this checkpoint was not trained here on these splits: the test split may not be held out for it, and verify says so
    assert "is held out only for models trained on digits/2" in data["reference"]["warnings"][0]
    result = run_cli("verify", "-c", checkpoint, int8, "--dataset", "digits:train", "--report", report)
    assert json.loads(report.read_text())["artifacts"][0]["calibration_overlap"] == 16  # the 16 it was calibrated on, found by pixels
    assert "inputs were calibration inputs of this artifact (e.g. " in result.stderr
    assert_one_line_error(run_cli("build", fp32, "--precision", "int8", "--dataset", "digits:test"), 2, "held-out test split is for verification only")
    assert_one_line_error(
        run_cli("build", fp32, "--precision", "int8", "--dataset", "digits", "--calib", seeded_chain["folder"]), 2, "not both"
    )
    assert_one_line_error(run_cli("verify", "-c", checkpoint, int8, "--dataset", "digits", "--random", "4"), 2, "exactly one of --data DIR, --dataset")
    timed = run_cli("bench", int8, "--dataset", "digits:val", "--batch-sizes", "4", "--max-time", "0.2", "--warmup", "0", "--json")
    assert timed.returncode == 0, timed.stderr
    assert json.loads(timed.stdout)["settings"]["inputs"] == "4 images of digits:val"


def test_build_calibrates_on_the_training_split_by_name(seeded_chain, tmp_path):
    from dropcov_deploy.manifest import Manifest

    out = tmp_path / "m.int8.cpu.onnx"
    # one runtime and form: this test is about where the calibration images come from, not the CPU choice
    result = run_cli(
        "build", seeded_chain["fp32"], "--precision", "int8", "--dataset", "digits", "--calib-size", "16", "--runtime", "onnxruntime", "--qdq-form", "u8s8", "--out", out
    )
    assert result.returncode == 0, result.stderr
    calibration = Manifest.read(out).get("calibration")
    assert calibration["source"] == "digits:train" and calibration["images"] == 16
    train = set(dataset_images(parse_dataset("digits:train")).names())
    assert len(calibration["files"]) == 16 and set(calibration["files"]) <= train


def test_predict_takes_folders_and_globs_in_batches(seeded_chain, calibration_dir, tmp_path):
    """A folder gives its images (recursively, sorted), a quoted glob is expanded, the batch size
    changes nothing but memory; a glob that matches nothing, or a folder with no images, is one line."""
    import json

    int8 = seeded_chain["int8"]
    folder = run_cli("predict", int8, calibration_dir / "3", "--json", "--batch-size", "7")
    assert folder.returncode == 0, folder.stderr
    rows = json.loads(folder.stdout)
    assert len(rows) == 30 and [r["image"] for r in rows] == sorted(r["image"] for r in rows)
    globbed = json.loads(run_cli("predict", int8, str(calibration_dir / "3" / "*.png"), "--json").stdout)
    assert [r["top"] for r in globbed] == [r["top"] for r in rows]  # batch 32 and batch 7 agree
    assert_one_line_error(run_cli("predict", int8, str(tmp_path / "none" / "*.png")), 2, "no file matches")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("predict", int8, tmp_path / "empty"), 2, "a folder with no images")
