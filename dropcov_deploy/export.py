"""PyTorch -> ONNX: the eval-mode DropCov graph, checked, parity-tested, with a manifest.

Eval mode is what folds the training-only branch away: ECA and the adaptive dropout
are skipped in `ResNetACD.forward_head` (the traced graph holds only reduce ->
covariance -> triu Gather -> fc), the token mask and P's dropout in `DropCovViT`
(wr -> centring -> q^T k -> flatten -> visual_fc, plus cls_fc). What differs per model
family (graph rules, manifest fields, texts) is asked of its `ModelFamily`. Everything is
staged and published atomically: a failed check or parity test leaves no file behind.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import manifest as manifests
from dropcov_deploy import onnx_io
from dropcov_deploy.atomic import check_writable, spare_inputs, staged
from dropcov_deploy.errors import InputError
from dropcov_deploy.metrics import relative_error
from dropcov_deploy.steps import StepReporter, quiet_step

DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(17, 24)
PARITY_TOLERANCE = 1e-4
MAX_DYNAMIC_BATCH = 4096
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Training-only or fallback ops no exported graph may hold; a family adds its own
# (`ModelFamily.forbidden_ops`: the resnet family's Softmax is ECA's, training only).
FORBIDDEN_OPS = ("NonZero", "Trilu", "PythonOp", "ATen", "GatherND", "Dropout", "Bernoulli", "RandomUniformLike", "RandomNormalLike")


@dataclass
class ParityResult:
    passed: bool
    max_relative_error: float
    tolerance: float
    batch_sizes: list[int]
    backend: str = "onnxruntime-cpu"

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": True,
            "passed": self.passed,
            "backend": self.backend,
            "max_relative_error": self.max_relative_error,
            "tolerance": self.tolerance,
            "batch_sizes": self.batch_sizes,
        }


@dataclass
class ExportResult:
    path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    seconds: float


def parse_batch(batch: str | int) -> int | None:
    """'dynamic' -> None (dynamic batch axis), 'N' -> N."""
    if isinstance(batch, int) or str(batch).isdigit():
        value = int(batch)
        if value < 1:
            raise InputError(f"--batch must be 'dynamic' or a positive integer, got {batch}")
        return value
    if str(batch).lower() == "dynamic":
        return None
    raise InputError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")


@contextmanager
def _silenced() -> Iterator[None]:
    """The exporter prints progress and warnings of its own; keep our output readable."""
    import contextlib
    import io
    import logging

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_image_size(model, image_size: int, arch: str) -> None:
    if image_size < 1:
        raise InputError(f"--image-size must be positive, got {image_size}")
    problem = model.input_size_problem(image_size)
    if problem:
        raise InputError(f"--image-size {image_size} does not fit {arch}: {problem}")


def trace_to_onnx(model, image_size: int, opset: int, batch: int | None):
    """torch.onnx (dynamo) export of an eval-mode model; returns an onnx.ModelProto."""
    import torch

    example = torch.randn(batch or 2, 3, image_size, image_size)
    dynamic_shapes = None
    if batch is None:
        dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)}}
    with torch.no_grad(), _silenced():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    if program is None:  # dynamo=True always returns a program; a None would be a torch bug
        raise RuntimeError("torch.onnx.export returned no program")
    proto = program.model_proto
    onnx_io.fold_constant_reshapes(proto)
    if batch is None:  # name the symbolic batch axis the same on input and output
        for value in (proto.graph.input[0], proto.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto


def parity_batches(batch: int | None) -> list[int]:
    """Several inputs: batch 1 twice and a larger batch, or the fixed batch twice."""
    return [1, 1, 4] if batch is None else [batch, batch]


def check_parity(model, onnx_path: Path, image_size: int, batch_sizes: list[int], tolerance: float = PARITY_TOLERANCE) -> ParityResult:
    """ONNX Runtime (CPU) against the PyTorch model on seeded inputs."""
    import torch

    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(onnx_path)
    rng = np.random.default_rng(0)
    worst = 0.0
    for size in batch_sizes:
        images = rng.standard_normal((size, 3, image_size, image_size), dtype=np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(images)).numpy()
        actual = runner(images)
        error = relative_error(actual, expected) if np.isfinite(actual).all() and np.isfinite(expected).all() else float("inf")
        worst = max(worst, error)  # inf, never NaN: max() would drop a NaN
    return ParityResult(passed=worst <= tolerance, max_relative_error=worst, tolerance=tolerance, batch_sizes=batch_sizes)


def _family(info):
    from dropcov_deploy.models.registry import get_family

    return get_family(info.family)


def build_manifest(info, *, image_size: int, opset: int, batch: int | None, onnx_path: Path) -> dict[str, Any]:
    family = _family(info)
    spatial = [image_size, image_size]
    batch_dim: Any = "batch" if batch is None else batch
    return {
        "format": manifests.MANIFEST_FORMAT,
        "kind": "onnx",
        "artifact": onnx_path.name,
        "precision": "fp32",
        "arch": info.arch,
        "family": info.family,
        "dim": info.dim,
        **family.manifest_fields(info),
        "num_classes": info.num_classes,
        "class_names": info.class_names,
        "input": {
            "name": INPUT_NAME,
            "shape": [batch_dim, 3, *spatial],
            "dtype": "float32",
            "batch": {"dynamic": batch is None, "min": 1 if batch is None else batch, "max": MAX_DYNAMIC_BATCH if batch is None else batch},
        },
        "output": {"name": OUTPUT_NAME, "shape": [batch_dim, info.num_classes], "dtype": "float32"},
        "preprocessing": info.resolved_preprocessing().to_dict(),
        "opset": opset,
        "exporter": f"torch.onnx (dynamo), eval mode: {family.exporter_note}",
        "source": {
            "checkpoint": str(info.path),
            "format": info.source_format,
            "weights": info.weights,
            "sha256": info.sha256,
            "epoch": info.epoch,
            "accuracy": info.accuracy,
        },
        "versions": manifests.library_versions("torch", "onnx", "onnxruntime"),
        "created": manifests.now_utc(),
    }


def _preprocessing_for(info, image_size: int):
    prep = info.resolved_preprocessing()
    if prep.crop == image_size:
        return prep
    from dataclasses import replace

    return replace(prep, resize=round(image_size * prep.resize / prep.crop), crop=image_size)


def export_onnx(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    arch: str | None = None,
    image_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    batch: str | int = "dynamic",
    check: bool = True,
    tolerance: float = PARITY_TOLERANCE,
    step: StepReporter = quiet_step,
) -> ExportResult:
    """Export a checkpoint's eval-mode model to ONNX with a manifest beside it."""
    from dropcov_deploy.layer_names import annotate_module_paths
    from dropcov_deploy.models import load_checkpoint_with_info

    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    out = Path(out) if out else Path(checkpoint.name.split(".")[0] + ".onnx")
    if opset not in SUPPORTED_OPSETS:
        raise InputError(f"--opset {opset} is not supported; use {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    fixed_batch = parse_batch(batch)
    spare_inputs([out, manifests.sidecar_path(out)], [checkpoint])
    check_writable(out)

    with step(f"loading {checkpoint}"):
        loaded = load_checkpoint_with_info(checkpoint, arch)
    info, model = loaded.info, loaded.model
    size = image_size or info.resolved_input_size()
    check_image_size(model, size, info.arch)
    info.preprocessing = _preprocessing_for(info, size)

    with staged(out) as stage:
        staged_onnx = stage / out.name
        head = _family(info).describe_head(info.dim, info.heads)
        with step(f"exporting {info.arch} ({head}, {size}x{size}, opset {opset})"):
            proto = trace_to_onnx(model, size, opset, fixed_batch)
        annotate_module_paths(proto, model)  # build --keep-float, the precision debugger and --locate name layers by these
        manifest = build_manifest(info, image_size=size, opset=opset, batch=fixed_batch, onnx_path=out)
        onnx_io.set_metadata(proto, manifests.Manifest.from_dict(manifest).metadata_props())
        with step("checking the graph (onnx.checker, shape inference, op rules)"):
            onnx_io.save(proto, staged_onnx)
            onnx_io.check(staged_onnx)
            problems = graph_rule_violations(proto, info)
            if problems:
                raise InputError(f"{checkpoint}: exported graph breaks the inference-graph rules: {'; '.join(problems)}")
        if check:
            with step("parity: ONNX Runtime (CPU) against PyTorch"):
                parity = check_parity(model, staged_onnx, size, parity_batches(fixed_batch), tolerance)
            if not parity.passed:
                raise InputError(
                    f"{out}: parity check failed: ONNX Runtime differs from PyTorch by {parity.max_relative_error:.2e} "
                    f"relative (tolerance {tolerance:.0e}); nothing written (use --no-check to write it anyway)"
                )
            manifest["parity"] = parity.to_dict()
        else:
            manifest["parity"] = {"checked": False}
        manifest["sha256"] = manifests.sha256_file(staged_onnx)
        manifest["files"] = sorted(p.name for p in stage.iterdir())
        manifests.write_json_file(stage / manifests.sidecar_path(out).name, manifest)
    return ExportResult(path=out, manifest_path=manifests.sidecar_path(out), manifest=manifest, seconds=time.perf_counter() - started)


def graph_rule_violations(proto, info) -> list[str]:
    """The inference-graph rules: no training or fallback ops (ours and the family's), and the
    family's own rules on where the covariance head is (`ModelFamily.graph_rules`)."""
    family = _family(info)
    ops = {node.op_type for node in proto.graph.node}
    problems = [f"has {op} nodes" for op in FORBIDDEN_OPS + family.forbidden_ops if op in ops]
    return problems + family.graph_rules(proto, info)
