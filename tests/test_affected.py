"""`airlock models --affected-by`: every model a poisoned batch (or file, or dataset version) touched, from the signed
provenance of each object the registry holds, including a model production no longer serves."""

from __future__ import annotations

import json
import shutil

import pytest

from airlock import aibom
from airlock.errors import UsageError
from airlock.ledger import Ledger
from registry import Registry
from registry.affected import affected_by
from tests.conftest import sign_model

CLEAN, POISONED = "a" * 64, "b" * 64


def _dataset(batches: dict[str, str]) -> dict:
    files = {f"part-{bid}.npy": {"sha256": sha, "size": 10, "batch": bid} for bid, sha in batches.items()}
    return {
        "manifest": "manifests/train.json",
        "root_digest": "sha256:" + "c" * 64,
        "version": len(batches),
        "files": files,
        "batches": {bid: {"version": i + 1, "source": f"s3://labels/{bid}"} for i, bid in enumerate(batches)},
    }


def _model(tmp_path, trained, keys, run: str, batches: dict[str, str]):
    d = tmp_path / run
    model = d / "model"
    shutil.copytree(trained, model)
    provenance = {"run_id": run, "commit": {}, "gates": [], "datasets": {"train": _dataset(batches)}}
    (model / "provenance.json").write_text(json.dumps(provenance))
    aibom.write(model, provenance, {}, {})
    sign_model(model, d / "model.sig", keys.model_key)
    return model, d / "model.sig"


@pytest.fixture
def registry_with_history(tmp_path, trained, keys):
    """run-1 (clean) promoted; run-2 (poisoned batch b0002) promoted over it; run-3 (clean again) promoted over
    that; run-4 (poisoned) staged only. Production now serves run-3."""
    reg = Registry(tmp_path / "registry", Ledger(tmp_path / "ledger.jsonl"), keys.model_pub, keys.approvers)
    runs = {
        "0b7e9a52-0000-4000-8000-000000000001": {"b0001": CLEAN},
        "0b7e9a52-0000-4000-8000-000000000002": {"b0001": CLEAN, "b0002": POISONED},
        "0b7e9a52-0000-4000-8000-000000000003": {"b0001": CLEAN, "b0003": "d" * 64},
        "0b7e9a52-0000-4000-8000-000000000004": {"b0002": POISONED},
    }
    digests = {}
    for i, (run, batches) in enumerate(runs.items()):
        staged = reg.stage(*_model(tmp_path, trained, keys, run, batches), run)
        digests[run] = staged.digest
        if i < 3:
            approvals = _approvals(keys, run, staged.digest)
            reg.promote(staged.digest, approvals)
    return reg, digests


def _approvals(keys, run, digest):
    from gates import approval

    return [
        approval.sign(keys.key(w), approval.make_statement(run, digest, f"{w}@example.com", "approve"))
        for w in ("alice", "bob")
    ]


def test_a_poisoned_batch_finds_exactly_the_models_it_touched_including_one_production_no_longer_serves(
    registry_with_history,
):
    reg, digests = registry_with_history
    runs = list(digests)
    for needle in ("train/b0002", "b0002", f"sha256:{POISONED}"):
        hits = affected_by(reg, needle)
        assert {h.digest for h in hits} == {digests[runs[1]], digests[runs[3]]}, needle
        by = {h.run_id: h for h in hits}
        held = by[runs[1]]
        assert "production (held)" in held.stages and "production (current)" not in held.stages
        assert held.approvers == ["alice@example.com", "bob@example.com"] and len(held.promoted) == 1
        assert any("b0002" in m for m in held.matched)
        assert by[runs[3]].stages == ["staging"] and by[runs[3]].promoted == []
    # The clean batch touched the three that used it, the current production among them.
    clean = affected_by(reg, f"sha256:{CLEAN}")
    assert {h.run_id for h in clean} == set(runs[:3])
    assert any("production (current)" in h.stages for h in clean)
    assert affected_by(reg, "golden/b0002") == []  # another dataset's batch of that id


def test_a_model_that_does_not_verify_is_reported_as_unchecked_never_as_unaffected(registry_with_history):
    reg, digests = registry_with_history
    run3 = list(digests)[2]
    obj = reg.root / "production" / digests[run3].removeprefix("sha256:")
    (obj / "model" / "provenance.json").chmod(0o644)
    (obj / "model" / "provenance.json").write_text("{}")  # its record of the data erased
    hits = affected_by(reg, f"sha256:{CLEAN}")
    bad = [h for h in hits if h.problem]
    assert [h.digest for h in bad] == [digests[run3]] and "unverifiable in production" in bad[0].problem


def test_a_needle_that_is_neither_a_digest_nor_a_batch_is_a_usage_error(registry_with_history):
    reg, _ = registry_with_history
    with pytest.raises(UsageError, match="is not a sha256"):
        affected_by(reg, "poisoned.npy")
