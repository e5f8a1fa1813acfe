"""`verify`: one parity chain from PyTorch to every artifact, with gates for CI.

Every artifact runs on the same inputs as the PyTorch model (eval, FP32). Each one is
compared with PyTorch, and each reduced-precision artifact also with the FP32 ONNX
(and an engine with the precision ONNX it was built from), so a drift is attributed
to a step: export, precision, or engine. `locate` compares intermediate tensors to
name the first stage that diverges.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import gates as gate_rules
from dropcov_deploy import head_graph, onnx_io
from dropcov_deploy.atomic import spare_inputs
from dropcov_deploy.backends import check_runtime, open_runner, run_batched
from dropcov_deploy.data.images import InputSet
from dropcov_deploy.errors import InputError
from dropcov_deploy.manifest import ONNX, TENSORRT_ENGINE, Manifest, artifact_kind, library_versions, sha256_file
from dropcov_deploy.metrics import compare
from dropcov_deploy.precision import Precision
from dropcov_deploy.reference import DEFAULT_MAX_INPUT_MB, REFERENCE_FORMAT, Reference, load_reference
from dropcov_deploy.stats import intervals
from dropcov_deploy.steps import StepReporter, advance, quiet_step

STAGES = ("backbone", "reduced", "covariance", "logits")
STAGE_GROUP = {"backbone": "backbone", "reduced": "covariance", "covariance": "covariance", "logits": "fc"}
# a stage "diverges" when its relative error passes this (per precision)
LOCATE_TOLERANCE = {Precision.FP32: 1e-4, Precision.FP16: 5e-3, Precision.INT8: 5e-2}


@dataclass
class ArtifactResult:
    path: Path
    backend: str
    precision: str
    metrics: dict[str, Any]
    gates: dict[str, dict[str, Any]]
    passed: bool
    chain: dict[str, dict[str, Any]] = field(default_factory=dict)
    locate: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    calibration_overlap: int | None = None  # how many of verify's inputs this artifact was calibrated on (None: not recorded)
    intervals: dict[str, Any] = field(default_factory=dict)  # 95% intervals of the agreement and accuracy figures (stats.intervals)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "path": str(self.path),
            "backend": self.backend,
            "precision": self.precision,
            "metrics": self.metrics,
            "gates": self.gates,
            "passed": self.passed,
            "chain": self.chain,
            "calibration_overlap": self.calibration_overlap,
            "intervals": self.intervals,
        }
        if self.locate is not None:
            data["locate"] = self.locate
        if self.warnings:
            data["warnings"] = self.warnings
        return data


@dataclass
class VerifyReport:
    samples: int
    reference: dict[str, Any]
    artifacts: list[ArtifactResult]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "reference": self.reference,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "passed": self.passed,
            "seconds": self.seconds,
        }


def _inputs(
    data: Path | None, dataset: str | None, random: int | None, class_names: list[str] | None, prep, image_size: int, workers: int | None = None
) -> tuple[InputSet, np.ndarray | None, str]:
    from dropcov_deploy.data.images import list_images, model_labels
    from dropcov_deploy.reference import random_inputs

    _check_source(data, dataset, random)
    if random is not None:
        return InputSet(arrays=random_inputs(random, (3, image_size, image_size))), None, f"{random} seeded random inputs"
    if dataset is not None:
        from dropcov_deploy.data.datasets import dataset_images, parse_dataset

        images = dataset_images(parse_dataset(dataset))
        described = f"{len(images)} images of {images.root} (labelled)"
    else:
        assert data is not None  # exactly one source, checked above
        images = list_images(data)
        described = f"{len(images)} images from {data}" + (" (labelled)" if images.labels is not None else "")
    labels = model_labels(images, class_names)
    return InputSet(paths=images.items, prep=prep, workers=workers), labels, described


def _check_source(data: Path | None, dataset: str | None, random: int | None) -> None:
    """Exactly one input source, and that one usable: checked before anything slow is loaded."""
    if sum(source is not None for source in (data, dataset, random)) != 1:
        raise InputError("give exactly one of --data DIR, --dataset digits[:train|val|test] or --random N")
    if random is not None and random < 1:
        raise InputError(f"--random {random}: need at least one input")
    if dataset is not None:
        _dataset_name(dataset)
    if data is not None and not Path(data).is_dir():
        raise InputError(f"{data}: no such folder of images")


def _dataset_name(dataset: str | None) -> str | None:
    from dropcov_deploy.data.datasets import parse_dataset

    return str(parse_dataset(dataset)) if dataset is not None else None


def _split_warnings(info, dataset: str | None) -> list[str]:
    """A bundled split is held out only for a checkpoint trained on the same split definition."""
    from dropcov_deploy.data import digits
    from dropcov_deploy.data.datasets import HELD_OUT, parse_dataset

    if dataset is None:
        return []
    spec = parse_dataset(dataset)
    if spec.name != "digits" or spec.split != HELD_OUT or info.data_split == digits.SPLIT_ID:
        return []
    trained = info.data_split or "no split record (trained elsewhere, or before the splits of 2026-11-29)"
    return [f"{spec} is held out only for models trained on {digits.SPLIT_ID}; this checkpoint: {trained}: its figures may include training images"]


def _check_fits(path: Path, manifest: Manifest, image_size: int) -> None:
    shape = manifest.input.shape if manifest.input is not None else None
    if shape and list(shape[2:]) != [image_size, image_size]:
        raise InputError(f"{path}: takes {shape[2]}x{shape[3]} inputs, the checkpoint's preprocessing gives {image_size}x{image_size}")


def torch_reference(
    checkpoint: str | Path,
    *,
    data: Path | None,
    random: int | None,
    batch_size: int,
    artifacts: dict[Path, Manifest],
    dataset: str | None = None,
    workers: int | None = None,
    use_cache: bool = True,
    step: StepReporter = quiet_step,
) -> Reference:
    """PyTorch's logits on the inputs, with what a reference file records (needs PyTorch)."""
    import torch

    from dropcov_deploy.gates import family_overrides
    from dropcov_deploy.models import load_checkpoint_with_info

    with step(f"loading {checkpoint}"):
        loaded = load_checkpoint_with_info(checkpoint)
    info = loaded.info
    prep = info.resolved_preprocessing()
    for path, manifest in artifacts.items():
        _check_fits(path, manifest, prep.crop)
        if manifest.num_classes is not None and manifest.num_classes != info.num_classes:
            raise InputError(f"{path}: has {manifest.num_classes} classes, the checkpoint {checkpoint} {info.num_classes}; not the same model")
    inputs, labels, described = _inputs(data, dataset, random, info.class_names, prep, prep.crop, workers)
    from dropcov_deploy import reference_cache

    key = None
    if use_cache:  # identifying the inputs stats every file: only when the cache is used
        identity = reference_cache.inputs_identity(inputs.items, f"{described}|random={random}|{_dataset_name(dataset)}")
        key = reference_cache.cache_key(info.sha256, prep.to_dict(), identity)
    cached = reference_cache.load_logits(key, len(inputs)) if key is not None else None
    if cached is not None:
        with step(f"PyTorch reference on {described}: reused from the cache (same checkpoint and inputs)"):
            logits = cached
    else:
        pieces: list[np.ndarray] = []
        with step(f"PyTorch reference on {described}") as handle, torch.no_grad():
            for chunk in inputs.chunks():
                pieces += [loaded.model(torch.from_numpy(chunk[i : i + batch_size])).numpy() for i in range(0, len(chunk), batch_size)]
                advance(handle, sum(len(p) for p in pieces), len(inputs))
        logits = np.concatenate(pieces)
        if key is not None and np.isfinite(logits).all():
            reference_cache.store_logits(key, logits)
    if not np.isfinite(logits).all():
        raise InputError(
            f"{checkpoint}: PyTorch gives NaN or Inf on {int((~np.isfinite(logits)).any(axis=1).sum())} of {described}; no reference to compare against"
        )
    meta: dict[str, Any] = {
        "format": REFERENCE_FORMAT,
        "checkpoint": {"path": str(checkpoint), "sha256": info.sha256},
        "arch": info.arch,
        "family": info.family,
        "class_names": info.class_names,
        "num_classes": int(logits.shape[1]),
        "input_shape": [3, prep.crop, prep.crop],
        "preprocessing": prep.to_dict(),
        "inputs": described,
        "random": random,
        "dataset": _dataset_name(dataset),
        "warnings": _split_warnings(info, dataset),
        "family_gates": family_overrides(info.family),
        "artifacts": {path.name: sha256_file(path) for path in artifacts},
        "versions": library_versions("torch", "numpy"),
    }
    if labels is not None:
        meta["accuracy"] = float((logits.argmax(1) == labels).mean())
    return Reference(inputs=inputs, logits=logits, labels=labels, meta=meta, model=loaded.model, image_root=Path(data) if data is not None else None)


def verify(
    checkpoint: str | Path | None,
    artifacts: Sequence[str | Path],
    *,
    reference: Path | None = None,
    data: Path | None = None,
    dataset: str | None = None,
    random: int | None = None,
    batch_size: int = 32,
    gates_file: Path | None = None,
    locate: bool = False,
    device: str = "cpu",
    runtime: str | None = None,
    save_reference: Path | None = None,
    max_reference_mb: float = DEFAULT_MAX_INPUT_MB,
    strict: bool = False,
    gate_mode: str = "point",
    workers: int | None = None,
    use_cache: bool = True,
    outputs: Sequence[Path | None] = (),
    step: StepReporter = quiet_step,
) -> VerifyReport:
    """Run every artifact on the reference's inputs: metrics, chain attribution and gates.

    The reference is PyTorch run now on `checkpoint` (optionally saved to `save_reference`),
    or a reference file saved earlier (`reference`: no PyTorch needed). `outputs` are the
    files the caller will write (reports), checked against the inputs before any work."""
    started = time.perf_counter()
    if (checkpoint is None) == (reference is None):
        raise InputError("give exactly one of --checkpoint CKPT (PyTorch here) or --reference REF.npz (saved by --save-reference)")
    if reference is not None and (random is not None or dataset is not None):
        raise InputError(f"{'--random' if random is not None else '--dataset'}: a reference file holds its own inputs")
    if save_reference is not None and checkpoint is None:
        raise InputError("--save-reference needs --checkpoint: a reference is PyTorch's answer")
    if not artifacts and save_reference is None:
        raise InputError("name at least one artifact to verify")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be positive")
    if gate_mode not in gate_rules.GATE_MODES:
        raise InputError(f"--gate-mode {gate_mode!r}: use {' or '.join(gate_rules.GATE_MODES)}")
    if workers is not None and workers < 0:
        raise InputError(f"--workers {workers}: must be 0 (decode in the calling thread) or more")
    if not 0 <= max_reference_mb < float("inf"):
        raise InputError(f"--max-reference-mb {max_reference_mb}: must be a number of MB, 0 or more")
    paths = [Path(a) for a in artifacts]
    spare_inputs([save_reference, *outputs], [*paths, Path(checkpoint) if checkpoint is not None else None, reference, gates_file, data])
    if save_reference is not None:
        from dropcov_deploy.atomic import check_writable

        if Path(save_reference).suffix != ".npz":
            raise InputError(f"--save-reference {save_reference}: a reference file must end in .npz")
        check_writable(Path(save_reference))
    overrides = gate_rules.read_overrides(gates_file)  # a bad gates file fails before the slow work
    if checkpoint is not None:  # the inputs are checked before the checkpoint is loaded (seconds of PyTorch)
        _check_source(data, dataset, random)
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file")
        artifact_kind(path)
    manifests_by_path = {path: Manifest.read(path) for path in paths}
    check_runtime(paths, runtime, device)  # a bad or missing --runtime fails before PyTorch runs

    if checkpoint is not None:
        ref = torch_reference(
            checkpoint,
            data=data,
            dataset=dataset,
            random=random,
            batch_size=batch_size,
            artifacts=manifests_by_path,
            workers=workers,
            use_cache=use_cache,
            step=step,
        )
        saved = None
        if save_reference is not None:
            with step(f"saving the reference {save_reference}"):
                saved = ref.save(Path(save_reference), max_reference_mb)
    else:
        assert reference is not None
        with step(f"loading the reference {reference}"):
            ref = load_reference(Path(reference), data)
        ref.inputs.workers = workers
        for path, manifest in manifests_by_path.items():
            problem = ref.mismatch(path, manifest)
            if problem:
                raise InputError(problem)
        saved = None
    family_gates = gate_rules.check_overrides(ref.meta.get("family_gates") or {}, f"{reference or checkpoint} (the model family's gates)")
    gates = gate_rules.with_overrides(gate_rules.with_overrides(gate_rules.DEFAULT_GATES, family_gates), overrides)
    batch, labels, expected = ref.inputs, ref.labels, ref.logits
    reference_summary: dict[str, Any] = {
        "backend": "torch",
        "precision": "fp32",
        "checkpoint": (ref.meta.get("checkpoint") or {}).get("path"),
        "arch": ref.meta.get("arch"),
        "inputs": ref.described,
        "source": "checkpoint (PyTorch in this run)" if checkpoint is not None else f"reference file {reference}",
    }
    if labels is not None:
        reference_summary["accuracy"] = float((expected.argmax(1) == labels).mean())
    if ref.meta.get("warnings"):
        reference_summary["warnings"] = list(ref.meta["warnings"])
    if saved is not None:
        reference_summary["saved_reference"] = saved

    from dropcov_deploy.precision.calibration import input_fingerprints

    # one pass over the inputs (a chunk decoded once) for every artifact, and the fingerprints
    # when some artifact records what it was calibrated on
    fingerprinted = any(manifest.calibration_fingerprints() for manifest in manifests_by_path.values())
    pieces: dict[Path, list[np.ndarray]] = {path: [] for path in paths}
    fingerprints: list[str] = []
    with contextlib.ExitStack() as stack:
        runners = {path: stack.enter_context(open_runner(path, device, runtime=runtime, manifest=manifests_by_path[path])) for path in paths}
        if paths:
            with step(f"running {', '.join(path.name for path in paths)}") as handle:
                done = 0
                for chunk in batch.chunks():
                    for path, runner in runners.items():
                        pieces[path].append(run_batched(runner, chunk, manifests_by_path[path].batch, batch_size))
                    if fingerprinted:
                        fingerprints += input_fingerprints(chunk)
                    done += len(chunk)
                    advance(handle, done, len(batch))
        backends = {path: runner.backend for path, runner in runners.items()}
        # e.g. an engine built on another GPU of its compute capability
        runner_warnings = {path: list(getattr(runner, "warnings", None) or []) for path, runner in runners.items()}
    outputs_by_path = {path: np.concatenate(chunks) for path, chunks in pieces.items()}
    kinds = {path: artifact_kind(path) for path in paths}
    fp32_onnx = next((p for p in paths if kinds[p] == ONNX and manifests_by_path[p].precision is Precision.FP32), None)
    by_sha = {manifests_by_path[p].sha256: p for p in paths if kinds[p] == ONNX and manifests_by_path[p].sha256}
    results = []
    for path in paths:
        manifest = manifests_by_path[path]
        precision = manifest.precision
        metrics = compare(outputs_by_path[path], expected, labels)
        chain = {"export" if precision is Precision.FP32 and kinds[path] == ONNX else "vs_torch": _brief(metrics)}
        if precision is not Precision.FP32 and fp32_onnx is not None:
            chain["precision (vs FP32 ONNX)"] = _brief(compare(outputs_by_path[path], outputs_by_path[fp32_onnx], labels))
        if kinds[path] == TENSORRT_ENGINE:
            source = by_sha.get(manifest.get("onnx_sha256") or "")
            if source is not None:
                chain["engine (vs its precision ONNX)"] = _brief(compare(outputs_by_path[path], outputs_by_path[source], labels))
        spread = intervals(outputs_by_path[path], expected, labels)
        evaluated = gate_rules.evaluate(metrics, gates.get(precision, gates[Precision.FP32]), spread, gate_mode)
        undecided = [
            f"{name} {g['value']:.4g} vs {'>=' if 'min' in g else '<='} {g.get('min', g.get('max'))}"
            for name, g in evaluated.items()
            if g.get("decision") == "undecided"
        ]
        if undecided:
            runner_warnings[path].append(
                f"{len(batch)} samples cannot decide {', '.join(undecided)}: the 95% interval straddles the bound ({gate_mode} mode; see samples_needed)"
            )
        calibrated_on = manifest.calibration_fingerprints()
        overlap = sum(f in calibrated_on for f in fingerprints) if calibrated_on else None
        if overlap:
            named = manifest.calibration_files()
            examples = list(dict.fromkeys(named[f] for f in fingerprints if f in named))[:3]
            which = f" (e.g. {', '.join(examples)})" if examples else ""
            if strict:
                evaluated["calibration_overlap"] = {"max": 0, "value": overlap, "passed": False}
            else:
                runner_warnings[path].append(
                    f"{overlap} of the {len(batch)} inputs were calibration inputs of this artifact{which}: its figures are not held-out (--strict fails this)"
                )
        passed = all(g["passed"] is not False for g in evaluated.values())
        result = ArtifactResult(
            path,
            backends[path],
            precision.value,
            metrics,
            evaluated,
            passed,
            chain,
            warnings=runner_warnings[path],
            calibration_overlap=overlap,
            intervals=spread,
        )
        if locate and not passed:
            fp32_graph = _fp32_graph([p for p in paths if kinds[p] == ONNX and manifests_by_path[p].precision is Precision.FP32], manifest, kinds[path])
            if ref.model is None:
                result.locate = {"supported": False, "why": "locating a stage needs the PyTorch model: run verify --checkpoint where PyTorch is installed"}
                if fp32_graph is not None:  # the per-layer trace needs only the two graphs
                    from dropcov_deploy.layer_trace import trace_layers

                    with step(f"tracing every layer of {path.name} against {fp32_graph.name}"):
                        result.locate["layers"] = trace_layers(path, fp32_graph, batch.head(16), LOCATE_TOLERANCE[precision])
            else:
                with step(f"locating the first diverging stage of {path.name}"):
                    result.locate = locate_divergence(ref.model, path, batch.head(16), precision, fp32=fp32_graph)
        results.append(result)
    return VerifyReport(samples=len(batch), reference=reference_summary, artifacts=results, seconds=time.perf_counter() - started)


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("relative_error", "cosine_min", "top1_agreement", "accuracy_drop", "nonfinite")
    return {k: metrics[k] for k in keys if metrics.get(k) is not None}


# ------------------------------------------------------------------ locate
def stage_tensors(model) -> dict[str, str]:
    """The ONNX tensor names of the stages: what the head's first layer reads (ResNet: layer4's
    map; ViT: the visual tokens), the tensor the covariance is taken of, the product, logits."""
    onnx_io.ensure_node_names(model)
    reduced = head_graph.block_input(model)
    return {
        "backbone": head_graph.layer_input(model, reduced),
        "reduced": reduced,
        "covariance": head_graph.covariance_product(model).output[0],
        "logits": model.graph.output[0].name,
    }


def _onnx_stages(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    from dropcov_deploy.probe import run_exposed

    model = onnx_io.load(path)
    names = stage_tensors(model)
    values = next(run_exposed(model, names.values(), [batch]))
    return {stage: np.asarray(values[tensor], dtype=np.float64) for stage, tensor in names.items()}


def _torch_stages(model, batch: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        stages = model.forward_stages(torch.from_numpy(batch))
    return {stage: stages[stage].double().numpy() for stage in STAGES}


def _fp32_graph(given: list[Path], manifest: Manifest, kind: str) -> Path | None:
    """The FP32 ONNX a precision ONNX's layers are traced against: the one it was built from (its
    manifest's source hash), given to verify or still at the path the manifest records; never
    another export, whose node names would match and whose numbers would mislead."""
    if manifest.precision is Precision.FP32 or kind != ONNX:
        return None
    source = manifest.get("source_onnx")
    if not isinstance(source, dict) or not source.get("sha256"):
        return None
    candidates = [*given, *([Path(source["path"])] if source.get("path") else [])]
    return next((p for p in candidates if p.is_file() and sha256_file(p) == source["sha256"]), None)


def locate_divergence(model, path: Path, batch: np.ndarray, precision: str | Precision, fp32: Path | None = None) -> dict[str, Any]:
    """Relative error per stage against PyTorch, and the first stage past the tolerance; with the
    FP32 ONNX, also every layer against it (`layer_trace`): the first and the worst layer."""
    from dropcov_deploy.metrics import relative_error

    if artifact_kind(path) != ONNX:
        return {"supported": False, "why": "intermediate tensors are read from ONNX artifacts only; verify the engine's precision ONNX"}
    expected = _torch_stages(model, batch)
    actual = _onnx_stages(path, batch)
    tolerance = LOCATE_TOLERANCE[Precision.parse(precision)]
    errors = {stage: relative_error(actual[stage].reshape(expected[stage].shape), expected[stage]) for stage in STAGES}
    first = next((stage for stage in STAGES if errors[stage] > tolerance), None)
    found: dict[str, Any] = {
        "supported": True,
        "tolerance": tolerance,
        "relative_error": errors,
        "first_diverging_tensor": first,
        "stage": STAGE_GROUP.get(first) if first else None,
    }
    if fp32 is not None:
        from dropcov_deploy.layer_trace import trace_layers

        found["layers"] = trace_layers(path, fp32, batch, tolerance)
    return found
