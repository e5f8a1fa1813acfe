"""INT8: the target's quantizer, then the fc treatment (and, for the CPU, the runtime and Q/DQ form) chosen by measurement.

The quantizer (per target, `quantizers`) places Q/DQ with the covariance block left in
FP32 and unquantized; `fc_choice` then derives and scores the fc's treatments from that
one calibrated graph. On the CPU target `cpu_choice` measures every (runtime, Q/DQ form,
fc) from one calibration instead. The manifest records what was chosen and the numbers.
"""

from __future__ import annotations

from typing import Any

from dropcov_deploy import head_graph, onnx_io
from dropcov_deploy.backends import load_hook
from dropcov_deploy.errors import InputError
from dropcov_deploy.precision import PrecisionRequest
from dropcov_deploy.precision.fc_choice import FC_MODES, choose_fc_variant, fc_variant


def _fc_modes(request: PrecisionRequest, source) -> str:
    """--fc, or float when --keep-float names the fc (no INT8 there)."""
    fc = request.fc
    if head_graph.fc_node(source).name in request.keep_float:
        if fc not in ("auto", "float"):
            raise InputError(f"--fc {fc} and --keep-float of the fc contradict each other; keep one")
        fc = "float"
    return fc


def precision_graph(request: PrecisionRequest) -> tuple[Any, dict[str, Any]]:
    calibration, reference, target = request.calibration, request.reference, request.target
    if calibration is None or reference is None:
        raise InputError("INT8 needs calibration images")
    source = onnx_io.load(request.model)
    onnx_io.ensure_node_names(source)
    fc = _fc_modes(request, source)  # a contradiction is said before any calibration
    if request.runtimes:
        return _cpu_precision_graph(request, source, fc)
    quantize = load_hook(target.int8_quantizer)
    with request.step(f"calibrating and quantizing for {target.tag} ({len(calibration)} images, {request.calib_method})"):
        quantized, pinned, quantizer_record = quantize(request.model, calibration, request.calib_method, request.high_precision, keep_float=request.keep_float)
    modes = "int8, weight-only, float" if fc == "auto" else fc
    with request.step(f"measuring fc treatments ({modes})"):
        chosen, fc_record = choose_fc_variant(
            quantized,
            source,
            fc=fc,
            policy=target.fc_policy,
            fc_amax=reference.fc_input_amax,
            calibration=calibration,
            reference=reference.logits,
            work=request.work,
        )
    record = {
        "target": target.tag,
        "calibration_method": request.calib_method,
        "high_precision": quantizer_record.pop("high_precision"),
        "covariance_block_fp32": pinned,
        "fc": fc_record,
        **quantizer_record,
    }
    return chosen, record


def _cpu_precision_graph(request: PrecisionRequest, source, fc: str) -> tuple[Any, dict[str, Any]]:
    """One calibration per activation type (stem in INT8), then every (runtime, form, fc) measured (`cpu_choice`)."""
    from dropcov_deploy.backends import TARGETS, cpu_opener
    from dropcov_deploy.gates import DEFAULT_GATES
    from dropcov_deploy.precision import cpu_choice
    from dropcov_deploy.steps import advance

    calibration, reference, target = request.calibration, request.reference, request.target
    assert calibration is not None and reference is not None  # checked by the caller
    quantize = load_hook(target.int8_quantizer)
    forms = list(cpu_choice.FORMS) if request.qdq_form == "auto" else [request.qdq_form]
    calibrated: dict[str, Any] = {}
    for activations in dict.fromkeys(cpu_choice.parse_form(form)[0] for form in forms):
        with request.step(f"calibrating and quantizing for {target.tag}, {activations} ({len(calibration)} images, {request.calib_method})"):
            calibrated[activations], pinned, quantizer_record = quantize(
                request.model,
                calibration,
                request.calib_method,
                request.high_precision,
                keep_float=request.keep_float,
                quantize_stem=True,
                activations=activations,
            )
    stem = [name for name in quantizer_record.pop("fp32_nodes", []) if name not in request.keep_float]
    if not stem:  # no stem conv to choose for (or --keep-float keeps it): the "-stem" forms are the same graphs
        forms = list(dict.fromkeys(f.removesuffix("-stem") for f in forms))
    fcs = list(FC_MODES) if fc == "auto" else [fc]
    openers = {name: cpu_opener(TARGETS[name]) for name in request.runtimes}
    total = len(forms) * len(fcs) * len(openers)
    with request.step(f"measuring {total} INT8 candidates (runtime x Q/DQ form x fc) on {len(calibration)} calibration images") as handle:
        done = [0]

        def progress(_: str) -> None:
            advance(handle, done[0], total)
            done[0] += 1

        rows = cpu_choice.measure_candidates(
            calibrated,
            source,
            stem=stem,
            forms=forms,
            fcs=fcs,
            runtimes=openers,
            fc_amax=reference.fc_input_amax,
            calibration=calibration,
            reference=reference.logits,
            gates=request.gates or DEFAULT_GATES["int8"],
            work=request.work,
            progress=progress,
        )
    chosen, why = cpu_choice.choose(rows, len(calibration))
    record = {
        "target": target.tag,
        "calibration_method": request.calib_method,
        "high_precision": quantizer_record.pop("high_precision"),
        "covariance_block_fp32": pinned,
        "fc": cpu_choice.fc_record(rows, chosen, why),
        "runtime": chosen["runtime"],
        "qdq_form": chosen["form"],
        "fp32_nodes": [] if chosen["form"].endswith("-stem") else stem,
        "cpu_choice": {"chosen": {k: chosen[k] for k in ("runtime", "form", "fc")}, "why": why, "candidates": rows, "stem": stem},
        **quantizer_record,
    }
    graph = fc_variant(cpu_choice.form_graph(calibrated, source, chosen["form"], stem), source, chosen["fc"], reference.fc_input_amax)
    return graph, record
