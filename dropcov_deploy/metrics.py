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
