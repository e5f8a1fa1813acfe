"""How library functions report long steps without depending on a UI.

A step reporter is a callable taking a description and returning a context manager;
the CLI passes `console.step` (spinner, then a tick with the time), library users get
`quiet_step` by default. What the context manager gives may take counts (`advance`):
the CLI's shows them as "2,560/20,000 images, 850 images/s, ETA 21 s".
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

StepReporter = Callable[[str], AbstractContextManager[Any]]


def quiet_step(_: str) -> AbstractContextManager[Any]:
    return nullcontext()


def advance(handle: Any, done: int, total: int) -> None:
    """Tell a step's handle how far it is (a handle without `update`, e.g. quiet_step's None, ignores it)."""
    update = getattr(handle, "update", None)
    if callable(update):
        update(done, total)


def rate_text(done: int, total: int, seconds: float, unit: str = "images") -> str:
    """'2,560/20,000 images, 850 images/s, ETA 21 s': the rate and the time left at that rate."""
    text = f"{done:,}/{total:,} {unit}"
    if done <= 0 or seconds <= 0:
        return text
    rate = done / seconds
    text += f", {rate:,.0f} {unit}/s"
    if done < total:
        left = (total - done) / rate
        text += f", ETA {left:.0f} s" if left < 120 else f", ETA {left / 60:.0f} min"
    return text
