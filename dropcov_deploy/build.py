"""`build`: precision ONNX (FP32, FP16, INT8) and the target's artifact.

    model.onnx --(precision module: fp16 AutoCast | int8 quantizer + fc choice)--> model.<precision>.<file tag>.onnx
              --(target onnxruntime)--> + ORT-optimized model, published with it
              --(target tensorrt)-----> + model.<precision>.<file tag>.plan (the engine step, after publishing)

Control flows one way: this module validates, loads calibration data, runs the FP32
reference pass once, asks the precision's module for its graph (precision/), checks and
publishes it with its manifest, then calls the target's artifact hooks (backends/).
The precision ONNX is cached under a key of the source ONNX hash, the calibration-set
hash and every option, so a rebuild reuses it instead of recalibrating.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropcov_deploy import __version__, onnx_io
from dropcov_deploy.atomic import check_writable, spare_inputs, staged
from dropcov_deploy.backends import DEFAULT_TARGET, TARGETS, Target, cpu_opener, get_target, load_hook, runtime_names
from dropcov_deploy.backends.onnxruntime import ort_optimized_path_for
from dropcov_deploy.build_cache import PrecisionCache
from dropcov_deploy.cache_paths import default_cache_dir
from dropcov_deploy.engine import plan_path_for
from dropcov_deploy.errors import BackendUnavailable, InputError
from dropcov_deploy.gates import default_gates
from dropcov_deploy.layer_names import read_names
from dropcov_deploy.manifest import ONNX, Manifest, library_versions, now_utc, sha256_file, sidecar_path
from dropcov_deploy.precision import Precision, PrecisionRequest, graph_builder
from dropcov_deploy.precision.cpu_choice import FORM_CHOICES
from dropcov_deploy.precision.fc_choice import FC_CHOICES
from dropcov_deploy.roofline import runtime_versions
from dropcov_deploy.steps import StepReporter, quiet_step

CACHE_VERSION = "5"  # 2: entries carry their ONNX hash (build_cache); 3: --keep-float by surgery on the calibrated graph; 4: CPU runtime and Q/DQ form chosen; 5: attention products stay float in INT8
HIGH_PRECISIONS = ("fp16", "fp32")
# every method some target's quantizer takes, in the rows' order (entropy, max, percentile)
CALIBRATION_ALIASES = {"minmax": "max"}  # the name ONNX Runtime and TensorRT use for the max calibrator
CALIBRATION_METHODS = tuple(dict.fromkeys(m for target in TARGETS.values() for m in target.calibration_methods))


@dataclass
class BuildOptions:
    precision: str | Precision | None = None  # None: fp16 from an FP32 export, a precision ONNX's own for the engine step
    calib: Path | None = None
    dataset: str | None = None  # a bundled dataset's train or val split instead of --calib: digits[:train|val]
    calib_size: int | None = 512
    calib_method: str = "entropy"
    backend: str = "onnxruntime"
    batch: str | None = None  # the engine's MIN:OPT:MAX; None: derived from the ONNX (engine.default_batch)
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    out: Path | None = None
    fc: str = "auto"
    high_precision: str = "fp16"  # TensorRT INT8: the unquantized rest (the covariance block stays FP32)
    keep_float: str | None = None  # layers kept in the higher precision: node names or module paths, comma list or @file
    exclude_op_types: str | None = None  # every node of these op types kept in the higher precision, comma list
    autocast_range_check: bool = True  # False: AutoCast puts every node not kept into FP16 (debugger tests)
    cache_dir: Path | None = None
    use_cache: bool = True  # False (--no-cache): recalibrate, and leave the cache as it was
    runtime: str = "auto"  # CPU target: which runtime the artifact is for; auto measures each installed one (INT8)
    qdq_form: str = "auto"  # CPU target INT8: a cpu_choice.FORMS name, or auto (measured)


@dataclass
class BuildResult:
    precision_onnx: Path
    manifest: Manifest
    ort_optimized: Path | None = None
    engine: Path | None = None
    engine_manifest: Manifest | None = None
    cached: bool = False
    seconds: float = 0.0
    engine_only: bool = False  # the input was already a precision ONNX: only the engine step ran


def files_written(out: Path) -> list[Path]:
    """Every file a build to `out` may write: the precision ONNX and its manifest, the ORT-optimized
    model, the plan and its manifest (none of them may be one of the build's inputs)."""
    return [out, sidecar_path(out), ort_optimized_path_for(out), plan_path_for(out), sidecar_path(plan_path_for(out))]


def default_output(model: Path, precision: Precision, target: Target) -> Path:
    stem = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.stem
    return model.with_name(f"{stem}.{precision.value}.{target.file_tag}.onnx")


def source_manifest(model: Path) -> Manifest:
    """The input ONNX's manifest: an FP32 export (what every precision artifact derives its own
    from) or a precision ONNX (which only the engine step takes further)."""
    onnx_io.load(model, load_external_data=False)  # a missing or corrupt file, or missing weights, says so first
    found = Manifest.find(model) or Manifest()
    found.require_input(model)
    found.require_describes(model)
    return found


def _engine_only(model: Path, source: Manifest, options: BuildOptions, step: StepReporter, log: Callable[[str], Any]) -> BuildResult:
    """`build` on a precision ONNX: nothing left to calibrate, so only the target's engine step
    runs (the same as `dropcov-deploy engine`); anything else is refused in one line."""
    started = time.perf_counter()
    target = get_target(options.backend)
    _check_choices(options)
    requested = Precision.parse(options.precision) if options.precision is not None else source.precision
    built_for = f"a {source.precision} graph for {source.target or 'an unrecorded target'}"
    if requested is not source.precision:
        raise InputError(f"{model}: is already {built_for}; --precision {requested} starts from the FP32 export")
    if target.device_artifact is None:
        hint = f" (for TensorRT: `dropcov-deploy engine {model}`)" if source.target == TARGETS["tensorrt"].tag else ""
        raise InputError(f"{model}: is already {built_for}; --backend {target.name} builds from the FP32 export{hint}")
    if source.target != target.tag:
        raise InputError(f"{model}: is {built_for}, not for {target.name}; build the FP32 export with --backend {target.name}")
    if options.out is not None or options.calib is not None or options.dataset is not None or options.keep_float or options.exclude_op_types:
        raise InputError(
            f"{model}: is already a {source.precision} graph; --out and --calib apply to the precision step, as do --dataset and --keep-float (for the plan's name use `dropcov-deploy engine --out`)"
        )
    engine, engine_manifest = load_hook(target.device_artifact)(
        model, source, batch=options.batch, workspace_gib=options.workspace_gib, timing_cache=options.timing_cache, step=step, log=log
    )
    return BuildResult(
        precision_onnx=model, manifest=source, engine=engine, engine_manifest=engine_manifest, engine_only=True, seconds=time.perf_counter() - started
    )


def _check_choices(options: BuildOptions) -> None:
    """The options that name a choice, checked whatever the input (a typo is never ignored)."""
    options.calib_method = CALIBRATION_ALIASES.get(options.calib_method, options.calib_method)
    if options.fc not in FC_CHOICES:
        raise InputError(f"--fc {options.fc!r}: use one of {', '.join(FC_CHOICES)}")
    if options.calib_method not in CALIBRATION_METHODS:
        raise InputError(f"--calib-method {options.calib_method!r}: use entropy, max (or minmax) or percentile")
    if options.high_precision not in HIGH_PRECISIONS:
        raise InputError(f"--high-precision {options.high_precision!r}: use fp16 or fp32")
    if options.runtime not in ("auto", *runtime_names()):
        raise InputError(f"--runtime {options.runtime!r}: use auto, {', '.join(runtime_names())}")
    if options.qdq_form not in FORM_CHOICES:
        raise InputError(f"--qdq-form {options.qdq_form!r}: use one of {', '.join(FORM_CHOICES)}")


def cpu_runtimes(options: BuildOptions, target: Target, precision: Precision) -> tuple[str, ...]:
    """The runtimes a CPU-target build is measured in: --runtime's one, --backend openvino's, or
    (auto) every runtime of the CPU target, each used only if installed; () for TensorRT."""
    rows = [t.name for t in TARGETS.values() if t.tag == target.tag and t.runs == ONNX]
    if target.runs != ONNX:
        if options.runtime != "auto" or options.qdq_form != "auto":
            raise InputError(f"--runtime and --qdq-form choose for the CPU target; --backend {target.name} builds an engine")
        return ()
    if options.qdq_form != "auto" and precision is not Precision.INT8:
        raise InputError(f"--qdq-form applies to int8 builds, not {precision}")
    if options.runtime != "auto" and target.name != DEFAULT_TARGET and options.runtime != target.name:
        raise InputError(f"--backend {target.name} and --runtime {options.runtime} contradict each other; give one")
    fixed = options.runtime if options.runtime != "auto" else (target.name if target.name != DEFAULT_TARGET else None)
    if fixed is not None:
        available, reason = TARGETS[fixed].is_available()
        if not available:
            raise BackendUnavailable(f"--runtime {fixed}: {reason}")
        return (fixed,)
    return tuple(name for name in rows if TARGETS[name].is_available()[0])


def _validate(options: BuildOptions) -> tuple[Precision, Target]:
    target = get_target(options.backend)
    precision = Precision.parse(options.precision if options.precision is not None else target.default_precision)
    _check_choices(options)
    if precision is Precision.INT8 and options.calib_method not in target.calibration_methods:
        raise InputError(f"--calib-method {options.calib_method} is not supported for --backend {target.name}; use {' or '.join(target.calibration_methods)}")
    if not target.supports(precision):
        raise InputError(f"--precision {precision}: --backend {target.name} builds {', '.join(map(str, target.precisions))}")
    if options.calib is not None and options.dataset is not None:
        raise InputError("give --calib DIR|FILE or --dataset digits[:train|val], not both")
    if precision.reduced and options.calib is None and options.dataset is None:
        raise InputError(
            f"--precision {precision} needs --calib DIR|FILE: real images (or preprocessed arrays), or --dataset digits:train; "
            "random data is never used (see calibration/README.md)"
        )
    return precision, target


def layers_kept_float(model: Path, options: BuildOptions, precision: Precision) -> list[tuple[str, dict[str, Any]]]:
    """(node name, manifest entry) for every layer --keep-float and --exclude-op-types name, in
    graph order; unknown names or op types are refused with near matches."""
    if options.keep_float is None and options.exclude_op_types is None:
        return []
    if not precision.reduced:
        raise InputError("--keep-float and --exclude-op-types apply to fp16 and int8 builds; an fp32 build keeps everything in FP32")
    from dropcov_deploy import layer_names

    graph = onnx_io.load(model, load_external_data=False)
    onnx_io.ensure_node_names(graph)
    chosen: dict[str, dict[str, Any]] = {}
    if options.keep_float is not None:
        for layer in layer_names.resolve(read_names(options.keep_float), graph):
            chosen[layer.name] = {"node": layer.name, "module": layer.module, "op_type": layer.op_type, "why": "--keep-float"}
    if options.exclude_op_types is not None:
        labels = {layer.name: layer.module for layer in layer_names.layers(graph)}
        types = {node.name: node.op_type for node in graph.graph.node}
        for name in layer_names.resolve_op_types(read_names(options.exclude_op_types, "--exclude-op-types"), graph):
            chosen.setdefault(name, {"node": name, "module": labels.get(name), "op_type": types[name], "why": "--exclude-op-types"})
    order = {node.name: index for index, node in enumerate(graph.graph.node)}
    return sorted(chosen.items(), key=lambda item: order[item[0]])


def calibration_source(options: BuildOptions):
    """What to calibrate on: --calib's folder or file, or --dataset's split (never the held-out test split)."""
    if options.dataset is not None:
        from dropcov_deploy.data.datasets import parse_dataset

        return parse_dataset(options.dataset, for_calibration=True)
    return options.calib


def _cache_key(
    source_sha: str,
    calibration_sha: str | None,
    precision: Precision,
    target: Target,
    options: BuildOptions,
    kept: tuple[str, ...] = (),
    runtimes: tuple[str, ...] = (),
) -> str:
    import hashlib

    fields = [
        CACHE_VERSION,
        __version__,
        source_sha,
        calibration_sha or "-",
        precision.value,
        target.tag,
        options.calib_method,
        options.fc,
        options.high_precision,
        str(options.calib_size),
        ",".join(kept),
        ",".join(runtimes),
        options.qdq_form,
        *(f"{name}={version}" for name, version in sorted(runtime_versions().items()) if name in runtimes),  # the choice is by speed in these
        "" if options.autocast_range_check else "no-range-check",
    ]
    return hashlib.sha256("|".join(fields).encode()).hexdigest()[:32]


def _check_precision_graph(
    model: Path, staged_onnx: Path, precision: Precision, calibration, reference, record: dict[str, Any], out: Path, runner_target: Target
) -> None:
    """Agreement with FP32 on the calibration images, run in the runtime the artifact is for, and
    LayerNorm/Softmax numerics (transformers): a non-finite value anywhere fails the build."""
    from dropcov_deploy.precision.fc_choice import score
    from dropcov_deploy.precision.numerics import CHECK_IMAGES, sensitive_op_report

    check = score(staged_onnx, calibration, reference.logits, opener=cpu_opener(runner_target) if runner_target.runs == ONNX else None)
    if calibration.labels is not None:
        check["reference_accuracy"] = float((reference.logits.argmax(1) == calibration.labels).mean())
    record["check"] = check
    if check["nonfinite"]:
        raise InputError(f"{out}: the {precision} graph gives {check['nonfinite']} non-finite values on the calibration images")
    report = sensitive_op_report(model, staged_onnx, calibration.data[:CHECK_IMAGES])
    if report:
        record["sensitive_ops"] = report
        broken = [f"{op} ({r['worst_node']})" for op, r in report.items() if r["nonfinite"]]
        if broken:
            raise InputError(f"{out}: non-finite values inside the graph on calibration images at {', '.join(broken)}")


def _runtime_why(record: dict[str, Any], options: BuildOptions, runtimes: tuple[str, ...], precision: Precision) -> str:
    """Why the artifact is for the runtime the manifest names, in one sentence."""
    choice = record.get("cpu_choice")
    measured = f"; {choice.get('why')}" if isinstance(choice, dict) else ""  # the form and fc chosen within it
    if isinstance(choice, dict) and len(runtimes) > 1:
        return str(choice.get("why"))
    if options.runtime != "auto" or options.backend != DEFAULT_TARGET:
        return (f"--runtime {runtimes[0]}" if options.runtime != "auto" else f"--backend {runtimes[0]}") + measured
    if precision is not Precision.INT8:
        return f"{precision} builds are not measured across runtimes: {runtimes[0]}, the default"
    return f"the only CPU runtime installed here ({runtimes[0]}){measured}"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def build(model: str | Path, options: BuildOptions, step: StepReporter = quiet_step, log: Callable[[str], Any] = _stderr) -> BuildResult:
    """Build a precision ONNX and the target's artifact from an exported FP32 ONNX."""
    from dropcov_deploy.precision.calibration import load_calibration, reference_pass

    started = time.perf_counter()
    model = Path(model)
    from dropcov_deploy.backends.tensorrt.profile import BatchProfile, check_workspace

    check_workspace(options.workspace_gib)  # malformed engine options fail before the model is read
    if options.batch is not None:
        BatchProfile.parse(options.batch)
    source = source_manifest(model)
    if source.precision is not Precision.FP32:
        return _engine_only(model, source, options, step, log)
    precision, target = _validate(options)
    runtimes = cpu_runtimes(options, target, precision)
    if runtimes == ("onnxruntime",) and options.qdq_form.startswith("s8s8"):
        log("note: ONNX Runtime's x86 kernels fuse only u8s8 Q/DQ: an s8s8 graph runs its convolutions in float there (slower than u8s8)")
    if precision in target.precision_notes:
        log(f"note: {target.precision_notes[precision]}")
    if precision in target.modelopt_precisions:
        from dropcov_deploy.precision.fp16 import require_modelopt

        require_modelopt()  # exit 3 naming the extra, before the calibration images are read
    out = Path(options.out) if options.out else default_output(model, precision, target)
    spare_inputs(files_written(out), [model, options.calib])
    check_writable(out)
    source_sha = sha256_file(model)
    if target.device_artifact is not None:
        from dropcov_deploy.engine import batch_problem, default_batch, parse_profile

        profile = parse_profile(options.batch or default_batch(source.batch), options.workspace_gib)  # a bad --batch or --workspace fails before the slow work
        problem = batch_problem(model, source.batch, profile)
        if problem:
            raise InputError(problem)

    kept_float = layers_kept_float(model, options, precision)  # a typo fails before the slow work

    calibration = reference = None
    calibrate_on = calibration_source(options)
    if calibrate_on is not None:
        with step(f"loading calibration data {calibrate_on}"):
            calibration = load_calibration(calibrate_on, source, options.calib_size)
        reference = reference_pass(model, calibration)

    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    key = _cache_key(source_sha, calibration.sha256 if calibration else None, precision, target, options, tuple(node for node, _ in kept_float), runtimes)
    cache = PrecisionCache(cache_dir, log)
    hit = cache.lookup(key) if options.use_cache else None
    cached = hit is not None

    manifest = source.for_precision(
        artifact=out.name,
        precision=precision,
        target=target.tag,
        source_onnx={"path": str(model), "sha256": source_sha},
        calibration=None
        if calibration is None
        else {
            "source": str(calibration.source),
            "images": len(calibration),
            "sha256": calibration.sha256,
            "batch": calibration.batch_size(),
            "method": options.calib_method,
            "fingerprints": calibration.fingerprints(),  # verify counts its inputs among these (calibration_overlap)
            "files": calibration.names,  # the same order: which image each fingerprint is (None for arrays)
        },
        versions=library_versions("onnx", "onnxruntime"),
        created=now_utc(),
    )

    ort_optimized = None
    with staged(out) as stage:
        staged_onnx = stage / out.name
        if hit is not None:
            with step(f"reusing cached {precision} graph (no recalibration)"):
                shutil.copyfile(hit[0], staged_onnx)
                record = hit[1]
        else:
            work = stage / ".work"
            work.mkdir()
            request = PrecisionRequest(
                model=model,
                target=target,
                calibration=calibration,
                reference=reference,
                step=step,
                work=work,
                calib_method=options.calib_method,
                fc=options.fc,
                high_precision=options.high_precision,
                keep_float=tuple(node for node, _ in kept_float),
                autocast_range_check=options.autocast_range_check,
                runtimes=runtimes if precision is Precision.INT8 else (),
                qdq_form=options.qdq_form,
                gates=default_gates(source.family)["int8"],
            )
            proto, record = graph_builder(precision)(request)
            shutil.rmtree(work)
        # the CPU target's artifact is for the runtime its INT8 choice measured fastest, or the one asked for;
        # recorded in the sidecar and in the ONNX's own metadata, so a device holding only the .onnx runs it there too
        target = TARGETS[record.get("runtime") or (runtimes[0] if runtimes else target.name)]
        if runtimes:
            manifest.extra["runtime"] = {"chosen": target.name, "why": _runtime_why(record, options, runtimes, precision)}
            manifest.extra["versions"] = library_versions("onnx", "onnxruntime", *(["openvino"] if target.name == "openvino" else []))
        if hit is None:
            onnx_io.set_metadata(proto, manifest.metadata_props())
            onnx_io.save(proto, staged_onnx)
        with step(f"checking the precision graph (onnx.checker, {target.name})"):
            onnx_io.check(staged_onnx)
            if calibration is not None:
                _check_precision_graph(model, staged_onnx, precision, calibration, reference, record, out, target)
        if kept_float:
            record = {**record, "kept_float": [dict(entry) for _, entry in kept_float]}
            if options.exclude_op_types:
                record["exclude_op_types"] = read_names(options.exclude_op_types, "--exclude-op-types")
        manifest.extra["precision_details"] = record
        manifest.sha256 = sha256_file(staged_onnx)
        if not cached:
            if options.use_cache:
                cache.store(key, staged_onnx, {k: v for k, v in record.items() if k != "check"})
        if target.stage_artifact is not None:
            with step(target.stage_artifact_step):
                entry = load_hook(target.stage_artifact)(staged_onnx, stage)
            manifest.extra[target.stage_artifact_key] = entry
            ort_optimized = out.with_name(entry["artifact"])
        manifest.write(stage / sidecar_path(out).name)

    stale = ort_optimized_path_for(out)
    if ort_optimized is None and target.runs == ONNX and stale.exists() and stale not in (model, options.calib):
        stale.unlink()  # an earlier build's ORT-optimized copy of another graph: it no longer describes `out`
    result = BuildResult(precision_onnx=out, manifest=manifest, cached=cached, ort_optimized=ort_optimized)
    if target.device_artifact is not None:
        result.engine, result.engine_manifest = load_hook(target.device_artifact)(
            out,
            manifest,
            batch=options.batch,
            workspace_gib=options.workspace_gib,
            timing_cache=options.timing_cache,
            step=step,
            log=log,
        )
    result.seconds = time.perf_counter() - started
    return result
