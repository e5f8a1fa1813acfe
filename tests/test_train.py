"""Training on real data: single process, torchrun DDP on the CPU, resume after a kill."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli, run_cli_subprocess

from dropcov_deploy.data import digits
from dropcov_deploy.errors import InputError
from dropcov_deploy.models import load_checkpoint_with_info
from dropcov_deploy.train import TrainConfig, last_path_for, train

ARCH = "resnet10_compact_ACD"


def test_digits_splits_are_disjoint_real_and_fixed():
    splits = digits.load_splits()
    sizes = {name: len(split.labels) for name, split in splits.items()}
    assert sizes == {"train": 1038, "val": 259, "test": 500, "calibration": 300}
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797  # every image used once, none twice
    index = {name: set(split.indices.tolist()) for name, split in splits.items()}
    assert not index["train"] & index["val"] and not index["train"] & index["test"] and not index["val"] & index["test"]
    assert index["calibration"] <= index["train"]  # calibration comes from the training split only
    assert np.bincount(splits["test"].labels).tolist() == [50] * 10 and np.bincount(splits["calibration"].labels).tolist() == [30] * 10
    again = digits.load_splits()
    assert all(np.array_equal(again[name].images, splits[name].images) for name in splits)


@pytest.mark.slow
def test_one_epoch_writes_our_checkpoint_format(tmp_path):
    result = train(TrainConfig(arch=ARCH, dataset="digits", epochs=1, out=tmp_path / "m.pt", widths=(8, 16, 32, 64), dim=16))
    assert result.best_path.exists() and result.last_path == tmp_path / "m-last.pt" and result.last_path.exists()
    loaded = load_checkpoint_with_info(result.best_path)
    info = loaded.info
    assert (info.arch, info.dim, info.num_classes, info.epoch) == (ARCH, 16, 10, 1)
    assert info.class_names == [str(i) for i in range(10)] and info.input_size == 32
    assert info.preprocessing == digits.PREPROCESSING
    assert info.accuracy == pytest.approx(result.history[0].val_accuracy)
    assert loaded.model.widths == (8, 16, 32, 64)
    record = torch.load(result.last_path, weights_only=True)
    assert {"optimizer", "scheduler", "history", "config", "best_accuracy"} <= set(record["training"])
    # the DropCov training path ran: the ECA branch (training only) received gradients
    fresh = torch.load(result.last_path, weights_only=True)["state_dict"]["eca_layer.conv.weight"]
    from dropcov_deploy.models import create_model

    torch.manual_seed(0)
    initial = create_model(ARCH, num_classes=10, dim=16, widths=(8, 16, 32, 64)).state_dict()["eca_layer.conv.weight"]
    assert not torch.equal(fresh, initial)


@pytest.mark.slow
def test_image_folder_training(tmp_path):
    splits = digits.load_splits()
    root = tmp_path / "data"
    digits.write_image_folder(digits.DigitsSplit(splits["train"].images[:200], splits["train"].labels[:200]), root / "train")
    digits.write_image_folder(digits.DigitsSplit(splits["val"].images[:50], splits["val"].labels[:50]), root / "val")
    result = train(TrainConfig(arch=ARCH, data=root, epochs=1, image_size=32, out=tmp_path / "f.pt", dim=8))
    info = load_checkpoint_with_info(result.best_path).info
    assert info.class_names == [str(i) for i in range(10)] and info.preprocessing.crop == 32


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(dataset="imagenet"), "--dataset 'imagenet' is unknown"),
        (dict(), "exactly one of --data DIR or --dataset digits"),
        (dict(data="/nonexistent/data"), "expected an ImageFolder tree"),
        (dict(dataset="digits", widths=(8, 16)), "four stage widths"),
    ],
)
def test_bad_training_input(tmp_path, config, message):
    with pytest.raises(InputError, match=message):
        train(TrainConfig(arch=ARCH, out=tmp_path / "m.pt", epochs=1, **config))


def test_resume_refuses_foreign_checkpoints(tmp_path, authors_checkpoint):
    path, _ = authors_checkpoint()
    result = run_cli("train", ARCH, "--dataset", "digits", "--resume", path, "--out", tmp_path / "m.pt")
    assert_one_line_error(result, 2, str(path), "not a resumable checkpoint")


@pytest.mark.slow
def test_torchrun_ddp_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp.pt"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [*torchrun, "-m", "dropcov_deploy", "train", ARCH, "--dataset", "digits", "--epochs", "2", "--dim", "16", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("best val accuracy") == 1  # rank 0 alone reports
    record = torch.load(last_path_for(out), weights_only=True)
    assert record["training"]["world_size"] == 2 and record["epoch"] == 2
    assert len(record["training"]["history"]) == 2
    assert load_checkpoint_with_info(out).info.num_classes == 10


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint_and_finishes(tmp_path):
    out = tmp_path / "run.pt"
    last = last_path_for(out)
    command = [sys.executable, "-m", "dropcov_deploy", "train", ARCH, "--dataset", "digits", "--epochs", "4", "--dim", "16", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not last.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert last.exists(), "no checkpoint within 5 minutes"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= killed_at < 4
    assert not list(tmp_path.glob(".*staging"))  # the kill left no half-written file behind

    result = run_cli_subprocess("train", ARCH, "--dataset", "digits", "--epochs", "4", "--resume", last, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    record = torch.load(last, weights_only=True)
    assert record["epoch"] == 4
    assert [h["epoch"] for h in record["training"]["history"]] == list(range(1, 5))
