"""Crash injection against promotion: the promoting process is killed (os._exit, no clean-up) at each file operation
it makes in turn, on a fresh copy of the registry each time. After every kill: production is the old model or the
new one, whole; what verifies, verifies; `repair` leaves no temporary behind and the ledger records the promotion."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil

import pytest

from airlock import aibom
from airlock.errors import RegistryError
from airlock.ledger import Ledger
from registry import Registry
from tests.conftest import sign_model
from tests.test_registry import RUN, approvals_for

OPS = (("os", "rename"), ("os", "replace"), ("os", "fsync"), ("os", "mkdir"), ("os", "write"), ("shutil", "copy2"))


def _registry(root, keys):
    return Registry(root / "registry", Ledger(root / "ledger.jsonl"), keys.model_pub, keys.approvers)


def _promote_dying_at(n: int, root, keys, digest, approvals) -> None:
    """In a forked child: the n-th file operation of the promotion kills the process on the spot."""
    import shutil as _shutil

    mods = {"os": os, "shutil": _shutil}
    count = [0]

    def dying(fn):
        def op(*a, **kw):
            count[0] += 1
            if count[0] == n:
                os._exit(17)
            return fn(*a, **kw)

        return op

    for mod, name in OPS:
        setattr(mods[mod], name, dying(getattr(mods[mod], name)))
    _registry(root, keys).promote(digest, approvals)
    os._exit(0)


@pytest.fixture
def staged(tmp_path, trained, keys):
    model = tmp_path / "run" / "model"
    shutil.copytree(trained, model)
    provenance = {"run_id": RUN, "commit": {"signer": "dev@example.com"}, "gates": [], "datasets": {}}
    (model / "provenance.json").write_text(json.dumps(provenance))
    aibom.write(model, provenance, {}, {})
    sign_model(model, tmp_path / "run" / "model.sig", keys.model_key)
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    reg = _registry(pristine, keys)
    digest = reg.stage(model, tmp_path / "run" / "model.sig", RUN).digest
    return pristine, digest


def test_a_promotion_killed_at_any_file_operation_leaves_a_whole_registry_and_repair_completes_it(
    staged, keys, tmp_path
):
    pristine, digest = staged
    approvals = approvals_for(keys, digest)
    outcomes = {"old": 0, "switched-unrecorded": 0, "complete": 0}
    n = 0
    while True:
        n += 1
        trial = tmp_path / f"trial-{n}"
        shutil.copytree(pristine, trial)
        child = mp.get_context("fork").Process(target=_promote_dying_at, args=(n, trial, keys, digest, approvals))
        child.start()
        child.join(60)
        assert child.exitcode in (0, 17), f"kill point {n}: exit {child.exitcode}"
        reg = _registry(trial, keys)
        reg.ledger.verify()  # a kill mid-append leaves at most a torn line, which readers skip
        ptr = reg.current_pointer("production")
        assert ptr is None or ptr["digest"] == digest, f"kill point {n}: production points at {ptr}"
        if ptr is not None:
            model, verdict = reg.verify_stage("production")  # switched: whole and verifiable
            assert model.digest == digest and verdict is not None and verdict.ok
        state = "old" if ptr is None else ("switched-unrecorded" if reg.interrupted_promotion() else "complete")
        outcomes[state] += 1
        reg.repair()
        leftovers = [p.name for stage in ("staging", "production") for p in (trial / "registry" / stage).glob(".*tmp")]
        assert leftovers == [], f"kill point {n}: temporaries left after repair: {leftovers}"
        assert reg.interrupted_promotion() is None
        if ptr is None and n % 4 == 1:  # the next attempt succeeds from whatever the crash left (sampled: time)
            reg.promote(digest, approvals)
            assert reg.verify_stage("production")[0].digest == digest
        kinds = [e["kind"] for e in reg.ledger.entries()]
        if ptr is not None or n % 4 == 1:
            assert "registry.promote" in kinds or "registry.promote.recovered" in kinds, (n, kinds)
        if child.exitcode == 0:
            break
        shutil.rmtree(trial)
    assert n > 10, "the promotion made fewer file operations than expected: is the injection still wired?"
    # Each outcome happens: killed before the switch, between the switch and its entry, after both.
    assert all(outcomes.values()), outcomes


def test_two_promotions_of_one_digest_at_once_both_succeed_and_production_is_whole(staged, keys, tmp_path):
    pristine, digest = staged
    approvals = approvals_for(keys, digest)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_promote_dying_at, args=(10**9, pristine, keys, digest, approvals)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    reg = _registry(pristine, keys)
    assert reg.verify_stage("production")[0].digest == digest and reg.interrupted_promotion() is None
    assert [e["kind"] for e in reg.ledger.entries()].count("registry.promote") == 3


@pytest.mark.parametrize("step", ["stage", "promote"])
def test_a_full_disk_while_staging_or_promoting_is_one_line_and_changes_nothing(tmp_path, trained, keys, step):
    """RLIMIT_FSIZE cuts writes as a full file system does (a tmpfs would need mounts): the weights' copy fails."""
    import resource
    import signal

    from tests.test_affected import _approvals, _model

    reg = Registry(tmp_path / "registry", Ledger(tmp_path / "ledger.jsonl"), keys.model_pub, keys.approvers)
    model, sig = _model(tmp_path, trained, keys, RUN, {"b0001": "a" * 64})
    digest = reg.stage(model, sig, RUN).digest if step == "promote" else None
    weights = (model / "model.safetensors").stat().st_size
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (weights // 2, old[1]))
        with pytest.raises(RegistryError, match="cannot write to the registry .*File too large") as e:
            if step == "stage":
                reg.stage(model, sig, RUN)
            else:
                reg.promote(digest, _approvals(keys, RUN, digest))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert f"nothing was {step}d" in e.value.one_line() and "\n" not in e.value.one_line()
    leftovers = [p for p in reg.root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    if step == "stage":
        assert not reg.has_staged(RUN) and reg.current_pointer("staging") is None
        assert reg.stage(model, sig, RUN).digest  # with space again, it goes through
    else:
        assert reg.current_pointer("production") is None and not reg.holds("production", digest)
        reg.promote(digest, _approvals(keys, RUN, digest))
        assert reg.verify_stage("production")[0].digest == digest
