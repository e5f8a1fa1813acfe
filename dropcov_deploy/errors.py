"""Errors a user can cause, each mapped to the CLI's exit code.

The CLI prints these as one line (no traceback); anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class DropCovError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class InputError(DropCovError):
    """A missing, corrupt or unsuitable file or option (exit code 2)."""

    exit_code = 2


class CheckpointError(InputError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class GateFailed(DropCovError):
    """A verification gate failed (exit code 1): the CI signal."""

    exit_code = 1


class BackendUnavailable(DropCovError):
    """A backend (TensorRT, CUDA) is missing on this machine (exit code 3)."""

    exit_code = 3
