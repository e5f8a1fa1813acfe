"""The `dropcov-deploy` command line: a thin Typer shell over the library.

Each command parses options, calls one library function and renders its result.
Heavy modules (torch, onnx) are imported inside the commands so `--help` is fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from dropcov_deploy import __version__
from dropcov_deploy.errors import DropCovError

app = typer.Typer(
    name="dropcov-deploy",
    help="DropCov models from PyTorch to verified ONNX / TensorRT inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dropcov-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """DropCov models from PyTorch to verified ONNX / TensorRT inference."""


@app.command("models")
def models_command(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the architectures with parameter counts and default reduction width d."""
    from dropcov_deploy.model_table import architecture_rows, render_architecture_table

    rows = architecture_rows()
    if json_out:
        import json

        typer.echo(json.dumps(rows, indent=2))
    else:
        render_architecture_table(rows)


@app.command("inspect")
def inspect_command(
    artifact: Path = typer.Argument(..., help="A checkpoint (.pth/.pth.tar/.pt)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture, when the checkpoint does not say."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show what an artifact holds and where it came from."""
    from dropcov_deploy import inspection

    description = inspection.describe(artifact, arch)
    if json_out:
        import json

        typer.echo(json.dumps(description, indent=2))
    else:
        inspection.render(description)


def main() -> None:
    """Console-script entry point: user errors become one line and an exit code."""
    try:
        app()
    except DropCovError as exc:
        from dropcov_deploy.console import fail

        fail(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
