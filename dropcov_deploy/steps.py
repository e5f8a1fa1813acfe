"""How library functions report long steps without depending on a UI.

A step reporter is a callable taking a description and returning a context manager;
the CLI passes `console.step` (spinner, then a tick with the time), library users get
`quiet_step` by default.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

StepReporter = Callable[[str], AbstractContextManager[Any]]


def quiet_step(_: str) -> AbstractContextManager[Any]:
    return nullcontext()
