"""`bench`: latency and throughput that can be trusted, against PyTorch eager in the same run.

Warm-up by time, then timed iterations until the running median is stable or the
time budget runs out (trtexec's habits). Inputs are prepared outside the timed region;
device synchronisation is inside it (CUDA for torch; TensorRT times the GPU with CUDA
events). Every result reports its iteration count and coefficient of variation, and a
warning when the spread is too high to trust.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.backends import DeviceTimed, Runner, open_runner
from dropcov_deploy.errors import InputError
from dropcov_deploy.manifest import BatchRange, Manifest, artifact_kind

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


def _torch_timer(checkpoint: Path, device: str, threads: int | None):
    """PyTorch eager, the baseline: a maker of timed calls per batch, and what the checkpoint says."""
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


def _runner_timer(runner: Runner) -> tuple[Callable[[np.ndarray], Callable[[], float | None]], str]:
    """A maker of timed calls for an artifact's runner: device time where the runner can measure
    it (TensorRT: CUDA events around the engine alone), else the host's wall clock around `infer`."""
    if isinstance(runner, DeviceTimed):
        return runner.device_timer, runner.device_timing

    def make(batch: np.ndarray) -> Callable[[], None]:
        feeds = {runner.input_names[0]: np.ascontiguousarray(batch)}

        def run() -> None:
            runner.infer(feeds)

        return run

    return make, runner.timing


@dataclass
class _Subject:
    backend: str
    artifact: str
    precision: str
    make: Callable[[np.ndarray], Callable[[], float | None]]
    timing: str
    batch: BatchRange | None = None


def bench(
    artifacts: Sequence[str | Path],
    *,
    checkpoint: Path | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    device: str = "cpu",
    threads: int | None = None,
    warmup_s: float = 1.0,
    max_time_s: float = 5.0,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Time PyTorch eager (when given a checkpoint) and every artifact at each batch size."""
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
    manifests = {path: Manifest.read(path) for path in paths}
    specs = {path: manifests[path].require_input(path) for path in paths}
    shapes = {spec.image_shape for spec in specs.values()}
    subjects: list[_Subject] = []
    image_shape = None
    if checkpoint is not None:
        make, info = _torch_timer(Path(checkpoint), device, threads)
        size = info.resolved_preprocessing().crop
        image_shape = (3, size, size)
        subjects.append(_Subject("torch", str(checkpoint), "fp32", make, "host wall clock" + (" + cuda.synchronize" if device == "cuda" else "")))
    if image_shape is None:
        if len(shapes) != 1:
            raise InputError(f"artifacts take different input shapes {sorted(shapes)}; bench them separately")
        image_shape = next(iter(shapes))
    with contextlib.ExitStack() as runners:
        for path in paths:
            if specs[path].image_shape != image_shape:
                raise InputError(f"{path}: takes input {list(specs[path].image_shape)}, others take {list(image_shape)}")
            runner = runners.enter_context(open_runner(path, device, threads))
            make, timing = _runner_timer(runner)
            subjects.append(_Subject(runner.backend, str(path), manifests[path].precision.value, make, timing, specs[path].batch))
        results = _measure_all(subjects, batch_sizes, image_shape, warmup_s, max_time_s, progress)
    baseline = {r.batch_size: r.latency_ms["p50"] for r in results if r.backend == "torch"}
    for result in results:
        if result.batch_size in baseline:
            result.speedup_vs_torch = baseline[result.batch_size] / result.latency_ms["p50"]
    return {
        "machine": machine_info(device),
        "settings": {"warmup_s": warmup_s, "max_time_s": max_time_s, "threads": threads, "batch_sizes": list(batch_sizes)},
        "results": [asdict(r) for r in results],
    }


def _measure_all(
    subjects: list[_Subject], batch_sizes: Sequence[int], image_shape: tuple[int, ...], warmup_s: float, max_time_s: float, progress: Callable[[str], None]
) -> list[BenchResult]:
    results: list[BenchResult] = []
    rng = np.random.default_rng(0)
    for batch_size in batch_sizes:
        batch = rng.standard_normal((batch_size, *image_shape), dtype=np.float32)  # prepared outside the timed region
        for subject in subjects:
            if subject.batch is not None and not subject.batch.fits(batch_size):
                continue
            progress(f"{subject.backend} {Path(subject.artifact).name} batch {batch_size}")
            samples, stable = measure(subject.make(batch), warmup_s, max_time_s)
            latency = summarize(samples)
            cv = latency["std"] / latency["mean"] if latency["mean"] else 0.0
            warnings = []
            if cv > HIGH_CV:
                warnings.append(f"coefficient of variation {cv:.2f} > {HIGH_CV}: timings unstable (other load? too few iterations?)")
            if not stable:
                warnings.append(f"median not stable within --max-time {max_time_s} s")
            results.append(
                BenchResult(
                    subject.backend,
                    subject.artifact,
                    subject.precision,
                    batch_size,
                    latency,
                    batch_size * 1000.0 / latency["p50"],
                    len(samples),
                    cv,
                    stable,
                    timing=subject.timing,
                    warnings=warnings,
                )
            )
    return results
