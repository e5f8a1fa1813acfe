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
