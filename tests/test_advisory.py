"""Advisory checks: membership inference, extraction effort, spectral-signature ranking of training samples."""

from __future__ import annotations

import functools
import json

import numpy as np

from gates import Verdict
from gates import advisory as A
from tests import _model_fixtures as F


@functools.cache
def overfit_model():
    """Deliberately memorising: 360 training rows, 20% of them with random labels, 150 epochs."""
    x, y = F.digits()["train"]
    x, y = x[:360], y[:360].copy()
    rng = np.random.default_rng(0)
    noisy = rng.choice(len(y), len(y) // 5, replace=False)
    y[noisy] = rng.integers(0, 10, len(noisy))
    model, meta = F.train_arrays(x, y, "memorising-360", epochs=150)
    return model, meta, x, y


def test_membership_inference_sees_the_overfit_model_leak():
    tx, ty = F.digits()["test"]
    x, y = F.digits()["train"]
    model, meta = F.clean_model(1234)
    general = A.membership_inference(model, meta, x, y, tx, ty)
    om, ometa, ox, oy = overfit_model()
    leaky = A.membership_inference(om, ometa, ox, oy, tx, ty)
    for r in (general, leaky):
        assert r.verdict is Verdict.ADVISORY and r.passed  # never blocking
        json.dumps(r.to_dict())
    assert general.metrics["membership_advantage"] < 0.1  # a well-generalising model: little to see
    assert leaky.metrics["membership_advantage"] > 0.2
    assert "leaks training membership" in leaky.reason
    assert "membership-inference advantage" in leaky.reason
    again = A.membership_inference(om, ometa, ox, oy, tx, ty)
    assert again.metrics == leaky.metrics  # seeded


def test_extraction_effort_counts_queries_to_90_percent_agreement():
    x, _ = F.digits()["train"]
    tx, _ = F.digits()["test"]
    model, meta = F.clean_model(1234)
    r = A.extraction_effort(model, meta, x, tx)
    assert r.verdict is Verdict.ADVISORY
    curve = r.evidence["curve"]
    assert r.metrics["extraction_reached"] == 1.0
    q = r.metrics["extraction_queries_to_target"]
    assert q == curve[-1]["queries"] and curve[-1]["agreement"] >= 0.9
    assert all(p["agreement"] < 0.9 for p in curve[:-1])  # the smallest budget that reaches it
    assert 25 < q <= 800
    assert f"{int(q)} queries" in r.reason
    json.dumps(r.to_dict())


def test_spectral_signatures_rank_poisoned_rows_first():
    model, meta, p = F.poisoned_model(1)
    r = A.spectral_signatures(model, meta, p.x, p.y, classes=[p.target])
    assert r.verdict is Verdict.ADVISORY
    top = [s["index"] for s in r.evidence["suspicious"]]
    assert len(top) == 20 and all(p.y[i] == p.target for i in top)
    hits = len(set(top) & set(p.poisoned_indices.tolist()))
    # 11 poisoned rows among ~123 of the class: at random ~1.8 would land in the top 20
    assert hits >= 7, (hits, top)
    # over all classes, indices point at real rows with their labels (for tracing to manifest files)
    everything = A.spectral_signatures(model, meta, p.x, p.y)
    for s in everything.evidence["suspicious"]:
        assert p.y[s["index"]] == s["label"]
    assert set(everything.evidence["per_class"]) == {str(c) for c in np.unique(p.y)}
    json.dumps(everything.to_dict())
