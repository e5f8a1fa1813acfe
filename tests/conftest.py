import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from reference import authors_state_dict  # noqa: E402


@pytest.fixture
def authors_checkpoint(tmp_path):
    """Factory: write a checkpoint as the authors' main.py saves it (DataParallel keys)."""

    def make(arch="resnet18_ACD", dim=16, num_classes=10, seed=0, name="model_best.pth.tar"):
        state = authors_state_dict(arch, dim, num_classes, seed)
        path = tmp_path / name
        torch.save(
            {
                "epoch": 90,
                "arch": arch,
                "state_dict": {f"module.{k}": v for k, v in state.items()},
                "best_acc1": torch.tensor(75.2),
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
            },
            path,
        )
        return path, state

    return make


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory):
    """A real trained compact model (digits, 10 epochs, ~45 s on 2 cores) and its FP32 export.

    Shared by the build, verify and bench tests: random weights would make top-1 agreement
    and accuracy meaningless.
    """
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("trained")
    result = train(TrainConfig(arch="resnet10_compact_ACD", dataset="digits", epochs=10, out=folder / "model.pt"), show_progress=False)
    assert result.best_accuracy >= 0.95
    return result.best_path, export_onnx(result.best_path, folder / "model.onnx").path
