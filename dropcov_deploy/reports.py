"""Reports for people: Markdown tables and PNG plots (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dropcov_deploy.atomic import atomic_write


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join("-" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: Path, text: str) -> Path:
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def plot_training(history: Sequence[Any], path: Path) -> Path:
    """Loss and accuracy per epoch: one picture says whether training converged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, [h.train_loss for h in history], marker="o", label="train")
    left.plot(epochs, [h.val_loss for h in history], marker="o", label="val")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.set_title("loss")
    left.legend()
    right.plot(epochs, [h.train_accuracy for h in history], marker="o", label="train")
    right.plot(epochs, [h.val_accuracy for h in history], marker="o", label="val")
    right.set_xlabel("epoch")
    right.set_ylabel("top-1 accuracy")
    right.set_ylim(0, 1.01)
    right.set_title("accuracy")
    right.legend()
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, dpi=110, format="png")

    atomic_write(Path(path), save)
    plt.close(fig)
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    import json

    return write_text(Path(path), json.dumps(data, indent=2, default=str) + "\n")


def junit_xml(report: dict[str, Any], suite: str = "dropcov-deploy verify") -> str:
    """JUnit XML: one testcase per artifact, a failure listing the gates it missed."""
    from xml.sax.saxutils import escape, quoteattr

    cases = []
    failures = 0
    for artifact in report["artifacts"]:
        failed = [f"{name}: {g['value']} (min {g.get('min', '-')}, max {g.get('max', '-')})"
                  for name, g in artifact["gates"].items() if g["passed"] is False]
        name = quoteattr(f"{artifact['path']} [{artifact['precision']}, {artifact['backend']}]")
        if failed:
            failures += 1
            body = f'<failure message={quoteattr("; ".join(failed))}>{escape(chr(10).join(failed))}</failure>'
            cases.append(f"  <testcase classname=\"verify\" name={name}>{body}</testcase>")
        else:
            cases.append(f"  <testcase classname=\"verify\" name={name}/>")
    header = f'<testsuite name={quoteattr(suite)} tests="{len(cases)}" failures="{failures}" errors="0" time="{report.get("seconds", 0):.3f}">'
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', header, *cases, "</testsuite>", ""])


def render_verify(report: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from dropcov_deploy.console import out

    table = Table(title=f"verify: {report['samples']} inputs, reference {escape(report['reference']['arch'])} (PyTorch FP32)")
    for column in ("artifact", "precision", "backend", "rel. error", "cos min", "top-1", "top-5", "non-finite", "accuracy", "gates"):
        table.add_column(column)
    reference_accuracy = report["reference"].get("accuracy")
    table.add_row("PyTorch (reference)", "fp32", "torch", "-", "-", "-", "-", "-",
                  "-" if reference_accuracy is None else f"{reference_accuracy:.4f}", "")
    for artifact in report["artifacts"]:
        m = artifact["metrics"]
        failed = [name for name, g in artifact["gates"].items() if g["passed"] is False]
        verdict = "[green]pass[/]" if artifact["passed"] else "[red]FAIL: " + escape(", ".join(failed)) + "[/]"
        table.add_row(
            escape(Path(artifact["path"]).name), artifact["precision"], artifact["backend"], f"{m['relative_error']:.1e}",
            f"{m['cosine_min']:.5f}", f"{m['top1_agreement']:.4f}", f"{m['top5_agreement']:.4f}", str(m["nonfinite"]),
            "-" if m["accuracy"] is None else f"{m['accuracy']:.4f}", verdict,
        )
    out.print(table)
    for artifact in report["artifacts"]:
        if len(artifact["chain"]) > 1:
            parts = "; ".join(f"{step}: rel {v.get('relative_error', 0):.1e}, top-1 {v.get('top1_agreement', 0):.4f}"
                              for step, v in artifact["chain"].items())
            out.print(f"[dim]chain {escape(Path(artifact['path']).name)}: {escape(parts)}[/]", highlight=False)
        located = artifact.get("locate")
        if located and located.get("supported"):
            errors = ", ".join(f"{k} {v:.1e}" for k, v in located["relative_error"].items())
            out.print(f"locate {escape(Path(artifact['path']).name)}: first diverging tensor [bold]{located['first_diverging_tensor']}[/] "
                      f"(stage [bold]{located['stage']}[/]); relative error per stage: {errors}", highlight=False)
