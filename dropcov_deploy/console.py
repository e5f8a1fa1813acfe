"""Shared rich consoles: tables and progress on stdout, errors on stderr."""

from __future__ import annotations

import sys

from rich.console import Console

# Piped output (CI logs, files) gets a wide fixed width instead of rich's 80 columns.
out = Console() if sys.stdout.isatty() else Console(width=160)
err = Console(stderr=True)


def fail(message: str) -> None:
    """Print a user error as exactly one line (no wrapping, no traceback)."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False, markup=True)
