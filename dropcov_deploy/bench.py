"""`bench`: latency and throughput that can be trusted, against PyTorch eager in the same run.

Two figures per backend and batch size, each compared only with its own kind:
- end-to-end (`latency_ms`, `throughput`): a host numpy batch in, host logits out, copies and
  synchronisation included, by the host clock: `runner.infer` for artifacts, and
  `torch.from_numpy -> .to(device) -> model -> .cpu()` for PyTorch. Every backend has it.
- device (`device_ms`, `device_throughput`): the compute alone on inputs already on the GPU,
  by CUDA events: TensorRT's `device_timer` (the `DeviceTimed` protocol), PyTorch on a
  pre-placed tensor, ONNX Runtime through IOBinding on a stream it shares with torch. There is
  none on the CPU: `device_ms` is then null and `device_unavailable` says why (never a made-up number).
`speedup_vs_torch` divides PyTorch's end-to-end p50 by the result's end-to-end p50, and
`device_speedup_vs_torch` device by device; a kind PyTorch lacks gives null, never a mixed ratio.
`--baseline compile` (or both) adds torch.compile (inductor) of the same model as a second
baseline, compiled per batch size outside the timed region; `speedup_vs_compile` is against it.
An ONNX model is timed in each `--runtime` given (ONNX Runtime, OpenVINO), else in the one its
build chose. Each row also says how close it is to the machine's limit (`roofline`): its
multiply-accumulates, the GOP/s achieved and the fraction of the measured GEMM rate.

Warm-up by time, then timed iterations until at least P99_MIN_SAMPLES samples are in and the
running median is stable, or `--max-time` runs out (trtexec's habits). p99 comes only from
P99_MIN_SAMPLES samples or more; with fewer it is null and a warning says how many were taken.
Inputs are prepared outside the timed region. Every figure reports its iteration count and
coefficient of variation, and a warning when the spread is too high to trust. Each rule is a
plain function (`summarize`, `stop_reason`, `figure_from_samples`, `pair_speedups`,
`engine_cuda_graph`, `onnx_cuda_problem`), so tests can feed it numbers.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.backends import DeviceTimed, Runner, open_runner, runtime_names
from dropcov_deploy.errors import BackendUnavailable, InputError, first_line
from dropcov_deploy.manifest import ONNX, TENSORRT_ENGINE, BatchRange, Manifest, artifact_kind
from dropcov_deploy.memory import available_memory_bytes

MIN_SAMPLES = 3  # every figure has at least this many samples, even past --max-time
P99_MIN_SAMPLES = 200  # below this a p99 is one of the two largest samples: not a percentile worth printing
STABLE_WINDOW = 10
STABLE_CHANGE = 0.01  # the median moved less than 1% over the last window
HIGH_CV = 0.10
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_NO_DEVICE_TIME = "--device cpu: only the end-to-end figure exists (no separate device compute time on the CPU)"
TORCH_END_TO_END = "end-to-end: host wall clock around torch.from_numpy(batch).to(device) -> model -> .cpu()"
TORCH_DEVICE_TIMING = "GPU compute (CUDA events around the model, input already on the GPU)"
ORT_DEVICE_TIMING = "GPU compute (CUDA events on ONNX Runtime's compute stream; input and outputs bound on the GPU by IOBinding)"
ORT_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
SPEEDUP_RULE = (
    "speedup_vs_torch: end-to-end p50 against PyTorch eager's end-to-end p50; speedup_vs_compile: the same against torch.compile's; "
    "device_speedup_vs_torch: device p50 against PyTorch's device p50; never mixed"
)
COMPILE_BACKEND = "torch-compile"
BASELINES = ("eager", "compile", "both")
TORCH_COMPILE_TIMING = (
    "end-to-end: host wall clock around torch.from_numpy(batch).to(device) -> compiled model -> .cpu(); compiled for this batch size before timing"
)

Timed = Callable[[], "float | None"]  # one timed call; returns its own ms when it has a better clock (CUDA events)
Maker = Callable[[np.ndarray], Timed]  # places a batch (outside the timed region) and returns the timed call


@dataclass
class BenchResult:
    """One subject at one batch size. The unprefixed fields are the end-to-end figure (what
    `latency_ms` always meant for ONNX Runtime and PyTorch); `device_*` the device figure or None."""

    backend: str
    artifact: str
    precision: str
    batch_size: int
    latency_ms: dict[str, float | None]
    throughput: float
    iterations: int
    cv: float
    stable: bool
    speedup_vs_torch: float | None = None
    speedup_vs_compile: float | None = None
    timing: str = "host wall clock"
    warnings: list[str] = field(default_factory=list)
    device_ms: dict[str, float | None] | None = None
    device_throughput: float | None = None
    device_iterations: int | None = None
    device_cv: float | None = None
    device_stable: bool | None = None
    device_speedup_vs_torch: float | None = None
    device_timing: str | None = None
    device_unavailable: str | None = None  # why there is no device figure (None when there is one)
    macs: int | None = None  # multiply-accumulates of this batch (roofline.count_macs x batch size)
    macs_int8: int | None = None
    achieved_gops: float | None = None  # 2 x macs / end-to-end p50
    fraction_of_gemm_rate: float | None = None  # roofline.fraction: the MACs at the measured GEMM rates / p50


@dataclass
class Figure:
    """One kind of timing (end-to-end or device) of one subject at one batch size."""

    latency_ms: dict[str, float | None]
    iterations: int
    cv: float
    stable: bool
    warnings: list[str]

    @property
    def p50(self) -> float:
        return float(self.latency_ms["p50"] or 0.0)


class NoDeviceTime(Exception):
    """A device timer could not be set up for this batch; its message becomes `device_unavailable`."""


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
        info["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
            info["torch_cuda"] = torch.version.cuda
    if "tensorrt" in sys.modules:
        info["tensorrt"] = getattr(sys.modules["tensorrt"], "__version__", "?")
    return info


def summarize(samples: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/mean/std in ms. p99 is None below P99_MIN_SAMPLES samples: from 50 samples
    it would be their maximum, a number that changes with every rerun."""
    if not samples:
        raise ValueError("summarize needs at least one sample")
    values = np.asarray(samples, dtype=np.float64)
    return {
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)) if len(values) >= P99_MIN_SAMPLES else None,
        "mean": float(values.mean()),
        "std": float(values.std()),
    }


def median_is_stable(samples: Sequence[float], window: int = STABLE_WINDOW, change: float = STABLE_CHANGE) -> bool:
    """The median of all samples is within `change` (relative) of the median before the last `window`."""
    if len(samples) < 2 * window:
        return False
    before = statistics.median(samples[:-window])
    return abs(statistics.median(samples) - before) <= change * before


def stop_reason(samples: Sequence[float], elapsed_s: float, max_time_s: float) -> str | None:
    """Why the timed loop stops now: "stable", "time", or None to take another sample.

    Never below MIN_SAMPLES. "stable" needs P99_MIN_SAMPLES samples (so a stable run always
    has its p99) and a median that moved at most STABLE_CHANGE over the last STABLE_WINDOW,
    checked every STABLE_WINDOW samples; otherwise the loop runs until `max_time_s`."""
    count = len(samples)
    if count < MIN_SAMPLES:
        return None
    if count >= P99_MIN_SAMPLES and count % STABLE_WINDOW == 0 and median_is_stable(samples):
        return "stable"
    if elapsed_s >= max_time_s:
        return "time"
    return None


def measure(run: Timed, warmup_s: float, max_time_s: float, clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], bool]:
    """Warm up for `warmup_s`, then time `run` until `stop_reason` says stop; (samples in ms, stable).

    `run` returns its own duration in ms when it has a better clock (CUDA events), else None
    and the host clock times it. `clock` is injectable so tests need no real time."""
    end = clock() + warmup_s
    while clock() < end:
        run()
    samples: list[float] = []
    started = clock()
    while True:
        before = clock()
        measured = run()
        samples.append(measured if measured is not None else (clock() - before) * 1000)
        reason = stop_reason(samples, clock() - started, max_time_s)
        if reason is not None:
            return samples, reason == "stable"


def figure_from_samples(samples: Sequence[float], stable: bool, max_time_s: float, label: str = "") -> Figure:
    """A figure's statistics and the warnings a reader needs: high spread, an unstable median,
    too few samples for p99 (with how many were taken). `label` prefixes the warnings."""
    latency = summarize(samples)
    mean = latency["mean"] or 0.0
    cv = float(latency["std"] or 0.0) / mean if mean else 0.0
    prefix = f"{label}: " if label else ""
    warnings = []
    if cv > HIGH_CV:
        warnings.append(f"{prefix}coefficient of variation {cv:.2f} > {HIGH_CV}: timings unstable (other load? too few iterations?)")
    # "stable" in the JSON is what the warnings say: a settled median *and* a spread below HIGH_CV
    # (a stable median beside a CV of 1.6 is still a figure not to trust)
    if len(samples) < P99_MIN_SAMPLES:
        warnings.append(
            f"{prefix}only {len(samples)} samples within --max-time {max_time_s:g} s: p99 needs at least {P99_MIN_SAMPLES} "
            f"(not reported) and the median's stability is judged from {P99_MIN_SAMPLES} on; raise --max-time"
        )
    elif not stable:
        warnings.append(f"{prefix}median not stable within --max-time {max_time_s:g} s")
    return Figure(latency, len(samples), cv, bool(stable and cv <= HIGH_CV and len(samples) >= P99_MIN_SAMPLES), warnings)


def speedup(baseline_ms: float | None, candidate_ms: float | None) -> float | None:
    """baseline / candidate, or None when either figure is missing (or zero)."""
    if not baseline_ms or not candidate_ms:
        return None
    return baseline_ms / candidate_ms


def _p50(figure: dict[str, float | None] | None) -> float | None:
    return None if figure is None else figure.get("p50")


def pair_speedups(results: Sequence[BenchResult]) -> None:
    """Set every result's speed-ups against PyTorch at its batch size: end-to-end against
    PyTorch's end-to-end, device against PyTorch's device figure, and end-to-end against the
    torch.compile baseline where it was timed. A kind either side lacks gives None: an
    engine's GPU time is never divided into PyTorch's host latency."""
    baseline = {r.batch_size: r for r in results if r.backend == "torch"}
    compiled = {r.batch_size: r for r in results if r.backend == COMPILE_BACKEND}
    for result in results:
        torch_row = baseline.get(result.batch_size)
        result.speedup_vs_torch = speedup(_p50(torch_row.latency_ms) if torch_row else None, _p50(result.latency_ms))
        result.device_speedup_vs_torch = speedup(_p50(torch_row.device_ms) if torch_row else None, _p50(result.device_ms))
        compile_row = compiled.get(result.batch_size)
        result.speedup_vs_compile = speedup(_p50(compile_row.latency_ms) if compile_row else None, _p50(result.latency_ms))


def engine_cuda_graph(path: Path, requested: bool) -> bool:
    """--cuda-graph reaches TensorRT engines only: ONNX Runtime's runner refuses it rather than ignore it."""
    return bool(requested) and artifact_kind(path) == TENSORRT_ENGINE


def engine_facts(runner: Any, path: Path, cuda_graph: bool) -> dict[str, Any]:
    """What an engine costs beyond its speed, from the runner's attributes where it has them
    (older runners do not: None). The plan is saved untouched, so its file size is its bytes."""
    plan_bytes = getattr(runner, "plan_bytes", None)
    return {
        "plan_bytes": int(plan_bytes) if plan_bytes is not None else Path(path).stat().st_size,
        "deserialize_seconds": getattr(runner, "deserialize_seconds", None),
        "device_memory_bytes": getattr(runner, "device_memory_bytes", None),
        "cuda_graph": cuda_graph,
    }


def onnx_cuda_problem(available: Sequence[str], active: Sequence[str] | None) -> str | None:
    """Why an ONNX Runtime session does not run on the GPU, or None when it does. `available`: the
    providers this onnxruntime has; `active`: those the session really uses (None: unknown).
    ONNX Runtime falls back to the CPU with a log line only, so a 'cuda' label would otherwise lie."""
    if CUDA_PROVIDER not in available:
        return f"this onnxruntime has no {CUDA_PROVIDER} (a CPU-only build; onnxruntime-gpu for this CUDA has it)"
    if active is not None and (not active or active[0] != CUDA_PROVIDER):
        return (
            f"ONNX Runtime could not start its {CUDA_PROVIDER} and fell back to {', '.join(active) or 'nothing'} "
            "(no GPU, or not the CUDA/cuDNN this onnxruntime-gpu was built for)"
        )
    return None


class CudaEventTimer:
    """Times `launch` with CUDA events recorded on `stream` (torch's current stream when None) and
    keeps `held` (the device tensors and bindings `launch` reads) alive as long as the timer."""

    def __init__(self, launch: Callable[[], Any], stream: Any = None, held: tuple[Any, ...] = ()) -> None:
        import torch

        self._launch, self._stream, self._held = launch, stream, held
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def __call__(self) -> float:
        self._start.record(self._stream)
        self._launch()
        self._end.record(self._stream)
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))


@dataclass
class _Subject:
    """One thing to time: how to make its end-to-end call and, where it has one, its device call."""

    backend: str
    artifact: str
    precision: str
    make: Maker
    timing: str
    batch: BatchRange | None = None
    make_device: Maker | None = None
    device_timing: str | None = None
    device_unavailable: str | None = None


def _torch_subjects(checkpoint: Path, device: str, threads: int | None, baseline: str = "eager", batch_count: int = 3) -> tuple[list[_Subject], int]:
    """The PyTorch baselines `baseline` names (eager: end-to-end always, device time by CUDA events
    on a GPU; compile: torch.compile of the same model), and the model's crop size."""
    import torch

    from dropcov_deploy.models import load_checkpoint_with_info

    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"--device cuda: torch {torch.__version__} sees no CUDA GPU (built for CUDA {torch.version.cuda or 'none'})")
    if threads:
        torch.set_num_threads(threads)
    loaded = load_checkpoint_with_info(checkpoint)
    model = loaded.model.to(device)

    def end_to_end(batch: np.ndarray) -> Timed:
        host = torch.from_numpy(batch)  # a view: the copy to the device is inside the timed call

        def run() -> None:
            with torch.inference_mode():
                model(host.to(device)).cpu()  # .cpu() waits for the GPU

        return run

    def on_device(batch: np.ndarray) -> Timed:
        placed = torch.from_numpy(batch).to(device)
        torch.cuda.synchronize()

        def launch() -> None:
            with torch.inference_mode():
                model(placed)

        return CudaEventTimer(launch, held=(placed,))

    subjects = []
    if baseline in ("eager", "both"):
        subject = _Subject("torch", str(checkpoint), "fp32", end_to_end, TORCH_END_TO_END)
        if device == "cuda":
            subject.make_device, subject.device_timing = on_device, TORCH_DEVICE_TIMING
        else:
            subject.device_unavailable = CPU_NO_DEVICE_TIME
        subjects.append(subject)
    if baseline in ("compile", "both"):
        subjects.append(_compile_subject(model, str(checkpoint), device, batch_count))
    return subjects, loaded.info.resolved_preprocessing().crop


def _compile_subject(model: Any, checkpoint: str, device: str, batch_count: int) -> _Subject:
    """torch.compile (inductor, static shapes) of the model: each batch size is compiled by one call
    when its batch is placed, outside the timed region; the timed call is the compiled model's."""
    import torch

    # one graph per batch size: raise dynamo's recompile limit above the number of sizes, or a
    # later size would silently run eager under the compile label
    torch._dynamo.config.cache_size_limit = max(int(torch._dynamo.config.cache_size_limit), batch_count + 2)
    compiled = torch.compile(model, dynamic=False)

    def end_to_end(batch: np.ndarray) -> Timed:
        host = torch.from_numpy(batch)
        try:
            with torch.inference_mode():
                compiled(host.to(device)).cpu()  # compiles for this shape now, not in the timed loop
        except Exception as exc:  # inductor needs a C++ compiler (CPU) or Triton (GPU)
            raise CompileFailed(f"torch.compile failed ({first_line(exc)})") from exc

        def run() -> None:
            with torch.inference_mode():
                compiled(host.to(device)).cpu()

        return run

    subject = _Subject(COMPILE_BACKEND, checkpoint, "fp32", end_to_end, TORCH_COMPILE_TIMING)
    subject.device_unavailable = CPU_NO_DEVICE_TIME if device != "cuda" else "torch.compile is timed end-to-end only"
    return subject


class CompileFailed(Exception):
    """torch.compile could not compile the model here; the baseline is skipped, with this reason."""


def _ort_gpu_problem() -> str | None:
    """Why this onnxruntime cannot run on the GPU at all (a CPU-only build), or None. A session that
    fell back to the CPU is refused by the runner itself (`backends.onnxruntime.provider_fallback`)."""
    import onnxruntime

    return onnx_cuda_problem(onnxruntime.get_available_providers(), None)


def _ort_device_maker(path: Path) -> tuple[Maker | None, str]:
    """ONNX Runtime on the GPU with IOBinding: input and outputs bound on the GPU, the run on a
    torch stream (`user_compute_stream`) so CUDA events bracket the compute alone. Returns
    (maker, what it measures), or (None, why there is no device figure)."""
    try:
        import torch
    except ImportError:
        return None, "ONNX Runtime's device time needs torch with CUDA (for the stream and events); torch cannot be imported"
    if not torch.cuda.is_available():
        return None, f"ONNX Runtime's device time needs torch with CUDA (for the stream and events); torch {torch.__version__} sees no GPU"
    import onnxruntime as ort

    device_id = torch.cuda.current_device()
    stream = torch.cuda.Stream()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    provider = (CUDA_PROVIDER, {"device_id": str(device_id), "user_compute_stream": str(stream.cuda_stream)})
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=[provider, "CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types; a bad model already failed in the runner
        return None, f"ONNX Runtime could not open it on a torch stream for IOBinding ({first_line(exc)})"
    problem = onnx_cuda_problem(ort.get_available_providers(), session.get_providers())
    if problem:
        return None, problem
    inputs, outputs = session.get_inputs(), session.get_outputs()
    dtype = ORT_INPUT_TYPES.get(inputs[0].type) if len(inputs) == 1 else None
    if dtype is None:
        return None, f"IOBinding timing handles one float input; this model takes {[(i.name, i.type) for i in inputs]}"

    def make(batch: np.ndarray) -> Timed:
        try:
            placed = torch.from_numpy(np.ascontiguousarray(batch, dtype=dtype)).to(f"cuda:{device_id}")
            torch.cuda.synchronize()
            binding = session.io_binding()
            binding.bind_input(inputs[0].name, "cuda", device_id, dtype, list(placed.shape), placed.data_ptr())
            for output in outputs:
                binding.bind_output(output.name, "cuda", device_id)
            session.run_with_iobinding(binding)  # ORT allocates the outputs on the GPU once ...
            for output, value in zip(outputs, binding.get_outputs()):
                binding.bind_ortvalue_output(output.name, value)  # ... and every timed run reuses them
        except Exception as exc:  # an IOBinding this ORT build does not support: no figure, and why
            raise NoDeviceTime(f"ONNX Runtime IOBinding on the GPU failed ({first_line(exc)})") from exc
        return CudaEventTimer(lambda: session.run_with_iobinding(binding), stream=stream, held=(placed, binding, session))

    return make, ORT_DEVICE_TIMING


def _runner_subject(runner: Runner, path: Path, manifest: Manifest, device: str) -> _Subject:
    """An artifact's runner: end-to-end by `infer` on host arrays; device time where the runner
    measures it (TensorRT: CUDA events around the engine alone, whatever --device says, since an
    engine always runs on the GPU), by IOBinding for ONNX Runtime on the GPU, none on the CPU."""

    def end_to_end(batch: np.ndarray) -> Timed:
        feeds = {runner.input_names[0]: np.ascontiguousarray(batch)}

        def run() -> None:
            runner.infer(feeds)

        return run

    subject = _Subject(runner.backend, str(path), manifest.precision.value, end_to_end, f"end-to-end: {runner.timing}", manifest.require_input(path).batch)
    if isinstance(runner, DeviceTimed):
        subject.make_device, subject.device_timing = runner.device_timer, runner.device_timing
    elif device != "cuda":
        subject.device_unavailable = CPU_NO_DEVICE_TIME
    elif artifact_kind(path) == ONNX:
        maker, text = _ort_device_maker(path)
        if maker is None:
            subject.device_unavailable = text
        else:
            subject.make_device, subject.device_timing = maker, text
    else:
        subject.device_unavailable = f"the {runner.backend} runner cannot time its device compute alone"
    return subject


def batch_memory_problem(batch_size: int, image_shape: Sequence[int], available: int | None) -> str | None:
    """Why the largest batch cannot be timed here (one line), before anything is allocated: the
    inputs, plus about as much again for outputs and the runtime's own copies, must fit in a
    quarter of the memory available."""
    needed = 2 * batch_size * int(np.prod(image_shape)) * 4
    if available is not None and needed > available // 4:
        return (
            f"--batch-sizes {batch_size}: one batch of {list(image_shape)} float32 inputs needs about {needed / 1e9:.1f} GB; "
            f"this machine has {available / 1e9:.1f} GB available (use at most {max(1, batch_size * (available // 4) // needed)})"
        )
    return None


def bench(
    artifacts: Sequence[str | Path],
    *,
    checkpoint: Path | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    device: str = "cpu",
    threads: int | None = None,
    warmup_s: float = 1.0,
    max_time_s: float = 5.0,
    cuda_graph: bool = False,
    data: Path | None = None,
    dataset: str | None = None,
    runtimes: Sequence[str] | None = None,
    baseline: str = "eager",
    roofline: bool = True,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Time PyTorch eager (when given a checkpoint) and every artifact at each batch size.

    `cuda_graph` reaches engine runners only. On `--device cuda` an ONNX model whose ONNX Runtime
    cannot run on the GPU is not timed (it would run on the CPU under a 'cuda' label): it is
    listed in "skipped" with the reason, and the rest is timed."""
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: use cpu or cuda")
    if baseline not in BASELINES:
        raise InputError(f"--baseline {baseline!r}: use {', '.join(BASELINES)}")
    if baseline != "eager" and checkpoint is None:
        raise InputError(f"--baseline {baseline} times the PyTorch model: give --checkpoint")
    runtimes = list(dict.fromkeys(runtimes or []))
    for name in runtimes:
        if name not in runtime_names():
            raise InputError(f"--runtime {name!r}: use {', '.join(runtime_names())} (a comma list times each ONNX model in each)")
    if not batch_sizes or min(batch_sizes) < 1:
        raise InputError("--batch-sizes: give positive integers, e.g. 1,8,32")
    if not (0 <= warmup_s < float("inf")) or not (0 < max_time_s < float("inf")):  # NaN fails both
        raise InputError("--warmup must be >= 0 and --max-time > 0 seconds")
    paths = [Path(a) for a in artifacts]
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file")
        artifact_kind(path)
    manifests = {path: Manifest.read(path) for path in paths}
    specs = {path: manifests[path].require_input(path) for path in paths}
    shapes = {spec.image_shape for spec in specs.values()}
    warnings: list[str] = []
    if runtimes and any(artifact_kind(path) != ONNX for path in paths):
        warnings.append("--runtime applies to ONNX models; TensorRT engines run in TensorRT whatever it says")
    if cuda_graph and not any(artifact_kind(path) == TENSORRT_ENGINE for path in paths):
        warnings.append("--cuda-graph applies to TensorRT engines only and none was given: it changed nothing")
    subjects: list[_Subject] = []
    image_shape = None
    if checkpoint is not None:
        baselines, size = _torch_subjects(Path(checkpoint), device, threads, baseline, len(batch_sizes))
        image_shape = (3, size, size)
        subjects += baselines
    if image_shape is None:
        if len(shapes) != 1:
            raise InputError(f"artifacts take different input shapes {sorted(shapes)}; bench them separately")
        image_shape = next(iter(shapes))
    problem = batch_memory_problem(max(batch_sizes), image_shape, available_memory_bytes())
    if problem:
        raise InputError(problem)
    inputs, inputs_described = bench_inputs(data, dataset, manifests, max(batch_sizes), image_shape)
    limits = {p: specs[p].batch or BatchRange() for p in paths}
    outside = [b for b in batch_sizes if paths and checkpoint is None and not any(limits[p].fits(b) for p in paths)]
    if outside:
        ranges = ", ".join(f"{p.name}: {limits[p].min}..{limits[p].max}" for p in paths)
        raise InputError(f"--batch-sizes {','.join(map(str, outside))}: no artifact accepts that batch ({ranges})")
    described: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with contextlib.ExitStack() as runners:
        for path in paths:
            if specs[path].image_shape != image_shape:
                raise InputError(f"{path}: takes input {list(specs[path].image_shape)}, others take {list(image_shape)}")
            kind, graph = artifact_kind(path), engine_cuda_graph(path, cuda_graph)
            on_gpu = kind == ONNX and device == "cuda"
            chosen = runtimes if kind == ONNX and runtimes else [None]
            refused: list[InputError] = []
            for runtime in chosen:
                problem = None
                try:
                    runner = runners.enter_context(open_runner(path, device, threads, cuda_graph=graph, runtime=runtime, manifest=manifests[path]))
                except BackendUnavailable as exc:  # the ONNX Runtime runner refuses a CPU fallback on --device cuda
                    if not on_gpu and len(chosen) < 2:
                        raise
                    problem = (_ort_gpu_problem() if on_gpu and runtime in (None, "onnxruntime") else None) or first_line(exc)
                except InputError as exc:  # one runtime of several cannot load it (OpenVINO and an .ort.onnx): the others still time it
                    refused.append(exc)
                    if len(refused) == len(chosen):
                        raise
                    problem = first_line(exc)
                if problem:
                    problem = problem.removeprefix(f"{path}: ")
                    skipped.append({"artifact": str(path), "runtime": runtime, "reason": problem})  # type: ignore[dict-item]
                    warnings.append(f"{path.name}{f' in {runtime}' if runtime else ''} not timed: {problem}")
                    continue
                warnings += [f"{path.name}: {w}" for w in getattr(runner, "warnings", None) or []]  # e.g. an engine built on another GPU
                described.append(
                    {
                        "artifact": str(path),
                        "backend": runner.backend,
                        "kind": kind,
                        "precision": manifests[path].precision.value,
                        "bytes": path.stat().st_size,
                        "engine": engine_facts(runner, path, graph) if kind == TENSORRT_ENGINE else None,
                    }
                )
                subjects.append(_runner_subject(runner, path, manifests[path], device))
        if not subjects:
            raise BackendUnavailable("nothing to time: " + "; ".join(f"{Path(s['artifact']).name}: {s['reason']}" for s in skipped))
        results = _measure_all(subjects, batch_sizes, image_shape, warmup_s, max_time_s, progress, inputs, skipped, warnings)
        for subject in subjects:
            accepts = subject.batch
            left_out = [b for b in batch_sizes if accepts is not None and not accepts.fits(b)]
            if left_out and accepts is not None:
                skipped.append(
                    {"artifact": str(subject.artifact), "batch_sizes": left_out, "reason": f"accepts batch {accepts.min}..{accepts.max}"}  # type: ignore[dict-item]
                )
                warnings.append(f"{Path(subject.artifact).name}: not timed at batch {', '.join(map(str, left_out))} (it accepts {accepts.min}..{accepts.max})")
    pair_speedups(results)
    limit = _roofline(results, paths, device, threads, cache_dir, progress, warnings) if roofline else None
    return {
        "machine": machine_info(device),
        "settings": {
            "warmup_s": warmup_s,
            "max_time_s": max_time_s,
            "threads": threads,
            "batch_sizes": list(batch_sizes),
            "cuda_graph": cuda_graph,
            "inputs": inputs_described,
            "p99_min_samples": P99_MIN_SAMPLES,
            "stop_rule": (
                f"at least {P99_MIN_SAMPLES} samples and a median that moved <= {STABLE_CHANGE:.0%} over the last {STABLE_WINDOW}, "
                f"or --max-time (never fewer than {MIN_SAMPLES} samples)"
            ),
            "speedups": SPEEDUP_RULE,
        },
        "results": [asdict(r) for r in results],
        "roofline": limit,
        "artifacts": described,
        "skipped": skipped,
        "warnings": warnings,
    }


def _result(subject: _Subject, batch_size: int, end_to_end: Figure, device: Figure | None, unavailable: str | None) -> BenchResult:
    result = BenchResult(
        subject.backend,
        subject.artifact,
        subject.precision,
        batch_size,
        end_to_end.latency_ms,
        batch_size * 1000.0 / end_to_end.p50,
        end_to_end.iterations,
        end_to_end.cv,
        end_to_end.stable,
        timing=subject.timing,
        warnings=list(end_to_end.warnings),
        device_unavailable=unavailable,
    )
    if device is not None:
        result.device_ms = device.latency_ms
        result.device_throughput = batch_size * 1000.0 / device.p50 if device.p50 else None
        result.device_iterations, result.device_cv, result.device_stable = device.iterations, device.cv, device.stable
        result.device_timing = subject.device_timing
        result.warnings += device.warnings
    return result


def bench_inputs(
    data: Path | None, dataset: str | None, manifests: dict[Path, Manifest], count: int, image_shape: tuple[int, ...]
) -> tuple[np.ndarray | None, str]:
    """Up to `count` real images preprocessed as the first artifact's manifest says (a batch larger
    than the set repeats them), or None: seeded normal noise. Dense networks time the same on both;
    real inputs matter where a kernel's speed depends on the values (sparsity, denormals)."""
    if data is not None and dataset is not None:
        raise InputError("give --data DIR or --dataset digits[:train|val|test], not both")
    if data is None and dataset is None:
        return None, "seeded standard normal noise (seed 0)"
    from dropcov_deploy.data.images import list_images, load_batch
    from dropcov_deploy.data.preprocessing import Preprocessing

    if dataset is not None:
        from dropcov_deploy.data.datasets import dataset_images, parse_dataset

        images = dataset_images(parse_dataset(dataset))
    else:
        images = list_images(data)  # type: ignore[arg-type]  # one of the two, checked above
    first = next(iter(manifests))
    recorded = manifests[first].preprocessing
    if not recorded:
        raise InputError(f"{first}: its manifest records no preprocessing; bench it without --data/--dataset (noise inputs)")
    prep = Preprocessing.from_dict(recorded)
    if prep.crop != image_shape[-1]:
        raise InputError(f"{first}: preprocessing gives {prep.crop}x{prep.crop} images, the model takes {list(image_shape)}")
    chosen = images.items[:count]
    return load_batch(chosen, prep), f"{len(chosen)} images of {images.root}" + (" (repeated to fill a batch)" if len(chosen) < count else "")


def _measure_all(
    subjects: list[_Subject],
    batch_sizes: Sequence[int],
    image_shape: tuple[int, ...],
    warmup_s: float,
    max_time_s: float,
    progress: Callable[[str], None],
    inputs: np.ndarray | None = None,
    skipped: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
) -> list[BenchResult]:
    """Each batch size, each subject: the end-to-end figure first, then the device figure (a device
    timer places its batch once, and an `infer` after that would replace it)."""
    results: list[BenchResult] = []
    rng = np.random.default_rng(0)
    failed: set[int] = set()
    for batch_size in batch_sizes:
        # prepared outside the timed region
        if inputs is not None:
            batch = np.ascontiguousarray(inputs[np.arange(batch_size) % len(inputs)])
        else:
            batch = rng.standard_normal((batch_size, *image_shape), dtype=np.float32)
        for subject in subjects:
            if (subject.batch is not None and not subject.batch.fits(batch_size)) or id(subject) in failed:
                continue
            name = f"{subject.backend} {Path(subject.artifact).name} batch {batch_size}"
            progress(f"{name} end-to-end" if subject.backend != COMPILE_BACKEND else f"{name}: compiling, then timing")
            try:
                timed_call = subject.make(batch)
            except CompileFailed as exc:  # the compile baseline is skipped; the rest is timed
                failed.add(id(subject))
                if skipped is not None:
                    skipped.append({"artifact": subject.artifact, "backend": subject.backend, "reason": str(exc)})
                if warnings is not None:
                    warnings.append(f"{subject.backend} not timed: {exc}")
                continue
            end_to_end = figure_from_samples(*measure(timed_call, warmup_s, max_time_s), max_time_s)
            device, unavailable = None, subject.device_unavailable
            if subject.make_device is not None:
                progress(f"{name} device")
                try:
                    timed = subject.make_device(batch)
                except NoDeviceTime as exc:
                    unavailable = str(exc)
                else:
                    device = figure_from_samples(*measure(timed, warmup_s, max_time_s), max_time_s, label="device time")
            results.append(_result(subject, batch_size, end_to_end, device, unavailable))
    return results


def _roofline(
    results: list[BenchResult],
    paths: list[Path],
    device: str,
    threads: int | None,
    cache_dir: Path | None,
    progress: Callable[[str], None],
    warnings: list[str],
) -> dict[str, Any]:
    """Fill each result's MACs, achieved GOP/s and fraction of the machine's GEMM rate, and return
    what they were measured against (`roofline` module). The PyTorch rows take the MACs of the
    FP32 ONNX (the same model, all float); an engine has no ONNX graph to count here."""
    from dropcov_deploy import roofline

    counts: dict[str, roofline.MacCount | None] = {}
    for path in paths:
        if artifact_kind(path) != ONNX:
            counts[str(path)] = None
            continue
        progress(f"counting multiply-accumulates of {path.name}")
        try:
            counts[str(path)] = roofline.count_macs(path)
        except Exception as exc:  # a graph ONNX Runtime cannot run with its intermediates exposed: no roofline for it, and why
            counts[str(path)] = None
            warnings.append(f"{path.name}: its multiply-accumulates could not be counted ({first_line(exc)})")
    # the PyTorch rows: the model's MACs, all float, from the first FP32 ONNX given (else the first ONNX)
    fp32 = [c for path, c in counts.items() if c is not None and c.int8 == 0]
    known = fp32 or [c for c in counts.values() if c is not None]
    float_model = roofline.MacCount(int8=0, float=known[0].total) if known else None
    rates, rates_problem = None, None
    if device == "cpu":
        progress("measuring this machine's GEMM rate (once per machine, then cached)")
        try:
            rates = roofline.cpu_rates(threads, cache_dir)
        except Exception as exc:  # a runtime that fails on a plain MatMul: the timings stand, the fraction is unknown
            rates_problem = f"the GEMM rate could not be measured ({first_line(exc)}); fractions are null"
            warnings.append(rates_problem)
    else:
        rates_problem = "the GEMM rate is measured on the CPU only; --device cuda rows report MACs and GOP/s without a fraction"
    for result in results:
        macs = float_model if result.backend in ("torch", COMPILE_BACKEND) else counts.get(result.artifact)
        if macs is None:
            continue
        result.macs, result.macs_int8 = macs.total * result.batch_size, macs.int8 * result.batch_size
        result.achieved_gops = roofline.achieved_gops(macs, result.batch_size, _p50(result.latency_ms))
        result.fraction_of_gemm_rate = roofline.fraction(macs, result.batch_size, _p50(result.latency_ms), rates)
    over = sorted({f"{Path(r.artifact).name} ({r.backend})" for r in results if (r.fraction_of_gemm_rate or 0) > 1.05})
    if over:
        warnings.append(
            f"above 100% of the measured GEMM rate: {', '.join(over)}; the rate (cached, measured once) is below what these layers reach here: "
            f"delete {roofline.RATES_FILE} in the cache folder to measure it again on an idle machine"
        )
    return {
        "gemm_rates_gops": roofline.rates_dict(rates),
        "unavailable": rates_problem,
        "macs_per_image": {path: None if count is None else {"int8": count.int8, "float": count.float} for path, count in counts.items()},
        "rule": (
            "fraction_of_gemm_rate = (INT8 MACs / the INT8 GEMM rate + float MACs / the FP32 GEMM rate) / end-to-end p50; "
            "GOP/s counts 2 ops per multiply-accumulate; PyTorch rows use the MACs of the first FP32 ONNX given (else the first ONNX): give the checkpoint's own export"
        ),
    }
