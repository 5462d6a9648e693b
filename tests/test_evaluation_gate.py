"""Evaluation gate with real torch and real ART: a model below threshold is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from airlock.datasets import load_split
from gates import Verdict, evaluation
from training.model import build_model


@pytest.fixture(scope="module")
def loaded(trained):
    meta = json.loads((trained / "training.json").read_text())
    model = build_model(meta["hyperparameters"])
    model.load_state_dict(load_file(str(trained / "model.safetensors")))
    return model, meta


T = evaluation.EvalThresholds(min_test_accuracy=0.9, min_golden_accuracy=0.9, epsilon=0.1, min_robust_accuracy=0.3,
                              pgd_steps=10, robust_samples=200)


def test_trained_model_passes(loaded, digits):
    model, meta = loaded
    r = evaluation.check(model, meta, load_split(digits / "train", "test"), load_split(digits / "golden", "golden"), T)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.metrics["test_accuracy"] > 0.95
    assert 0.3 < r.metrics["robust_accuracy"] < r.metrics["test_accuracy"]   # the attack really bites


def test_untrained_model_is_refused(loaded, digits):
    _, meta = loaded
    torch.manual_seed(0)
    sabotaged = build_model(meta["hyperparameters"])                           # e.g. training silently skipped
    r = evaluation.check(sabotaged, meta, load_split(digits / "train", "test"), load_split(digits / "golden", "golden"), T)
    assert r.verdict is Verdict.FAIL
    assert "test accuracy" in r.reason and "golden accuracy" in r.reason


def test_model_below_robustness_threshold_is_refused(loaded, digits):
    model, meta = loaded
    strict = evaluation.EvalThresholds(0.9, 0.9, epsilon=0.2, min_robust_accuracy=0.5, pgd_steps=10, robust_samples=200)
    r = evaluation.check(model, meta, load_split(digits / "train", "test"), load_split(digits / "golden", "golden"), strict)
    assert r.verdict is Verdict.FAIL
    assert "PGD robust accuracy" in r.reason and "eps=0.2" in r.reason
    assert "test accuracy" not in r.reason        # only the failing check is named
