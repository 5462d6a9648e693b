"""Signing and the registry: a model changed after signing, a forged promotion, a tampered production model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from airlock import aibom, modelsign
from airlock.errors import RegistryError
from airlock.ledger import Ledger
from gates import approval
from registry import Registry, store
from tests.conftest import assert_one_line_refusal, run_cli, sign_model

RUN = "0b7e9a52-0000-4000-8000-000000000002"


@pytest.fixture
def signed_model(tmp_path, trained, keys):
    model = tmp_path / "run" / "model"
    shutil.copytree(trained, model)
    provenance = {
        "run_id": RUN,
        "commit": {"signer": "dev@example.com"},
        "gates": [{"gate": "artifact", "verdict": "pass", "code": "artifact.pass", "reason": "ok", "metrics": {}}],
        "datasets": {},
    }
    (model / "provenance.json").write_text(json.dumps(provenance))
    aibom.write(model, provenance, {}, {})
    sig = tmp_path / "run" / "model.sig"
    sign_model(model, sig, keys.model_key)
    return model, sig


@pytest.fixture
def reg(tmp_path, keys):
    return Registry(tmp_path / "registry", Ledger(tmp_path / "ledger.jsonl"), keys.model_pub, keys.approvers)


def approvals_for(keys, digest, who=("alice", "bob")):
    return [
        approval.sign(keys.key(w), approval.make_statement(RUN, digest, f"{w}@example.com", "approve")) for w in who
    ]


def test_stage_and_promote(reg, signed_model, keys):
    staged = reg.stage(*signed_model, RUN)
    assert reg.staged_for_run(RUN).digest == staged.digest
    pointer = reg.promote(staged.digest, approvals_for(keys, staged.digest))
    assert pointer["digest"] == staged.digest
    model, verdict = reg.verify_stage("production")
    assert model.digest == staged.digest and verdict.ok
    kinds = [e["kind"] for e in reg.ledger.entries()]
    assert kinds == ["registry.stage", "registry.promote.begin", "registry.promote"]


def test_staging_record_pointed_at_another_runs_model_is_refused(reg, signed_model):
    """A resumed run (suspend mode) takes its model by its run id: a record naming another run's model is refused."""
    reg.stage(*signed_model, RUN)
    record = reg.root / "staging" / "runs" / f"{RUN}.json"
    other = "0b7e9a52-0000-4000-8000-00000000ffff"
    (record.parent / f"{other}.json").write_text(record.read_text())
    assert reg.has_staged(other) and not reg.has_staged("0b7e9a52-0000-4000-8000-000000000009")
    with pytest.raises(RegistryError, match=f"built by run '{RUN}'"):
        reg.staged_for_run(other)


def test_model_changed_after_signing_is_not_staged(reg, signed_model):
    model, sig = signed_model
    (model / "training.json").write_text(json.dumps({"nb_classes": 10, "tampered": True}))
    with pytest.raises(RegistryError, match="does not verify"):
        reg.stage(model, sig, RUN)


def test_file_added_after_signing_is_not_staged(reg, signed_model):
    model, sig = signed_model
    (model / "backdoor.py").write_text("print('hi')\n")
    with pytest.raises(RegistryError, match="unexpected entries: model/backdoor.py"):
        reg.stage(model, sig, RUN)


def test_file_with_an_allowed_name_added_after_signing_is_not_staged(reg, signed_model):
    """The layout admits gate evidence; one added after signing still fails the signature."""
    model, sig = signed_model
    (model / "evidence").mkdir()
    (model / "evidence" / "backdoor.json").write_text('{"verdict": "pass"}\n')
    with pytest.raises(RegistryError, match="does not verify"):
        reg.stage(model, sig, RUN)


@pytest.mark.parametrize(
    "name",
    [
        "model/.git/config",
        "model/nested/training.json",
        "model/evidence/sub/x.json",
        "model/evidence/Run.JSON",
        "extra.txt",
    ],
)
def test_unexpected_entries_anywhere_in_an_object_are_refused(reg, signed_model, name):
    staged = reg.stage(*signed_model, RUN)
    path = staged.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    with pytest.raises(RegistryError, match="holds unexpected entries"):
        reg.staged_for_run(RUN)


def test_signature_by_another_key_is_not_staged(reg, signed_model, tmp_path):
    model, sig = signed_model
    modelsign.generate_keypair(tmp_path / "other.key", tmp_path / "other.pub")
    sign_model(model, sig, tmp_path / "other.key")
    with pytest.raises(RegistryError, match="does not verify"):
        reg.stage(model, sig, RUN)


def test_file_model_signing_ignores_is_still_caught(reg, signed_model, keys):
    """model_signing skips .gitattributes/.github; Airlock's layout (and its digest over every file) does not."""
    model, sig = signed_model
    staged = reg.stage(model, sig, RUN)
    (staged.model_dir / ".gitattributes").write_text("* filter=evil\n")
    with pytest.raises(RegistryError, match="unexpected entries: model/.gitattributes"):
        reg.staged_for_run(RUN)
    # The digest over every file still catches what the layout admits and model_signing might not see.
    from airlock.hashing import hash_tree

    (staged.model_dir / ".gitattributes").unlink()
    assert hash_tree(staged.model_dir).root_digest == staged.digest
    (staged.model_dir / "evidence").mkdir()
    (staged.model_dir / "evidence" / "late.json").write_text("{}")
    assert hash_tree(staged.model_dir).root_digest != staged.digest


def test_promotion_without_the_security_role_is_refused(reg, signed_model, keys):
    """The registry's own policy (one ml-lead and one security approver): alice alone is the ml-lead only."""
    staged = reg.stage(*signed_model, RUN)
    with pytest.raises(RegistryError, match="still needed 1 more security approver"):
        reg.promote(staged.digest, approvals_for(keys, staged.digest, who=("alice",)))
    assert reg.current_pointer("production") is None


def test_promotion_refuses_a_key_revoked_after_it_approved(reg, signed_model, keys, tmp_path):
    """The flow promotes through a registry built from the trust roots in force at promotion: an approval whose
    key was revoked since it was given no longer counts, and the refusal names the cause."""
    staged = reg.stage(*signed_model, RUN)
    approvals = approvals_for(keys, staged.digest)
    revoked = tmp_path / "revoked_keys"
    revoked.write_text(open(f"{keys.key('alice')}.pub").read())
    in_force = Registry(reg.root, reg.ledger, keys.model_pub, keys.approvers, revoked)
    with pytest.raises(RegistryError, match="alice@example.com is revoked"):
        in_force.promote(staged.digest, approvals)
    assert in_force.current_pointer("production") is None
    assert reg.check_approvals(staged.digest, approvals).ok  # under the roots the run started with


def test_promotion_with_forged_approval_is_refused(reg, signed_model, keys):
    staged = reg.stage(*signed_model, RUN)
    forged = approval.sign(keys.key("carol"), approval.make_statement(RUN, staged.digest, "bob@example.com", "approve"))
    with pytest.raises(RegistryError, match="signature does not verify for bob"):
        reg.promote(staged.digest, approvals_for(keys, staged.digest, who=("alice",)) + [forged])


def test_crash_before_pointer_switch_keeps_old_production(reg, signed_model, keys, trained, tmp_path, monkeypatch):
    first = reg.stage(*signed_model, RUN)
    reg.promote(first.digest, approvals_for(keys, first.digest))
    # A second model, promotion interrupted right before the atomic pointer switch.
    model2 = tmp_path / "run2" / "model"
    shutil.copytree(signed_model[0], model2)
    (model2 / "training.json").write_text((trained / "training.json").read_text().replace("example", "second"))
    sign_model(model2, tmp_path / "run2" / "model.sig", keys.model_key)
    second = reg.stage(model2, tmp_path / "run2" / "model.sig", RUN)

    real = store._write_atomic

    def crash(path, data):
        if path.name == "CURRENT":
            raise OSError("power loss")
        return real(path, data)

    monkeypatch.setattr(store, "_write_atomic", crash)
    with pytest.raises(RegistryError, match="cannot write to the registry .*: power loss"):
        reg.promote(second.digest, approvals_for(keys, second.digest))  # one line, not a traceback
    monkeypatch.setattr(store, "_write_atomic", real)
    model, _ = reg.verify_stage("production")
    assert model.digest == first.digest  # old model, whole and verified


def test_crash_while_copying_leaves_no_half_object(reg, signed_model, keys, monkeypatch):
    staged = reg.stage(*signed_model, RUN)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(store, "_fsync_tree", crash)
    with pytest.raises(RegistryError, match="cannot write to the registry .*: disk full") as e:
        reg.promote(staged.digest, approvals_for(keys, staged.digest))
    assert "nothing was promoted" in e.value.one_line()
    prod = reg.root / "production"
    assert not (prod / staged.digest[7:]).exists()
    assert list(prod.iterdir()) == []  # the partial copy was swept at once
    assert reg.current_pointer("production") is None


def _policy(tmp_path: Path, keys, registry: Path, ledger: Path) -> Path:
    p = tmp_path / "airlock.toml"
    p.write_text(f"""
[repo]
path = "{tmp_path}"
[trust]
allowed_signers = "{keys.allowed_signers}"
approvers = "{keys.approvers}"
model_signing_public_key = "{keys.model_pub}"
[data.train]
dir = "x"
manifest = "x.json"
[data.golden]
dir = "y"
manifest = "y.json"
[registry]
path = "{registry}"
[ledger]
path = "{ledger}"
""")
    return p


def test_cli_verify_fails_when_production_model_changes(reg, signed_model, keys, tmp_path):
    staged = reg.stage(*signed_model, RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    cfg = _policy(tmp_path, keys, reg.root, reg.ledger.path)
    ok = run_cli("verify", "--config", str(cfg))
    assert ok.returncode == 0, ok.stderr
    assert "approved by alice@example.com, bob@example.com" in ok.stdout and "AIBOM consistent" in ok.stdout
    weights = reg.root / "production" / staged.digest[7:] / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    bad = run_cli("verify", "--config", str(cfg))
    assert_one_line_refusal(bad, 1, "does not verify")


def test_cli_verify_fails_when_approvals_are_swapped(reg, signed_model, keys, tmp_path):
    staged = reg.stage(*signed_model, RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    path = reg.root / "production" / staged.digest[7:] / "approvals.json"
    record = json.loads(path.read_text())
    record["approvals"] = [record["approvals"][0]] * 2
    path.write_text(json.dumps(record))
    bad = run_cli("verify", "--config", str(_policy(tmp_path, keys, reg.root, reg.ledger.path)))
    assert_one_line_refusal(bad, 1, "already approved")


def test_cli_verify_fails_when_ledger_is_truncated(reg, signed_model, keys, tmp_path):
    staged = reg.stage(*signed_model, RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    lines = reg.ledger.path.read_text().splitlines(keepends=True)
    reg.ledger.path.write_text("".join(lines[:1]))
    bad = run_cli("verify", "--config", str(_policy(tmp_path, keys, reg.root, reg.ledger.path)))
    assert_one_line_refusal(bad, 1, "truncated")


def test_cli_verify_with_nothing_promoted(tmp_path, keys):
    res = run_cli("verify", "--config", str(_policy(tmp_path, keys, tmp_path / "reg", tmp_path / "l.jsonl")))
    assert_one_line_refusal(res, 1, "no production model")


def test_a_signed_rejection_marks_the_model_and_it_is_never_promoted(reg, signed_model, keys):
    staged = reg.stage(*signed_model, RUN)
    no = approval.sign(
        keys.key("bob"), approval.make_statement(RUN, staged.digest, "bob@example.com", "reject", "golden drift")
    )
    reg.reject(staged.digest, no)
    assert reg.rejection(staged.digest)["by"] == "bob@example.com"
    with pytest.raises(RegistryError, match="was rejected by bob@example.com: golden drift"):
        reg.promote(staged.digest, approvals_for(keys, staged.digest))
    assert reg.current_pointer("production") is None
    assert [e["kind"] for e in reg.ledger.entries()][-1] == "registry.reject"


def test_a_forged_rejection_marks_nothing(reg, signed_model, keys):
    staged = reg.stage(*signed_model, RUN)
    forged = approval.sign(
        keys.key("carol"), approval.make_statement(RUN, staged.digest, "bob@example.com", "reject", "spite")
    )
    with pytest.raises(approval.Refused, match="does not verify for bob@example.com"):
        reg.reject(staged.digest, forged)
    assert reg.rejection(staged.digest) is None


def test_production_is_rechecked_against_the_policy_recorded_with_it(reg, signed_model, keys, tmp_path):
    """The policy in force and the one the model was approved under must both hold: a recorded policy edited to
    need a role nobody approved in is caught (the registry was altered), and so is a policy in force that now needs
    more than was given."""
    staged = reg.stage(*signed_model, RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    path = reg.root / "production" / staged.digest[7:] / "approvals.json"
    record = json.loads(path.read_text())
    assert record["policy"]["require"] == {
        "all_of": [{"role": "ml-lead", "count": 1}, {"role": "security", "count": 1}]
    }
    stricter = approval.Policy(
        require=approval.AllOf((approval.Threshold(1, "ml-lead"), approval.Threshold(2, "security")))
    )
    in_force = Registry(reg.root, reg.ledger, keys.model_pub, keys.approvers, approval_policy=stricter)
    with pytest.raises(RegistryError, match="do not meet the policy in force: .*1 more security approver"):
        in_force.verify_stage("production")
    record["policy"]["require"] = {"role": "auditor"}
    path.write_text(json.dumps(record))
    with pytest.raises(RegistryError, match="policy recorded with the model: .*1 more auditor approver"):
        reg.verify_stage("production")


def test_a_statement_from_the_cli_signed_with_ssh_keygen_is_a_valid_approval(reg, signed_model, keys, tmp_path):
    """The Prefect UI path: `airlock approve RUN --as NAME --statement-only` prints the statement alone (no newline),
    `ssh-keygen -Y sign -n airlock-approval` signs the file, and the pair verifies as that approver's approval."""
    import subprocess

    staged = reg.stage(*signed_model, RUN)
    cfg = _policy(tmp_path, keys, reg.root, reg.ledger.path)
    res = run_cli("approve", RUN, "--as", "alice@example.com", "--statement-only", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert "signature verified" in res.stderr  # what is approved went to the terminal, not into the statement
    stmt = tmp_path / "statement.json"
    stmt.write_text(res.stdout)
    subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(keys.key("alice")), "-n", "airlock-approval", str(stmt)],
        check=True,
    )
    pasted = approval.Approval(stmt.read_text(), (tmp_path / "statement.json.sig").read_text())
    v = approval.verify(pasted, reg.approval_context(staged))
    assert v.approver == "alice@example.com" and v.roles == {"ml-lead"} and v.decision == "approve"
    # Without --as there is no name to put in the statement; without --key nothing can sign.
    assert_one_line_refusal(run_cli("approve", RUN, "--statement-only", "--config", str(cfg)), 2, "needs --as")
    assert_one_line_refusal(run_cli("approve", RUN, "--config", str(cfg)), 2, "--key is required")


def test_production_demands_its_stage_signer_on_top_of_the_top_level_ones(tmp_path, trained, keys):
    """Per-stage signer policy: the CI key may sign what is staged, only the release key what is promoted. A stage
    table narrows (AllOf), so the release key must also be among the top-level signers."""
    release_key, release_pub = tmp_path / "release.key", tmp_path / "release.pub"
    modelsign.generate_keypair(release_key, release_pub)
    q = "'" * 3
    signers = tmp_path / "signers.toml"
    signers.write_text(
        f"[[signer]]\nkey = {q}{keys.model_pub.read_text()}{q}\n[[signer]]\nkey = {q}{release_pub.read_text()}{q}\n"
        f"[[production.signer]]\nkey = {q}{release_pub.read_text()}{q}\n"
    )
    reg = Registry(tmp_path / "registry", Ledger(tmp_path / "ledger.jsonl"), signers, keys.approvers)
    by_ci, by_release = tmp_path / "ci", tmp_path / "rel"
    for d, key in ((by_ci, keys.model_key), (by_release, release_key)):
        model = d / "model"
        shutil.copytree(trained, model)
        provenance = {"run_id": RUN, "commit": {}, "gates": [], "datasets": {}, "note": d.name}  # two models
        (model / "provenance.json").write_text(json.dumps(provenance))
        aibom.write(model, provenance, {}, {})
        sign_model(model, d / "model.sig", key)
    ci_model = reg.stage(by_ci / "model", by_ci / "model.sig", RUN)  # staging: the top-level signers suffice
    # The flow asks right after staging, before any approver is asked for a model that could never be promoted.
    with pytest.raises(RegistryError, match=r"is staged, but its signer may not sign production models"):
        reg.check_signer_for(ci_model, "production")
    with pytest.raises(RegistryError, match=r"production stage: not signed by key SHA256:") as e:
        reg.promote(ci_model.digest, approvals_for(keys, ci_model.digest))
    assert "\n" not in e.value.one_line()
    assert reg.current_pointer("production") is None
    release_model = reg.stage(by_release / "model", by_release / "model.sig", RUN)
    reg.check_signer_for(release_model, "production")
    reg.promote(release_model.digest, approvals_for(keys, release_model.digest))
    model, verdict = reg.verify_stage("production")
    assert model.digest == release_model.digest and verdict.ok
    # A stage table cannot widen: the release key alone under [production], without it at the top, signs nothing.
    signers.write_text(
        f"[[signer]]\nkey = {q}{keys.model_pub.read_text()}{q}\n[[production.signer]]\nkey = {q}{release_pub.read_text()}{q}\n"
    )
    with pytest.raises(RegistryError, match=r"signer policy: not signed by key SHA256:"):
        reg.verify_stage("production")
    signers.write_text(f"[[signer]]\nkey = {q}{release_pub.read_text()}{q}\n[production]\nkey = 1\n")
    with pytest.raises(RegistryError, match=r"\[production\] .* must hold only \[\[production.signer\]\]"):
        reg.verify_stage("production")


def test_every_access_is_logged_with_who_and_from_where_refusals_included(reg, signed_model, keys, tmp_path):
    import socket

    staged = reg.stage(*signed_model, RUN)
    with pytest.raises(RegistryError):
        reg.promote(staged.digest, approvals_for(keys, staged.digest, who=("alice",)))  # the security role missing
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    reg.verify_stage("production")
    log = [e["data"] for e in reg.access.entries()]
    assert [(d["op"], d.get("action")) for d in log] == [
        ("stage", None),
        ("refused", "promote"),
        ("promote", None),
        ("read", None),
    ]
    assert all(d["digest"] == staged.digest and d["by"]["host"] == socket.gethostname() for d in log)
    assert "policy" in log[1]["reason"] or "role" in log[1]["reason"]
    assert log[3]["stage"] == "production"
    # Reads through current() and find() (the flow's production reference, bom, rebuild) are logged too.
    reg.current("production")
    reg.find(staged.digest)
    assert [(e["data"]["op"], e["data"].get("stage")) for e in reg.access.entries()][-2:] == [
        ("read", "production"),
        ("read", "production"),
    ]
    # The log is hash-chained like the ledger: an edited line is detected.
    path = reg.root / "access.jsonl"
    path.write_text(path.read_text().replace('"op":"refused"', '"op":"read"'))
    with pytest.raises(Exception, match="was edited"):
        reg.access.entries()


def test_a_read_only_registry_logs_its_reads_to_stderr(reg, signed_model, keys, capfd):
    staged = reg.stage(*signed_model, RUN)
    reg.promote(staged.digest, approvals_for(keys, staged.digest))
    capfd.readouterr()
    (reg.root / "access.jsonl").chmod(0o444)
    import os

    if os.getuid() == 0:  # root writes through file modes: make the write fail as a read-only mount would
        (reg.root / "access.jsonl").unlink()
        (reg.root / "access.jsonl").mkdir()
    reg.verify_stage("production")
    err = capfd.readouterr().err
    record = json.loads(err.strip().splitlines()[-1])["airlock_registry_access"]
    assert record["op"] == "read" and record["digest"] == staged.digest and record["by"]["pid"] == os.getpid()
