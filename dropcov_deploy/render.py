"""What the terminal shows: every table, summary and progress bar of the CLI, in one place.

The library returns dataclasses and dicts; the CLI hands them to these functions. Only
this module, `console` and `cli` import rich (a test checks it), so the library can be
used from Python, a notebook or a service without a terminal UI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from dropcov_deploy.console import err, out


# ------------------------------------------------------------------ models, inspect
def architecture_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="DropCov architectures (1000 classes); any timm model also works as timm:<name>")
    table.add_column("architecture", no_wrap=True)
    for name, justify in (("backbone", "left"), ("head", "left"), ("fc inputs", "right"), ("image", "right"), ("params", "right"), ("params d=128", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row["arch"],
            row["backbone"],
            f"{row['heads']} heads, r={row['default_dim']}" if row.get("heads") else f"d={row['default_dim']}",
            f"{row['fc_inputs']:,}",
            str(row["image_size"]),
            f"{row['params'] / 1e6:.2f} M",
            f"{row['params_d128'] / 1e6:.2f} M" if row["params_d128"] else "-",
        )
    out.print(table)


def inspection(description: dict[str, Any]) -> None:
    table = Table(title=f"{description['kind']}: {description['path']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in description.items():
        if key in ("kind", "path", "op_counts"):
            continue
        if key in ("inputs", "outputs"):
            value = "; ".join(f"{v['name']} {v['shape']} {v['dtype']}" for v in value)
        elif key == "manifest" and isinstance(value, dict):
            value = _manifest_summary(value)
        elif key == "parameter_bytes":
            value = f"{value / 1e6:.1f} MB"
        elif isinstance(value, list) and len(value) > 12:
            value = ", ".join(map(str, value[:12])) + f", ... ({len(value)} in all)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v not in ({}, None))
        elif isinstance(value, int) and key == "parameters":
            value = f"{value:,}"
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)
    if description["kind"] == "onnx":
        ops = Table(title="operators", show_header=True)
        ops.add_column("op")
        ops.add_column("count", justify="right")
        for op, count in description["op_counts"].items():
            ops.add_row(op, str(count))
        out.print(ops)


def _manifest_summary(manifest: dict[str, Any]) -> str:
    parts = []
    for key in ("arch", "dim", "num_classes", "precision", "opset"):
        if key in manifest:
            parts.append(f"{key}={manifest[key]}")
    if isinstance(manifest.get("input"), dict):
        parts.append(f"input={manifest['input'].get('shape')} batch={manifest['input'].get('batch')}")
    if isinstance(manifest.get("preprocessing"), dict):
        prep = manifest["preprocessing"]
        parts.append(f"preprocessing=resize {prep.get('resize')} crop {prep.get('crop')} mean {prep.get('mean')} std {prep.get('std')}")
    if isinstance(manifest.get("source"), dict):
        parts.append(f"source={manifest['source'].get('checkpoint')} (sha256 {str(manifest['source'].get('sha256'))[:12]})")
    if isinstance(manifest.get("parity"), dict) and manifest["parity"].get("checked"):
        parts.append(f"parity={manifest['parity']['max_relative_error']:.1e}")
    if manifest.get("sha256"):
        parts.append(f"sha256={manifest['sha256'][:12]}")
    parts += _provenance(manifest)
    return "\n".join(parts)


def _provenance(manifest: dict[str, Any]) -> list[str]:
    """How a precision artifact was made: its source, calibration, the fc decision and why, what
    stays in higher precision, and the build's own check."""
    parts = []
    if manifest.get("target"):
        parts.append(f"target={manifest['target']}")
    source = manifest.get("source_onnx")
    if isinstance(source, dict):
        parts.append(f"built from={source.get('path')} (sha256 {str(source.get('sha256'))[:12]})")
    calibration = manifest.get("calibration")
    if isinstance(calibration, dict):
        parts.append(
            f"calibration={calibration.get('source')}, {calibration.get('images')} images, {calibration.get('method')}, sha256 {str(calibration.get('sha256'))[:12]}"
        )
    runtime = manifest.get("runtime")
    if isinstance(runtime, dict):
        parts.append(f"runtime={runtime.get('chosen')}: {runtime.get('why')}")
    details = manifest.get("precision_details")
    if isinstance(details, dict):
        fc = details.get("fc")
        if isinstance(fc, dict):
            parts.append(f"fc={fc.get('why') or fc.get('chosen')}")
        pinned = details.get("covariance_block_fp32")
        if isinstance(pinned, list):
            parts.append(f"pinned to fp32={len(pinned)} covariance nodes")
        attention = details.get("attention_float")
        if isinstance(attention, list) and attention:
            parts.append(f"attention products not quantized={len(attention)} MatMuls (q k^T, softmax v)")
        kept = details.get("kept_float")
        if isinstance(kept, list) and kept:
            parts.append("kept in higher precision=" + ", ".join(str(e.get("module") or e.get("node")) for e in kept if isinstance(e, dict)))
        check = details.get("check")
        if isinstance(check, dict) and "top1_agreement" in check:
            accuracy = f", accuracy {check['accuracy']:.4f} (FP32 {check.get('reference_accuracy', 0):.4f})" if "accuracy" in check else ""
            parts.append(f"check on calibration images=top-1 agreement {check['top1_agreement']:.4f}{accuracy}")
    return parts


# ------------------------------------------------------------------ train
class TrainProgressBars:
    """train's TrainProgress as rich progress bars on stderr: one bar per epoch, live loss and accuracy."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
            disable=not err.is_terminal,  # piped (CI logs): a line per epoch instead, as it ends
        )
        self._task: Any = None
        self._epoch = ""

    def __enter__(self) -> TrainProgressBars:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def epoch_started(self, epoch: int, epochs: int, batches: int) -> None:
        self._task = self._progress.add_task(f"epoch {epoch}/{epochs}", total=batches, stats="")
        self._epoch = f"epoch {epoch}/{epochs}"

    def batch_done(self, loss: float, accuracy: float, images_per_second: float) -> None:
        self._progress.update(self._task, advance=1, stats=f"loss {loss:.3f}  acc {accuracy:.3f}  {images_per_second:.0f} img/s")

    def epoch_done(self, stats: Any) -> None:
        text = (
            f"loss {stats.train_loss:.3f}  acc {stats.train_accuracy:.3f}  "
            f"val {stats.val_accuracy:.3f}  rho {stats.drop_rate or 0:.2f}  {stats.images_per_second:.0f} img/s"
        )
        self._progress.update(self._task, stats=text)
        if not err.is_terminal:
            err.print(f"{self._epoch}: {text}", highlight=False)


def train_summary(result: Any) -> None:
    final = result.history[-1]
    out.print(
        f"best val accuracy {result.best_accuracy:.4f}; last epoch {final.epoch}: val {final.val_accuracy:.4f}, "
        f"{final.images_per_second:.0f} img/s on {result.world_size} process(es)\n"
        f"best: {result.best_path}\nlast: {result.last_path}"
    )
    fresh = getattr(result, "fresh_tensors", None)
    if fresh:
        out.print(f"[dim]--init: {len(fresh)} tensors started fresh (their shapes depend on the classes): {escape(', '.join(fresh[:4]))}[/]", highlight=False)


# ------------------------------------------------------------------ export, build
def export_summary(result: Any) -> None:
    parity = result.manifest["parity"]
    verdict = f"parity {parity['max_relative_error']:.1e} relative (tolerance {parity['tolerance']:.0e})" if parity.get("checked") else "parity not checked"
    out.print(f"wrote [bold]{result.path}[/] and {result.manifest_path.name} in {result.seconds:.1f} s; {verdict}")


def engine_summary(result: Any) -> None:
    """After `dropcov-deploy engine`: the plan, its precision and layers, and how long it took."""
    engine = result.manifest.to_dict()
    layers = engine.get("layers") or {}
    counted = ", ".join(f"{k} {v}" for k, v in (layers.get("precisions") or {}).items())
    out.print(
        f"wrote [bold]{escape(str(result.plan))}[/] ({engine.get('precision')}, TensorRT {engine.get('tensorrt_version')} on {engine.get('gpu_name')}, "
        f"batch {engine.get('profile')}) in {result.seconds:.1f} s" + (f"; layers: {counted}" if counted else ""),
        highlight=False,
    )


def build_summary(result: Any) -> None:
    manifest = result.manifest.to_dict()
    details = manifest.get("precision_details", {})
    check = details.get("check", {})
    if getattr(result, "engine_only", False):
        summary = [f"{result.precision_onnx} is already {manifest['precision']}: engine step only ({result.seconds:.1f} s)"]
    else:
        summary = [f"wrote [bold]{result.precision_onnx}[/] ({manifest['precision']}, {'from cache' if result.cached else 'built'}) in {result.seconds:.1f} s"]
    if check and not getattr(result, "engine_only", False):
        summary.append(
            f"on {manifest['calibration']['images']} calibration images: top-1 agreement with FP32 {check['top1_agreement']:.4f}"
            + (f", accuracy {check['accuracy']:.4f} (FP32 {check['reference_accuracy']:.4f})" if "accuracy" in check else "")
        )
    runtime = manifest.get("runtime")
    if isinstance(runtime, dict):
        summary.append(f"runtime: {runtime.get('chosen')} ({runtime.get('why')})")
    if "fc" in details and "cpu_choice" not in details:  # a CPU choice says the fc in its runtime line
        summary.append(f"fc: {details['fc']['why']}")
    if details.get("kept_float"):
        kept = ", ".join(entry.get("module") or entry["node"] for entry in details["kept_float"])
        summary.append(f"kept in the higher precision: {kept}")
    for op_type, numbers in details.get("sensitive_ops", {}).items():
        summary.append(
            f"{op_type}: {numbers['fp16_nodes']}/{numbers['nodes']} nodes in FP16, max relative error {numbers['max_relative_error']:.1e} "
            f"vs FP32, largest input {numbers['max_abs_input']:.3g}, {numbers['nonfinite']} non-finite"
        )
    if result.ort_optimized:
        summary.append(f"ONNX Runtime-optimized model: {result.ort_optimized}")
    if result.engine:
        summary.append(f"TensorRT engine: {result.engine}")
    out.print("\n".join(summary), highlight=False)


# ------------------------------------------------------------------ debug precision
def debug_precision_report(report: dict[str, Any]) -> None:
    """The ranking table, then what to keep and the build command (stdout); notes on stderr."""
    table = Table(
        title=f"debug precision: {report['precision']} for {report['target']}, {report['samples']} inputs, "
        f"{report['candidates']} of {report['budget']} candidate graphs; baseline top-1 {report['baseline'].get('top1_agreement', 0):.4f}"
    )
    for column in ("rank", "layer", "op", "alone reduced: top-1", "rel. error", "alone kept: top-1", "rel. error ", "kept"):
        table.add_column(column, no_wrap=column not in ("layer",), overflow="fold")
    kept = set(report["keep_float"])

    def error(metrics: dict[str, Any]) -> str:
        return f"{metrics['nonfinite']} NaN/Inf" if metrics.get("nonfinite") else f"{metrics.get('relative_error', 0):.1e}"

    for rank, row in enumerate(report["ranking"], 1):
        alone, float_ = row["metrics_alone_quantized"], row["metrics_kept_float"]
        table.add_row(
            str(rank),
            escape(row["layer"]),
            row["op_type"],
            f"{alone.get('top1_agreement', 0):.4f}",
            error(alone),
            f"{float_.get('top1_agreement', 0):.4f}",
            error(float_),
            "[bold]yes[/]" if row["layer"] in kept else "",
        )
    if report["ranking"]:
        out.print(table)
    for note in report.get("notes", []):
        err.print(f"note: {escape(note)}", highlight=False)
    if report["passed"]:
        what = ", ".join(report["keep_float"]) or "nothing"
        out.print(f"keep in the higher precision: [bold]{escape(what)}[/] (every gate passes)", highlight=False)
        out.print(escape(report["command"]), highlight=False, soft_wrap=True)
    applied = report.get("applied")
    if applied:
        verdict = "[green]pass[/]" if applied["passed"] else "[red]FAIL[/]"
        out.print(f"applied: built {escape(applied['artifact'])}, verify {verdict}", highlight=False)
        if applied.get("engine"):
            err.print(f"note: no engine built: {escape(applied['engine'])}", highlight=False)


# ------------------------------------------------------------------ verify, bench, predict
def verify_table(report: dict[str, Any]) -> None:
    from dropcov_deploy.reports import accuracy_drop_text, with_interval

    source = report["reference"].get("source", "")
    where = " from a saved reference" if source.startswith("reference file") else ""
    table = Table(
        title=f"verify: {report['samples']} inputs, reference {escape(str(report['reference']['arch']))} (PyTorch FP32{where}); 95% intervals in brackets"
    )
    columns = ("artifact", "precision", "backend", "rel. error", "cos min", "top-1", "top-5", "non-finite", "accuracy", "acc. drop")
    for column in (*columns, "calib. overlap", "gates"):
        # figures never wrap mid-number; names give way (folded) when the terminal is narrow
        table.add_column(column, no_wrap=column not in ("artifact", "backend", "gates"), overflow="fold")
    reference_accuracy = report["reference"].get("accuracy")
    first = report["artifacts"][0].get("intervals", {}) if report["artifacts"] else {}
    table.add_row(
        "PyTorch", "fp32", "torch", "-", "-", "-", "-", "-", with_interval(reference_accuracy, first.get("reference_accuracy"), sep="\n"), "-", "-", "reference"
    )
    for artifact in report["artifacts"]:
        m = artifact["metrics"]
        failed = [name for name, g in artifact["gates"].items() if g["passed"] is False]
        verdict = "[green]pass[/]" if artifact["passed"] else "[red]FAIL: " + escape(", ".join(failed)) + "[/]"
        spread = artifact.get("intervals") or {}
        table.add_row(
            escape(Path(artifact["path"]).name),
            artifact["precision"],
            artifact["backend"],
            f"{m['relative_error']:.1e}",
            f"{m['cosine_min']:.5f}",
            with_interval(m["top1_agreement"], spread.get("top1_agreement"), sep="\n"),
            f"{m['top5_agreement']:.4f}",
            str(m["nonfinite"]),
            with_interval(m["accuracy"], spread.get("accuracy"), sep="\n"),
            accuracy_drop_text(m, spread, sep="\n"),
            "-"
            if artifact.get("calibration_overlap") is None
            else (f"[yellow]{artifact['calibration_overlap']}[/]" if artifact["calibration_overlap"] else "0"),
            verdict,
        )
    out.print(table)
    from dropcov_deploy.gates import describe_bound

    applied: dict[str, str] = {}
    for artifact in report["artifacts"]:  # the gates each precision was held to (defaults, family, --gates)
        applied.setdefault(artifact["precision"], ", ".join(f"{name} {describe_bound(g)}" for name, g in artifact["gates"].items() if describe_bound(g)))
    for precision, text in applied.items():
        out.print(f"[dim]gates {precision}: {escape(text)}[/]", highlight=False)
    for warning in report["reference"].get("warnings", []):
        err.print(f"warning: reference: {escape(warning)}", highlight=False)
    for artifact in report["artifacts"]:
        if len(artifact["chain"]) > 1:
            parts = "; ".join(f"{step}: rel {v.get('relative_error', 0):.1e}, top-1 {v.get('top1_agreement', 0):.4f}" for step, v in artifact["chain"].items())
            out.print(f"[dim]chain {escape(Path(artifact['path']).name)}: {escape(parts)}[/]", highlight=False)
        for warning in artifact.get("warnings", []):
            err.print(f"warning: {escape(Path(artifact['path']).name)}: {escape(warning)}", highlight=False)
        located = artifact.get("locate")
        if located and not located.get("supported"):
            out.print(f"[dim]locate {escape(Path(artifact['path']).name)}: {escape(located.get('why', 'not supported'))}[/]", highlight=False)
        traced = (located or {}).get("layers") or {}
        if traced.get("supported") and traced.get("worst"):
            first, worst = traced["first"], traced["worst"]
            where = (
                f"first layer past {traced['tolerance']:g}: [bold]{escape(first['layer'])}[/] ({first['relative_error']:.1e})"
                if first
                else "no layer past the tolerance"
            )
            out.print(
                f"locate {escape(Path(artifact['path']).name)}: {traced['compared']} layers against {escape(Path(traced['reference']).name)}; "
                f"{where}; worst: [bold]{escape(worst['layer'])}[/] ({worst['relative_error']:.1e})",
                highlight=False,
            )
        if located and located.get("supported"):
            errors = ", ".join(f"{k} {v:.1e}" for k, v in located["relative_error"].items())
            out.print(
                f"locate {escape(Path(artifact['path']).name)}: first diverging tensor [bold]{located['first_diverging_tensor']}[/] "
                f"(stage [bold]{located['stage']}[/]); relative error per stage: {errors}",
                highlight=False,
            )


def saved_reference(report: dict[str, Any]) -> None:
    """One line after verify --save-reference: where the reference went and what it holds."""
    saved = report["reference"].get("saved_reference")
    if saved:
        how = {
            "arrays": "the preprocessed inputs",
            "files": "the image file list with hashes (give --data on the device)",
            "random": "the seed of its random inputs",
        }
        err.print(
            f"saved reference {escape(saved['path'])}: {saved['samples']} samples, PyTorch logits, {how.get(saved['inputs_stored'], '')}", highlight=False
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _bytes(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**20:.1f} MiB"


def bench_table(report: dict[str, Any]) -> None:
    """End-to-end columns always; the GPU (device) columns only when some result has a device figure
    (mean and std then stay in the JSON, to keep the table readable). p99 is '-' where fewer samples
    than p99 needs were taken (the warning says how many)."""
    results = report["results"]
    device = any(r.get("device_ms") for r in results)
    table = Table(title=f"bench on {escape(str(report['machine'].get('gpu') or report['machine'].get('cpu', '')))} ({report['machine']['device']})")
    if device:
        table.caption = (
            "ms, img/s, vs torch: end-to-end (host in, host out). GPU: device compute by CUDA events, input already on the GPU. Speed-ups: like with like."
        )
    compiled = any(r.get("speedup_vs_compile") is not None for r in results)
    limit = any(r.get("achieved_gops") is not None for r in results)
    columns = ["backend", "artifact", "precision", "batch", "p50 ms", "p90 ms", "p99 ms"]
    columns += ["img/s", "iters", "vs torch", "GPU p50 ms", "GPU p99 ms", "GPU vs torch"] if device else ["mean ms", "std", "img/s", "iters", "vs torch"]
    columns += ["vs compile"] if compiled else []
    columns += ["GOP/s", "of GEMM"] if limit else []
    for column in columns:
        if column in ("backend", "artifact"):
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="left" if column == "precision" else "right")
    for r in results:
        lat = r["latency_ms"]
        row = [r["backend"], escape(Path(r["artifact"]).name), r["precision"], str(r["batch_size"]), _ms(lat["p50"]), _ms(lat["p90"]), _ms(lat["p99"])]
        if not device:
            row += [_ms(lat["mean"]), _ms(lat["std"])]
        row += [f"{r['throughput']:.1f}", str(r["iterations"]), _ratio(r["speedup_vs_torch"])]
        if device:
            dev = r.get("device_ms") or {}
            row += [_ms(dev.get("p50")), _ms(dev.get("p99")), _ratio(r.get("device_speedup_vs_torch"))]
        if compiled:
            row.append(_ratio(r.get("speedup_vs_compile")))
        if limit:
            gops, share = r.get("achieved_gops"), r.get("fraction_of_gemm_rate")
            row += ["-" if gops is None else f"{gops:.0f}", "-" if share is None else f"{share:.0%}"]
        table.add_row(*row)
    out.print(table)
    for artifact in report.get("artifacts", []):
        engine = artifact.get("engine")
        if engine:
            seconds = engine.get("deserialize_seconds")
            out.print(
                f"[dim]engine {escape(Path(artifact['artifact']).name)}: plan {_bytes(engine.get('plan_bytes'))}, "
                f"deserialized in {'?' if seconds is None else f'{seconds:.2f} s'}, device memory {_bytes(engine.get('device_memory_bytes'))}, "
                f"CUDA graph {'on' if engine.get('cuda_graph') else 'off'}[/]",
                highlight=False,
            )
    if report["machine"].get("device") == "cuda":
        for backend, reason in dict.fromkeys((r["backend"], r["device_unavailable"]) for r in results if r.get("device_unavailable")):
            out.print(f"[dim]no GPU time for {escape(backend)}: {escape(reason)}[/]", highlight=False)
    rates = (report.get("roofline") or {}).get("gemm_rates_gops")
    if limit and rates:
        int8 = f", INT8 {rates['int8']:.0f}" if rates.get("int8") else ""
        out.print(
            f"[dim]of GEMM: the MACs at this machine's measured GEMM rate (FP32 {rates['fp32']:.0f}{int8} GOP/s, {rates['gemm']}) over the p50; "
            "100% would be every multiply-accumulate at GEMM speed[/]",
            highlight=False,
        )
    for warning in report.get("warnings", []):
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for r in results:
        for warning in r["warnings"]:
            err.print(
                f"[yellow]warning:[/] {escape(r['backend'])} {escape(Path(r['artifact']).name)} batch {r['batch_size']}: {escape(warning)}", highlight=False
            )


def predictions(results: list[dict[str, Any]]) -> None:
    for result in results:
        ranked = ", ".join(f"{escape(t['name'])} {t['probability']:.3f}" for t in result["top"])
        out.print(f"{escape(result['image'])}: {ranked}", highlight=False)


def demo_summary(result: Any) -> None:
    verify_table(result.verify)
    bench_table(result.bench)
    out.print(
        f"backend    {escape(result.backend_note)}\n"
        f"checkpoint {result.checkpoint}\nONNX       {result.onnx}\nreport     {result.report}\n"
        f"plots      {result.plot}, {result.bench_plot}\n"
        f"verify     {'PASS' if result.passed else 'FAIL'} ({result.out / 'verify.json'})\n"
        f"time       " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    )
