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


@contextmanager
def step(description: str) -> Iterator[None]:
    """Show a spinner while a long step runs, then a tick and how long it took."""
    started = time.perf_counter()
    from rich.markup import escape

    with err.status(f"{escape(description)} ...", spinner="dots"):
        yield
    err.print(f"[green]done[/] {escape(description)} [dim]({time.perf_counter() - started:.1f} s)[/]", highlight=False)
