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


@app.command("export")
def export_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint: the authors' .pth.tar, a state_dict, or ours."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture, when the checkpoint does not say."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Square input side [default: the checkpoint's, else 224]."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (17-23)."),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .onnx [default: <checkpoint name>.onnx]."),
    check: bool = typer.Option(True, "--check/--no-check", help="Parity test in ONNX Runtime before writing."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export the inference graph (dropout folded away) to ONNX, with a manifest."""
    from dropcov_deploy.console import out as console
    from dropcov_deploy.console import step
    from dropcov_deploy.export import export_onnx

    result = export_onnx(checkpoint, out, arch=arch, image_size=image_size, opset=opset, batch=batch, check=check, step=step)
    if json_out:
        import json

        typer.echo(json.dumps(result.manifest, indent=2))
        return
    parity = result.manifest["parity"]
    verdict = (
        f"parity {parity['max_relative_error']:.1e} relative (tolerance {parity['tolerance']:.0e})"
        if parity.get("checked")
        else "parity not checked"
    )
    console.print(f"wrote [bold]{result.path}[/] and {result.manifest_path.name} in {result.seconds:.1f} s; {verdict}")


@app.command("inspect")
def inspect_command(
    artifact: Path = typer.Argument(..., help="A checkpoint (.pth/.pth.tar/.pt) or an ONNX model."),
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
