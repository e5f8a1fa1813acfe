"""`dropcov-deploy demo`: the whole chain on bundled data, in minutes, on a laptop CPU.

Train the compact DropCov ResNet on scikit-learn's digits, export it, evaluate every
artifact on the held-out calibration images, and write a report. Steps that are not
built yet are listed as missing, never faked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.export import StepReporter, _quiet_step

DEMO_ARCH = "resnet10_compact_ACD"
DEMO_EPOCHS = 10
REPO_CALIBRATION = Path(__file__).resolve().parents[1] / "calibration" / "digits"
MISSING_STEPS = {
    "build fp16 / int8": "FP16 and INT8 artifacts (issue: dropcov-deploy build)",
    "verify": "parity gates per artifact (issue: dropcov-deploy verify)",
    "bench": "latency and throughput (issue: dropcov-deploy bench)",
}


@dataclass
class ArtifactScore:
    name: str
    path: Path
    backend: str
    precision: str
    accuracy: float
    top1_agreement: float
    max_relative_error: float
    nonfinite: int


@dataclass
class DemoResult:
    out: Path
    checkpoint: Path
    onnx: Path
    report: Path
    plot: Path
    calibration: Path
    val_accuracy: float
    scores: list[ArtifactScore] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def calibration_folder(out: Path) -> Path:
    """The repository's calibration/digits, or the same images regenerated from the bundled data."""
    if REPO_CALIBRATION.is_dir() and any(REPO_CALIBRATION.iterdir()):
        return REPO_CALIBRATION
    from dropcov_deploy.data import digits

    folder = out / "calibration" / "digits"
    if not folder.exists():
        digits.write_image_folder(digits.load_splits()["calibration"], folder)
    return folder


def score_artifacts(checkpoint: Path, onnx_path: Path, images_dir: Path) -> list[ArtifactScore]:
    """Held-out accuracy of PyTorch and of each artifact, and agreement with PyTorch."""
    import torch

    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from dropcov_deploy.data.images import list_images, load_batch
    from dropcov_deploy.metrics import relative_error
    from dropcov_deploy.models import load_checkpoint_with_info

    loaded = load_checkpoint_with_info(checkpoint)
    image_set = list_images(images_dir)
    batch = load_batch(image_set.paths, loaded.info.resolved_preprocessing())
    labels = np.asarray(image_set.labels)
    with torch.no_grad():
        reference = loaded.model(torch.from_numpy(batch)).numpy()
    ort = OnnxRuntimeRunner(onnx_path)(batch)
    scores = []
    for name, path, backend, precision, logits in (
        ("PyTorch (eager, FP32)", checkpoint, "torch", "fp32", reference),
        ("ONNX FP32", onnx_path, "onnxruntime-cpu", "fp32", ort),
    ):
        scores.append(
            ArtifactScore(
                name=name, path=path, backend=backend, precision=precision,
                accuracy=float((logits.argmax(1) == labels).mean()),
                top1_agreement=float((logits.argmax(1) == reference.argmax(1)).mean()),
                max_relative_error=relative_error(logits, reference),
                nonfinite=int((~np.isfinite(logits)).sum()),
            )
        )
    return scores


def run_demo(out: Path, epochs: int = DEMO_EPOCHS, step: StepReporter = _quiet_step, show_progress: bool = True) -> DemoResult:
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.reports import plot_training
    from dropcov_deploy.train import TrainConfig, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    trained = train(TrainConfig(arch=DEMO_ARCH, dataset="digits", epochs=epochs, out=out / "model.pt"), show_progress=show_progress)
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    exported = export_onnx(trained.best_path, out / "model.onnx", step=step)
    seconds["export"] = time.perf_counter() - started

    started = time.perf_counter()
    calibration = calibration_folder(out)
    with step(f"scoring artifacts on {calibration}"):
        scores = score_artifacts(trained.best_path, exported.path, calibration)
    seconds["evaluate"] = time.perf_counter() - started

    plot = plot_training(trained.history, out / "training.png")
    result = DemoResult(
        out=out, checkpoint=trained.best_path, onnx=exported.path, report=out / "report.md", plot=plot,
        calibration=calibration, val_accuracy=trained.best_accuracy, scores=scores,
        missing=dict(MISSING_STEPS), seconds=seconds,
    )
    write_report(result, trained.history, exported.manifest)
    return result


def write_report(result: DemoResult, history: list[Any], manifest: dict[str, Any]) -> Path:
    from dropcov_deploy.reports import markdown_table, write_text

    rows = [
        [s.name, s.path.name, s.backend, s.precision, f"{s.accuracy:.4f}", f"{s.top1_agreement:.4f}", f"{s.max_relative_error:.1e}", s.nonfinite]
        for s in result.scores
    ]
    text = "\n\n".join(
        [
            "# dropcov-deploy demo",
            f"Model: `{DEMO_ARCH}` (d = {manifest['dim']}) trained on scikit-learn's digits, "
            f"best validation accuracy {result.val_accuracy:.4f}.",
            f"Artifacts scored on {len(list(result.calibration.rglob('*.png')))} held-out images in `{result.calibration}` "
            "(never used for training or model selection).",
            markdown_table(["artifact", "file", "backend", "precision", "held-out accuracy", "top-1 agreement", "max rel. error", "non-finite"], rows),
            "## Training",
            f"![training curves]({result.plot.name})",
            markdown_table(
                ["epoch", "train loss", "train acc", "val loss", "val acc", "drop rate", "img/s"],
                [[h.epoch, f"{h.train_loss:.4f}", f"{h.train_accuracy:.4f}", f"{h.val_loss:.4f}", f"{h.val_accuracy:.4f}",
                  "-" if h.drop_rate is None else f"{h.drop_rate:.3f}", f"{h.images_per_second:.0f}"] for h in history],
            ),
            "## Not yet available",
            "\n".join(f"- {name}: {why}" for name, why in result.missing.items()),
            "## Time",
            "\n".join(f"- {name}: {value:.1f} s" for name, value in result.seconds.items()),
        ]
    )
    return write_text(result.report, text + "\n")
