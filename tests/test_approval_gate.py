"""Approval gate: forged, replayed, duplicated and self-approvals are refused; real SSH signatures throughout."""

from __future__ import annotations

import json
import subprocess

import pytest

from airlock.ledger import canonical
from gates import Verdict, approval

RUN = "6f1c2a8e-0000-4000-8000-000000000001"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def ctx(keys):
    return approval.Context(
        run_id=RUN,
        model_digest=DIGEST,
        approvers_file=keys.approvers,
        commit_signer="dev@example.com",
        forbid_self_approval=True,
    )


def signed(keys, who, principal=None, run=RUN, digest=DIGEST, decision="approve"):
    stmt = approval.make_statement(run, digest, principal or f"{who}@example.com", decision, "looks good")
    return approval.sign(keys.key(who), stmt)


def test_two_distinct_approvers_meet_the_quorum(keys, ctx):
    r = approval.check_quorum([signed(keys, "alice"), signed(keys, "bob")], ctx, 2)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.evidence["approvers"] == ["alice@example.com", "bob@example.com"]
    assert all(k.startswith("SHA256:") for k in r.evidence["keys"])


def test_one_approval_is_not_a_quorum(keys, ctx):
    r = approval.check_quorum([signed(keys, "alice")], ctx, 2)
    assert r.verdict is Verdict.FAIL
    assert "1 of 2 required approvals" in r.reason
    assert r.code == "approval.quorum_not_met", r.code


def test_non_approver_is_refused(keys, ctx):
    r, v = approval.verify_one(signed(keys, "carol"), ctx, [])
    assert v is None and r.verdict is Verdict.FAIL
    assert "signature does not verify for carol@example.com" in r.reason
    assert r.code == "approval.bad_signature", r.code


def test_non_approver_claiming_an_approvers_name_is_refused(keys, ctx):
    r, v = approval.verify_one(signed(keys, "carol", principal="alice@example.com"), ctx, [])
    assert v is None
    assert "signature does not verify for alice@example.com" in r.reason
    assert r.code == "approval.bad_signature", r.code


def test_same_approver_twice_is_refused(keys, ctx):
    _, first = approval.verify_one(signed(keys, "alice"), ctx, [])
    r, v = approval.verify_one(signed(keys, "alice"), ctx, [first])
    assert v is None
    assert "already approved" in r.reason
    assert r.code == "approval.duplicate", r.code
    assert approval.check_quorum([signed(keys, "alice"), signed(keys, "alice")], ctx, 2).verdict is Verdict.FAIL


def test_same_key_under_two_names_counts_once(keys, ctx, tmp_path):
    alice_pub = " ".join(open(f"{keys.key('alice')}.pub").read().split()[:2])
    both = tmp_path / "approvers"
    both.write_text(keys.approvers.read_text() + f'alice2@example.com namespaces="airlock-approval" {alice_pub}\n')
    c = approval.Context(RUN, DIGEST, both, None, True)
    r = approval.check_quorum([signed(keys, "alice"), signed(keys, "alice", principal="alice2@example.com")], c, 2)
    assert r.verdict is Verdict.FAIL
    assert "already approved this run under another name" in r.reason
    assert r.code == "approval.duplicate", r.code


def test_approval_for_another_model_digest_is_refused(keys, ctx):
    r, v = approval.verify_one(signed(keys, "alice", digest="sha256:" + "cd" * 32), ctx, [])
    assert v is None
    assert "approval is for model sha256:cdcd" in r.reason
    assert r.code == "approval.wrong_model", r.code


def test_approval_for_another_run_is_refused(keys, ctx):
    r, v = approval.verify_one(signed(keys, "alice", run="another-run"), ctx, [])
    assert v is None
    assert "approval is for run another-run" in r.reason
    assert r.code == "approval.wrong_run", r.code


def test_commit_signer_cannot_approve_own_change(keys, ctx):
    r, v = approval.verify_one(signed(keys, "dev"), ctx, [])
    assert v is None
    assert "signed the training commit" in r.reason
    assert r.code == "approval.self_approval", r.code


def test_edited_statement_breaks_the_signature(keys, ctx):
    a = signed(keys, "alice", decision="reject")
    stmt = json.loads(a.statement)
    stmt["decision"] = "approve"
    forged = approval.Approval(canonical(stmt).decode(), a.signature)
    r, v = approval.verify_one(forged, ctx, [])
    assert v is None
    assert "signature does not verify" in r.reason
    assert r.code == "approval.bad_signature", r.code


def test_git_namespace_signature_replayed_as_approval_is_refused(keys, ctx, tmp_path):
    stmt = approval.make_statement(RUN, DIGEST, "alice@example.com", "approve")
    msg = tmp_path / "m"
    msg.write_text(stmt)
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(keys.key("alice")), "-n", "git", str(msg)], check=True)
    r, v = approval.verify_one(approval.Approval(stmt, (tmp_path / "m.sig").read_text()), ctx, [])
    assert v is None
    assert "signature does not verify" in r.reason
    assert r.code == "approval.bad_signature", r.code


def test_non_canonical_statement_is_refused(keys, ctx):
    stmt = json.dumps(json.loads(approval.make_statement(RUN, DIGEST, "alice@example.com", "approve")), indent=1)
    r, v = approval.verify_one(approval.sign(keys.key("alice"), stmt), ctx, [])
    assert v is None
    assert "canonical" in r.reason
    assert r.code == "approval.malformed", r.code


@pytest.mark.parametrize("statement", ["", "not json", "[]", '{"type":"x"}'])
def test_garbage_input_is_refused(keys, ctx, statement):
    r, v = approval.verify_one(approval.Approval(statement, "junk"), ctx, [])
    assert v is None and r.verdict is Verdict.FAIL


def test_a_valid_rejection_blocks_the_quorum(keys, ctx):
    r = approval.check_quorum([signed(keys, "alice"), signed(keys, "bob", decision="reject")], ctx, 2)
    assert r.verdict is Verdict.FAIL
    assert "bob@example.com rejected the model" in r.reason
    assert r.code == "approval.rejected", r.code


def test_revoked_approver_key_is_refused(keys, tmp_path):
    revoked = tmp_path / "revoked_keys"
    revoked.write_text(open(f"{keys.key('bob')}.pub").read())
    c = approval.Context(RUN, DIGEST, keys.approvers, None, True, revoked_keys=revoked)
    assert approval.verify_one(signed(keys, "alice"), c, [])[1] is not None
    r, v = approval.verify_one(signed(keys, "bob"), c, [])
    assert v is None
    assert "bob@example.com is revoked" in r.reason and "revoked keys" in r.reason
    assert r.code == "approval.revoked_key", r.code


def test_gpg_committer_cannot_approve_under_the_same_address(keys):
    """A GPG signer is a user id ("Name <address>"): self-approval is judged on the address."""
    c = approval.Context(RUN, DIGEST, keys.approvers, commit_signer="Alice Example <Alice@example.com>")
    r, v = approval.verify_one(signed(keys, "alice"), c, [])
    assert v is None
    assert "signed the training commit" in r.reason
    assert r.code == "approval.self_approval", r.code
