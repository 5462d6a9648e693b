"""Evaluation gate with real torch: a model below the accuracy thresholds is refused."""

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


T = evaluation.EvalThresholds(min_test_accuracy=0.9, min_golden_accuracy=0.9)


def test_trained_model_passes(loaded, digits):
    model, meta = loaded
    r = evaluation.check(model, meta, load_split(digits / "train", "test"), load_split(digits / "golden", "golden"), T)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.metrics["test_accuracy"] > 0.95 and r.metrics["golden_accuracy"] > 0.95


def test_untrained_model_is_refused(loaded, digits):
    _, meta = loaded
    torch.manual_seed(0)
    sabotaged = build_model(meta["hyperparameters"])  # e.g. training silently skipped
    r = evaluation.check(
        sabotaged, meta, load_split(digits / "train", "test"), load_split(digits / "golden", "golden"), T
    )
    assert r.verdict is Verdict.FAIL
    assert "test accuracy" in r.reason and "golden accuracy" in r.reason
    assert r.code == "evaluation.below_threshold", r.code


def test_golden_set_alone_can_refuse(loaded, digits):
    """A test split swapped along with poisoned training data can look fine; the separate golden set must pass too."""
    model, meta = loaded
    x_go, y_go = load_split(digits / "golden", "golden")
    x_te, y_te = load_split(digits / "train", "test")
    shifted = (y_go + 1) % 10  # a golden set the model disagrees with
    r = evaluation.check(model, meta, (x_te, y_te), (x_go, shifted), T)
    assert r.verdict is Verdict.FAIL
    assert "golden accuracy" in r.reason and "test accuracy" not in r.reason
    assert r.code == "evaluation.below_threshold", r.code
