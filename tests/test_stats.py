"""Gates that know how much their sample can tell (issue 14 item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from dropcov_deploy.gates import DEFAULT_GATES, evaluate
from dropcov_deploy.metrics import compare
from dropcov_deploy.stats import binomial_interval, decide, intervals, paired_drop_interval


@pytest.mark.parametrize(("k", "n"), [(0, 300), (1, 300), (150, 300), (299, 300), (300, 300), (7, 20), (49_900, 50_000)])
def test_clopper_pearson_matches_the_beta_quantiles(k, n):
    beta = pytest.importorskip("scipy.stats").beta
    low, high = binomial_interval(k, n)
    assert low == pytest.approx(0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1), abs=1e-9)
    assert high == pytest.approx(1.0 if k == n else beta.ppf(0.975, k + 1, n - k), abs=1e-9)


def test_the_paired_drop_interval_comes_from_the_discordant_pairs():
    right = np.ones(300, bool)
    one_worse = right.copy()
    one_worse[0] = False
    low, high = paired_drop_interval(right, one_worse)
    assert high == pytest.approx(1 / 300) and low == pytest.approx((1 / 300) * (2 * 0.025 - 1), abs=1e-9)
    gained = ~one_worse  # the artifact right exactly where the reference is wrong: 300 discordant, drop -1
    assert paired_drop_interval(~right | ~one_worse, gained)[0] < 0
    assert paired_drop_interval(right, right)[1] == pytest.approx(binomial_interval(0, 300)[1])  # no discordance: +- the 0-of-300 bound


def _one_prediction_apart(n=300, classes=10):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    reference = np.eye(classes)[labels] * 5 + rng.normal(0, 0.1, (n, classes))
    artifact = reference.copy()
    artifact[0] = np.roll(artifact[0], 1)  # one prediction changed: right -> wrong
    return artifact, reference, labels


def test_one_prediction_in_300_is_undecidable_for_the_fp16_gate_and_fails_when_confident():
    artifact, reference, labels = _one_prediction_apart()
    metrics, spread = compare(artifact, reference, labels), intervals(artifact, reference, labels)
    assert metrics["accuracy_drop"] == pytest.approx(1 / 300) and metrics["top1_agreement"] == pytest.approx(299 / 300)
    point = evaluate(metrics, DEFAULT_GATES["fp16"], spread, "point")
    assert point["accuracy_drop"]["passed"] is False and point["accuracy_drop"]["decision"] == "undecided"
    assert point["accuracy_drop"]["samples_needed"] > 300
    assert point["top1_agreement"]["passed"] is True and point["top1_agreement"]["decision"] == "undecided"  # 0.9967 >= 0.995, by luck or not
    confident = evaluate(metrics, DEFAULT_GATES["fp16"], spread, "confident")
    assert confident["accuracy_drop"]["passed"] is False and confident["top1_agreement"]["passed"] is False


def test_a_large_clean_sample_decides():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 20_000)
    reference = np.eye(10)[labels] * 5
    metrics, spread = compare(reference, reference, labels), intervals(reference, reference, labels)
    gates = evaluate(metrics, DEFAULT_GATES["int8"], spread, "confident")
    assert all(g["passed"] for g in gates.values()) and {g.get("decision") for g in gates.values()} <= {"pass", None}
    assert decide((0.2, 0.3), {"max": 0.1}) == "fail" and decide((0.0, 0.05), {"max": 0.1}) == "pass"


def test_verify_reports_intervals_and_takes_the_gate_mode(seeded_chain, tmp_path):
    import json

    from cli_helpers import assert_one_line_error, run_cli

    report = tmp_path / "v.json"
    result = run_cli("verify", "-c", seeded_chain["checkpoint"], seeded_chain["int8"], "--random", "40", "--gate-mode", "confident", "--report", report)
    assert result.returncode in (0, 1), result.stderr
    artifact = json.loads(report.read_text())["artifacts"][0]
    low, high = artifact["intervals"]["top1_agreement"]
    assert artifact["intervals"]["samples"] == 40 and low <= artifact["metrics"]["top1_agreement"] <= high
    assert artifact["gates"]["top1_agreement"]["interval"] == [low, high]
    assert_one_line_error(run_cli("verify", "-c", seeded_chain["checkpoint"], seeded_chain["int8"], "--random", "4", "--gate-mode", "sure"), 2, "--gate-mode")


def test_an_all_must_agree_gate_is_decided_by_the_sample_itself():
    """FP32's top-1 agreement >= 1.0 is a rule about every input: 1000 of 1000 passes in confident
    mode (no interval could ever clear 1.0) and 999 of 1000 fails; neither is 'undecided'."""
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(1000, 10))
    metrics, spread = compare(reference, reference), intervals(reference, reference, None)
    same = evaluate(metrics, DEFAULT_GATES["fp32"], spread, "confident")["top1_agreement"]
    assert same["passed"] is True and same["decision"] == "pass" and "samples_needed" not in same
    flipped = reference.copy()
    flipped[0] = np.roll(flipped[0], 1)
    metrics, spread = compare(flipped, reference), intervals(flipped, reference, None)
    one_off = evaluate(metrics, DEFAULT_GATES["fp32"], spread, "point")["top1_agreement"]
    assert one_off["passed"] is False and one_off["decision"] == "fail"


def test_samples_needed_is_honest_at_the_ends():
    """All of them agreeing, or no discordant pair, still leaves an interval (the rule of three):
    the sample size that decides it is in the hundreds or thousands, never a handful."""
    from dropcov_deploy.stats import binomial_interval, drop_samples_needed, samples_needed

    n = samples_needed(1.0, 0.995)
    assert n == 736  # the exact interval that decides the gate: (0.025)^(1/n) >= 0.995
    assert binomial_interval(n, n)[0] >= 0.995 and binomial_interval(n - 1, n - 1)[0] < 0.995
    for value, bound in ((0.99, 0.97), (0.96, 0.97)):  # where Wilson alone would stop short of the exact interval
        k = samples_needed(value, bound)
        low, high = binomial_interval(round(value * k), k)
        assert (low >= bound) if value > bound else (high < bound)
    m = drop_samples_needed(0.0, 0.001, 0.0)
    assert 3500 <= m <= 4000
    assert binomial_interval(0, m)[1] <= 0.001 and binomial_interval(0, m // 2)[1] > 0.001
    assert samples_needed(0.97, 0.97) is None and samples_needed(0.96, 0.97) > 1000
