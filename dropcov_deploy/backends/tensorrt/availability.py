"""Is TensorRT usable here, and does a plan belong to this machine?

Nothing is imported at module load: `import_tensorrt` and `cuda_runtime` load TensorRT
and libcudart on first use and raise BackendUnavailable (exit 3) with one line. The
decisions (`tensorrt_version_problem`, `creation_failure_message`, `plan_mismatch`)
work on plain strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropcov_deploy.backends.tensorrt.log import Sink, capture
from dropcov_deploy.errors import BackendFailed, BackendUnavailable, first_line

TENSORRT_PACKAGES = ("tensorrt", "tensorrt_bindings", "tensorrt_libs")
# The oldest TensorRT this backend runs on: JetPack 6's 10.3 (strongly typed networks with
# the 10.x inspector; older 10.x releases are not tested and lack fixes the build relies on).
MINIMUM_TENSORRT = (10, 3)


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable with a one-line reason."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] not in TENSORRT_PACKAGES:
            raise BackendUnavailable(f"tensorrt cannot be imported: {first_line(exc)}") from None
        raise BackendUnavailable(
            "tensorrt not installed (pip install 'dropcov-deploy[tensorrt-cu12]' or '[tensorrt-cu13]' for the driver's CUDA, or JetPack's python3-libnvinfer)"
        ) from None
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(f"tensorrt cannot be imported: {first_line(exc)}") from None
    problem = tensorrt_version_problem(str(getattr(trt, "__version__", "")))
    if problem:
        raise BackendUnavailable(problem)
    return trt


def tensorrt_version_problem(version: str) -> str | None:
    """Why this TensorRT version cannot be used (one line), or None from 10.3 on; an unreadable
    version is refused too, since every later decision (network flags, inspector schema) reads it."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(version))
    needed = ".".join(str(part) for part in MINIMUM_TENSORRT)
    if match is None:
        return f"TensorRT version {version!r} cannot be read; dropcov-deploy needs TensorRT {needed} or later"
    if (int(match.group(1)), int(match.group(2))) < MINIMUM_TENSORRT:
        return f"TensorRT {version} is too old: dropcov-deploy needs TensorRT {needed} or later (JetPack 6 or `pip install 'tensorrt>={needed}'`)"
    return None


def tensorrt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def cuda_runtime():
    """The ctypes libcudart wrapper (BackendUnavailable when no library, driver or GPU)."""
    from dropcov_deploy.backends.cuda import runtime

    return runtime()


def creation_failure_message(what: str, version: str, raised: str | None, logged: Sequence[str]) -> str:
    """One line for a Builder or Runtime TensorRT could not create (the bindings raise TypeError
    'factory function returned nullptr' or return None): what TensorRT logged, else what was raised,
    and the usual causes (a driver older than the wheel's CUDA, no usable GPU)."""
    reason = "; ".join(list(logged)[-3:]) or raised or "no error was logged"
    return (
        f"TensorRT {version} could not create its {what} ({reason}); the NVIDIA driver may be too old "
        "for the CUDA this TensorRT was built with, or no CUDA GPU is usable"
    )


def _create(trt, what: str, factory: Any, sink: Sink) -> Any:
    """`factory(sink.logger)` (trt.Builder or trt.Runtime), or BackendUnavailable with one line."""
    raised = None
    try:
        created = factory(sink.logger)
    except TypeError as exc:  # pybind11: "pybind11::init(): factory function returned nullptr"
        created, raised = None, first_line(exc)
    if created is None:
        raise BackendUnavailable(creation_failure_message(what, str(trt.__version__), raised, sink.errors))
    return created


def create_builder(trt, sink: Sink) -> Any:
    """A trt.Builder on the shared logger of `sink` (from `log.capture`); BackendUnavailable (exit 3) when TensorRT cannot make one."""
    return _create(trt, "Builder", trt.Builder, sink)


def create_runtime(trt, sink: Sink) -> Any:
    """A trt.Runtime on the shared logger of `sink` (from `log.capture`); BackendUnavailable (exit 3) when TensorRT cannot make one."""
    return _create(trt, "Runtime", trt.Runtime, sink)


def tensorrt_status() -> tuple[bool, str]:
    """(True, "TensorRT X on <GPU>") or (False, a one-line reason); never raises a DropCovError.
    A Runtime is created (and dropped) so a driver too old for the wheel's CUDA shows here, not mid-build."""
    try:
        trt = import_tensorrt()
        cuda = cuda_runtime()
        with capture(trt) as sink:
            runtime = create_runtime(trt, sink)
            del runtime
        return True, f"TensorRT {trt.__version__} on {cuda.device_name()}"
    except (BackendUnavailable, BackendFailed) as exc:
        return False, first_line(exc)


@dataclass(frozen=True)
class PlanFit:
    """Whether a plan can run here: `error` (one line) refuses it, `warning` (one line) is for the caller to log."""

    error: str | None = None
    warning: str | None = None


def plan_mismatch(path: Path, recorded: Any, tensorrt_version: str, compute_capability: str, gpu_name: str) -> PlanFit:
    """Plans are tied to the TensorRT version and the GPU's compute capability that built them:
    another of either is an error; the same compute capability under another GPU name (another
    board or SKU of one architecture) runs, with a warning that tactics were timed elsewhere.

    `recorded` is the plan's manifest (a Manifest or a dict; None when it has none: nothing to check).
    A manifest that records no version or compute capability does not pass for a match."""
    if recorded is None:
        return PlanFit()
    built_trt, built_cc, built_gpu = (str(recorded.get(key)) for key in ("tensorrt_version", "compute_capability", "gpu_name"))
    here_trt, here_cc, here_gpu = str(tensorrt_version), str(compute_capability), str(gpu_name)
    if (built_trt, built_cc) != (here_trt, here_cc):
        return PlanFit(
            error=(
                f"{path}: built with TensorRT {built_trt} for compute capability {built_cc} ({built_gpu}), but this machine has "
                f"TensorRT {here_trt} and compute capability {here_cc} ({here_gpu}); rebuild the engine here "
                "(plans are tied to the TensorRT version and the compute capability)"
            )
        )
    if built_gpu != here_gpu:
        return PlanFit(
            warning=(
                f"{path}: built on {built_gpu}, running on {here_gpu} (both compute capability {here_cc}); "
                "it runs, but its tactics were timed on the other GPU, so rebuild here for the best speed"
            )
        )
    return PlanFit()
