"""`debug precision`: which layers break FP16 or INT8, and the smallest set to keep in higher precision.

TensorRT 11 builds strongly typed networks, so Polygraphy's per-layer precision flags are gone;
the precision lives in the ONNX. This searches there, on the CPU, judged by verify's own gates:

1. calibrate once and build the whole precision graph once (the target's quantizer, or
   AutoCast for FP16);
2. derive every candidate from it by surgery (`precision.keep_float`): a layer "kept" loses
   its Q/DQ (INT8) or computes in FP32 (FP16), exactly as `build --keep-float` builds it;
3. rank the layers: each alone in the reduced precision (the rest kept), and each alone kept;
4. search: the shortest prefix of the ranking that passes every gate (bisection), then drop
   what is not needed (each layer tried out, least ranked first);
5. print the `build ... --keep-float` command, and with `apply` build and verify it.

The evaluation data chooses the layers, so its figures are selection figures: verify the
result on a held-out set (the bundled test split is refused here for that reason).
"""

from __future__ import annotations

import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import gates as gate_rules
from dropcov_deploy import layer_names, onnx_io
from dropcov_deploy.errors import InputError
from dropcov_deploy.manifest import Manifest
from dropcov_deploy.metrics import compare
from dropcov_deploy.precision import Precision
from dropcov_deploy.steps import StepReporter, advance, quiet_step

DEFAULT_BUDGET = 100  # candidate graphs: a compact ResNet (14 layers) needs about 40
TARGET_BACKENDS = {"cpu": "onnxruntime", "tensorrt": "tensorrt"}
BRIEF = ("top1_agreement", "accuracy_drop", "relative_error", "cosine_min", "nonfinite")


@dataclass
class DebugOptions:
    precision: str = "int8"
    calib: Path | None = None
    calib_dataset: str | None = None  # a bundled split to calibrate on: digits[:train|val]
    calib_size: int | None = 512
    calib_method: str = "entropy"
    data: Path | None = None
    dataset: str | None = None  # a bundled split to choose layers on (default split: val; test is refused)
    checkpoint: Path | None = None
    reference: Path | None = None
    target: str = "cpu"
    gates_file: Path | None = None
    budget: int = DEFAULT_BUDGET
    range_check: bool = True  # FP16: AutoCast's own range check (off: every layer FP16, for tests)
    high_precision: str = "fp16"  # TensorRT-target INT8: what the unquantized rest runs in (as build's --high-precision)
    batch_size: int = 64
    runtime: str = "onnxruntime"  # which runtime judges the candidates (the CPU target's: onnxruntime or openvino)


@dataclass
class Candidate:
    kept: frozenset[str]
    metrics: dict[str, Any]
    gates: dict[str, dict[str, Any]]

    @property
    def passed(self) -> bool:
        return all(g["passed"] is not False for g in self.gates.values())

    def brief(self) -> dict[str, Any]:
        return {k: self.metrics[k] for k in BRIEF if self.metrics.get(k) is not None} | {"passed": self.passed}


@dataclass
class DebugResult:
    precision: str
    target: str
    samples: int
    layers: list[layer_names.Layer]
    baseline: Candidate
    ranking: list[dict[str, Any]]
    keep_float: list[str]  # labels (module paths where known), ranked order
    passed: bool
    command: str
    candidates: int
    budget: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    applied: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "target": self.target,
            "samples": self.samples,
            "baseline": self.baseline.brief(),
            "ranking": self.ranking,
            "keep_float": self.keep_float,
            "command": self.command,
            "passed": self.passed,
            "candidates": self.candidates,
            "budget": self.budget,
            "seconds": round(self.seconds, 2),
            "notes": self.notes,
            **({"applied": self.applied} if self.applied is not None else {}),
        }


class BudgetSpent(Exception):
    """The number of candidate graphs allowed (--budget) has been judged."""


class Judge:
    """Runs candidate graphs on the evaluation inputs and gates them against the reference; each
    distinct kept set is judged once and counted against the budget."""

    def __init__(
        self,
        derive: Callable[[frozenset[str]], Any],
        inputs: np.ndarray,
        expected: np.ndarray,
        labels,
        gates,
        batch_size: int,
        budget: int,
        work: Path,
        accepts=None,
        runtime: str = "onnxruntime",
    ):
        self.derive, self.inputs, self.expected, self.labels = derive, inputs, expected, labels
        self.gates, self.batch_size, self.budget, self.work = gates, batch_size, budget, work
        self.accepts = accepts  # the model's batch range (a fixed-batch export gets padded batches)
        self.runtime = runtime
        self.seen: dict[frozenset[str], Candidate] = {}
        self.on_judged: Callable[[int], None] = lambda _: None

    @property
    def left(self) -> int:
        return self.budget - len(self.seen)

    def __call__(self, kept: frozenset[str]) -> Candidate:
        if kept in self.seen:
            return self.seen[kept]
        if self.left <= 0:
            raise BudgetSpent
        from dropcov_deploy.backends import TARGETS, cpu_opener, run_batched

        path = self.work / f"candidate_{len(self.seen)}.onnx"
        onnx_io.save(self.derive(kept), path)
        runner = cpu_opener(TARGETS[self.runtime])(path)
        try:
            outputs = run_batched(runner, self.inputs, self.accepts, self.batch_size)
        finally:
            runner.close()
            path.unlink(missing_ok=True)
        metrics = compare(outputs, self.expected, self.labels)
        candidate = Candidate(kept, metrics, gate_rules.evaluate(metrics, self.gates))
        self.seen[kept] = candidate
        self.on_judged(len(self.seen))
        return candidate


def _rank_key(row: dict[str, Any]) -> tuple[float, float, float]:
    """Most damaging first: lowest agreement when the layer alone is reduced, then the largest
    error, then the best agreement when the layer alone is kept."""
    alone, kept = row.get("metrics_alone_quantized") or {}, row.get("metrics_kept_float") or {}
    return (alone.get("top1_agreement", 1.0), -alone.get("relative_error", 0.0), -kept.get("top1_agreement", 0.0))


def search(judge: Judge, ranked: list[str], every: frozenset[str]) -> tuple[list[str] | None, list[str]]:
    """The smallest set found whose exclusion passes every gate, in ranking order (None when even
    keeping every layer fails), and notes on what limited the search."""
    notes: list[str] = []
    try:
        if not judge(every).passed:
            return None, ["keeping every layer in the higher precision still fails the gates: the cause is not a layer's precision (see verify --locate)"]
        low, high = 0, len(ranked)  # prefix length: low fails (0 = baseline), high passes
        while high - low > 1:
            middle = (low + high) // 2
            if judge(frozenset(ranked[:middle])).passed:
                high = middle
            else:
                low = middle
        chosen = ranked[:high]
        for name in reversed(list(chosen)):  # least ranked first: drop what the rest does not need
            if len(chosen) > 1 and judge(frozenset(n for n in chosen if n != name)).passed:
                chosen = [n for n in chosen if n != name]
        return chosen, notes
    except BudgetSpent:
        notes.append(f"--budget {judge.budget} candidate graphs spent before the search finished; raise it for a smaller or a passing set")
        passing = [c for c in judge.seen.values() if c.passed]
        if not passing:
            return None, notes
        best = min(passing, key=lambda c: len(c.kept))
        return [n for n in ranked if n in best.kept], notes


def _evaluation(options: DebugOptions, manifests: dict[Path, Manifest], model: Path, step: StepReporter):
    """The inputs the layers are chosen on, the reference logits, labels and the gates to meet."""
    from dropcov_deploy.reference import load_reference
    from dropcov_deploy.verify import torch_reference

    if (options.checkpoint is None) == (options.reference is None):
        raise InputError("give exactly one of --checkpoint CKPT (PyTorch here) or --reference REF.npz")
    if options.reference is not None:
        if options.dataset is not None:
            raise InputError("--dataset: a reference file holds its own inputs")
        ref = load_reference(options.reference, options.data)
        problem = ref.mismatch(model, manifests[model])
        if problem:
            raise InputError(problem)
        recorded = ref.meta.get("dataset")
        if isinstance(recorded, str):
            from dropcov_deploy.data.datasets import parse_dataset

            parse_dataset(recorded, for_selection=True)  # a reference of the held-out split is refused here too
    else:
        dataset = None
        if options.dataset is not None:
            from dropcov_deploy.data.datasets import parse_dataset

            dataset = str(parse_dataset(options.dataset, for_selection=True))
        elif options.data is None:
            raise InputError("give the data to choose layers on: --data DIR or --dataset digits[:train|val]")
        assert options.checkpoint is not None  # exactly one of checkpoint/reference, checked above
        ref = torch_reference(
            options.checkpoint, data=options.data, dataset=dataset, random=None, batch_size=options.batch_size, artifacts=manifests, step=step
        )
    family_gates = gate_rules.check_overrides(ref.meta.get("family_gates") or {}, f"{options.reference or options.checkpoint} (the model family's gates)")
    gates = gate_rules.with_overrides(gate_rules.with_overrides(gate_rules.DEFAULT_GATES, family_gates), gate_rules.read_overrides(options.gates_file))
    from dropcov_deploy.memory import available_memory_bytes

    needed, available = ref.inputs.nbytes(), available_memory_bytes()
    if available is not None and 2 * needed > available:
        raise InputError(
            f"{options.data or options.reference}: {len(ref.inputs)} inputs need {needed / 1e9:.1f} GB held at once for the search, "
            f"{available / 1e9:.1f} GB is available; choose layers on a smaller folder (a few hundred to a few thousand images)"
        )
    return ref.inputs.materialize(), ref.logits, ref.labels, gates, ref.described


def debug_precision(model: str | Path, options: DebugOptions, step: StepReporter = quiet_step) -> DebugResult:
    """Rank the layers of `model` (an FP32 export) by what the reduced precision costs each, and
    find a small set to keep in higher precision that passes every gate."""
    from dropcov_deploy.backends import get_target, load_hook
    from dropcov_deploy.build import source_manifest
    from dropcov_deploy.data.datasets import parse_dataset
    from dropcov_deploy.precision.calibration import load_calibration
    from dropcov_deploy.precision.keep_float import keep_layers_float

    started = time.perf_counter()
    model = Path(model)
    precision = Precision.parse(options.precision)
    if not precision.reduced:
        raise InputError("--precision fp32 has nothing to debug; use fp16 or int8")
    if options.target not in TARGET_BACKENDS:
        raise InputError(f"--target {options.target!r}: use cpu or tensorrt")
    from dropcov_deploy.backends import DEFAULT_TARGET, TARGETS, runtime_names

    if options.runtime not in runtime_names():
        raise InputError(f"--runtime {options.runtime!r}: use {' or '.join(runtime_names())}")
    if options.target != "cpu" and options.runtime != DEFAULT_TARGET:
        raise InputError(f"--runtime {options.runtime} judges CPU-target graphs; --target {options.target} candidates run in {DEFAULT_TARGET} here")
    available, reason = TARGETS[options.runtime].is_available()
    if not available:
        from dropcov_deploy.errors import BackendUnavailable

        raise BackendUnavailable(f"--runtime {options.runtime}: {reason}")
    if options.budget < 3:
        raise InputError(f"--budget {options.budget}: need at least 3 candidate graphs (the baseline, all kept, one more)")
    if (options.calib is None) == (options.calib_dataset is None):
        raise InputError("give the calibration data: --calib DIR|FILE or --calib-dataset digits[:train|val]")
    if options.high_precision not in ("fp16", "fp32"):
        raise InputError(f"--high-precision {options.high_precision!r}: use fp16 or fp32")
    source = source_manifest(model)
    if source.precision is not Precision.FP32:
        raise InputError(f"{model}: is a {source.precision} graph; debug the FP32 export it was built from")
    target = get_target(TARGET_BACKENDS[options.target])
    if precision is Precision.INT8 and options.calib_method not in target.calibration_methods:
        raise InputError(f"--calib-method {options.calib_method!r}: --target {options.target} takes {' or '.join(target.calibration_methods)}")
    calibrate_on = parse_dataset(options.calib_dataset, for_calibration=True) if options.calib_dataset else options.calib
    if isinstance(calibrate_on, Path) and not calibrate_on.exists():
        raise InputError(f"{calibrate_on}: no such calibration folder or file")
    graph = onnx_io.load(model)
    onnx_io.ensure_node_names(graph)
    inputs, expected, labels, gates, described = _evaluation(options, {model: source}, model, step)
    with step(f"loading calibration data {calibrate_on}"):
        calibration = load_calibration(calibrate_on, source, options.calib_size)  # type: ignore[arg-type]

    with tempfile.TemporaryDirectory(prefix="dropcov-debug-") as tmp:
        work = Path(tmp)
        named = work / "named.onnx"
        onnx_io.save(graph, named)
        if precision is Precision.INT8:
            from dropcov_deploy import head_graph
            from dropcov_deploy.precision.calibration import reference_pass
            from dropcov_deploy.precision.fc_choice import fc_variant
            from dropcov_deploy.precision.fp16 import autocast_fp16

            quantize = load_hook(target.int8_quantizer)
            with step(f"calibrating and quantizing every layer once ({len(calibration)} images, {options.calib_method})"):
                base, pinned, _ = quantize(named, calibration, options.calib_method, "fp32")
                fc_amax = reference_pass(model, calibration).fc_input_amax
            fc_name = head_graph.fc_node(graph).name
            to_fp16 = target.name == "tensorrt" and options.high_precision == "fp16"

            def derive(kept: frozenset[str]):
                """What `build --keep-float ... --fc int8` makes: the kept layers lose their Q/DQ, (TensorRT
                target) the unquantized rest goes to FP16 by AutoCast, then the fc's treatment (float when kept)."""
                graph_now = keep_layers_float(base, graph, kept - {fc_name})
                if to_fp16:
                    staged = work / "autocast_input.onnx"
                    onnx_io.save(graph_now, staged)
                    graph_now = autocast_fp16(staged, calibration, list(pinned), opset=max(19, onnx_io.opset(graph_now)))
                return fc_variant(graph_now, graph, "float" if fc_name in kept else "int8", fc_amax)

        else:
            from dropcov_deploy import head_graph
            from dropcov_deploy.layer_names import with_trailing_activations
            from dropcov_deploy.precision.fp16 import autocast_fp16

            pinned = head_graph.covariance_block(graph)
            with step("converting every layer to FP16 (AutoCast)" + ("" if options.range_check else ", range check off")):
                base = autocast_fp16(named, calibration, list(pinned), range_check=options.range_check)

            def derive(kept: frozenset[str]):
                """AutoCast again with the kept layers (and the activations they feed) excluded: the
                build's own FP16 path; the calibration images are loaded once and reused."""
                if not kept:
                    return base
                excluded = [*pinned, *(n for n in with_trailing_activations(graph, kept) if n not in pinned)]
                return autocast_fp16(named, calibration, excluded, range_check=options.range_check)

        reduced = _reduced_layers(base, graph, precision, set(pinned))
        every = frozenset(layer.name for layer in reduced)
        judge = Judge(
            derive,
            inputs,
            expected,
            labels,
            gates.get(precision, gates[Precision.FP32]),
            options.batch_size,
            options.budget,
            work,
            source.batch,
            options.runtime,
        )
        notes: list[str] = []
        with step(f"judging candidates ({len(reduced)} layers in {precision}, up to {options.budget} graphs)") as handle:
            judge.on_judged = lambda count: advance(handle, count, options.budget)
            baseline = judge(frozenset())
            rows: list[dict[str, Any]] = []
            try:
                if not baseline.passed:
                    for layer in reduced:
                        rows.append(
                            {
                                "layer": layer.label,
                                "nodes": [layer.name],
                                "op_type": layer.op_type,
                                "metrics_alone_quantized": judge(every - {layer.name}).brief(),
                                "metrics_kept_float": judge(frozenset({layer.name})).brief(),
                            }
                        )
            except BudgetSpent:
                notes.append(f"--budget {options.budget} spent while ranking: {len(rows)} of {len(reduced)} layers ranked")
            rows.sort(key=_rank_key)
            if baseline.passed:
                chosen: list[str] | None = []
                notes.append(f"the {precision} graph passes every gate with no layer kept: nothing to change")
            else:
                ranked = [row["nodes"][0] for row in rows] + [layer.name for layer in reduced if layer.name not in {r["nodes"][0] for r in rows}]
                chosen, more = search(judge, ranked, every)
                notes += more
    keep = _names_for_build(graph, reduced, chosen or [])
    command = suggested_command(model, options, keep, precision)
    return DebugResult(
        precision=precision.value,
        target=options.target,
        samples=len(inputs),
        layers=reduced,
        baseline=baseline,
        ranking=rows,
        keep_float=keep,
        passed=chosen is not None,
        command=command,
        candidates=len(judge.seen),
        budget=options.budget,
        seconds=time.perf_counter() - started,
        notes=[f"chosen on {described}: selection figures, not a held-out estimate (verify the build on other images)", *notes],
    )


def _reduced_layers(base, graph, precision: Precision, pinned: set[str]) -> list[layer_names.Layer]:
    """The compute layers the precision graph actually reduced: INT8, a DequantizeLinear feeds
    them; FP16, they compute in FP16. The covariance block (always FP32) is not a candidate."""
    from onnx import TensorProto, shape_inference

    nodes = {node.name: node for node in base.graph.node}
    made_by = onnx_io.producers(base)
    if precision is Precision.FP16:
        inferred = shape_inference.infer_shapes(base)
        types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    found: list[layer_names.Layer] = []
    for layer in layer_names.layers(graph):
        node = nodes.get(layer.name)
        if node is None or layer.name in pinned:
            continue
        if precision is Precision.INT8:
            reduced = any(made_by.get(i) is not None and made_by[i].op_type == "DequantizeLinear" for i in node.input)
        else:
            reduced = types.get(node.output[0]) == TensorProto.FLOAT16
        if reduced:
            found.append(layer)
    return found


def _names_for_build(graph, reduced: list[layer_names.Layer], chosen: list[str]) -> list[str]:
    """Each chosen layer by module path where that path resolves to exactly this node in `build`,
    else by its node name (a shared or repeated module path would keep more than was judged)."""
    by_node = {layer.name: layer for layer in reduced}
    names = []
    for node in chosen:
        label = by_node[node].label
        try:
            exact = [layer.name for layer in layer_names.resolve([label], graph)] == [node]
        except InputError:
            exact = False
        names.append(label if exact else node)
    return names


def suggested_command(model: Path, options: DebugOptions, keep: list[str], precision: Precision) -> str:
    """The `build` that makes the artifact the search judged (INT8: the fc's treatment fixed as judged)."""
    words = ["dropcov-deploy", "build", str(model), "--precision", precision.value]
    words += ["--calib", str(options.calib)] if options.calib is not None else ["--dataset", str(options.calib_dataset)]
    if options.calib_size is not None:
        words += ["--calib-size", str(options.calib_size)]
    if options.calib_method != "entropy":
        words += ["--calib-method", options.calib_method]
    words += ["--backend", TARGET_BACKENDS[options.target]]
    if precision is Precision.INT8:
        words += ["--fc", "int8"]  # as judged; a kept fc is float through --keep-float
        if options.target == "tensorrt":
            words += ["--high-precision", options.high_precision]
    if not options.range_check:
        words.append("--no-autocast-range-check")
    if keep:
        words += ["--keep-float", ",".join(keep)]
    return shlex.join(words)


def apply(model: Path, options: DebugOptions, result: DebugResult, out: Path | None = None, step: StepReporter = quiet_step) -> dict[str, Any]:
    """Build what the search found (`build --keep-float ...`) and verify it on the same data: the
    build the suggested command makes, checked end to end (fc choice, graph checks included)."""
    from dropcov_deploy.backends import get_target
    from dropcov_deploy.build import BuildOptions, build, default_output
    from dropcov_deploy.errors import BackendUnavailable, first_line
    from dropcov_deploy.verify import verify

    precision = Precision.parse(result.precision)
    options_for_build = BuildOptions(
        precision=precision,
        calib=options.calib,
        dataset=options.calib_dataset,
        calib_size=options.calib_size,
        calib_method=options.calib_method,
        backend=TARGET_BACKENDS[options.target],
        keep_float=",".join(result.keep_float) if result.keep_float else None,
        autocast_range_check=options.range_check,
        fc="int8" if precision is Precision.INT8 else "auto",
        high_precision=options.high_precision,
        out=out,
    )
    engine_note = None
    try:
        precision_onnx = build(model, options_for_build, step=step).precision_onnx
    except BackendUnavailable as exc:  # no TensorRT here: the precision ONNX is published before the engine step
        precision_onnx = Path(out) if out is not None else default_output(model, precision, get_target(options_for_build.backend))
        if not precision_onnx.exists():
            raise
        engine_note = first_line(exc)
    dataset = options.dataset
    if dataset is not None:
        from dropcov_deploy.data.datasets import parse_dataset

        dataset = str(parse_dataset(dataset, for_selection=True))
    report = verify(
        options.checkpoint,
        [precision_onnx],
        reference=options.reference,
        data=options.data,
        dataset=dataset,
        gates_file=options.gates_file,
        step=step,
    )
    artifact = report.artifacts[0]
    found = {"artifact": str(precision_onnx), "passed": artifact.passed, "metrics": {k: artifact.metrics.get(k) for k in BRIEF}, "gates": artifact.gates}
    if engine_note:
        found["engine"] = engine_note
    return found
