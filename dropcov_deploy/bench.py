"""`bench`: latency and throughput that can be trusted, against PyTorch eager in the same run.

Warm-up by time, then timed iterations until the running median is stable or the
time budget runs out (trtexec's habits). Inputs are prepared outside the timed region;
device synchronisation is inside it (CUDA for torch; TensorRT times the GPU with CUDA
events). Every result reports its iteration count and coefficient of variation, and a
warning when the spread is too high to trust.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dropcov_deploy.backends import artifact_kind
from dropcov_deploy.errors import InputError

MIN_ITERATIONS = 20
STABLE_WINDOW = 10
STABLE_CHANGE = 0.01  # the median moved less than 1% over the last window
HIGH_CV = 0.10


@dataclass
class BenchResult:
    backend: str
    artifact: str
    precision: str
    batch_size: int
    latency_ms: dict[str, float]
    throughput: float
    iterations: int
    cv: float
    stable: bool
    speedup_vs_torch: float | None = None
    timing: str = "host wall clock"
    warnings: list[str] = field(default_factory=list)


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(), "device": device}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    import sys

    if "torch" in sys.modules:
        info["torch"] = sys.modules["torch"].__version__
    return info


def measure(run: Callable[[], float | None], warmup_s: float, max_time_s: float) -> tuple[list[float], bool]:
    """Warm up for `warmup_s`, then time `run` until the median is stable or `max_time_s` passes.

    `run` returns its own duration in ms when it has a better clock (CUDA events), else None.
    """
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        run()
    samples: list[float] = []
    medians: list[float] = []
    deadline = time.perf_counter() + max_time_s
    stable = False
    while time.perf_counter() < deadline or len(samples) < 3:
        started = time.perf_counter()
        measured = run()
        samples.append(measured if measured is not None else (time.perf_counter() - started) * 1000)
        if len(samples) >= MIN_ITERATIONS and len(samples) % STABLE_WINDOW == 0:
            medians.append(statistics.median(samples))
            if len(medians) >= 2 and abs(medians[-1] - medians[-2]) <= STABLE_CHANGE * medians[-2]:
                stable = True
                break
    return samples, stable


def summarize(samples: list[float]) -> dict[str, float]:
    values = np.asarray(samples)
    return {
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "std": float(values.std()),
    }


def _torch_runner(checkpoint: Path, device: str, threads: int | None):
    import torch

    from dropcov_deploy.models import load_checkpoint_with_info

    if threads:
        torch.set_num_threads(threads)
    loaded = load_checkpoint_with_info(checkpoint)
    model = loaded.model.to(device)

    def make(batch: np.ndarray) -> Callable[[], None]:
        x = torch.from_numpy(batch).to(device)

        def run() -> None:
            with torch.inference_mode():
                model(x)
            if device == "cuda":
                torch.cuda.synchronize()

        return run

    return make, loaded.info


def _artifact_runner(path: Path, device: str, threads: int | None):
    from dropcov_deploy.backends import open_runner

    runner = open_runner(path, device, threads)
    if artifact_kind(path) == "tensorrt":
        def make(batch: np.ndarray) -> Callable[[], float]:
            runner(batch)  # copies inputs to the device, sets shapes

            def run() -> float:
                return runner.infer_device_only()

            return run

        return make, "GPU compute (CUDA events)"

    def make_ort(batch: np.ndarray) -> Callable[[], None]:
        feeds = {runner.input_names[0]: np.ascontiguousarray(batch)}

        def run() -> None:
            runner.session.run(runner.output_names, feeds)

        return run

    return make_ort, "host wall clock (ONNX Runtime run is synchronous)"


def _batch_fits(manifest: dict[str, Any] | None, batch_size: int) -> bool:
    limits = (manifest or {}).get("input", {}).get("batch", {})
    if not limits:
        return True
    return limits.get("min", 1) <= batch_size <= (limits.get("max") or batch_size)


def bench(
    artifacts: list[str | Path],
    *,
    checkpoint: Path | None = None,
    batch_sizes: list[int] = (1, 8, 32),
    device: str = "cpu",
    threads: int | None = None,
    warmup_s: float = 1.0,
    max_time_s: float = 5.0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Time PyTorch eager (when given a checkpoint) and every artifact at each batch size."""
    from dropcov_deploy.manifest import artifact_manifest

    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: use cpu or cuda")
    if not batch_sizes or min(batch_sizes) < 1:
        raise InputError("--batch-sizes: give positive integers, e.g. 1,8,32")
    if warmup_s < 0 or max_time_s <= 0:
        raise InputError("--warmup must be >= 0 and --max-time > 0 seconds")
    paths = [Path(a) for a in artifacts]
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file")
        artifact_kind(path)
    manifests = {path: artifact_manifest(path) for path in paths}
    shapes = {tuple(m["input"]["shape"][1:]) for m in manifests.values()}
    subjects: list[tuple[str, str, str, Callable, str, dict | None]] = []
    image_shape = None
    if checkpoint is not None:
        make, info = _torch_runner(Path(checkpoint), device, threads)
        size = info.resolved_preprocessing().crop
        image_shape = (3, size, size)
        subjects.append(("torch", str(checkpoint), "fp32", make, "host wall clock" + (" + cuda.synchronize" if device == "cuda" else ""), None))
    if image_shape is None:
        if len(shapes) != 1:
            raise InputError(f"artifacts take different input shapes {sorted(shapes)}; bench them separately")
        image_shape = tuple(int(d) for d in next(iter(shapes)))
    for path in paths:
        if tuple(manifests[path]["input"]["shape"][1:]) != image_shape:
            raise InputError(f"{path}: takes input {manifests[path]['input']['shape'][1:]}, others take {list(image_shape)}")
        make, clock = _artifact_runner(path, device, threads)
        backend = "tensorrt" if artifact_kind(path) == "tensorrt" else f"onnxruntime-{device}"
        subjects.append((backend, str(path), manifests[path].get("precision", "fp32"), make, clock, manifests[path]))

    results: list[BenchResult] = []
    rng = np.random.default_rng(0)
    for batch_size in batch_sizes:
        batch = rng.standard_normal((batch_size, *image_shape), dtype=np.float32)  # prepared outside the timed region
        for backend, artifact, precision, make, clock, manifest in subjects:
            if not _batch_fits(manifest, batch_size):
                continue
            progress(f"{backend} {Path(artifact).name} batch {batch_size}")
            samples, stable = measure(make(batch), warmup_s, max_time_s)
            latency = summarize(samples)
            cv = latency["std"] / latency["mean"] if latency["mean"] else 0.0
            warnings = []
            if cv > HIGH_CV:
                warnings.append(f"coefficient of variation {cv:.2f} > {HIGH_CV}: timings unstable (other load? too few iterations?)")
            if not stable:
                warnings.append(f"median not stable within --max-time {max_time_s} s")
            results.append(BenchResult(backend, artifact, precision, batch_size, latency, batch_size * 1000.0 / latency["p50"],
                                       len(samples), cv, stable, timing=clock, warnings=warnings))
    baseline = {r.batch_size: r.latency_ms["p50"] for r in results if r.backend == "torch"}
    for result in results:
        if result.batch_size in baseline:
            result.speedup_vs_torch = baseline[result.batch_size] / result.latency_ms["p50"]
    return {"machine": machine_info(device), "settings": {"warmup_s": warmup_s, "max_time_s": max_time_s, "threads": threads,
                                                          "batch_sizes": list(batch_sizes)},
            "results": [asdict(r) for r in results]}


def plot_bench(report: dict[str, Any], path: Path) -> Path:
    """Latency (p50) and throughput against batch size, one line per backend and artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dropcov_deploy.atomic import atomic_write

    series: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        series.setdefault(f"{r['backend']} {r['precision']} {Path(r['artifact']).name}", []).append(r)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for label, rows in series.items():
        rows = sorted(rows, key=lambda r: r["batch_size"])
        sizes = [r["batch_size"] for r in rows]
        left.plot(sizes, [r["latency_ms"]["p50"] for r in rows], marker="o", label=label)
        right.plot(sizes, [r["throughput"] for r in rows], marker="o", label=label)
    for axis, title, unit in ((left, "latency (p50)", "ms"), (right, "throughput", "images/s")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle(report["machine"].get("cpu", ""), fontsize=9)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)


def render_bench(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from dropcov_deploy.console import err, out

    table = Table(title=f"bench on {escape(str(report['machine'].get('cpu', '')))} ({report['machine']['device']})")
    for column in ("backend", "artifact", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std", "img/s", "iters", "vs torch"):
        table.add_column(column, justify="right" if column not in ("backend", "artifact", "precision") else "left")
    for r in report["results"]:
        lat = r["latency_ms"]
        table.add_row(r["backend"], escape(Path(r["artifact"]).name), r["precision"], str(r["batch_size"]), f"{lat['p50']:.2f}",
                      f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{lat['mean']:.2f}", f"{lat['std']:.2f}", f"{r['throughput']:.1f}",
                      str(r["iterations"]), "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x")
    out.print(table)
    for r in report["results"]:
        for warning in r["warnings"]:
            err.print(f"[yellow]warning:[/] {escape(r['backend'])} {escape(Path(r['artifact']).name)} batch {r['batch_size']}: {escape(warning)}", highlight=False)
