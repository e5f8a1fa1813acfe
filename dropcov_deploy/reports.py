"""Report files: JSON, JUnit XML, Markdown tables and PNG plots (matplotlib, imported lazily).

What the terminal shows (rich tables, progress) lives in the CLI's `render` module.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

    from dropcov_deploy.gates import describe_bound, describe_failure

    cases = []
    failures = 0
    for artifact in report["artifacts"]:
        failed = [describe_failure(name, g) for name, g in artifact["gates"].items() if g["passed"] is False]
        name = quoteattr(f"{artifact['path']} [{artifact['precision']}, {artifact['backend']}]")
        # every metric and every gate as a property, so a CI dashboard shows the numbers, not only pass/fail
        properties = [f"<property name={quoteattr(key)} value={quoteattr(str(value))}/>" for key, value in artifact["metrics"].items() if value is not None]
        properties += [
            f"<property name={quoteattr('gate.' + gate_name)} value={quoteattr(describe_bound(g) + ': ' + ('pass' if g['passed'] else 'FAIL' if g['passed'] is False else 'n/a'))}/>"
            for gate_name, g in artifact["gates"].items()
        ]
        body = f"<properties>{''.join(properties)}</properties>"
        if failed:
            failures += 1
            body += f"<failure message={quoteattr('; '.join(failed))}>{escape(chr(10).join(failed))}</failure>"
        cases.append(f'  <testcase classname="verify" name={name}>{body}</testcase>')
    header = f'<testsuite name={quoteattr(suite)} tests="{len(cases)}" failures="{failures}" errors="0" time="{report.get("seconds", 0):.3f}">'
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', header, *cases, "</testsuite>", ""])


PLOT_STYLES = {"torch": ":", "torch-compile": "-.", "openvino-cpu": "--"}  # line style by backend; the rest solid


def plot_bench(report: dict[str, Any], path: Path) -> Path:
    """Latency (p50), throughput and the fraction of the GEMM rate against batch size, one line per
    backend and artifact: a colour per artifact, a line style per runtime (dotted PyTorch eager, dash-dot torch.compile, dashed
    OpenVINO, solid ONNX Runtime and TensorRT), the legend under the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in report["results"]:
        series.setdefault((r["backend"], r["precision"], Path(r["artifact"]).name), []).append(r)
    artifacts = list(dict.fromkeys(name for _, _, name in series))
    colours = plt.get_cmap("tab10" if len(artifacts) <= 10 else "tab20")
    fig, (left, right, limit) = plt.subplots(1, 3, figsize=(16, 4.8))
    for (backend, precision, name), rows in series.items():
        rows = sorted(rows, key=lambda r: r["batch_size"])
        sizes = [r["batch_size"] for r in rows]
        style = {
            "marker": "o",
            "linestyle": PLOT_STYLES.get(backend, "-"),
            "color": colours(artifacts.index(name) % colours.N),
            "label": f"{backend} {precision} {name}",
        }
        left.plot(sizes, [r["latency_ms"]["p50"] for r in rows], **style)
        right.plot(sizes, [r["throughput"] for r in rows], **style)
        shares = [(r["batch_size"], r.get("fraction_of_gemm_rate")) for r in rows if r.get("fraction_of_gemm_rate") is not None]
        if shares:
            limit.plot([b for b, _ in shares], [100 * float(f or 0) for _, f in shares], **style)
    for axis, title, unit in ((left, "latency (p50)", "ms"), (right, "throughput", "images/s"), (limit, "fraction of the measured GEMM rate", "%")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(report["machine"].get("cpu", ""), fontsize=9)
    fig.tight_layout(rect=(0, 0.04 * (1 + len(labels) // 3), 1, 1))
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)


def with_interval(value: float | None, interval: list[float] | None, digits: int = 4, sep: str = " ") -> str:
    """'0.9720 [0.953, 0.985]': a figure with its 95% interval (what a sample of this size can tell)."""
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if interval:
        text += f"{sep}[{interval[0]:.{digits - 1}f}, {interval[1]:.{digits - 1}f}]"
    return text


def accuracy_drop_text(metrics: dict[str, Any], spread: dict[str, Any], sep: str = " ") -> str:
    """The paired accuracy drop in points with its 95% interval, or '-' without labels."""
    drop, interval = metrics.get("accuracy_drop"), spread.get("accuracy_drop")
    if drop is None:
        return "-"
    text = f"{100 * drop:+.2f} pt"
    if interval:
        text += f"{sep}[{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]"
    return text
