"""How much a sample can tell: exact intervals for the figures verify gates on.

On 300 images one changed prediction moves accuracy by 0.33 points, so a point estimate
against a 0.1-point gate cannot tell a regression from chance. Each agreement or accuracy
figure (k of n) gets an exact Clopper-Pearson interval; an accuracy *drop* is paired (the
same images through both models), so its interval comes from the discordant pairs alone:
given d images where exactly one of the two is right, the number where only the reference
is right is Binomial(d, p) and drop = d/n * (2p - 1) (the exact conditional interval that
McNemar's test rests on). numpy and math only: verify runs on the device.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

CONFIDENCE = 0.95
Z95 = 1.959963984540054


@functools.lru_cache(maxsize=16)
def _log_choose(n: int) -> np.ndarray:
    """log C(n, k) for k = 0..n, by a running sum (one numpy pass; bisection reuses it)."""
    i = np.arange(1, n + 1, dtype=np.float64)
    return np.concatenate([[0.0], np.cumsum(np.log(n - i + 1) - np.log(i))])


def _log_binom_pmf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    if p <= 0.0:
        return np.where(k == 0, 0.0, -np.inf)
    if p >= 1.0:
        return np.where(k == n, 0.0, -np.inf)
    return _log_choose(n)[k] + k * math.log(p) + (n - k) * math.log1p(-p)


def _tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    ks = np.arange(k, n + 1)
    return float(np.exp(_log_binom_pmf(ks, n, p)).sum())


def _tail_at_most(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k >= n:
        return 1.0
    ks = np.arange(0, k + 1)
    return float(np.exp(_log_binom_pmf(ks, n, p)).sum())


def _solve(f, target: float) -> float:
    """The p in [0, 1] where the monotone f(p) crosses `target` (bisection, 1e-12)."""
    low, high = 0.0, 1.0
    increasing = f(1.0) > f(0.0)
    for _ in range(60):
        middle = (low + high) / 2
        if (f(middle) < target) == increasing:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def binomial_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval for a proportion k/n."""
    if n <= 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    low = 0.0 if k == 0 else _solve(lambda p: _tail_at_least(k, n, p), alpha / 2)
    high = 1.0 if k == n else _solve(lambda p: _tail_at_most(k, n, p), alpha / 2)
    return low, high


def paired_drop_interval(reference_right: np.ndarray, artifact_right: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Interval for accuracy(reference) - accuracy(artifact) on the same n images, from the
    discordant pairs (exact, conditional on their number). With none, the drop is within
    +-(the upper bound of a 0-of-n discordance rate)."""
    reference_right, artifact_right = np.asarray(reference_right, bool), np.asarray(artifact_right, bool)
    n = len(reference_right)
    only_reference = int((reference_right & ~artifact_right).sum())
    only_artifact = int((~reference_right & artifact_right).sum())
    discordant = only_reference + only_artifact
    if discordant == 0:
        bound = binomial_interval(0, n, confidence)[1]
        return -bound, bound
    low, high = binomial_interval(only_reference, discordant, confidence)
    scale = discordant / n
    return scale * (2 * low - 1), scale * (2 * high - 1)


def _wilson(value: float, n: int) -> tuple[float, float]:
    """Wilson score interval for a proportion observed as `value` on n samples: close to the exact
    interval, and it stays honest at 0 and 1 (where a normal interval shrinks to a point)."""
    z2 = Z95**2
    centre = (value + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(value * (1 - value) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return centre - half, centre + half


def _smallest(clears, limit: int = 10**9) -> int | None:
    """The smallest n >= 1 for which the monotone `clears(n)` holds (doubling, then bisection)."""
    high = 1
    while not clears(high):
        high *= 2
        if high > limit:
            return None
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if clears(middle) else (middle, high)
    return high


EXACT_SEARCH_LIMIT = 2_000_000  # past this many samples the Wilson estimate is returned as it is


def samples_needed(value: float, bound: float) -> int | None:
    """How many samples, at the same observed proportion `value`, put the exact (Clopper-Pearson)
    95% interval that decides the gate wholly on one side of `bound`; None when the value sits on
    the bound. Wilson's interval finds the neighbourhood, the exact one the number. All of them
    agreeing against a 99.5% gate: 736."""
    if value == bound:
        return None

    def wilson_clears(n: int) -> bool:
        low, high = _wilson(value, n)
        return low >= bound if value > bound else high < bound

    def exact_clears(n: int) -> bool:
        low, high = binomial_interval(int(round(value * n)), n)
        return low >= bound if value > bound else high < bound

    estimate = _smallest(wilson_clears)
    if estimate is None or estimate > EXACT_SEARCH_LIMIT:
        return estimate
    low, high = max(1, estimate // 2), estimate
    while not exact_clears(high):
        low, high = high, high * 2
        if high > 2 * EXACT_SEARCH_LIMIT:
            return estimate
    while high - low > 1:  # the rounding of value*n makes this nearly, not exactly, monotone: a close bracket
        middle = (low + high) // 2
        low, high = (low, middle) if exact_clears(middle) else (middle, high)
    return high


def decide(interval: tuple[float, float], bound: dict[str, float]) -> str:
    """'pass' when the whole interval meets the bound, 'fail' when none of it does, else 'undecided'."""
    low, high = interval
    verdicts = []
    if "min" in bound:
        verdicts.append("pass" if low >= bound["min"] else "fail" if high < bound["min"] else "undecided")
    if "max" in bound:
        verdicts.append("pass" if high <= bound["max"] else "fail" if low > bound["max"] else "undecided")
    if "fail" in verdicts:
        return "fail"
    return "undecided" if "undecided" in verdicts else "pass"


def intervals(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """95% intervals for top-1/top-5 agreement, accuracy, the reference's accuracy and the paired
    accuracy drop, counting each sample as `metrics.compare` does (`metrics.per_sample`)."""
    from dropcov_deploy.metrics import per_sample

    samples = per_sample(logits, reference, labels)
    n = len(samples.safe)
    found: dict[str, Any] = {
        "confidence": confidence,
        "samples": n,
        "top1_agreement": list(binomial_interval(int(samples.top1.sum()), n, confidence)),
        "top5_agreement": list(binomial_interval(int(samples.top5.sum()), n, confidence)),
    }
    if samples.artifact_right is not None and samples.reference_right is not None:
        artifact_right, reference_right = samples.artifact_right, samples.reference_right
        found["accuracy"] = list(binomial_interval(int(artifact_right.sum()), n, confidence))
        found["reference_accuracy"] = list(binomial_interval(int(reference_right.sum()), n, confidence))
        found["accuracy_drop"] = list(paired_drop_interval(reference_right, artifact_right, confidence))
        found["discordant_rate"] = float((reference_right != artifact_right).mean())
    return found


def drop_samples_needed(drop: float, bound: float, discordant_rate: float) -> int | None:
    """About how many paired samples, at the same drop and discordance rate, would make the drop's
    95% interval clear `bound`: its half-width is about z*sqrt((q - drop^2)/n) plus z^2/n, the
    second term what keeps a sample with no discordant pair honest (0 of n still allows ~3.8/n)."""
    gap = abs(bound - drop)
    if gap == 0:
        return None
    spread = max(discordant_rate - drop * drop, 0.0)
    return _smallest(lambda n: Z95 * math.sqrt(spread / n) + Z95**2 / n <= gap)
