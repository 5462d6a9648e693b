"""Dual-approval gate: N distinct, authorised people approve the exact model of the exact run.

An approval is a canonical JSON *statement* and an SSH signature over it (``ssh-keygen -Y sign`` in the
``airlock-approval`` namespace)::

    {"approver": "alice@example.com", "decision": "approve", "issued_at": "...",
     "model_digest": "sha256:...", "reason": "...", "run_id": "...", "type": "airlock-approval/v1"}

Prefect's open-source API has no authentication, so anything that arrives as run input is untrusted: every
approval is verified here, by the flow when it arrives and again by the registry at promotion.

Policies are small composable objects in the style of sigstore-python's ``verify.policy``: each rule raises
:class:`Refused` with a reason, :class:`AllOf` runs them in order.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from airlock import sshsig, untrusted
from airlock.errors import AirlockError, ApprovalRefused
from airlock.ledger import canonical
from gates._result import GateResult

GATE = "approval"
NAMESPACE = "airlock-approval"
STATEMENT_TYPE = "airlock-approval/v1"
DECISIONS = ("approve", "reject")


Refused = ApprovalRefused  # one approval refused, with the reason


@dataclass(frozen=True)
class Approval:
    """What an approver submits: the statement text exactly as signed, and the armored signature."""

    statement: str
    signature: str

    def to_dict(self) -> dict:
        return {"statement": self.statement, "signature": self.signature}


@dataclass(frozen=True)
class Verified:
    approver: str
    decision: str
    reason: str
    key_fingerprint: str
    statement: dict
    approval: Approval


@dataclass(frozen=True)
class Context:
    """What an approval must be bound to, and the trust roots it is judged by (never read from the model)."""

    run_id: str
    model_digest: str
    approvers_file: Path
    commit_signer: str | None = None
    forbid_self_approval: bool = True
    revoked_keys: Path | None = None


def make_statement(run_id: str, model_digest: str, approver: str, decision: str, reason: str = "") -> str:
    if decision not in DECISIONS:
        raise Refused(f"decision must be one of {DECISIONS}, got {decision!r}", code="approval.malformed")
    return canonical(
        {
            "type": STATEMENT_TYPE,
            "run_id": run_id,
            "model_digest": model_digest,
            "approver": approver,
            "decision": decision,
            "reason": reason,
            "issued_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
    ).decode()


def sign(key: str | Path, statement: str) -> Approval:
    return Approval(statement, sshsig.sign(key, statement.encode(), NAMESPACE))


# -- rules ---------------------------------------------------------------------------------------------------------


class Rule(Protocol):
    def verify(self, stmt: dict, approval: Approval, ctx: Context, accepted: list[Verified]) -> str | None:
        """Raise Refused, or return the key fingerprint when the rule establishes it."""


class WellFormed:
    """Ambiguous input: only a canonical statement of the known type and fields is read at all."""

    FIELDS = {"type", "run_id", "model_digest", "approver", "decision", "reason", "issued_at"}

    def verify(self, stmt, approval, ctx, accepted):
        if set(stmt) != self.FIELDS or stmt.get("type") != STATEMENT_TYPE:
            raise Refused(f"statement is not an {STATEMENT_TYPE} statement", code="approval.malformed")
        if not all(isinstance(stmt[k], str) for k in self.FIELDS):
            raise Refused("statement fields must be strings", code="approval.malformed")
        if stmt["decision"] not in DECISIONS:
            raise Refused(f"decision must be one of {DECISIONS}", code="approval.malformed")
        # Two texts for one statement would let a signature be read two ways: require the canonical bytes.
        if canonical(stmt).decode() != approval.statement:
            raise Refused("statement is not in canonical form (sorted keys, no spaces)", code="approval.malformed")


class SignedByApprover:
    """Forged approval: the signature must verify for the named principal in the approvers file, in the
    airlock-approval namespace (a git commit signature replayed as an approval fails the namespace)."""

    def verify(self, stmt, approval, ctx, accepted):
        try:
            return sshsig.verify(
                ctx.approvers_file,
                stmt["approver"],
                NAMESPACE,
                approval.statement.encode(),
                approval.signature,
                revoked_keys=ctx.revoked_keys,
            )
        except AirlockError as e:
            # A revoked key and a forged signature are different incidents: say which.
            code = "approval.revoked_key" if " is revoked " in e.what else "approval.bad_signature"
            raise Refused(f"approval by {stmt['approver']!r} refused: {e.what}", code=code) from None


class BoundToRun:
    """Replay: an approval given for another run cannot be reused for this one."""

    def verify(self, stmt, approval, ctx, accepted):
        if stmt["run_id"] != ctx.run_id:
            raise Refused(f"approval is for run {stmt['run_id']}, not this run {ctx.run_id}", code="approval.wrong_run")


class BoundToModel:
    """Swapped model: an approval binds the exact model digest the approver saw."""

    def verify(self, stmt, approval, ctx, accepted):
        if stmt["model_digest"] != ctx.model_digest:
            raise Refused(
                f"approval is for model {stmt['model_digest'][:23]}…, not {ctx.model_digest[:23]}…",
                code="approval.wrong_model",
            )


class NotSelfApproval:
    """Self-approval: whoever signed the training commit cannot also approve its model."""

    def verify(self, stmt, approval, ctx, accepted):
        if (
            ctx.forbid_self_approval
            and ctx.commit_signer
            and _identity(stmt["approver"]) == _identity(ctx.commit_signer)
        ):
            raise Refused(
                f"{stmt['approver']} signed the training commit and cannot approve its own change",
                code="approval.self_approval",
            )


def _identity(name: str) -> str:
    """An SSH principal ("alice@corp") or a GPG user id ("Alice <alice@corp>"), reduced to the address."""
    name = name.strip()
    if "<" in name and name.endswith(">"):
        name = name[name.rindex("<") + 1 : -1]
    return name.lower()


class Distinct:
    """One person counted twice: each approver, and each key, counts once."""

    def verify(self, stmt, approval, ctx, accepted):
        if any(a.approver == stmt["approver"] for a in accepted):
            raise Refused(
                f"{stmt['approver']} has already approved this run; a second, distinct approver is needed",
                code="approval.duplicate",
            )


@dataclass(frozen=True)
class AllOf:
    rules: list = field(
        default_factory=lambda: [
            WellFormed(),
            BoundToRun(),
            BoundToModel(),
            NotSelfApproval(),
            Distinct(),
            SignedByApprover(),
        ]
    )

    def verify(self, approval: Approval, ctx: Context, accepted: list[Verified]) -> Verified:
        if not isinstance(approval.statement, str) or not isinstance(approval.signature, str):
            raise Refused("statement and signature must be text", code="approval.malformed")
        try:
            stmt = untrusted.loads(approval.statement, "the statement", "make it with 'airlock approve --print-only'")
        except AirlockError as e:
            raise Refused(e.what, code="approval.malformed") from None
        if not isinstance(stmt, dict):
            raise Refused("statement is not a JSON object", code="approval.malformed")
        fingerprint = None
        for rule in self.rules:
            fingerprint = rule.verify(stmt, approval, ctx, accepted) or fingerprint
        assert fingerprint, "SignedByApprover must be part of every policy"
        # The same key listed under two names is still one person.
        if any(a.key_fingerprint == fingerprint for a in accepted):
            raise Refused(
                f"key {fingerprint} has already approved this run under another name", code="approval.duplicate"
            )
        return Verified(stmt["approver"], stmt["decision"], stmt["reason"], fingerprint, stmt, approval)


DEFAULT_POLICY = AllOf()


def verify_one(approval: Approval, ctx: Context, accepted: list[Verified]) -> tuple[GateResult, Verified | None]:
    try:
        v = DEFAULT_POLICY.verify(approval, ctx, accepted)
    except Refused as e:
        evidence = {"statement": approval.statement[:2000] if isinstance(approval.statement, str) else None}
        return GateResult.fail(GATE, e.one_line(), evidence=evidence, code=e.code), None
    verb = "approved" if v.decision == "approve" else "REJECTED"
    return GateResult.ok(
        GATE,
        f"{v.approver} {verb} with key {v.key_fingerprint}",
        evidence={
            "approver": v.approver,
            "decision": v.decision,
            "reason": v.reason,
            "key_fingerprint": v.key_fingerprint,
            "statement": v.statement,
        },
    ), v


def check_quorum(approvals: list[Approval], ctx: Context, quorum: int) -> GateResult:
    """Re-verify a whole set from scratch (the registry's check at promotion and at `airlock verify`)."""
    accepted: list[Verified] = []
    for a in approvals:
        result, v = verify_one(a, ctx, accepted)
        if v is None:
            return GateResult.fail(
                GATE, result.reason, evidence={"approvers": [x.approver for x in accepted]}, code=result.code
            )
        accepted.append(v)
    rejects = [v for v in accepted if v.decision != "approve"]
    if rejects:
        return GateResult.fail(
            GATE,
            f"{rejects[0].approver} rejected the model: {rejects[0].reason or 'no reason given'}",
            evidence={"approvers": [v.approver for v in accepted]},
            code="approval.rejected",
        )
    # Too few approvers: one person (or none) cannot promote alone.
    if len(accepted) < quorum:
        return GateResult.fail(
            GATE,
            f"{len(accepted)} of {quorum} required approvals — get approvals from "
            f"{quorum - len(accepted)} more distinct approver(s)",
            evidence={"approvers": [v.approver for v in accepted]},
            code="approval.quorum_not_met",
        )
    return GateResult.ok(
        GATE,
        f"{len(accepted)} of {quorum} approvals: " + ", ".join(v.approver for v in accepted),
        metrics={"approvals": float(len(accepted)), "quorum": float(quorum)},
        evidence={"approvers": [v.approver for v in accepted], "keys": [v.key_fingerprint for v in accepted]},
    )
