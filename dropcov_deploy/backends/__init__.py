"""Backends as rows: one `Runner` interface, one `Target` record per backend.

A runner takes a dict of named numpy arrays and returns a dict of named numpy arrays,
like Polygraphy's runners; `runner(batch)` is the one-input, one-output shortcut, and
every runner is a context manager that frees what it holds. verify, bench and predict
use runners without knowing which backend is behind them.

A `Target` says everything build, verify, bench and the demo need to know about a
backend: its name (what `--backend` takes), the target tag its precision graphs record,
the file tag in their names, the artifact kind its runner opens, the precisions and
calibration methods it supports, its INT8 quantizer, how its fc treatment is chosen,
how to tell it is available, the artifact it writes from a precision ONNX, and how to
open a runner. Hooks are "module:function" strings, imported on first use, so this
module loads nothing heavy. Adding a backend is one module plus one row in TARGETS.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dropcov_deploy.errors import BackendUnavailable, InputError
from dropcov_deploy.manifest import ONNX, TENSORRT_ENGINE, BatchRange, artifact_kind
from dropcov_deploy.precision import Precision


@runtime_checkable
class Runner(Protocol):
    """What every backend's runner offers (ONNX Runtime, TensorRT)."""

    path: Path
    backend: str  # the label reports use: "onnxruntime-cpu", "tensorrt", ...
    timing: str  # what a host-side timing of `infer` measures, for bench's report
    input_names: list[str]
    output_names: list[str]

    def input_shapes(self) -> dict[str, list[Any]]: ...

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]: ...

    def __call__(self, batch: Any) -> Any: ...

    def close(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class DeviceTimed(Protocol):
    """Optional: a runner that can time its device compute alone (TensorRT: CUDA events)."""

    device_timing: str  # what `device_timer`'s milliseconds measure

    def device_timer(self, batch: Any) -> Callable[[], float]:
        """Place `batch` on the device once; the returned call re-runs the model and returns its device ms."""
        ...


def load_hook(reference: str) -> Callable[..., Any]:
    """'package.module:function' -> the function, imported now."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Target:
    """One backend: what it is called, what it builds, how it runs."""

    name: str  # what --backend takes
    tag: str  # the manifest's "target": what its precision graphs are shaped for
    file_tag: str  # in file names: model.<precision>.<file_tag>.onnx
    runs: str  # the artifact kind its runner opens (manifest.ONNX or manifest.TENSORRT_ENGINE)
    precisions: tuple[Precision, ...]
    calibration_methods: tuple[str, ...]
    int8_quantizer: str  # hook: (onnx_path, calibration, method, high_precision, keep_float=()) -> (ModelProto, pinned nodes, record extras)
    fc_policy: str  # "fastest": measure CPU latency among the accurate; "smallest": int8 > weight-only > float
    status: str  # hook: () -> (available, one-line reason)
    runner: str  # hook: (path, device, threads, cuda_graph=False) -> Runner
    stage_artifact: str | None = None  # hook: (staged precision onnx, stage dir) -> manifest entry; published with it
    stage_artifact_key: str = ""  # the precision manifest's key for that entry
    stage_artifact_step: str = ""  # what the build's progress line says while it is written
    device_artifact: str | None = None  # hook: engine step after the precision ONNX is published (may raise BackendUnavailable)
    accelerated: bool = False  # the demo prefers an available accelerated target
    modelopt_precisions: tuple[Precision, ...] = (Precision.FP16,)  # builds that need ModelOpt (the build extra): checked before calibration
    default_precision: Precision = Precision.FP16  # what `build` makes without --precision: the one worth deploying on this target
    precision_notes: dict[Precision, str] = field(default_factory=dict)  # said when a build asks for that precision here

    def is_available(self) -> tuple[bool, str]:
        return load_hook(self.status)()

    def supports(self, precision: Precision) -> bool:
        return precision in self.precisions


TARGETS: dict[str, Target] = {
    "onnxruntime": Target(
        name="onnxruntime",
        tag="cpu",
        file_tag="cpu",
        runs=ONNX,
        precisions=tuple(Precision),
        calibration_methods=("entropy", "max", "percentile"),
        int8_quantizer="dropcov_deploy.precision.quantizers:quantize_cpu",
        fc_policy="fastest",
        status="dropcov_deploy.backends.onnxruntime:onnxruntime_status",
        runner="dropcov_deploy.backends.onnxruntime:open_runner",
        stage_artifact="dropcov_deploy.backends.onnxruntime:write_ort_optimized",
        stage_artifact_key="ort_optimized",
        stage_artifact_step="writing the ONNX Runtime-optimized model for the CPU",
        default_precision=Precision.INT8,
        precision_notes={
            Precision.FP16: (
                "ONNX Runtime's CPU provider has few FP16 kernels: this graph runs slower than FP32 on the CPU "
                "(demo, 2-core Xeon: 0.45 ms against 0.27 ms at batch 1); build it to check FP16 numerics before a GPU build, "
                "and int8 (the default here) for speed"
            )
        },
    ),
    "tensorrt": Target(
        name="tensorrt",
        tag="tensorrt",
        file_tag="trt",
        runs=TENSORRT_ENGINE,
        precisions=tuple(Precision),
        calibration_methods=("entropy", "max"),
        int8_quantizer="dropcov_deploy.precision.quantizers:quantize_tensorrt",
        fc_policy="smallest",
        status="dropcov_deploy.backends.tensorrt:tensorrt_status",
        runner="dropcov_deploy.backends.tensorrt:open_runner",
        device_artifact="dropcov_deploy.engine:engine_step",
        accelerated=True,
        modelopt_precisions=(Precision.FP16, Precision.INT8),
    ),
}
# OpenVINO runs the CPU target's graphs unchanged (--runtime openvino): the same row but for its
# name, availability and runner, and no ORT-optimized copy (it cannot load ONNX Runtime's contrib ops)
TARGETS["openvino"] = dataclasses.replace(
    TARGETS["onnxruntime"],
    name="openvino",
    status="dropcov_deploy.backends.openvino:openvino_status",
    runner="dropcov_deploy.backends.openvino:open_runner",
    stage_artifact=None,
    stage_artifact_key="",
    stage_artifact_step="",
    precision_notes={},
)
DEFAULT_TARGET = "onnxruntime"


def get_target(name: str) -> Target:
    """A target by its --backend name, or one InputError line listing them."""
    if name not in TARGETS:
        raise InputError(f"--backend {name!r}: use one of {', '.join(TARGETS)}")
    return TARGETS[name]


def target_by_tag(tag: str) -> Target:
    """The target whose precision graphs record `tag` (a manifest's "target")."""
    return next(t for t in TARGETS.values() if t.tag == tag)


def runtimes_for(kind: str) -> list[Target]:
    """The targets whose runners open an artifact of this kind, the default first (ONNX: onnxruntime, openvino)."""
    return [t for t in TARGETS.values() if t.runs == kind]


def runtime_names(kind: str = ONNX) -> tuple[str, ...]:
    """What --runtime takes."""
    return tuple(t.name for t in runtimes_for(kind))


def choose_runtime(
    path: Path,
    kind: str,
    requested: str | None,
    recorded: str | None,
    available: Callable[[Target], tuple[bool, str]],
    device: str = "cpu",
) -> tuple[Target, str | None]:
    """Which runner opens the artifact, and a warning when it is not the one its manifest records.

    `requested` (--runtime) is obeyed or refused in one line; without it the runtime the build
    chose (`recorded`) is used where it is installed, else the kind's default with a warning:
    the graph is the same, only its speed differs, so an edge box without OpenVINO still runs it.
    The build's choice is a CPU choice: on another --device the kind's default runs it."""
    runtimes = runtimes_for(kind)
    if requested is not None:
        chosen = next((t for t in runtimes if t.name == requested), None)
        if chosen is None:
            if requested in TARGETS:
                raise InputError(f"{path}: --runtime {requested} cannot run a {kind} (use {' or '.join(t.name for t in runtimes)})")
            raise InputError(f"--runtime {requested!r}: use one of {', '.join(runtime_names())}")
        return chosen, None
    default = runtimes[0]
    preferred = next((t for t in runtimes if t.name == recorded), None)
    if preferred is None or preferred is default or device != "cpu":
        return default, None
    ok, reason = available(preferred)
    if ok:
        return preferred, None
    return default, f"its build chose {preferred.name}, which is not available here ({reason}); running it in {default.name} (same graph, other speed)"


def recorded_runtime(path: Path, manifest: Any = None) -> str | None:
    """The runtime a CPU build chose for this artifact (manifest "runtime"), or None; `manifest`
    when the caller has read it already (reading one without a sidecar loads the whole ONNX)."""
    from dropcov_deploy.manifest import Manifest

    found = manifest if manifest is not None else Manifest.find(path)
    entry = found.extra.get("runtime") if found is not None else None
    name = entry.get("chosen") if isinstance(entry, dict) else entry
    return name if isinstance(name, str) else None


def runner_target(path: Path, runtime: str | None = None, device: str = "cpu", manifest: Any = None) -> tuple[Target, str | None]:
    """The target whose runner opens this artifact (by its kind, then --runtime or the recorded choice), and a warning."""
    kind = artifact_kind(path)
    recorded = recorded_runtime(path, manifest) if runtime is None and len(runtimes_for(kind)) > 1 else None
    return choose_runtime(path, kind, runtime, recorded, Target.is_available, device)


def check_runtime(paths: list[Path], runtime: str | None, device: str = "cpu") -> None:
    """--runtime checked for every artifact before any slow work: a typo, a runtime that cannot
    open a kind (OpenVINO and an engine), or one not installed is one line now, not after PyTorch ran."""
    if runtime is None:
        return
    for path in paths:
        target, _ = runner_target(Path(path), runtime, device)
        available, reason = target.is_available()
        if not available:
            raise BackendUnavailable(f"--runtime {runtime}: {reason}")


def open_runner(
    path: Path, device: str = "cpu", threads: int | None = None, cuda_graph: bool = False, runtime: str | None = None, manifest: Any = None
) -> Runner:
    """The runner for an artifact: ONNX Runtime (or OpenVINO: `runtime`, else the build's recorded
    choice) for .onnx, TensorRT for engines. `cuda_graph` (engines only) replays the timed enqueue
    from a captured CUDA graph. A fallback from the recorded runtime is in `runner.warnings`.
    `manifest`: the artifact's, when the caller has read it (not read again)."""
    path = Path(path)
    target, warning = runner_target(path, runtime, device, manifest)
    runner = load_hook(target.runner)(path, device, threads, cuda_graph=cuda_graph)
    if warning:
        runner.warnings = [*(getattr(runner, "warnings", None) or []), warning]
    return runner


def cpu_opener(target: Target) -> Callable[[Path], Runner]:
    """path -> a runner of `target`'s runtime on the CPU: how build, its INT8 choice and the
    precision debugger run a candidate graph in the runtime it is judged in."""
    hook = load_hook(target.runner)
    return lambda path: hook(path, "cpu", None)


def run_batched(runner: Runner, inputs: Any, limits: BatchRange | None, preferred: int) -> Any:
    """Logits for every input, run in batches the artifact accepts (`BatchRange.split`): an
    engine built for 1:8:16 gets chunks of at most 16, a fixed batch of 4 gets padded fours."""
    import numpy as np

    limits = limits or BatchRange()
    outputs = []
    for start, stop, size in limits.split(len(inputs), preferred):
        chunk = inputs[start:stop]
        if size > len(chunk):
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
        outputs.append(runner(chunk)[: stop - start])
    return np.concatenate(outputs)


def preferred_target() -> tuple[Target, str]:
    """An available accelerated target, else the default; with the reason the accelerated ones gave."""
    reasons = []
    for target in TARGETS.values():
        if target.accelerated:
            available, reason = target.is_available()
            if available:
                return target, reason
            reasons.append(reason)
    return TARGETS[DEFAULT_TARGET], "; ".join(reasons)
