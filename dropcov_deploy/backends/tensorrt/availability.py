"""Is TensorRT usable here, and does a plan belong to this machine?

Nothing is imported at module load: `import_tensorrt` and `cuda_runtime` load TensorRT
and libcudart on first use and raise BackendUnavailable (exit 3) with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dropcov_deploy.errors import BackendFailed, BackendUnavailable, first_line

TENSORRT_PACKAGES = ("tensorrt", "tensorrt_bindings", "tensorrt_libs")


def import_tensorrt():
    """The tensorrt module, or BackendUnavailable with a one-line reason."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] not in TENSORRT_PACKAGES:
            raise BackendUnavailable(f"tensorrt cannot be imported: {first_line(exc)}") from None
        raise BackendUnavailable("tensorrt not installed (pip install 'dropcov-deploy[tensorrt]', or JetPack's python3-libnvinfer)") from None
    except (ImportError, OSError) as exc:
        raise BackendUnavailable(f"tensorrt cannot be imported: {first_line(exc)}") from None
    return trt


def tensorrt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def cuda_runtime():
    """The ctypes libcudart wrapper (BackendUnavailable when no library, driver or GPU)."""
    from dropcov_deploy.backends.cuda import runtime

    return runtime()


def tensorrt_status() -> tuple[bool, str]:
    """(True, "TensorRT X on <GPU>") or (False, a one-line reason); never raises a DropCovError."""
    try:
        trt = import_tensorrt()
        cuda = cuda_runtime()
        return True, f"TensorRT {trt.__version__} on {cuda.device_name()}"
    except (BackendUnavailable, BackendFailed) as exc:
        return False, first_line(exc)


def plan_mismatch(path: Path, recorded: Any, tensorrt_version: str, gpu_name: str) -> str | None:
    """Plans are tied to the TensorRT version and GPU model that built them: the one-line reason
    this machine cannot run the plan at `path`, or None when it can (or nothing was recorded).

    `recorded` is the plan's manifest (a Manifest or a dict; None when it has none)."""
    if recorded is None:
        return None
    built = (str(recorded.get("tensorrt_version")), str(recorded.get("gpu_name")))
    here = (str(tensorrt_version), str(gpu_name))
    if built == here:
        return None
    return (
        f"{path}: built with TensorRT {built[0]} on {built[1]}, but this machine has TensorRT "
        f"{here[0]} on {here[1]}; rebuild the engine here (plans are tied to both)"
    )
