"""Numerical comparison of two outputs (numpy only: usable on an edge board)."""

from __future__ import annotations

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


def compare(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float | int | None]:
    """Parity of one output against a reference: errors, cosine, agreement, accuracy.

    top5_agreement: share of samples whose reference top-1 class is in the output's top-5.
    A sample with a NaN or Inf in either output never agrees, is never right and has cosine -1;
    the error figures are taken over the finite entries and `nonfinite` counts the rest, so an
    all-NaN output reads as agreement 0, not as a perfect match of zeros.
    """
    logits = np.asarray(logits, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    finite = np.isfinite(logits) & np.isfinite(reference)  # a NaN on either side is counted, never compared away
    artifact_ok, reference_ok = np.isfinite(logits).all(axis=1), np.isfinite(reference).all(axis=1)
    ref_top1 = np.where(np.isfinite(reference), reference, -np.inf).argmax(axis=1)  # the reference's own answer, whatever the artifact did
    safe = np.where(finite, logits, 0.0)
    reference = np.where(finite, reference, 0.0)
    diff = np.abs(safe - reference)
    norms = np.linalg.norm(safe, axis=1) * np.linalg.norm(reference, axis=1)
    usable = artifact_ok & reference_ok  # rows with a non-finite value on either side are failures, whatever the rest says
    cosine = np.where(norms > 0, (safe * reference).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    cosine = np.where(usable, cosine, -1.0)
    k = min(5, logits.shape[1])
    top5 = np.argsort(-safe, axis=1)[:, :k]
    result: dict[str, float | int | None] = {
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "relative_error": relative_error(safe, reference),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "top1_agreement": float(((safe.argmax(axis=1) == ref_top1) & usable).mean()),
        "top5_agreement": float(((top5 == ref_top1[:, None]).any(axis=1) & usable).mean()),
        "nonfinite": int((~finite).sum()),
        "accuracy": None,
        "reference_accuracy": None,
        "accuracy_drop": None,
    }
    if labels is not None:
        accuracy = float(((safe.argmax(axis=1) == labels) & artifact_ok).mean())
        reference_accuracy = float(((ref_top1 == labels) & reference_ok).mean())
        result.update(accuracy=accuracy, reference_accuracy=reference_accuracy, accuracy_drop=reference_accuracy - accuracy)
    return result
