"""Shared rich consoles: tables and progress on stdout, errors on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns.
out = Console() if sys.stdout.isatty() else Console(width=160)
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)


def fail(message: str) -> None:
    """Print a user error as exactly one line (no wrapping, no traceback)."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False, markup=True)


class _StepStatus:
    """The handle `step` gives: counts (steps.advance) become the spinner's text, with rate and ETA."""

    def __init__(self, status, description: str, started: float) -> None:
        self.status, self.description, self.started = status, description, started

    def update(self, done: int, total: int) -> None:
        from rich.markup import escape

        from dropcov_deploy.steps import rate_text

        self.status.update(f"{escape(self.description)}: {rate_text(done, total, time.perf_counter() - self.started)}")


@contextmanager
def step(description: str) -> Iterator[_StepStatus]:
    """Show a spinner while a long step runs (with counts, rate and ETA when the step gives
    them), then a tick and how long it took."""
    started = time.perf_counter()
    from rich.markup import escape

    with err.status(f"{escape(description)} ...", spinner="dots") as status:
        yield _StepStatus(status, description, started)
    err.print(f"[green]done[/] {escape(description)} [dim]({time.perf_counter() - started:.1f} s)[/]", highlight=False)
