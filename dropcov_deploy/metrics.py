"""Numerical comparison of two outputs (numpy only: usable on an edge board)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |actual - reference| / max |reference|: one number, robust to tiny entries."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    diff = float(np.abs(actual - reference).max()) if reference.size else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


@dataclass
class Samples:
    """How each sample counts, the one rule `compare` and `stats.intervals` share. A sample with a
    NaN or Inf in either output never agrees and is never right; values are compared where both
    are finite (`safe`, `safe_reference`), and `finite` says where that is."""

    safe: np.ndarray
    safe_reference: np.ndarray
    finite: np.ndarray  # per value
    usable: np.ndarray  # per sample: finite on both sides
    top1: np.ndarray  # per sample: the artifact's top-1 is the reference's
    top5: np.ndarray  # per sample: the reference's top-1 is among the artifact's top-5
    artifact_right: np.ndarray | None  # per sample, with labels
    reference_right: np.ndarray | None


def per_sample(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> Samples:
    logits = np.asarray(logits, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    finite = np.isfinite(logits) & np.isfinite(reference)  # a NaN on either side is counted, never compared away
    artifact_ok, reference_ok = np.isfinite(logits).all(axis=1), np.isfinite(reference).all(axis=1)
    ref_top1 = np.where(np.isfinite(reference), reference, -np.inf).argmax(axis=1)  # the reference's own answer, whatever the artifact did
    safe = np.where(finite, logits, 0.0)
    usable = artifact_ok & reference_ok
    top5 = (np.argsort(-safe, axis=1)[:, : min(5, logits.shape[1])] == ref_top1[:, None]).any(axis=1) & usable
    artifact_right = reference_right = None
    if labels is not None:
        artifact_right = (safe.argmax(axis=1) == labels) & artifact_ok
        reference_right = (ref_top1 == labels) & reference_ok
    return Samples(safe, np.where(finite, reference, 0.0), finite, usable, (safe.argmax(axis=1) == ref_top1) & usable, top5, artifact_right, reference_right)


def compare(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float | int | None]:
    """Parity of one output against a reference: errors, cosine, agreement, accuracy.

    top5_agreement: share of samples whose reference top-1 class is in the output's top-5.
    A sample with a NaN or Inf in either output never agrees, is never right and has cosine -1;
    the error figures are taken over the finite entries and `nonfinite` counts the rest, so an
    all-NaN output reads as agreement 0, not as a perfect match of zeros (`per_sample`).
    """
    samples = per_sample(logits, reference, labels)
    safe, reference = samples.safe, samples.safe_reference
    diff = np.abs(safe - reference)
    norms = np.linalg.norm(safe, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = np.where(norms > 0, (safe * reference).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    cosine = np.where(samples.usable, cosine, -1.0)
    result: dict[str, float | int | None] = {
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "relative_error": relative_error(safe, reference),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "top1_agreement": float(samples.top1.mean()),
        "top5_agreement": float(samples.top5.mean()),
        "nonfinite": int((~samples.finite).sum()),
        "accuracy": None,
        "reference_accuracy": None,
        "accuracy_drop": None,
    }
    if samples.artifact_right is not None and samples.reference_right is not None:
        accuracy, reference_accuracy = float(samples.artifact_right.mean()), float(samples.reference_right.mean())
        result.update(accuracy=accuracy, reference_accuracy=reference_accuracy, accuracy_drop=reference_accuracy - accuracy)
    return result
