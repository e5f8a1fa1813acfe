"""`dropcov-deploy demo`: the whole chain on bundled data, in minutes, on a laptop CPU.

Train the compact DropCov ResNet on scikit-learn's digits, export it, build FP16 and INT8
for the best target this machine has (TensorRT with a GPU, else ONNX Runtime, and it says
which) calibrating on calibration/digits (a subset of the training split), verify every
artifact on the held-out test split (digits:test: never used to train, select a checkpoint,
calibrate or choose a precision treatment), benchmark them against PyTorch, and write a
Markdown report with plots. Returns data; the CLI renders it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dropcov_deploy.steps import StepReporter, quiet_step

if TYPE_CHECKING:
    from dropcov_deploy.train import TrainProgress

DEMO_ARCH = "resnet10_compact_ACD"
DEMO_EPOCHS = 10
REPO_CALIBRATION = Path(__file__).resolve().parents[1] / "calibration" / "digits"
TEST_SPLIT = "digits:test"  # what the demo verifies on: held out from everything else
BENCH_BATCH_SIZES = (1, 8)
CALIBRATION_NOTE = "30 images per class from the training split"
BENCH_MAX_TIME_S = 2.0


@dataclass
class DemoResult:
    out: Path
    checkpoint: Path
    onnx: Path
    report: Path
    plot: Path
    calibration: Path
    val_accuracy: float
    verify: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    bench_plot: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    backend_note: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.verify.get("passed"))


def calibration_folder(out: Path) -> Path:
    """The repository's calibration/digits (30 per class of the training split), or the same images regenerated from the bundled data."""
    if REPO_CALIBRATION.is_dir() and any(REPO_CALIBRATION.iterdir()):
        return REPO_CALIBRATION
    from dropcov_deploy.data import digits

    folder = out / "calibration" / "digits"
    if not folder.exists():
        digits.write_image_folder(digits.load_splits()["calibration"], folder)
    return folder


def build_artifacts(onnx_path: Path, calibration: Path, step: StepReporter) -> tuple[list[Path], str]:
    """FP16 and INT8 for the target this machine has: TensorRT engines on a GPU, else ONNX Runtime."""
    from dropcov_deploy.backends import preferred_target
    from dropcov_deploy.build import BuildOptions, build
    from dropcov_deploy.precision import Precision

    target, reason = preferred_target()
    note = f"TensorRT: {reason}" if target.accelerated else f"ONNX Runtime on the CPU (no TensorRT engine: {reason})"
    artifacts = [onnx_path]
    for precision in (Precision.FP16, Precision.INT8):
        result = build(onnx_path, BuildOptions(precision=precision, calib=calibration, backend=target.name), step=step)
        artifacts += [result.precision_onnx] + ([result.engine] if result.engine is not None else [])
    return artifacts, note


def run_demo(out: Path, epochs: int = DEMO_EPOCHS, step: StepReporter = quiet_step, progress: TrainProgress | None = None) -> DemoResult:
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.reports import plot_training
    from dropcov_deploy.train import TrainConfig, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    trained = train(TrainConfig(arch=DEMO_ARCH, dataset="digits", epochs=epochs, out=out / "model.pt"), progress=progress)
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    exported = export_onnx(trained.best_path, out / "model.onnx", step=step)
    seconds["export"] = time.perf_counter() - started

    calibration = calibration_folder(out)
    started = time.perf_counter()
    artifacts, backend_note = build_artifacts(exported.path, calibration, step)
    seconds["build"] = time.perf_counter() - started

    from dropcov_deploy.bench import bench
    from dropcov_deploy.reports import plot_bench, write_json
    from dropcov_deploy.verify import verify

    started = time.perf_counter()
    paths = artifacts
    verified = verify(trained.best_path, paths, dataset=TEST_SPLIT, save_reference=out / "reference.npz", step=step).to_dict()
    write_json(out / "verify.json", verified)
    seconds["verify"] = time.perf_counter() - started

    started = time.perf_counter()
    with step(f"benchmarking PyTorch and {len(paths)} artifacts at batch {', '.join(map(str, BENCH_BATCH_SIZES))}"):
        timed = bench(paths, checkpoint=trained.best_path, batch_sizes=list(BENCH_BATCH_SIZES), max_time_s=BENCH_MAX_TIME_S, warmup_s=0.5)
    write_json(out / "bench.json", timed)
    bench_png = plot_bench(timed, out / "bench.png")
    seconds["bench"] = time.perf_counter() - started

    plot = plot_training(trained.history, out / "training.png")
    result = DemoResult(
        out=out,
        checkpoint=trained.best_path,
        onnx=exported.path,
        report=out / "report.md",
        plot=plot,
        calibration=calibration,
        val_accuracy=trained.best_accuracy,
        verify=verified,
        bench=timed,
        bench_plot=bench_png,
        seconds=seconds,
        backend_note=backend_note,
    )
    write_report(result, trained.history, exported.manifest)
    return result


def _shown(path: Path) -> str:
    """The repository's calibration folder as `calibration/digits`, any other path as it is."""
    return "calibration/digits" if path == REPO_CALIBRATION else str(path)


def write_report(result: DemoResult, history: list[Any], manifest: dict[str, Any]) -> Path:
    from dropcov_deploy.reports import accuracy_drop_text, markdown_table, with_interval, write_text

    artifacts = result.verify["artifacts"]
    first = artifacts[0].get("intervals", {}) if artifacts else {}
    verify_rows = [
        [
            "PyTorch (eager, FP32)",
            "torch",
            "fp32",
            with_interval(result.verify["reference"].get("accuracy"), first.get("reference_accuracy")),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "reference",
        ]
    ]
    for a in artifacts:
        m, spread = a["metrics"], a.get("intervals") or {}
        failed = [n for n, g in a["gates"].items() if g["passed"] is False]
        undecided = [n for n, g in a["gates"].items() if g.get("decision") == "undecided"]
        verdict = "pass" if a["passed"] else "FAIL: " + ", ".join(failed)
        if undecided:
            verdict += f" ({', '.join(undecided)} undecided on this sample)"
        verify_rows.append(
            [
                Path(a["path"]).name,
                a["backend"],
                a["precision"],
                with_interval(m["accuracy"], spread.get("accuracy")),
                accuracy_drop_text(m, spread),
                with_interval(m["top1_agreement"], spread.get("top1_agreement")),
                f"{m['relative_error']:.1e}",
                f"{m['cosine_min']:.5f}",
                m["nonfinite"],
                "-" if a.get("calibration_overlap") is None else a["calibration_overlap"],
                verdict,
            ]
        )
    bench_rows = [
        [
            r["backend"],
            Path(r["artifact"]).name,
            r["precision"],
            r["batch_size"],
            f"{r['latency_ms']['p50']:.2f}",
            f"{r['latency_ms']['p90']:.2f}",
            "-" if r["latency_ms"]["p99"] is None else f"{r['latency_ms']['p99']:.2f}",  # None: fewer samples than p99 needs
            f"{r['throughput']:.0f}",
            r["iterations"],
            "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x",
        ]
        for r in result.bench["results"]
    ]
    text = "\n\n".join(
        [
            "# dropcov-deploy demo",
            f"Model: `{DEMO_ARCH}` (d = {manifest['dim']}) trained on scikit-learn's digits, best validation accuracy {result.val_accuracy:.4f}.",
            f"Backend: {result.backend_note}.",
            "## Verify",
            f"Every artifact against the PyTorch model on the {result.verify['samples']} images of `{TEST_SPLIT}`, the held-out test split: "
            f"never used to train, select the checkpoint, calibrate (calibration used `{_shown(result.calibration)}`, {CALIBRATION_NOTE}) "
            f"or choose the INT8 fc treatment. Gates per precision, point mode. Overall: {'PASS' if result.passed else 'FAIL'}. "
            "Brackets: 95% intervals (accuracy and agreement: exact binomial; accuracy drop: paired, on the images where the two models disagree). "
            f"On {result.verify['samples']} images one changed prediction moves accuracy by {100 / max(1, result.verify['samples']):.2f} points, "
            "so a gate whose bound lies inside its interval is reported undecided rather than passed or failed on chance.",
            markdown_table(
                [
                    "artifact",
                    "backend",
                    "precision",
                    "test accuracy",
                    "accuracy drop",
                    "top-1 agreement",
                    "max rel. error",
                    "min cosine",
                    "non-finite",
                    "calibration overlap",
                    "gates",
                ],
                verify_rows,
            ),
            "The test inputs, labels and PyTorch logits are saved in `reference.npz`: on a device without PyTorch, "
            f"`dropcov-deploy verify --reference reference.npz {' '.join(Path(a['path']).name for a in result.verify['artifacts'])}` "
            "gives the same table (README: Deploy to a device).",
            "## Bench",
            f"On {result.bench['machine'].get('cpu', '?')}, {result.bench['machine']['device']}; warm-up by time, "
            f"then until the median is stable or {BENCH_MAX_TIME_S:.0f} s per cell. Latency in ms.",
            markdown_table(["backend", "artifact", "precision", "batch", "p50", "p90", "p99", "images/s", "iterations", "vs PyTorch"], bench_rows),
            f"![latency and throughput]({result.bench_plot.name})" if result.bench_plot else "",
            "## Training",
            f"![training curves]({result.plot.name})",
            markdown_table(
                ["epoch", "train loss", "train acc", "val loss", "val acc", "drop rate", "img/s"],
                [
                    [
                        h.epoch,
                        f"{h.train_loss:.4f}",
                        f"{h.train_accuracy:.4f}",
                        f"{h.val_loss:.4f}",
                        f"{h.val_accuracy:.4f}",
                        "-" if h.drop_rate is None else f"{h.drop_rate:.3f}",
                        f"{h.images_per_second:.0f}",
                    ]
                    for h in history
                ],
            ),
            "## Time",
            "\n".join(f"- {name}: {value:.1f} s" for name, value in result.seconds.items()),
        ]
    )
    return write_text(result.report, text + "\n")
