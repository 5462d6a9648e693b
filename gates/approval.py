"""Approval gate: distinct, authorised people in the required roles approve the exact model of the exact run.

An approval is a canonical JSON *statement* and an SSH signature over it (``ssh-keygen -Y sign`` in the
``airlock-approval`` namespace)::

    {"approver": "alice@example.com", "decision": "approve", "issued_at": "...", "model_digest": "sha256:...",
     "nonce": "...", "reason": "...", "run_id": "...", "type": "airlock-approval/v2"}

The rules and the approval policy live in core (:mod:`airlock.approvals`), where the registry uses them too; this
module is the gate's face: each verdict as a :class:`GateResult` with a stable ``approval.*`` code.

Attacks it blocks: a forged or unsigned approval, a non-approver or a revoked key, an approval replayed from another
run or for another model, a stale or future-dated approval, an older statement version, one person counted twice
(by name or by key), self-approval by an author, committer or signer of the training range or by whoever started the
run, and too few people in the required roles.
"""

from __future__ import annotations

from collections.abc import Sequence

from airlock.approvals import (
    DECISIONS,
    DEFAULT,
    NAMESPACE,
    STATEMENT_TYPE,
    AllOf,
    AnyOf,
    Approval,
    Context,
    Decision,
    Policy,
    Refused,
    Requirement,
    Threshold,
    Verified,
    decide,
    make_statement,
    requirement,
    sign,
    verify,
)
from gates._result import GateResult

GATE = "approval"

__all__ = [
    "DECISIONS",
    "DEFAULT",
    "GATE",
    "NAMESPACE",
    "STATEMENT_TYPE",
    "AllOf",
    "AnyOf",
    "Approval",
    "Context",
    "Policy",
    "Refused",
    "Requirement",
    "Threshold",
    "Verified",
    "check",
    "make_statement",
    "requirement",
    "result",
    "sign",
    "verify",
    "verify_one",
]


def verify_one(approval: Approval, ctx: Context, accepted: Sequence[Verified]) -> tuple[GateResult, Verified | None]:
    """One submission, as the flow judges it when it arrives."""
    try:
        v = verify(approval, ctx, accepted)
    except Refused as e:
        evidence = {"statement": approval.statement[:2000] if isinstance(approval.statement, str) else None}
        return GateResult.fail(GATE, e.one_line(), evidence=evidence, code=e.code), None
    verb = "approved" if v.decision == "approve" else "REJECTED"
    roles = "/".join(sorted(v.roles)) or "no role"
    return GateResult.ok(
        GATE,
        f"{v.approver} ({roles}) {verb} with key {v.key_fingerprint}",
        evidence={
            "approver": v.approver,
            "roles": sorted(v.roles),
            "decision": v.decision,
            "reason": v.reason,
            "key_fingerprint": v.key_fingerprint,
            "statement": v.statement,
        },
    ), v


def result(d: Decision, req: Policy | Requirement) -> GateResult:
    """A :class:`Decision` on a set of approvals as the gate's verdict."""
    evidence = {
        "approvers": d.approvers,
        "keys": [v.key_fingerprint for v in d.accepted],
        "roles": {v.approver: sorted(v.roles) for v in d.accepted},
        "policy": req.to_dict(),
        "missing": list(d.missing),
    }
    if not d.ok:
        return GateResult.fail(GATE, d.reason, evidence=evidence, code=d.code)
    return GateResult.ok(GATE, d.reason, metrics={"approvals": len(d.accepted)}, evidence=evidence)


def check(approvals: Sequence[Approval], ctx: Context, req: Policy | Requirement = DEFAULT) -> GateResult:
    """Re-verify a whole set from scratch against ``req`` (a whole :class:`Policy`, or a requirement alone)."""
    return result(decide(approvals, ctx, req), req)
