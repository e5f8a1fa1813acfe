"""`build`: precision ONNX (FP32, FP16, INT8) and, on a GPU with TensorRT, an engine.

    model.onnx --(fp16: AutoCast | int8: Q/DQ + fc choice)--> model.<precision>.<target>.onnx
              --(onnxruntime)--> + ORT-optimized model for the CPU
              --(tensorrt)-----> + model.<precision>.plan (strongly typed)

The precision ONNX is cached under a key of the source ONNX hash, the calibration-set
hash and every option, so a rebuild reuses it instead of recalibrating. Every file is
staged and published atomically, each with a manifest saying where it came from.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import manifest as manifests
from dropcov_deploy import onnx_graph
from dropcov_deploy.atomic import check_writable, staged
from dropcov_deploy.errors import BackendUnavailable, InputError
from dropcov_deploy.steps import StepReporter, quiet_step

PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("onnxruntime", "tensorrt")
FC_CHOICES = ("auto", "int8", "weight-only", "float")
# fc choice: candidates within this much top-1 agreement of the best one are "as accurate"
FC_AGREEMENT_SLACK = 0.005
CACHE_VERSION = "1"


@dataclass
class BuildOptions:
    precision: str = "fp16"
    calib: Path | None = None
    calib_size: int | None = 512
    calib_method: str = "entropy"
    backend: str = "onnxruntime"
    batch: str = "1:8:32"
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    out: Path | None = None
    fc: str = "auto"
    high_precision: str = "fp16"  # TensorRT INT8: the unquantized rest (the covariance block stays FP32)
    cache_dir: Path | None = None


@dataclass
class BuildResult:
    precision_onnx: Path
    manifest: dict[str, Any]
    ort_optimized: Path | None = None
    engine: Path | None = None
    engine_manifest: dict[str, Any] | None = None
    cached: bool = False
    seconds: float = 0.0


def default_cache_dir() -> Path:
    """$DROPCOV_CACHE, else $XDG_CACHE_HOME/dropcov-deploy, else ~/.cache/dropcov-deploy."""
    if os.environ.get("DROPCOV_CACHE"):
        return Path(os.environ["DROPCOV_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dropcov-deploy"


def target_for(backend: str) -> str:
    return "tensorrt" if backend == "tensorrt" else "cpu"


def default_output(model: Path, precision: str, backend: str) -> Path:
    stem = model.name[: -len(".onnx")] if model.name.endswith(".onnx") else model.stem
    suffix = "trt" if backend == "tensorrt" else "cpu"
    return model.with_name(f"{stem}.{precision}.{suffix}.onnx")


def _source_manifest(model: Path) -> dict[str, Any]:
    data = manifests.read_manifest(model)
    if data is None:
        proto = onnx_graph.load(model, load_external_data=False)
        data = manifests.manifest_from_metadata({p.key: p.value for p in proto.metadata_props})
    if not data or "input" not in data:
        raise InputError(f"{model}: no dropcov-deploy manifest (sidecar .json or dropcov.* metadata); export it with `dropcov-deploy export`")
    if data.get("precision", "fp32") != "fp32":
        raise InputError(f"{model}: is already {data['precision']}; build from the FP32 export")
    return data


def _validate(options: BuildOptions) -> None:
    if options.precision not in PRECISIONS:
        raise InputError(f"--precision {options.precision!r}: use one of {', '.join(PRECISIONS)}")
    if options.backend not in BACKENDS:
        raise InputError(f"--backend {options.backend!r}: use one of {', '.join(BACKENDS)}")
    if options.fc not in FC_CHOICES:
        raise InputError(f"--fc {options.fc!r}: use one of {', '.join(FC_CHOICES)}")
    if options.calib_method not in ("entropy", "max", "percentile"):
        raise InputError(f"--calib-method {options.calib_method!r}: use entropy, max or percentile")
    if options.high_precision not in ("fp16", "fp32"):
        raise InputError(f"--high-precision {options.high_precision!r}: use fp16 or fp32")
    if options.precision in ("fp16", "int8") and options.calib is None:
        raise InputError(
            f"--precision {options.precision} needs --calib DIR|FILE: real images (or preprocessed arrays); "
            "random data is never used (see calibration/README.md)"
        )


def _cache_key(source_sha: str, calibration_sha: str | None, options: BuildOptions) -> str:
    import hashlib

    from dropcov_deploy import __version__

    fields = [CACHE_VERSION, __version__, source_sha, calibration_sha or "-", options.precision, target_for(options.backend),
              options.calib_method, options.fc, options.high_precision, str(options.calib_size)]
    return hashlib.sha256("|".join(fields).encode()).hexdigest()[:32]


# ------------------------------------------------------------------ precision graphs
def _measure_variant(path: Path, calibration, reference: np.ndarray, latency_batch: np.ndarray | None) -> dict[str, Any]:
    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from dropcov_deploy.metrics import compare

    runner = OnnxRuntimeRunner(path)
    outputs = np.concatenate([runner(batch) for batch in calibration.batches()])
    parity = compare(outputs, reference, calibration.labels)
    result: dict[str, Any] = {k: parity[k] for k in ("top1_agreement", "nonfinite", "cosine_min", "relative_error")}
    if calibration.labels is not None:
        result["accuracy"] = parity["accuracy"]
    if latency_batch is not None:
        for _ in range(3):
            runner(latency_batch)
        times = []
        for _ in range(15):
            started = time.perf_counter()
            runner(latency_batch)
            times.append(time.perf_counter() - started)
        result["cpu_latency_ms_batch1"] = float(np.median(times) * 1000)
    return result


def choose_fc(candidates: dict[str, dict[str, Any]], target: str) -> tuple[str, str]:
    """Pick the fc treatment: as accurate as the best (within the slack), then fastest / smallest."""
    best = max(c["top1_agreement"] for c in candidates.values())
    eligible = [mode for mode, c in candidates.items() if c["top1_agreement"] >= best - FC_AGREEMENT_SLACK and c["nonfinite"] == 0]
    if target == "cpu" and all("cpu_latency_ms_batch1" in candidates[m] for m in eligible):
        chosen = min(eligible, key=lambda m: candidates[m]["cpu_latency_ms_batch1"])
        why = (f"{chosen}: top-1 agreement {candidates[chosen]['top1_agreement']:.4f} within {FC_AGREEMENT_SLACK} of the best "
               f"({best:.4f}) and the fastest of those on this CPU ({candidates[chosen]['cpu_latency_ms_batch1']:.2f} ms at batch 1)")
    else:
        order = ["int8", "weight-only", "float"]
        chosen = next(m for m in order if m in eligible)
        why = (f"{chosen}: top-1 agreement {candidates[chosen]['top1_agreement']:.4f} within {FC_AGREEMENT_SLACK} of the best "
               f"({best:.4f}); preferred order int8 > weight-only > float (bytes and math; TensorRT latency cannot be measured here)")
    return chosen, why


def _int8_graph(model: Path, calibration, reference: np.ndarray, fc_amax: float, options: BuildOptions, step: StepReporter, work: Path):
    from dropcov_deploy.precision import int8

    target = target_for(options.backend)
    source = onnx_graph.load(model)
    onnx_graph.ensure_node_names(source)
    with step(f"calibrating and quantizing for {target} ({len(calibration)} images, {options.calib_method})"):
        if target == "cpu":
            quantized, pinned = int8.quantize_cpu(model, calibration, options.calib_method)
        else:
            quantized, pinned = int8.quantize_tensorrt(model, calibration, options.calib_method, options.high_precision)
    modes = list(int8.FC_MODES) if options.fc == "auto" else [options.fc]
    candidates: dict[str, dict[str, Any]] = {}
    variants = {}
    with step(f"measuring fc treatments ({', '.join(modes)})"):
        for mode in modes:
            variant = int8.fc_variant(quantized, source, mode, fc_amax)
            path = work / f"fc-{mode}.onnx"
            onnx_graph.save(variant, path)
            candidates[mode] = _measure_variant(path, calibration, reference, calibration.data[:1] if target == "cpu" else None)
            variants[mode] = variant
    chosen, why = choose_fc(candidates, target) if options.fc == "auto" else (options.fc, "chosen with --fc")
    record = {
        "target": target,
        "calibration_method": options.calib_method,
        "high_precision": options.high_precision if target == "tensorrt" else "fp32",
        "covariance_block_fp32": pinned,
        "fc": {"chosen": chosen, "why": why, "candidates": candidates},
    }
    if target == "cpu":
        record["fp32_nodes"] = int8.stem_conv(source)
    return variants[chosen], record


def _fp16_graph(model: Path, calibration, step: StepReporter):
    from dropcov_deploy.precision.fp16 import convert_fp16

    with step("converting to FP16 (AutoCast, covariance block pinned to FP32)"):
        proto, pinned = convert_fp16(model, calibration)
    return proto, {"autocast": "modelopt.onnx.autocast", "covariance_block_fp32": pinned, "io": "fp32"}


def precision_check(precision_onnx: Path, calibration, reference: np.ndarray) -> dict[str, Any]:
    """Agreement of the precision graph with the FP32 ONNX on the calibration images."""
    return _measure_variant(precision_onnx, calibration, reference, None) | (
        {"reference_accuracy": float((reference.argmax(1) == calibration.labels).mean())} if calibration.labels is not None else {}
    )


def _check_sensitive_ops(model: Path, precision_onnx: Path, calibration, record: dict[str, Any], out: Path) -> None:
    """LayerNorm / Softmax numerics against FP32 (transformers); non-finite values fail the build."""
    from dropcov_deploy.precision.numerics import CHECK_IMAGES, sensitive_op_report

    report = sensitive_op_report(model, precision_onnx, calibration.data[:CHECK_IMAGES])
    if not report:
        return
    record["sensitive_ops"] = report
    broken = [f"{op} ({r['worst_node']})" for op, r in report.items() if r["nonfinite"]]
    if broken:
        raise InputError(f"{out}: non-finite values inside the graph on calibration images at {', '.join(broken)}")


# ------------------------------------------------------------------ the build
def build(model: str | Path, options: BuildOptions, step: StepReporter = quiet_step) -> BuildResult:
    """Build a precision ONNX and the backend's artifact from an exported FP32 ONNX."""
    from dropcov_deploy.precision.calibration import load_calibration

    started = time.perf_counter()
    model = Path(model)
    _validate(options)
    source_manifest = _source_manifest(model)
    out = Path(options.out) if options.out else default_output(model, options.precision, options.backend)
    check_writable(out)
    source_sha = manifests.sha256_file(model)
    profile = None
    if options.backend == "tensorrt":
        from dropcov_deploy.backends.tensorrt import BatchProfile

        profile = BatchProfile.parse(options.batch)

    calibration = None
    if options.calib is not None:
        with step(f"loading calibration data {options.calib}"):
            calibration = load_calibration(options.calib, source_manifest, options.calib_size)

    reference, fc_amax = None, 0.0
    if calibration is not None:
        from dropcov_deploy.precision.int8 import fp32_pass

        reference, fc_amax = fp32_pass(model, calibration)

    cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
    key = _cache_key(source_sha, calibration.sha256 if calibration else None, options)
    cached_onnx, cached_record = cache_dir / f"{key}.onnx", cache_dir / f"{key}.json"
    cached = cached_onnx.exists() and cached_record.exists()

    manifest = {k: v for k, v in source_manifest.items() if k not in ("sha256", "parity", "files", "created", "artifact")}
    manifest.update(
        {
            "kind": "onnx",
            "artifact": out.name,
            "precision": options.precision,
            "target": target_for(options.backend),
            "source_onnx": {"path": str(model), "sha256": source_sha},
            "calibration": None if calibration is None else {
                "source": str(calibration.source), "images": len(calibration), "sha256": calibration.sha256,
                "batch": calibration.batch_size(), "method": options.calib_method,
            },
            "versions": manifests.library_versions("onnx", "onnxruntime"),
            "created": manifests.now_utc(),
        }
    )

    with staged(out) as stage:
        staged_onnx = stage / out.name
        if cached:
            with step(f"reusing cached {options.precision} graph (no recalibration)"):
                shutil.copyfile(cached_onnx, staged_onnx)
                record = json.loads(cached_record.read_text())
        else:
            work = stage / ".work"
            work.mkdir()
            if options.precision == "fp32":
                proto, record = onnx_graph.load(model), {}
            elif options.precision == "fp16":
                proto, record = _fp16_graph(model, calibration, step)
            else:
                proto, record = _int8_graph(model, calibration, reference, fc_amax, options, step, work)
            shutil.rmtree(work)
            onnx_graph.set_metadata(proto, manifests.metadata_props({**manifest, "precision": options.precision}))
            onnx_graph.save(proto, staged_onnx)
        with step("checking the precision graph (onnx.checker, ONNX Runtime)"):
            onnx_graph.check(staged_onnx)
            if calibration is not None:
                record["check"] = precision_check(staged_onnx, calibration, reference)
                if record["check"]["nonfinite"]:
                    raise InputError(f"{out}: the {options.precision} graph gives {record['check']['nonfinite']} non-finite values on the calibration images")
                _check_sensitive_ops(model, staged_onnx, calibration, record, out)
        manifest["precision_details"] = record
        manifest["sha256"] = manifests.sha256_file(staged_onnx)
        if not cached:
            cache_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staged_onnx, cached_onnx)
            manifests.write_manifest(cached_record, {k: v for k, v in record.items() if k != "check"})
        ort_optimized = None
        if options.backend == "onnxruntime":
            ort_optimized = stage / out.name.replace(".onnx", ".ort.onnx")
            with step("writing the ONNX Runtime-optimized model for the CPU"):
                write_ort_optimized(staged_onnx, ort_optimized)
            manifest["ort_optimized"] = {"artifact": ort_optimized.name, "sha256": manifests.sha256_file(ort_optimized),
                                         "level": "ORT_ENABLE_EXTENDED", "providers": ["CPUExecutionProvider"]}
        manifests.write_manifest(stage / manifests.sidecar_path(out).name, manifest)

    result = BuildResult(precision_onnx=out, manifest=manifest, cached=cached,
                         ort_optimized=out.with_name(ort_optimized.name) if ort_optimized else None)
    if options.backend == "tensorrt":
        result.engine, result.engine_manifest = _tensorrt_engine(out, options, profile, manifest, calibration, step)
    result.seconds = time.perf_counter() - started
    return result


def write_ort_optimized(path: Path, destination: Path) -> None:
    """Save ONNX Runtime's own optimized graph (portable 'extended' level, CPU provider)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(destination)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _engine_model_fields(manifest: dict[str, Any], profile) -> dict[str, Any]:
    """What the engine's manifest carries over from its precision ONNX: the model and its I/O."""
    fields = {k: manifest[k] for k in ("arch", "family", "dim", "heads", "num_classes", "class_names", "preprocessing", "output", "source", "target")
              if k in manifest}
    fields["input"] = {**manifest["input"], "batch": {"dynamic": profile.min != profile.max, "min": profile.min, "max": profile.max}}
    return fields


def _tensorrt_engine(precision_onnx: Path, options: BuildOptions, profile, manifest: dict[str, Any], calibration, step: StepReporter):
    from dropcov_deploy.backends import tensorrt as trt_backend

    available, reason = trt_backend.tensorrt_status()
    if not available:
        raise BackendUnavailable(
            f"no TensorRT engine built: {reason}; the {options.precision} ONNX for TensorRT is written to {precision_onnx} "
            "(build the engine where TensorRT and a GPU exist); `--backend onnxruntime` works here"
        )
    plan = precision_onnx.with_name(precision_onnx.name[: -len(".onnx")] + ".plan")
    with step(f"building the TensorRT engine {plan.name}"):
        engine_manifest = trt_backend.build_engine(
            precision_onnx, plan, precision=options.precision, profile=profile, workspace_gib=options.workspace_gib,
            timing_cache=options.timing_cache, onnx_sha256=manifests.sha256_file(precision_onnx),
            calibration_sha256=calibration.sha256 if calibration else None,
            log=lambda message: print(message, file=sys.stderr),
            model_fields=_engine_model_fields(manifest, profile),
        )
    return plan, engine_manifest
