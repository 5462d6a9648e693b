"""Backdoor gate: Neural Cleanse trigger sizes, candidate vs production or vs the golden stand-in.

Real models, trained with the project's trainer on the demo digits; the poisoned one on data from tests/poison.py
(4-pixel corner trigger on 1% of the training rows, relabelled to class 0). Neural Cleanse runs with fewer steps and
images than the calibrated defaults (FAST) to keep the suite quick; the effect is still far from the threshold.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
import torch

from gates import Verdict
from gates import backdoor as B
from tests import _model_fixtures as F
from tests.poison import TRIGGERS, apply_trigger, attack_success_rate, poison

FAST = B.BackdoorParams(images=100, steps=100, batch_size=32)


@functools.cache
def nc(kind: str):
    gx, gy = F.digits()["golden"]
    if kind == "production":
        model, meta = F.clean_model(1234)
    elif kind == "clean":
        model, meta = F.clean_model(1)
    elif kind == "poisoned":
        model, meta, _ = F.poisoned_model(1)
    elif kind == "stand-in":
        ref = B.combine([B.reverse_engineer(m, mm, gx, gy, FAST) for m, mm in F.golden_stand_in_models()])
        ref["kind"] = "golden-stand-in"
        return ref
    else:
        raise KeyError(kind)
    return B.reverse_engineer(model, meta, gx, gy, FAST)


def test_poison_builder():
    x, y = F.digits()["train"]
    p = poison(x, y, fraction=0.01, target=3, shape="corner", seed=5)
    assert len(p.poisoned_indices) == round(0.01 * len(x)) == 11
    assert np.all(y[p.poisoned_indices] != 3) and np.all(p.y[p.poisoned_indices] == 3)
    for r, c in TRIGGERS["corner"]:
        assert np.all(p.x[p.poisoned_indices, 0, r, c] == 1.0)
    untouched = np.setdiff1d(np.arange(len(x)), p.poisoned_indices)
    assert np.array_equal(p.x[untouched], x[untouched]) and np.array_equal(p.y[untouched], y[untouched])
    assert len(poison(x, y, fraction=0.005, seed=5).poisoned_indices) == 6
    assert not np.array_equal(apply_trigger(x[:5], "corner"), apply_trigger(x[:5], "square"))
    with pytest.raises(ValueError):
        apply_trigger(x[:1], "star")


def test_poisoned_model_has_a_working_backdoor_and_clean_accuracy():
    """The attack the gate exists for: clean accuracy unchanged, trigger works."""
    tx, ty = F.digits()["test"]
    clean, _ = F.clean_model(1)
    poisoned, _, p = F.poisoned_model(1)
    with torch.no_grad():
        acc = [float((m(torch.from_numpy(tx)).argmax(1).numpy() == ty).mean()) for m in (clean, poisoned)]
    assert min(acc) > 0.95 and abs(acc[0] - acc[1]) < 0.02
    assert attack_success_rate(poisoned, tx, ty, p.target) > 0.4
    assert attack_success_rate(clean, tx, ty, p.target) < 0.05


def test_poisoned_retrain_is_blocked_against_production():
    r = B.check(nc("poisoned"), nc("production"), B.BackdoorParams())
    assert r.verdict is Verdict.FAIL
    assert r.metrics["min_trigger_ratio_class"] == F.TARGET
    assert r.metrics["min_trigger_ratio"] < B.BackdoorParams().ratio
    assert f"class {F.TARGET}" in r.reason and "\n" not in r.reason
    assert r.code == "backdoor.trigger_shrank", r.code
    assert len(r.evidence["candidate"]["norms"]) == 10  # per-class norms, for the registry's cache
    json.dumps(r.to_dict())


def test_clean_retrain_passes_against_production():
    r = B.check(nc("clean"), nc("production"), B.BackdoorParams())
    assert r.verdict is Verdict.PASS, r.reason
    assert r.metrics["min_trigger_ratio"] >= B.BackdoorParams().ratio


def test_no_production_golden_stand_in_blocks_poisoned_and_passes_clean():
    """With nothing in production, the reference is the mean of 5 golden-set models (stand_in_reference)."""
    ref = nc("stand-in")
    assert len(ref["members"]) == B.BackdoorParams().stand_in_models == 5
    bad = B.check(nc("poisoned"), ref, B.BackdoorParams())
    good = B.check(nc("clean"), ref, B.BackdoorParams())
    assert bad.verdict is Verdict.FAIL and bad.metrics["min_trigger_ratio_class"] == F.TARGET
    assert "golden-stand-in" in bad.reason
    assert bad.metrics["threshold"] == B.BackdoorParams().ratio_no_production
    assert good.verdict is Verdict.PASS, good.reason


def test_stand_in_reference_end_to_end_matches_in_process_training(tmp_path):
    """stand_in_reference trains with `python -m training.train` on the golden set (in the sandbox, two at once) and
    gives exactly the norms of the same models trained in-process."""
    gx, gy = F.digits()["golden"]
    params = dataclasses.replace(FAST, stand_in_models=2, steps=30)
    ref = B.stand_in_reference(gx, gy, tmp_path, params, parallel=2)
    dirs = sorted(p.name for p in (tmp_path / "trained").iterdir())
    assert dirs == ["seed-1234", "seed-1235"]
    expected = B.combine([B.reverse_engineer(m, mm, gx, gy, params) for m, mm in F.golden_stand_in_models(2)])
    assert ref["norms"] == expected["norms"] and ref["kind"] == "golden-stand-in"
    model, _ = B.load_trained(tmp_path / "trained" / "seed-1234")
    inproc, _ = F.golden_stand_in_models(1)[0]
    for (k, a), (_, b) in zip(model.state_dict().items(), inproc.state_dict().items()):
        assert torch.equal(a, b), k


def test_missing_or_incomparable_reference_fails_closed():
    assert B.check(nc("clean"), None).verdict is Verdict.FAIL
    stale = dict(nc("production"))
    stale["params"] = dict(stale["params"], steps=999)
    r = B.check(nc("clean"), stale)
    assert r.verdict is Verdict.FAIL and "params" in r.reason
    assert r.code == "backdoor.incomparable_reference", r.code
    other_images = dict(nc("production"), images_sha256="0" * 64)
    assert B.check(nc("clean"), other_images).verdict is Verdict.FAIL


def test_reverse_engineer_is_deterministic():
    gx, gy = F.digits()["golden"]
    model, meta = F.clean_model(1234)
    p = dataclasses.replace(FAST, steps=20)
    a = B.reverse_engineer(model, meta, gx, gy, p)
    b = B.reverse_engineer(model, meta, gx, gy, p)
    assert a["norms"] == b["norms"] and a["images_sha256"] == b["images_sha256"]
    assert B.dumps(a) == B.dumps(dict(b, seconds=a["seconds"]))
