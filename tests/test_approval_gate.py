"""Approval gate: forged, replayed, duplicated, expired and self-approvals are refused, roles are enforced by
different people; real SSH signatures (ssh-keygen) throughout."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pytest

from airlock import sshsig
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
        range_identities={"emails": ["dev@example.com"], "signers": ["dev@example.com"]},
    )


def signed(keys, who, principal=None, run=RUN, digest=DIGEST, decision="approve", now=None):
    stmt = approval.make_statement(run, digest, principal or f"{who}@example.com", decision, "looks good", now=now)
    return approval.sign(keys.key(who), stmt)


POLICY = approval.Policy()  # the default: one ml-lead and one security approver, two people


def test_an_ml_lead_and_a_security_reviewer_meet_the_default_policy(keys, ctx):
    r = approval.check([signed(keys, "alice"), signed(keys, "bob")], ctx, POLICY)
    assert r.verdict is Verdict.PASS, r.reason
    assert r.evidence["approvers"] == ["alice@example.com", "bob@example.com"]
    assert r.evidence["roles"] == {"alice@example.com": ["ml-lead"], "bob@example.com": ["security"]}
    assert all(k.startswith("SHA256:") for k in r.evidence["keys"])


def test_a_missing_role_is_named(keys, ctx):
    r = approval.check([signed(keys, "alice")], ctx, POLICY)
    assert r.verdict is Verdict.FAIL
    assert "still needed 1 more security approver" in r.reason and "alice@example.com (ml-lead)" in r.reason
    assert r.code == "approval.policy_not_met", r.code
    assert r.evidence["missing"] == ["1 more security approver", "1 more distinct approver in all"]


def test_one_person_holding_both_roles_fills_only_one(keys, tmp_path):
    """Separation of duties inside the policy: AllOf's parts are met by different people."""
    both = tmp_path / "approvers"
    pub = " ".join(open(f"{keys.key('carol')}.pub").read().split()[:2])
    both.write_text(
        keys.approvers.read_text() + f'carol@example.com namespaces="airlock-approval" {pub} roles=ml-lead,security\n'
    )
    c = approval.Context(RUN, DIGEST, both)
    alone = approval.Policy(quorum=1)
    r = approval.check([signed(keys, "carol")], c, alone)
    assert r.code == "approval.policy_not_met", r.reason
    assert "still needed 1 more security approver" in r.reason and "carol@example.com (ml-lead/security)" in r.reason
    assert approval.check(
        [signed(keys, "carol"), signed(keys, "alice")], c, alone
    ).passed  # alice ml-lead, carol security


def test_an_empty_or_unknown_requirement_is_refused():
    for bad, says in (
        ({"all_of": []}, "non-empty"),
        ({"any_of": []}, "non-empty"),
        ({}, "unknown requirement keys"),
        ({"role": "x", "count": 0}, "count"),
        ({"role": "x", "quorum": 2}, "unknown requirement keys"),
        ({"all_of": [{"role": "x"}], "role": "y"}, "stands alone"),
        ([], "is a table"),
        (
            {
                "all_of": [
                    {
                        "any_of": [
                            {
                                "all_of": [
                                    {
                                        "any_of": [
                                            {
                                                "all_of": [
                                                    {
                                                        "any_of": [
                                                            {"all_of": [{"any_of": [{"all_of": [{"role": "x"}]}]}]}
                                                        ]
                                                    }
                                                ]
                                            }
                                        ]
                                    }
                                ]
                            }
                        ]
                    }
                ]
            },
            "nest at most",
        ),
    ):
        with pytest.raises(ValueError, match=says):
            approval.requirement(bad)
    any_of = approval.requirement({"any_of": [{"role": "security", "count": 2}, {"all_of": [{"role": "ml-lead"}]}]})
    assert any_of.to_dict() == {
        "any_of": [{"count": 2, "role": "security"}, {"all_of": [{"count": 1, "role": "ml-lead"}]}]
    }


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
    assert approval.check([signed(keys, "alice"), signed(keys, "alice")], ctx, POLICY).verdict is Verdict.FAIL


def test_same_key_under_two_names_counts_once(keys, ctx, tmp_path):
    alice_pub = " ".join(open(f"{keys.key('alice')}.pub").read().split()[:2])
    both = tmp_path / "approvers"
    both.write_text(keys.approvers.read_text() + f'alice2@example.com namespaces="airlock-approval" {alice_pub}\n')
    c = approval.Context(RUN, DIGEST, both)
    r = approval.check([signed(keys, "alice"), signed(keys, "alice", principal="alice2@example.com")], c, POLICY)
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
    assert "authored, committed or signed a commit of the training range" in r.reason
    assert r.code == "approval.self_approval", r.code


def test_an_author_or_committer_anywhere_in_the_range_cannot_approve(keys):
    """Not only HEAD's signer: bob authored an older commit of the range that dev signed and committed."""
    c = approval.Context(
        RUN, DIGEST, keys.approvers, range_identities={"emails": ["dev@example.com", "Bob@Example.com"]}
    )
    r, v = approval.verify_one(signed(keys, "bob"), c, [])
    assert v is None and r.code == "approval.self_approval", r.reason
    assert approval.verify_one(signed(keys, "alice"), c, [])[1] is not None


def test_the_committers_key_under_another_approver_name_is_refused(keys, tmp_path):
    """Identity by key as well as by name: dev's commit key listed as "dave" in the approvers file."""
    pub = " ".join(open(f"{keys.key('dev')}.pub").read().split()[:2])
    dev_fp = sshsig.fingerprint(*pub.split())
    alias = tmp_path / "approvers"
    alias.write_text(
        keys.approvers.read_text() + f'dave@example.com namespaces="airlock-approval" {pub} roles=security\n'
    )
    c = approval.Context(
        RUN, DIGEST, alias, range_identities={"emails": ["dev@example.com"], "key_fingerprints": [dev_fp]}
    )
    r, v = approval.verify_one(signed(keys, "dev", principal="dave@example.com"), c, [])
    assert v is None and r.code == "approval.self_approval", r.reason
    assert f"key {dev_fp} signed a commit of the training range" in r.reason


def test_whoever_started_the_run_cannot_approve_it(keys, tmp_path):
    """A bot-started run keeps the person who triggered it out (GITHUB_TRIGGERING_ACTOR), matched by github=."""
    gh = tmp_path / "approvers"
    gh.write_text(keys.approvers.read_text().replace("roles=security", "roles=security github=bob-gh"))
    started = {"kind": "github", "actor": "github-actions[bot]", "triggering_actor": "bob-gh"}
    c = approval.Context(RUN, DIGEST, gh, initiator=started)
    r, v = approval.verify_one(signed(keys, "bob"), c, [])
    assert v is None and r.code == "approval.initiator", r.reason
    assert "started this run (github bob-gh)" in r.reason
    assert approval.verify_one(signed(keys, "alice"), c, [])[1] is not None


def test_an_expired_or_future_dated_approval_is_refused(keys):
    c = approval.Context(RUN, DIGEST, keys.approvers, ttl_seconds=3600, clock_skew_seconds=60)
    old = signed(keys, "alice", now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    r, v = approval.verify_one(old, c, [])
    assert v is None and r.code == "approval.expired", r.reason
    assert "has expired (approval.ttl_seconds = 3600)" in r.reason
    ahead = signed(keys, "alice", now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    r, v = approval.verify_one(ahead, c, [])
    assert v is None and r.code == "approval.not_yet_valid", r.reason
    # Within the clock skew allowance either way: accepted.
    near = signed(keys, "alice", now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30))
    assert approval.verify_one(near, c, [])[1] is not None


def test_an_older_statement_version_is_refused(keys, ctx):
    stmt = json.loads(approval.make_statement(RUN, DIGEST, "alice@example.com", "approve"))
    stmt["type"] = "airlock-approval/v1"
    del stmt["nonce"]
    r, v = approval.verify_one(approval.sign(keys.key("alice"), canonical(stmt).decode()), ctx, [])
    assert v is None and r.code == "approval.old_version", r.reason


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


def test_a_valid_rejection_blocks_the_policy(keys, ctx):
    r = approval.check([signed(keys, "alice"), signed(keys, "bob", decision="reject")], ctx, POLICY)
    assert r.verdict is Verdict.FAIL
    assert "bob@example.com rejected the model" in r.reason
    assert r.code == "approval.rejected", r.code


def test_an_author_may_reject_their_own_change(keys, ctx):
    """Separation of duties keeps authors from pushing a model through, not from stopping it."""
    r, v = approval.verify_one(signed(keys, "dev", decision="reject"), ctx, [])
    assert v is not None and v.decision == "reject", r.reason
    assert approval.verify_one(signed(keys, "dev"), ctx, [])[1] is None  # ... and still may not approve it


def test_revoked_approver_key_is_refused(keys, tmp_path):
    revoked = tmp_path / "revoked_keys"
    revoked.write_text(open(f"{keys.key('bob')}.pub").read())
    c = approval.Context(RUN, DIGEST, keys.approvers, revoked_keys=revoked)
    assert approval.verify_one(signed(keys, "alice"), c, [])[1] is not None
    r, v = approval.verify_one(signed(keys, "bob"), c, [])
    assert v is None
    assert "bob@example.com is revoked" in r.reason and "revoked keys" in r.reason
    assert r.code == "approval.revoked_key", r.code


def test_gpg_committer_cannot_approve_under_the_same_address(keys):
    """A GPG signer is a user id ("Name <address>"): self-approval is judged on the address."""
    c = approval.Context(
        RUN, DIGEST, keys.approvers, range_identities={"signers": ["Alice Example <Alice@example.com>"]}
    )
    r, v = approval.verify_one(signed(keys, "alice"), c, [])
    assert v is None
    assert "authored, committed or signed a commit of the training range" in r.reason
    assert r.code == "approval.self_approval", r.code


def test_a_recorded_policy_reads_back_as_itself_and_a_broken_one_is_refused():
    p = approval.Policy(require=approval.requirement({"any_of": [{"role": "security", "count": 2}]}), quorum=3)
    assert approval.Policy.from_dict(p.to_dict()) == p
    for broken in ({}, None, {**p.to_dict(), "require": {"all_of": []}}):
        with pytest.raises(ValueError):
            approval.Policy.from_dict(broken)
