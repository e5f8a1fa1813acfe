"""Verification gates: per-precision thresholds on parity metrics, overridable by a file.

Defaults follow deployment-notes.md's starting gates (INT8 may lose 0.5 pt of accuracy;
a model family may override them: the xcov family's INT8 may lose 1 pt, see
`ModelFamily.gate_overrides`); the accuracy gates apply only when the inputs are labelled. A gates file is JSON:
{"fp16": {"top1_agreement": {"min": 0.99}}, "int8": {"accuracy_drop": {"max": 0.01}}}.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from dropcov_deploy.errors import InputError

DEFAULT_GATES: dict[str, dict[str, dict[str, float]]] = {
    "fp32": {"relative_error": {"max": 1e-4}, "top1_agreement": {"min": 1.0}, "nonfinite": {"max": 0}},
    "fp16": {"nonfinite": {"max": 0}, "top1_agreement": {"min": 0.995}, "cosine_min": {"min": 0.999}, "accuracy_drop": {"max": 0.001}},
    "int8": {"nonfinite": {"max": 0}, "top1_agreement": {"min": 0.97}, "accuracy_drop": {"max": 0.005}},
}


# What `metrics.compare` reports and a gate may bound.
METRICS = (
    "max_abs_error",
    "mean_abs_error",
    "relative_error",
    "cosine_mean",
    "cosine_min",
    "top1_agreement",
    "top5_agreement",
    "nonfinite",
    "accuracy",
    "reference_accuracy",
    "accuracy_drop",
)


def family_overrides(family: str | None) -> dict[str, dict[str, dict[str, float]]]:
    """What a model family changes in DEFAULT_GATES (its `ModelFamily.gate_overrides`; older
    family names too); {} without a family or for one we do not know."""
    if not family:
        return {}
    from dropcov_deploy.models.registry import find_family

    found = find_family(family)
    return copy.deepcopy({p: {m: dict(b) for m, b in metrics.items()} for p, metrics in found.gate_overrides.items()}) if found else {}


def default_gates(family: str | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """DEFAULT_GATES with the model family's overrides."""
    return with_overrides(DEFAULT_GATES, family_overrides(family))


def read_overrides(path: Path | None) -> dict[str, dict[str, dict[str, float]]]:
    """A gates file's bounds, checked: {precision: {metric: {"min"/"max": number}}}; {} without a file."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such gates file")
    from dropcov_deploy.manifest import read_json_object

    raw = read_json_object(path, "gates file (an object keyed by precision: fp32, fp16, int8)")
    return check_overrides(raw, path)


def check_overrides(raw: Any, path: Path | str) -> dict[str, dict[str, dict[str, float]]]:
    """Gate bounds {precision: {metric: {"min"/"max": number}}} checked (known precisions and metrics,
    finite numbers, min <= max) and as floats; `path` names where they came from in the one-line error."""
    if not isinstance(raw, dict):
        raise InputError(f"{path}: gates must be an object keyed by precision (fp32, fp16, int8)")
    overrides: dict[str, dict[str, dict[str, float]]] = {}
    for precision, metrics in raw.items():
        if precision not in DEFAULT_GATES:
            raise InputError(f"{path}: unknown precision {precision!r}; use fp32, fp16 or int8")
        if not isinstance(metrics, dict):
            raise InputError(f'{path}: {precision} must map metrics to bounds, e.g. {{"top1_agreement": {{"min": 0.99}}}}; got {json.dumps(metrics)[:40]}')
        for metric, bound in metrics.items():
            if metric not in METRICS:
                raise InputError(f"{path}: {precision}.{metric} is not a metric verify computes; use one of {', '.join(METRICS)}")
            if not isinstance(bound, dict) or not set(bound) <= {"min", "max"} or not bound:
                raise InputError(f'{path}: {precision}.{metric} must be {{"min": x}} and/or {{"max": y}}')
            for side, value in bound.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                    raise InputError(f"{path}: {precision}.{metric}.{side} must be a finite number, got {json.dumps(value)}")
            if "min" in bound and "max" in bound and bound["min"] > bound["max"]:
                raise InputError(f"{path}: {precision}.{metric}: min {bound['min']} > max {bound['max']}, no value could pass")
            overrides.setdefault(precision, {})[metric] = {k: float(v) for k, v in bound.items()}
    return overrides


def with_overrides(gates: dict[str, dict[str, dict[str, float]]], overrides: dict[str, dict[str, dict[str, float]]]):
    """`gates` with each overridden metric's bounds replaced."""
    merged = copy.deepcopy(gates)
    for precision, metrics in overrides.items():
        merged[precision].update(copy.deepcopy(metrics))
    return merged


GATE_MODES = ("point", "confident")


def describe_bound(gate: dict[str, Any]) -> str:
    """'>= 0.97', '<= 0.005', or both: what a gate asks for."""
    parts = []
    if "min" in gate:
        parts.append(f">= {gate['min']:g}")
    if "max" in gate:
        parts.append(f"<= {gate['max']:g}")
    return " and ".join(parts)


def describe_failure(name: str, gate: dict[str, Any]) -> str:
    """'top1_agreement 0.208 (needs >= 0.97)': the measured value against the bound, with the 95%
    interval when the sample decided it (confident mode fails an undecided one)."""
    value = gate.get("value")
    shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
    interval = gate.get("interval")
    around = f", 95% interval [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ""
    return f"{name} {shown} (needs {describe_bound(gate)}{around})"


def evaluate(
    metrics: dict[str, Any], gates: dict[str, dict[str, float]], intervals: dict[str, Any] | None = None, mode: str = "point"
) -> dict[str, dict[str, Any]]:
    """Each gate: the bound, the value, passed (None when the metric does not apply, e.g. no labels).

    Where the metric has a 95% interval (`stats.intervals`), the gate also records it and its
    `decision` on the whole interval (pass, fail, undecided). In "point" mode the value decides
    and an undecided interval is flagged with about how many samples would decide it; in
    "confident" mode the interval decides (undecided fails: the sample cannot show the gate holds)."""
    from dropcov_deploy.stats import decide, drop_samples_needed, samples_needed

    if mode not in GATE_MODES:
        raise InputError(f"--gate-mode {mode!r}: use {' or '.join(GATE_MODES)}")
    results = {}
    for metric, bound in gates.items():
        value = metrics.get(metric)
        if value is None:
            results[metric] = {**bound, "value": None, "passed": None}
            continue
        passed = ("min" not in bound or value >= bound["min"]) and ("max" not in bound or value <= bound["max"])
        result: dict[str, Any] = {**bound, "value": value, "passed": bool(passed)}
        interval = (intervals or {}).get(metric)
        if interval is not None:
            # a proportion bounded at its very end ("all agree": min 1.0, "none": max 0.0) is a rule about
            # every sample, which no interval can ever clear: the sample itself decides it
            exact = metric != "accuracy_drop" and (bound.get("min", 0.0) >= 1.0 or bound.get("max", 1.0) <= 0.0)
            decision = ("pass" if passed else "fail") if exact else decide((float(interval[0]), float(interval[1])), bound)
            result.update(interval=list(interval), decision=decision)
            if mode == "confident":
                result["passed"] = bool(passed) and decision == "pass"
            if decision == "undecided":
                edge = bound.get("min", bound.get("max", 0.0))
                if metric == "accuracy_drop":
                    result["samples_needed"] = drop_samples_needed(value, edge, float((intervals or {}).get("discordant_rate", 0.0)))
                else:
                    result["samples_needed"] = samples_needed(value, edge)
        results[metric] = result
    return results
