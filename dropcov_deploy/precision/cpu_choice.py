"""The CPU target's INT8: which runtime runs it and which Q/DQ form it takes, chosen by measurement.

The same Q/DQ graph runs at very different speeds in ONNX Runtime and OpenVINO, and the
fastest form differs between them: ONNX Runtime's x86 kernels fuse only the U8S8 pair
(uint8 asymmetric activations, int8 weights; an s8s8 graph runs its convs in float there),
while OpenVINO's oneDNN takes either. The candidates:

- activations `u8s8` or `s8s8` (int8 symmetric), each its own calibration with every layer but
  the covariance block quantized (ONNX Runtime folds a Relu into a uint8 Q with zero point 0,
  so the two graphs differ in more than their ranges: one calibration each, not a conversion);
- the stem conv in INT8 (`-stem`) or kept float (its Q/DQ removed by surgery: on digits its
  INT8 pre-ReLU output once cost 3 points, `quantizers.stem_conv`);
- the fc's three treatments (`fc_choice`).

Each form runs in each CPU runtime asked for on the calibration images, in the calibration's
batches (a runtime whose INT8 results change with the batch size shows it here: OpenVINO
2026.4 on the u8s8 graph of the seeded resnet50_ACD). Eligible (`eligible`): among the
candidates that ran with finite outputs, those meeting the INT8 gates (nonfinite, top-1
agreement, accuracy drop where labelled; the family's overrides; all of them if none does),
within `agreement_slack` of that group's best top-1 agreement; of those, the fastest median at
batch 1 on this machine wins. The manifest records every candidate's numbers. These are selection
figures, on calibration images: verify reports on other data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy import onnx_io
from dropcov_deploy.errors import InputError, first_line
from dropcov_deploy.precision.fc_choice import FC_AGREEMENT_SLACK, FC_MODES, fc_variant, score

ACTIVATIONS = ("u8s8", "s8s8")
FORMS = ("u8s8", "s8s8", "u8s8-stem", "s8s8-stem")  # "-stem": the stem conv in INT8 too
FORM_CHOICES = ("auto", *FORMS)


def parse_form(form: str) -> tuple[str, bool]:
    """'s8s8-stem' -> ('s8s8', True): the activations and whether the stem conv is INT8."""
    activations, _, stem = form.partition("-")
    if activations not in ACTIVATIONS or stem not in ("", "stem"):
        raise ValueError(form)
    return activations, stem == "stem"


def form_graph(calibrated: dict[str, Any], source, form: str, stem: Sequence[str]):
    """The graph of `form`: its activations' calibration (every layer but the covariance block in
    INT8), with the stem conv's Q/DQ removed unless the form keeps it INT8."""
    from onnx import ModelProto

    from dropcov_deploy.precision.keep_float import keep_layers_float

    activations, stem_int8 = parse_form(form)
    if not stem_int8 and stem:
        return keep_layers_float(calibrated[activations], source, tuple(stem))
    model = ModelProto()
    model.CopyFrom(calibrated[activations])
    return model


def agreement_slack(samples: int) -> float:
    """How far below the best agreement a candidate may be and still count as "as accurate":
    FC_AGREEMENT_SLACK, or one image's worth when the set is smaller than 1 / slack images (on 64
    images 0.005 would demand equality, and one image is not evidence of a difference)."""
    return max(FC_AGREEMENT_SLACK, 1.0 / samples) if samples > 0 else FC_AGREEMENT_SLACK


def _usable(candidate: dict[str, Any]) -> bool:
    """Ran, and gave finite outputs on every calibration image."""
    return not candidate.get("failed") and candidate.get("nonfinite") == 0


def eligible(candidates: list[dict[str, Any]], samples: int = 0) -> list[dict[str, Any]]:
    """The pool the fastest is taken from: among the candidates that ran with finite outputs,
    those that pass the gates (else all of them), within the slack of that pool's best top-1
    agreement. A failing or non-finite candidate never sets the bar for a passing one."""
    usable = [c for c in candidates if _usable(c)]
    pool = [c for c in usable if c["gates_passed"]] or usable
    if not pool:
        return []
    best = max(c["top1_agreement"] for c in pool)
    slack = agreement_slack(samples) + 1e-12
    return [c for c in pool if c["top1_agreement"] >= best - slack]


def choose(candidates: list[dict[str, Any]], samples: int = 0) -> tuple[dict[str, Any], str]:
    """The fastest eligible candidate (on `samples` calibration images), and why, in one sentence;
    an InputError when no candidate ran with finite outputs."""
    pool = eligible(candidates, samples)
    if not pool:
        reasons = "; ".join(f"{c['runtime']} {c['form']} fc {c['fc']}: {c.get('failed') or 'non-finite outputs'}" for c in candidates[:4])
        raise InputError(f"no INT8 candidate ran with finite outputs on the calibration images ({reasons})")
    chosen = min(pool, key=lambda c: c["cpu_latency_ms_batch1"])
    best = max(c["top1_agreement"] for c in pool)
    gated = "meets the int8 gates" if chosen["gates_passed"] else "no candidate met the int8 gates on the calibration images; the closest"
    why = (
        f"{chosen['runtime']} {chosen['form']} fc {chosen['fc']}: {gated}, top-1 agreement {chosen['top1_agreement']:.4f} "
        f"(best {best:.4f}, slack {agreement_slack(samples):.3f}), fastest of {len(pool)} eligible of {len(candidates)} at batch 1 on this CPU "
        f"({chosen['cpu_latency_ms_batch1']:.2f} ms)"
    )
    return chosen, why


def measure_candidates(
    calibrated: dict[str, Any],
    source,
    *,
    stem: Sequence[str],
    forms: Sequence[str],
    fcs: Sequence[str],
    runtimes: dict[str, Callable[[Path], Any]],
    fc_amax: float,
    calibration,
    reference: np.ndarray,
    gates: dict[str, dict[str, float]],
    work: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Every (runtime, form, fc) scored on the calibration images and timed at batch 1. The graphs
    are not kept (twelve copies of a large model would be gigabytes): the chosen one is derived again."""
    from dropcov_deploy import gates as gate_rules

    rows: list[dict[str, Any]] = []
    for form in forms:
        base = form_graph(calibrated, source, form, stem)
        for fc in fcs:
            graph = fc_variant(base, source, fc, fc_amax)
            path = work / f"cpu-{form}-fc-{fc}.onnx"
            onnx_io.save(graph, path)
            del graph
            for runtime, opener in runtimes.items():
                progress(f"{runtime} {form} fc {fc}")
                try:
                    measured = score(path, calibration, reference, calibration.data[:1], opener=opener)
                except Exception as exc:  # one runtime that cannot load or run one candidate: recorded, the others go on
                    reason = first_line(exc).replace(f"{path}: ", "")
                    rows.append({"runtime": runtime, "form": form, "fc": fc, "failed": reason, "gates_passed": False, "nonfinite": None})
                    continue
                verdict = gate_rules.evaluate(measured, gates)
                rows.append({"runtime": runtime, "form": form, "fc": fc, **measured, "gates_passed": all(g["passed"] is not False for g in verdict.values())})
            path.unlink(missing_ok=True)
    return rows


def fc_record(rows: list[dict[str, Any]], chosen: dict[str, Any], why: str) -> dict[str, Any]:
    """The manifest's "fc" entry as before (chosen, why, the treatments' scores), for the chosen runtime and form."""
    keys = ("top1_agreement", "nonfinite", "cosine_min", "relative_error", "accuracy", "cpu_latency_ms_batch1", "failed")
    same = {r["fc"]: {k: r[k] for k in keys if k in r} for r in rows if r["runtime"] == chosen["runtime"] and r["form"] == chosen["form"]}
    return {"chosen": chosen["fc"], "why": why, "candidates": {mode: same[mode] for mode in FC_MODES if mode in same}}
