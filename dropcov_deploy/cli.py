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
from dropcov_deploy.backends import DEFAULT_TARGET, TARGETS, runtime_names
from dropcov_deploy.errors import EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, DropCovError, environment_error, missing_extra
from dropcov_deploy.precision import Precision


def _flags_take_no_value() -> None:
    """Typer's help shows `<bool>` beside a flag (`--json <bool>`), as if it took a value; a flag
    takes none. Guarded: a Typer without this hook keeps its own display."""
    option = getattr(typer.core, "TyperOption", None)
    original = getattr(option, "display_type_rich", None)
    if option is None or original is None:
        return

    def display_type_rich(self, ctx):
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        return original(self, ctx)

    option.display_type_rich = display_type_rich


_flags_take_no_value()

RUNTIME_HELP = f"ONNX models: run them in {' or '.join(runtime_names())} \\[default: the runtime their build chose (manifest), else onnxruntime]."

app = typer.Typer(
    name="dropcov-deploy",
    help="DropCov models from PyTorch to verified ONNX / TensorRT inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_json(data: object) -> None:
    """--json output: the command's result for machines, nothing else on stdout."""
    import json

    typer.echo(json.dumps(data, indent=2, default=str))


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
    from dropcov_deploy import render
    from dropcov_deploy.model_table import cached_architecture_rows

    rows = cached_architecture_rows()
    if json_out:
        _print_json(rows)
    else:
        render.architecture_table(rows)


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the model, artifacts and report."),
    epochs: int = typer.Option(10, "--epochs", help="Training epochs on digits."),
) -> None:
    """Run the whole chain on bundled data: train, export, build FP16/INT8, verify, bench, report."""
    from dropcov_deploy import render
    from dropcov_deploy.console import step
    from dropcov_deploy.demo import run_demo

    with render.TrainProgressBars() as progress:
        result = run_demo(out, epochs=epochs, step=step, progress=progress)
    render.demo_summary(result)
    if not result.passed:
        from dropcov_deploy.errors import GateFailed

        raise GateFailed("the demo's artifacts failed verification (see the table above)")


@app.command("train")
def train_command(
    arch: str = typer.Argument(..., help="Architecture (see `dropcov-deploy models`)."),
    data: Optional[Path] = typer.Option(None, "--data", help="ImageFolder tree with train/ and val/."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A bundled dataset: digits."),
    epochs: int = typer.Option(15, "--epochs"),
    batch_size: int = typer.Option(64, "--batch-size", help="Global batch (split across torchrun processes)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate, warm-up then cosine \\[default: 0.05 SGD for ResNets, 1e-3 AdamW for ViTs]."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="\\[default: 1e-4 ResNets, 0.05 ViTs]"),
    dim: Optional[int] = typer.Option(None, "--dim", help="ResNets: reduction width d; ViTs: the head's r \\[default: the architecture's]."),
    heads: Optional[int] = typer.Option(None, "--heads", help="ViTs: the head's cross-covariance heads \\[default: the architecture's]."),
    pretrained_backbone: bool = typer.Option(False, "--pretrained-backbone", help="ViTs: start from timm's ImageNet weights (downloads them)."),
    backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help="ViTs: start from a local timm weights file (.safetensors/.pth)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input side \\[default: 32 for digits, 224 for folders]."),
    width: Optional[str] = typer.Option(None, "--width", help="ResNets: four stage widths, e.g. 16,32,64,128."),
    out: Path = typer.Option(Path("runs/model.pt"), "--out", "-o", help="Best checkpoint; the last goes beside it as *-last.pt."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue from a *-last.pt checkpoint."),
    init: Optional[Path] = typer.Option(
        None, "--init", help="Fine-tune from this checkpoint (ours or the authors'; same architecture): layers whose shape depends on the classes start fresh."
    ),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
) -> None:
    """Train a DropCov model (its training-only dropout active); under torchrun, with DDP."""
    from dropcov_deploy.train import TrainConfig, train

    widths = None
    if width:
        try:
            widths = [int(w) for w in width.split(",")]
        except ValueError:
            raise typer.BadParameter(f"--width takes comma-separated integers, got {width!r}") from None
    config = TrainConfig(
        arch=arch,
        data=data,
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        dim=dim,
        image_size=image_size,
        widths=widths,
        out=out,
        resume=resume,
        init=init,
        seed=seed,
        workers=workers,
        heads=heads,
        pretrained_backbone=str(backbone_weights) if backbone_weights else pretrained_backbone,
    )
    from dropcov_deploy import render

    with render.TrainProgressBars() as progress:
        result = train(config, progress=progress)
    if result.history and _is_main_process():
        render.train_summary(result)


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


@app.command("export")
def export_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Checkpoint: the authors' .pth.tar, a state_dict, or ours."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture, when the checkpoint does not say."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Square input side \\[default: the checkpoint's, else 224]."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (17-23)."),
    batch: str = typer.Option("dynamic", "--batch", help="'dynamic' or a fixed batch size."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .onnx \\[default: <checkpoint name>.onnx]."),
    check: bool = typer.Option(True, "--check/--no-check", help="Parity test in ONNX Runtime before writing."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export the inference graph (dropout folded away) to ONNX, with a manifest."""
    from dropcov_deploy import render
    from dropcov_deploy.console import step
    from dropcov_deploy.export import export_onnx

    result = export_onnx(checkpoint, out, arch=arch, image_size=image_size, opset=opset, batch=batch, check=check, step=step)
    if json_out:
        _print_json(result.manifest)
        return
    render.export_summary(result)


@app.command("build")
def build_command(
    model: Path = typer.Argument(..., help="The FP32 ONNX written by `dropcov-deploy export` (or a TensorRT-target precision ONNX: engine step only)."),
    precision: Optional[str] = typer.Option(
        None,
        "--precision",
        "-p",
        help=f"{', '.join(Precision.choices())} \\[default: the target's, int8 for onnxruntime (the fast one on a CPU), fp16 for tensorrt; a precision ONNX's own].",
    ),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration images (folder) or preprocessed .npy/.npz; required for fp16 and int8."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="Calibrate on a bundled dataset's split instead of --calib: digits[:train|val] (no split: train; test is refused)."
    ),
    calib_size: int = typer.Option(512, "--calib-size", help="At most this many calibration inputs (a fixed, seeded subset)."),
    calib_method: str = typer.Option("entropy", "--calib-method", help="entropy, max (or minmax) or percentile (percentile: CPU target only)."),
    backend: str = typer.Option(DEFAULT_TARGET, "--backend", "-b", help=f"{' or '.join(TARGETS)}: the target the artifacts are built for."),
    batch: Optional[str] = typer.Option(
        None, "--batch", help="TensorRT optimization profile MIN:OPT:MAX (or N) for the batch axis \\[default: 1:8:32 within the ONNX's range]."
    ),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="TensorRT workspace limit in GiB."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache, read and written."),
    fc: str = typer.Option("auto", "--fc", help="INT8 fc treatment: auto (measured), int8, weight-only or float."),
    high_precision: str = typer.Option("fp16", "--high-precision", help="TensorRT INT8: precision of the unquantized rest (covariance stays fp32)."),
    keep_float: Optional[str] = typer.Option(
        None,
        "--keep-float",
        help="Layers kept in the higher precision (INT8: no Q/DQ; FP16: FP32): ONNX node names or PyTorch module paths (layer3.0.conv2, or a prefix: layer3), comma list or @FILE.",
    ),
    exclude_op_types: Optional[str] = typer.Option(
        None, "--exclude-op-types", help="Keep every node of these ONNX op types in the higher precision, comma list (e.g. Gemm)."
    ),
    autocast_range_check: bool = typer.Option(
        True,
        "--autocast-range-check/--no-autocast-range-check",
        help="FP16: AutoCast keeps layers whose values overflow FP16 in FP32 (off: only --keep-float does).",
    ),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Recalibrate even when the precision cache has this graph (cache: $DROPCOV_CACHE, else ~/.cache/dropcov-deploy)."
    ),
    runtime: str = typer.Option(
        "auto",
        "--runtime",
        help=f"CPU target: the runtime the artifact is for, auto or {' or '.join(runtime_names())} (auto: INT8 measured in each installed one, the fastest that meets the gates).",
    ),
    qdq_form: str = typer.Option(
        "auto", "--qdq-form", help="CPU target INT8: u8s8, s8s8, u8s8-stem or s8s8-stem (-stem: the stem conv in INT8 too); auto measures them."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Precision ONNX path \\[default: <model>.<precision>.<cpu|trt>.onnx]."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Build FP16 / INT8 artifacts: the precision ONNX, then an ORT-optimized model or a TensorRT engine."""
    from dropcov_deploy import render
    from dropcov_deploy.build import BuildOptions, build
    from dropcov_deploy.console import step

    options = BuildOptions(
        precision=precision,
        calib=calib,
        dataset=dataset,
        calib_size=calib_size,
        calib_method=calib_method,
        backend=backend,
        batch=batch,
        workspace_gib=workspace,
        timing_cache=timing_cache,
        out=out,
        fc=fc,
        high_precision=high_precision,
        keep_float=keep_float,
        exclude_op_types=exclude_op_types,
        autocast_range_check=autocast_range_check,
        use_cache=not no_cache,
        runtime=runtime,
        qdq_form=qdq_form,
    )
    result = build(model, options, step=step)
    if json_out:
        _print_json(result.manifest.to_dict())
        return
    render.build_summary(result)


@app.command("engine")
def engine_command(
    model: Path = typer.Argument(..., help="An FP32 export, or a precision ONNX that `build --backend tensorrt` wrote (its manifest says which)."),
    batch: Optional[str] = typer.Option(
        None, "--batch", help="Optimization profile MIN:OPT:MAX (or N) for the batch axis \\[default: the ONNX's fixed batch, else 1:8:32 within its range]."
    ),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="Builder workspace limit in GiB \\[default: TensorRT's, the GPU's memory]."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file, read and written (faster rebuilds on the same GPU)."),
    builder_optimization_level: Optional[int] = typer.Option(
        None, "--builder-optimization-level", help="0-5: higher searches longer for faster kernels \\[default: TensorRT's, 3]."
    ),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="Run on this DLA core (Jetson AGX/NX), GPU fallback for unsupported layers."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Plan file \\[default: <model>.plan]; its manifest goes beside it as <plan>.json."),
    json_out: bool = typer.Option(False, "--json", help="Print the engine's manifest as JSON."),
) -> None:
    """Compile a TensorRT plan here, on the device it will run on: no calibration data, no PyTorch."""
    from dropcov_deploy import render
    from dropcov_deploy.console import err, step
    from dropcov_deploy.engine import EngineOptions, compile_engine

    options = EngineOptions(
        batch=batch, workspace_gib=workspace, timing_cache=timing_cache, builder_optimization_level=builder_optimization_level, dla_core=dla_core, out=out
    )
    result = compile_engine(model, options, step=step, log=lambda text: err.print(text, highlight=False, markup=False))
    if json_out:
        _print_json(result.manifest.to_dict())
        return
    render.engine_summary(result)


@app.command("verify")
def verify_command(
    artifacts: Optional[list[Path]] = typer.Argument(None, help="ONNX models (any precision) and TensorRT engines."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="The original model, run in PyTorch now: the reference."),
    reference: Optional[Path] = typer.Option(
        None, "--reference", "-r", help="A reference file saved by --save-reference: verify without PyTorch (on the device)."
    ),
    save_reference: Optional[Path] = typer.Option(
        None, "--save-reference", help="With --checkpoint: save inputs, labels and PyTorch logits to this .npz for verify --reference."
    ),
    max_reference_mb: float = typer.Option(
        256.0, "--max-reference-mb", help="Past this many MB of inputs, the reference lists the image files (with hashes) instead of storing them."
    ),
    data: Optional[Path] = typer.Option(None, "--data", help="Image folder (ImageFolder labelled, or flat); with --reference, where its listed images are."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="A bundled dataset's split instead of a folder: digits[:train|val|test] (no split: the held-out test split)."
    ),
    random: Optional[int] = typer.Option(None, "--random", help="N seeded random inputs instead of images."),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        help="Threads decoding images, a chunk ahead of the models (0: none) \\[default: one per CPU, up to 8; none for 256 images or fewer].",
    ),
    batch_size: int = typer.Option(32, "--batch-size"),
    gates: Optional[Path] = typer.Option(None, "--gates", help="JSON file overriding the default gates."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report here."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML here."),
    locate: bool = typer.Option(False, "--locate", help="For a failing artifact, name the first diverging stage."),
    gate_mode: str = typer.Option(
        "point", "--gate-mode", help="point: the figure decides (an undecided 95% interval is warned); confident: the interval must clear the gate."
    ),
    strict: bool = typer.Option(False, "--strict", help="Fail an artifact that was calibrated on any of these inputs (not a held-out test)."),
    device: str = typer.Option("cpu", "--device", help="ONNX Runtime device: cpu or cuda."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help=RUNTIME_HELP),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run PyTorch over the inputs even when its logits for this checkpoint and input set are cached."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON report instead of a table."),
) -> None:
    """Parity of every artifact against the PyTorch model (or a saved reference): metrics, chain attribution, gates (exit 1 on failure)."""
    from dropcov_deploy import render
    from dropcov_deploy.console import step
    from dropcov_deploy.errors import GateFailed
    from dropcov_deploy.reports import junit_xml, write_json, write_text
    from dropcov_deploy.verify import verify

    result = verify(
        checkpoint,
        list(artifacts or []),
        reference=reference,
        data=data,
        dataset=dataset,
        random=random,
        batch_size=batch_size,
        gates_file=gates,
        locate=locate,
        device=device,
        runtime=runtime,
        save_reference=save_reference,
        max_reference_mb=max_reference_mb,
        strict=strict,
        gate_mode=gate_mode,
        workers=workers,
        use_cache=not no_cache,
        outputs=[report, junit],
        step=step,
    )
    data_out = result.to_dict()
    if report:
        write_json(report, data_out)
    if junit:
        write_text(junit, junit_xml(data_out))
    if json_out:
        _print_json(data_out)
    else:
        render.verify_table(data_out)
    render.saved_reference(data_out)
    if not result.passed:
        from dropcov_deploy.gates import describe_failure

        failed = [
            f"{Path(a['path']).name}: " + ", ".join(describe_failure(n, g) for n, g in a["gates"].items() if g["passed"] is False)
            for a in data_out["artifacts"]
            if not a["passed"]
        ]
        raise GateFailed("verification failed: " + "; ".join(failed))


@app.command("bench")
def bench_command(
    artifacts: list[Path] = typer.Argument(..., help="ONNX models and TensorRT engines to time."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Also time the PyTorch model (the baseline)."),
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda adds GPU compute time by CUDA events beside end-to-end latency)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads for torch, ONNX Runtime and OpenVINO."),
    warmup: float = typer.Option(1.0, "--warmup", help="Warm-up seconds per measurement."),
    max_time: float = typer.Option(
        5.0, "--max-time", help="Seconds at most per measurement (stops earlier once 200 samples are in and the median is stable; p99 needs 200)."
    ),
    cuda_graph: bool = typer.Option(False, "--cuda-graph", help="TensorRT engines: time the GPU run replayed from a CUDA graph (ONNX models are unaffected)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Time on these images (preprocessed as the manifest says) \\[default: seeded noise]."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Time on a bundled dataset's split: digits[:train|val|test]."),
    runtime: Optional[str] = typer.Option(
        None,
        "--runtime",
        help=f"ONNX models: time them in these runtimes, a comma list of {', '.join(runtime_names())} \\[default: the runtime their build chose, else onnxruntime].",
    ),
    baseline: str = typer.Option(
        "eager", "--baseline", help="With --checkpoint: PyTorch eager, torch.compile (inductor, compiled before timing) or both as the baseline."
    ),
    roofline: bool = typer.Option(
        True, "--roofline/--no-roofline", help="Count each model's MACs and compare each row with this machine's measured GEMM rate (cached per machine)."
    ),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of latency, throughput and the fraction of the GEMM rate against batch size."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON report instead of a table."),
) -> None:
    """Latency percentiles and throughput per backend and batch size (end-to-end; on a GPU also device compute), with speed-ups against PyTorch."""
    from dropcov_deploy import render
    from dropcov_deploy.bench import bench
    from dropcov_deploy.console import err
    from dropcov_deploy.reports import plot_bench, write_json

    try:
        sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--batch-sizes takes integers like 1,8,32, got {batch_sizes!r}") from None
    from dropcov_deploy.atomic import spare_inputs

    spare_inputs([report, plot], [*artifacts, checkpoint, data])
    if plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # say so before the minutes of timing, not after
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    with err.status("benchmarking ...") as status:
        result = bench(
            list(artifacts),
            checkpoint=checkpoint,
            batch_sizes=sizes,
            device=device,
            threads=threads,
            warmup_s=warmup,
            max_time_s=max_time,
            cuda_graph=cuda_graph,
            data=data,
            dataset=dataset,
            runtimes=[name.strip() for name in runtime.split(",") if name.strip()] if runtime else None,
            baseline=baseline,
            roofline=roofline,
            # a spinner on a terminal; piped (CI logs), a line per measurement instead of minutes of silence
            progress=(lambda text: status.update(f"benchmarking {text} ..."))
            if err.is_terminal
            else (lambda text: err.print(f"benchmarking {text}", highlight=False)),
        )
    if report:
        write_json(report, result)
    if plot:
        plot_bench(result, plot)
    if json_out:
        _print_json(result)
    else:
        render.bench_table(result)


@app.command("predict")
def predict_command(
    artifact: Path = typer.Argument(..., help="An ONNX model or TensorRT engine with its manifest."),
    images: list[str] = typer.Argument(..., help="Image files, folders (their images, recursively) or quoted globs ('imgs/*.jpg')."),
    top_k: int = typer.Option(5, "--top", help="How many classes to show per image."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images decoded and run at a time."),
    device: str = typer.Option("cpu", "--device", help="ONNX Runtime device: cpu or cuda."),
    runtime: Optional[str] = typer.Option(None, "--runtime", help=RUNTIME_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Top-5 classes per image; the edge runtime path (no torch)."""
    from rich.markup import escape

    from dropcov_deploy.console import err
    from dropcov_deploy.predict import predict

    results = predict(
        artifact,
        list(images),
        top_k=top_k,
        device=device,
        batch_size=batch_size,
        runtime=runtime,
        warn=lambda text: err.print(f"[yellow]warning:[/] {escape(text)}", highlight=False),
    )
    if json_out:
        _print_json(results)
        return
    from dropcov_deploy import render

    render.predictions(results)


debug_app = typer.Typer(help="Find what breaks an artifact's precision.", no_args_is_help=True)
app.add_typer(debug_app, name="debug")


@debug_app.command("precision")
def debug_precision_command(
    model: Path = typer.Argument(..., help="The FP32 ONNX written by `dropcov-deploy export`."),
    precision: str = typer.Option("int8", "--precision", "-p", help="int8 or fp16."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration images (folder) or preprocessed .npy/.npz."),
    calib_dataset: Optional[str] = typer.Option(None, "--calib-dataset", help="Calibrate on a bundled split instead: digits[:train|val] (no split: train)."),
    calib_size: int = typer.Option(512, "--calib-size", help="At most this many calibration inputs (a fixed, seeded subset)."),
    calib_method: str = typer.Option("entropy", "--calib-method", help="entropy, max or percentile (percentile: CPU target only)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Images to choose the layers on (labelled ImageFolder, or flat)."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="A bundled split to choose the layers on: digits[:train|val] (no split: val; test is refused)."
    ),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="The original model, run in PyTorch now: the reference."),
    reference: Optional[Path] = typer.Option(None, "--reference", "-r", help="A reference file saved by verify --save-reference (no PyTorch)."),
    target: str = typer.Option("cpu", "--target", help="cpu (ONNX Runtime's quantizer) or tensorrt (ModelOpt's); candidates run in --runtime here."),
    runtime: str = typer.Option("onnxruntime", "--runtime", help=f"What runs the candidates: {' or '.join(runtime_names())}."),
    gates: Optional[Path] = typer.Option(None, "--gates", help="JSON file overriding the default gates."),
    budget: int = typer.Option(100, "--budget", help="At most this many candidate graphs judged (ranking 2 per layer, then the search)."),
    autocast_range_check: bool = typer.Option(
        True, "--autocast-range-check/--no-autocast-range-check", help="FP16: AutoCast's own range check (off: every layer starts in FP16)."
    ),
    high_precision: str = typer.Option("fp16", "--high-precision", help="--target tensorrt INT8: precision of the unquantized rest, as build's."),
    apply: bool = typer.Option(False, "--apply", help="Build the suggested artifact and verify it."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --apply: the artifact's path \\[default: build's]."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the JSON report here."),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON report instead of a table."),
) -> None:
    """Rank the layers by what FP16/INT8 costs each, find a small set to keep in higher precision that passes every gate, print the build command (exit 1 when none passes)."""
    from dropcov_deploy import render
    from dropcov_deploy.atomic import spare_inputs
    from dropcov_deploy.console import step
    from dropcov_deploy.debug_precision import DebugOptions, debug_precision
    from dropcov_deploy.debug_precision import apply as apply_result
    from dropcov_deploy.errors import GateFailed
    from dropcov_deploy.reports import write_json

    outputs: list[Path | None] = [report, out]
    if apply:  # the build's own outputs (its sidecar, the ORT model, a plan) must not be a --report either
        from dropcov_deploy.backends import get_target
        from dropcov_deploy.build import default_output, files_written
        from dropcov_deploy.debug_precision import TARGET_BACKENDS
        from dropcov_deploy.precision import Precision

        if target in TARGET_BACKENDS:
            outputs = [report, *files_written(out or default_output(model, Precision.parse(precision), get_target(TARGET_BACKENDS[target])))]
    spare_inputs(outputs, [model, calib, data, checkpoint, reference, gates])
    options = DebugOptions(
        precision=precision,
        calib=calib,
        calib_dataset=calib_dataset,
        calib_size=calib_size,
        calib_method=calib_method,
        data=data,
        dataset=dataset,
        checkpoint=checkpoint,
        reference=reference,
        target=target,
        runtime=runtime,
        gates_file=gates,
        budget=budget,
        range_check=autocast_range_check,
        high_precision=high_precision,
    )
    result = debug_precision(model, options, step=step)
    if report:  # the search is saved before --apply, which may stop on a missing backend
        write_json(report, result.to_dict())
    if apply and result.passed:
        result.applied = apply_result(model, options, result, out=out, step=step)
        if report:
            write_json(report, result.to_dict())
    data_out = result.to_dict()
    if json_out:
        _print_json(data_out)
    else:
        render.debug_precision_report(data_out)
    if not result.passed:
        raise GateFailed(f"debug precision: no set of layers kept in higher precision passed every gate within --budget {budget}")
    if result.applied is not None and not result.applied["passed"]:
        raise GateFailed(f"debug precision: the applied build {result.applied['artifact']} failed verification")


@app.command("inspect")
def inspect_command(
    artifact: Path = typer.Argument(..., help="A checkpoint (.pth/.pth.tar/.pt), an ONNX model or a TensorRT plan."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture, when the checkpoint does not say."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show what an artifact holds and where it came from."""
    from dropcov_deploy import inspection, render

    description = inspection.describe(artifact, arch)
    if json_out:
        _print_json(description)
    else:
        render.inspection(description)


def exit_code_for(exc: BaseException) -> int:
    """How main maps an exception: a DropCovError to one line and its exit code, an interrupt
    to 130, a module an extra installs to the pip line and 3, anything else (a bug) to its
    traceback and 70, never 1 (which means "a gate failed")."""
    exc = missing_extra(exc) or environment_error(exc) or usage_error(exc) or exc
    if isinstance(exc, DropCovError):
        from dropcov_deploy.console import fail

        fail(str(exc))
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "Abort":  # Click's Abort: Ctrl-C at a prompt
        return EXIT_INTERRUPTED
    import traceback

    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"error: unexpected {type(exc).__name__} (a bug in dropcov-deploy; please report it with the traceback above)", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def usage_error(exc: BaseException) -> DropCovError | None:
    """Click's usage errors (an unknown option, a bad value, a missing argument) as our one
    `error:` line with exit 2, instead of Typer's usage box; Click's Abort (Ctrl-C at a prompt) is an interrupt."""
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    except ImportError:  # Typer releases that use click itself
        from click.exceptions import ClickException, UsageError  # type: ignore[no-redef,assignment]

        NoArgsIsHelpError = ()  # type: ignore[assignment,misc]
    if not isinstance(exc, ClickException):
        return None
    from dropcov_deploy.errors import InputError

    if isinstance(exc, NoArgsIsHelpError):  # a bare `dropcov-deploy` or `dropcov-deploy predict`: the help, then exit 2
        typer.echo(exc.format_message(), err=True)
        return InputError(f"{exc.ctx.command_path if exc.ctx else 'dropcov-deploy'}: give a command and its arguments (the help is above)")

    where = ""
    if isinstance(exc, UsageError) and exc.ctx is not None:
        where = f"{exc.ctx.command_path}: "
    hint = f" (see {exc.ctx.command_path} --help)" if isinstance(exc, UsageError) and exc.ctx is not None else ""
    return InputError(f"{where}{exc.format_message()}{hint}")


def main() -> None:
    """Console-script entry point: user errors (usage errors too) become one line and an exit code."""
    try:
        code = app(standalone_mode=False)
    except BaseException as exc:  # noqa: BLE001 - SystemExit passes through below
        if isinstance(exc, SystemExit):
            raise
        sys.exit(exit_code_for(exc))
    sys.exit(code if isinstance(code, int) else 0)
