"""Errors a user can cause, each mapped to the CLI's exit code.

Exit codes (the README's table): 0 success, 1 a verification gate failed (the CI
signal), 2 bad input, 3 a backend is missing on this machine (TensorRT, CUDA,
ModelOpt), 4 a backend failed while it ran (a CUDA or TensorRT error at run time),
70 an unexpected error (a bug: printed with its traceback), 130 interrupted.
The CLI prints a DropCovError as one line (no traceback).
"""

from __future__ import annotations

EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_BACKEND_MISSING = 3
EXIT_BACKEND_FAILED = 4
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE (sysexits.h): never 1, which means "a gate failed"
EXIT_INTERRUPTED = 130


class DropCovError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = EXIT_BAD_INPUT


class InputError(DropCovError):
    """A missing, corrupt or unsuitable file or option (exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class GateFailed(DropCovError):
    """A verification gate failed (exit code 1): the CI signal."""

    exit_code = EXIT_GATE_FAILED


class BackendUnavailable(DropCovError):
    """A backend (TensorRT, CUDA, ModelOpt) is missing on this machine (exit code 3)."""

    exit_code = EXIT_BACKEND_MISSING


class BackendFailed(DropCovError):
    """A backend that is present failed while it ran: a CUDA call, an engine execution (exit code 4)."""

    exit_code = EXIT_BACKEND_FAILED


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): our errors are one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# What a command may import that the base install (the device's) lacks: top-level module -> extra.
EXTRAS = {
    "torch": "torch",
    "torchvision": "torch",
    "timm": "torch",
    "onnxscript": "torch",
    "sklearn": "torch",
    "matplotlib": "plot",
    "modelopt": "build",
    "openvino": "openvino",
}


def missing_extra(exc: BaseException) -> BackendUnavailable | None:
    """A ModuleNotFoundError for a module an extra installs, as the one line that names the pip
    command (exit 3); None for anything else (a missing module we do not know is a bug)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    module = exc.name.split(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    return BackendUnavailable(f"this command needs {module}, which the base install leaves out: pip install 'dropcov-deploy[{extra}]'")


def environment_error(exc: BaseException) -> DropCovError | None:
    """A full disk, a quota, a read-only or forbidden path met while writing: one line naming the
    path (exit 2), not a bug's traceback. Other OSErrors stay bugs (they are ours to handle)."""
    import errno

    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        return None
    where = exc.filename or "a file"
    return InputError(f"{where}: {exc.strerror or type(exc).__name__} (nothing was published; free space or fix permissions and run again)")
