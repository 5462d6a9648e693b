"""Golden-set regression gate: McNemar of the candidate against production on the golden set."""

from __future__ import annotations

import functools

import pytest

from gates import Verdict
from gates import golden_regression as G
from tests import _model_fixtures as F


@functools.cache
def degraded_model():
    """A deliberately degraded retrain: the same trainer and data, sabotaged to 2 epochs instead of 30."""
    x, y = F.digits()["train"]
    return F.train_arrays(x, y, "degraded-2-epochs", seed=1234, epochs=2)


@pytest.fixture(scope="module")
def golden():
    return F.digits()["golden"]


def test_degraded_model_is_blocked_with_both_accuracies_and_p_value(golden):
    production, meta = F.clean_model(1234)
    degraded, _ = degraded_model()
    r = G.check(degraded, meta, *golden, reference=production)
    assert r.verdict is Verdict.FAIL
    assert r.metrics["reference_accuracy"] > 0.95
    assert r.metrics["candidate_accuracy"] < r.metrics["reference_accuracy"] - 0.03
    assert r.metrics["p_value"] < 1e-3
    # one line that names both accuracies and the p-value
    assert f"{r.metrics['reference_accuracy']:.3f}" in r.reason
    assert f"{r.metrics['candidate_accuracy']:.3f}" in r.reason
    assert "p=" in r.reason and "\n" not in r.reason
    assert r.code == "golden_regression.regression", r.code


def test_equally_good_retrain_passes(golden):
    production, meta = F.clean_model(1234)
    retrain, _ = F.clean_model(1)
    r = G.check(retrain, meta, *golden, reference=production)
    assert r.verdict is Verdict.PASS, r.reason
    assert abs(r.metrics["drop"]) < 0.03
    assert r.metrics["p_value"] >= 0.05


def test_backdoored_retrain_keeps_golden_accuracy(golden):
    """Why the backdoor gate exists: a 1%-poisoned retrain passes the golden regression gate."""
    production, meta = F.clean_model(1234)
    poisoned, _, _ = F.poisoned_model(1)
    assert G.check(poisoned, meta, *golden, reference=production).verdict is Verdict.PASS


def test_no_production_passes_and_says_so(golden):
    model, meta = F.clean_model(1234)
    r = G.check(model, meta, *golden, reference=None)
    assert r.verdict is Verdict.PASS
    assert "no production model" in r.reason
    assert r.metrics["candidate_accuracy"] > 0.95 and "p_value" not in r.metrics


def test_exact_method_is_more_conservative(golden):
    production, meta = F.clean_model(1234)
    degraded, _ = degraded_model()
    mid = G.check(degraded, meta, *golden, G.GoldenRegressionParams(method="midp"), reference=production)
    exact = G.check(degraded, meta, *golden, G.GoldenRegressionParams(method="exact"), reference=production)
    assert mid.metrics["p_value"] < exact.metrics["p_value"]
