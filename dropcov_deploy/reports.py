"""Reports for people: Markdown tables and PNG plots (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dropcov_deploy.atomic import atomic_write


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join("-" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> Path:
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def plot_training(history: Sequence[Any], path: Path) -> Path:
    """Loss and accuracy per epoch: one picture says whether training converged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [h.train_loss for h in history], marker="o", label="train")
    left.plot(epochs, [h.val_loss for h in history], marker="o", label="val")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.set_title("loss")
    left.legend()
    right.plot(epochs, [h.train_accuracy for h in history], marker="o", label="train")
    right.plot(epochs, [h.val_accuracy for h in history], marker="o", label="val")
    right.set_xlabel("epoch")
    right.set_ylabel("top-1 accuracy")
    right.set_ylim(0, 1.01)
    right.set_title("accuracy")
    right.legend()
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, dpi=110, format="png")

    atomic_write(Path(path), save)
    plt.close(fig)
    return Path(path)
