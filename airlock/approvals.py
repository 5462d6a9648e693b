"""Approvals: signed statements by authorised people, judged one by one and then as a set against a policy.

Security rules (each check below names the attack it blocks):

* Everything that arrives as an approval is untrusted (Prefect's open-source API has no authentication). An approval
  counts only after this module has verified it, in the flow when it arrives and again in the registry at promotion
  and at ``airlock verify``, always under trust roots that do not come from the model or the commit under test.
* Who may approve, and in which role, is the approvers file (an OpenSSH ``allowed_signers`` file, a trust root).
  Roles are declared per key, after the key, where OpenSSH ignores them::

      alice@corp namespaces="airlock-approval" ssh-ed25519 AAAA... roles=ml-lead github=alice-gh

  ``github=`` names the person's GitHub login, so that a run they started is recognised as theirs.
* What must be approved is the approval *policy* (``[approval] require`` in airlock.toml): small composable
  requirements in the style of sigstore-python's ``verify.policy`` — :class:`Threshold` (n people holding a role),
  :class:`AllOf` (every part, **by different people**), :class:`AnyOf`. Each reports what is satisfied and what is
  still missing. The default is one ``ml-lead`` and one ``security`` approver: two distinct people.
* Separation of duties: nobody approves a model trained from a range in which they authored, committed or signed a
  commit, nor a run they started; identity is judged by key fingerprint as well as by name.
* Every approval is bound to one run, one model digest and this statement version, and expires.

This module is core: it returns :class:`Decision` objects; ``gates/approval.py`` turns them into gate results.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import secrets
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from airlock import sshsig, untrusted
from airlock.errors import AirlockError, ApprovalRefused
from airlock.ledger import canonical

NAMESPACE = "airlock-approval"
STATEMENT_TYPE = "airlock-approval/v2"
OLD_STATEMENT_TYPES = ("airlock-approval/v1",)
DECISIONS = ("approve", "reject")
ROLES_TOKEN, GITHUB_TOKEN = "roles=", "github="

Refused = ApprovalRefused  # one approval refused, with the reason and a stable code


# -- statements ----------------------------------------------------------------------------------------------------


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
    roles: frozenset[str]
    statement: dict
    approval: Approval


def make_statement(
    run_id: str, model_digest: str, approver: str, decision: str, reason: str = "", now: _dt.datetime | None = None
) -> str:
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
            "issued_at": (now or _dt.datetime.now(_dt.UTC)).isoformat(timespec="seconds"),
            "nonce": secrets.token_hex(16),
        }
    ).decode()


def sign(key: str | Path, statement: str) -> Approval:
    return Approval(statement, sshsig.sign(key, statement.encode(), NAMESPACE))


# -- the approvers file: roles and aliases per key -----------------------------------------------------------------


@dataclass(frozen=True)
class ApproverEntry:
    principals: tuple[str, ...]
    key_fingerprint: str
    roles: frozenset[str]
    github: str | None


def approver_entries(approvers_file: Path) -> list[ApproverEntry]:
    """The lines of the approvers file, with the roles and GitHub login declared after each key.

    OpenSSH decides whether a signature verifies (:mod:`airlock.sshsig`); this only reads what OpenSSH ignores."""
    entries = []
    try:
        text = Path(approvers_file).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise Refused(f"cannot read the approvers file {approvers_file}: {e}", code="approval.trust_root") from None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            toks = shlex.split(line, posix=True)
        except ValueError:
            continue  # OpenSSH will refuse the line too
        key_at = next((i for i, t in enumerate(toks) if t.startswith(("ssh-", "ecdsa-", "sk-"))), None)
        if key_at is None or key_at + 1 >= len(toks):
            continue
        try:
            fp = sshsig.fingerprint(toks[key_at], toks[key_at + 1])
        except ValueError:
            continue
        roles: set[str] = set()
        github = None
        for t in toks[key_at + 2 :]:
            if t.startswith(ROLES_TOKEN):
                roles |= {r for r in t[len(ROLES_TOKEN) :].split(",") if r}
            elif t.startswith(GITHUB_TOKEN):
                github = t[len(GITHUB_TOKEN) :] or None
        entries.append(ApproverEntry(tuple(toks[0].split(",")), fp, frozenset(roles), github))
    return entries


def _entries_for(entries: list[ApproverEntry], principal: str, fingerprint: str) -> list[ApproverEntry]:
    return [e for e in entries if principal in e.principals and e.key_fingerprint == fingerprint]


# -- what an approval is judged against ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What an approval must be bound to, and the trust roots it is judged by (never read from the model).

    ``range_identities``: every author, committer and signer of the training range (``emails``, ``signers``,
    ``key_fingerprints``), from the signed provenance. ``initiator``: who started the run (``kind``, ``actor``,
    ``triggering_actor``). ``at``: the time of the decision (now; for a production model, its promotion)."""

    run_id: str
    model_digest: str
    approvers_file: Path
    revoked_keys: Path | None = None
    range_identities: dict = field(default_factory=dict)
    initiator: dict = field(default_factory=dict)
    separation_of_duties: bool = True
    ttl_seconds: int = 7 * 24 * 3600
    clock_skew_seconds: int = 300
    at: _dt.datetime | None = None


def _identity(name: str) -> str:
    """An SSH principal ("alice@corp") or a git/GPG user id ("Alice <alice@corp>"), reduced to the address."""
    name = str(name).strip()
    if "<" in name and name.endswith(">"):
        name = name[name.rindex("<") + 1 : -1]
    return name.lower()


class Rule(Protocol):
    def verify(self, stmt: dict, approval: Approval, ctx: Context, accepted: list[Verified], fp: str) -> None:
        """Raise Refused with the reason."""


class WellFormed:
    """Ambiguous input: only a canonical statement of the current type and fields is read at all."""

    FIELDS = {"type", "run_id", "model_digest", "approver", "decision", "reason", "issued_at", "nonce"}

    def check(self, stmt: dict, approval: Approval) -> None:
        # An older statement version: made before approvals expired and carried a nonce; not accepted any more.
        if stmt.get("type") in OLD_STATEMENT_TYPES:
            raise Refused(
                f"statement version {stmt['type']} is no longer accepted — sign a new approval with 'airlock approve'",
                code="approval.old_version",
            )
        if set(stmt) != self.FIELDS or stmt.get("type") != STATEMENT_TYPE:
            raise Refused(f"statement is not an {STATEMENT_TYPE} statement", code="approval.malformed")
        if not all(isinstance(stmt[k], str) for k in self.FIELDS):
            raise Refused("statement fields must be strings", code="approval.malformed")
        if stmt["decision"] not in DECISIONS:
            raise Refused(f"decision must be one of {DECISIONS}", code="approval.malformed")
        # Two texts for one statement would let a signature be read two ways: require the canonical bytes.
        if canonical(stmt).decode() != approval.statement:
            raise Refused("statement is not in canonical form (sorted keys, no spaces)", code="approval.malformed")


class BoundToRun:
    """Replay: an approval given for another run cannot be reused for this one."""

    def verify(self, stmt, approval, ctx, accepted, fp):
        if stmt["run_id"] != ctx.run_id:
            raise Refused(f"approval is for run {stmt['run_id']}, not this run {ctx.run_id}", code="approval.wrong_run")


class BoundToModel:
    """Swapped model: an approval binds the exact model digest the approver saw."""

    def verify(self, stmt, approval, ctx, accepted, fp):
        if stmt["model_digest"] != ctx.model_digest:
            raise Refused(
                f"approval is for model {stmt['model_digest'][:23]}…, not {ctx.model_digest[:23]}…",
                code="approval.wrong_model",
            )


class Fresh:
    """A stale approval (signed long ago, for a model the approver may no longer stand by) or one dated in the
    future (to outlive its time-to-live): issued within ``ttl_seconds`` of the decision, with a clock skew allowance."""

    def verify(self, stmt, approval, ctx, accepted, fp):
        try:
            issued = _dt.datetime.fromisoformat(stmt["issued_at"])
        except ValueError:
            raise Refused("issued_at is not an ISO 8601 time", code="approval.malformed") from None
        if issued.tzinfo is None:
            raise Refused("issued_at has no time zone", code="approval.malformed")
        at = ctx.at or _dt.datetime.now(_dt.UTC)
        skew = _dt.timedelta(seconds=ctx.clock_skew_seconds)
        if issued > at + skew:
            raise Refused(
                f"approval by {stmt['approver']} is dated {stmt['issued_at']}, in the future — check the signer's clock",
                code="approval.not_yet_valid",
            )
        if issued + _dt.timedelta(seconds=ctx.ttl_seconds) < at - skew:
            raise Refused(
                f"approval by {stmt['approver']} issued {stmt['issued_at']} has expired "
                f"(approval.ttl_seconds = {ctx.ttl_seconds}) — sign a new one",
                code="approval.expired",
            )


class SeparationOfDuties:
    """Self-approval: nobody who wrote, committed or signed a commit of the training range, and nobody who started
    the run, approves its model — by name, and by key (the committer's key listed under another approver's name)."""

    def verify(self, stmt, approval, ctx, accepted, fp):
        if not ctx.separation_of_duties:
            return
        if stmt.get("decision") == "reject":
            return  # stopping a model is never a conflict of interest: an author may reject their own change
        who = _identity(stmt["approver"])
        ids = ctx.range_identities or {}
        people = {_identity(x) for x in [*ids.get("emails", []), *ids.get("signers", [])] if x}
        if who in people:
            raise Refused(
                f"{stmt['approver']} authored, committed or signed a commit of the training range and cannot approve it",
                code="approval.self_approval",
            )
        if fp in set(ids.get("key_fingerprints", [])):
            raise Refused(
                f"key {fp} signed a commit of the training range; it cannot approve it under the name "
                f"{stmt['approver']}",
                code="approval.self_approval",
            )
        starter = {_identity(x) for x in (ctx.initiator.get("actor"), ctx.initiator.get("triggering_actor")) if x}
        if not starter:
            return
        entries = _entries_for(approver_entries(ctx.approvers_file), stmt["approver"], fp)
        aliases = {who} | {_identity(e.github) for e in entries if e.github}
        if aliases & starter:
            raise Refused(
                f"{stmt['approver']} started this run ({ctx.initiator.get('kind', '?')} "
                f"{', '.join(sorted(aliases & starter))}) and cannot approve it",
                code="approval.initiator",
            )


class Distinct:
    """One person counted twice: each approver, and each key, counts once."""

    def verify(self, stmt, approval, ctx, accepted, fp):
        if any(a.approver == stmt["approver"] for a in accepted):
            raise Refused(
                f"{stmt['approver']} has already approved this run; a second, distinct approver is needed",
                code="approval.duplicate",
            )
        if any(a.key_fingerprint == fp for a in accepted):
            raise Refused(f"key {fp} has already approved this run under another name", code="approval.duplicate")


RULES: tuple[Rule, ...] = (BoundToRun(), BoundToModel(), Fresh(), SeparationOfDuties(), Distinct())


def verify(approval: Approval, ctx: Context, accepted: Sequence[Verified] = ()) -> Verified:
    """One approval: well formed, signed by the approver it names, then every rule. Raises :class:`Refused`."""
    if not isinstance(approval.statement, str) or not isinstance(approval.signature, str):
        raise Refused("statement and signature must be text", code="approval.malformed")
    try:
        stmt = untrusted.loads(approval.statement, "the statement", "make it with 'airlock approve --print-only'")
    except AirlockError as e:
        raise Refused(e.what, code="approval.malformed") from None
    if not isinstance(stmt, dict):
        raise Refused("statement is not a JSON object", code="approval.malformed")
    WellFormed().check(stmt, approval)
    # Forged approval: the signature must verify for the named principal in the approvers file, in the
    # airlock-approval namespace (a git commit signature replayed as an approval fails the namespace).
    try:
        fp = sshsig.verify(
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
    for rule in RULES:
        rule.verify(stmt, approval, ctx, list(accepted), fp)
    roles = frozenset().union(
        *(e.roles for e in _entries_for(approver_entries(ctx.approvers_file), stmt["approver"], fp))
    )
    return Verified(stmt["approver"], stmt["decision"], stmt["reason"], fp, roles, stmt, approval)


# -- the policy: what a set of approvals must satisfy -----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    satisfied: bool
    by: tuple[str, ...]  # the approvers counted
    missing: tuple[str, ...]  # what is still needed, one phrase each


class Requirement(Protocol):
    def witnesses(self, pool: Sequence[Verified]) -> Iterator[frozenset[str]]:
        """Each set of approvers (by name) that satisfies this requirement alone, smallest first."""

    def missing(self, pool: Sequence[Verified]) -> list[str]:
        """What this requirement still needs from ``pool``."""

    def to_dict(self) -> dict: ...


@dataclass(frozen=True)
class Threshold:
    """``count`` distinct approvers holding ``role`` (any approver when ``role`` is None)."""

    count: int = 1
    role: str | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a threshold needs a count of at least 1")

    def _eligible(self, pool: Sequence[Verified]) -> list[str]:
        return [v.approver for v in pool if self.role is None or self.role in v.roles]

    def witnesses(self, pool):
        for combo in itertools.combinations(self._eligible(pool), self.count):
            yield frozenset(combo)

    def missing(self, pool):
        have = len(self._eligible(pool))
        if have >= self.count:
            return []
        what = f"{self.role} approver" if self.role else "approver"
        return [f"{self.count - have} more {what}{'s' if self.count - have > 1 else ''}"]

    def to_dict(self) -> dict:
        return {"count": self.count} | ({"role": self.role} if self.role else {})


@dataclass(frozen=True)
class AllOf:
    """Every part satisfied, **each by different people**: one person holding two roles fills one of them."""

    parts: tuple[Requirement, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("all_of needs at least one requirement")

    def witnesses(self, pool):
        def combine(i: int, used: frozenset[str]) -> Iterator[frozenset[str]]:
            if i == len(self.parts):
                yield used
                return
            rest = [v for v in pool if v.approver not in used]
            for w in self.parts[i].witnesses(rest):
                yield from combine(i + 1, used | w)

        yield from combine(0, frozenset())

    def missing(self, pool):
        # The assignment that satisfies the most parts; the other parts say what they need from who is left.
        best: tuple[int, list[str]] | None = None
        for order in itertools.permutations(range(len(self.parts))):
            left, done, needs = list(pool), 0, []
            for i in order:
                w = next(iter(self.parts[i].witnesses(left)), None)
                if w is None:
                    needs += self.parts[i].missing(left) or [f"a different person for {_describe(self.parts[i])}"]
                else:
                    done += 1
                    left = [v for v in left if v.approver not in w]
            if best is None or done > best[0]:
                best = (done, needs)
            if len(self.parts) > 6:
                break  # permutations explode: the first order is good enough for a message
        return best[1] if best else []

    def to_dict(self) -> dict:
        return {"all_of": [p.to_dict() for p in self.parts]}


@dataclass(frozen=True)
class AnyOf:
    """At least one part satisfied."""

    parts: tuple[Requirement, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("any_of needs at least one requirement")

    def witnesses(self, pool):
        for p in self.parts:
            yield from p.witnesses(pool)

    def missing(self, pool):
        if next(iter(self.witnesses(pool)), None) is not None:
            return []
        return ["one of: " + " | ".join(" and ".join(p.missing(pool)) or _describe(p) for p in self.parts)]

    def to_dict(self) -> dict:
        return {"any_of": [p.to_dict() for p in self.parts]}


def _describe(req: Requirement) -> str:
    d = req.to_dict()
    if "all_of" in d or "any_of" in d:
        return canonical(d).decode()
    return f"{d['count']} {d.get('role') or 'any'} approver(s)"


DEFAULT = AllOf((Threshold(1, "ml-lead"), Threshold(1, "security")))


MAX_DEPTH = 8


def requirement(spec: Any, _depth: int = 0) -> Requirement:
    """A policy's ``[approval] require`` value as a requirement; anything unexpected is a ValueError naming it.

    ``{role = "security"}`` / ``{role = "ml-lead", count = 2}`` / ``{count = 2}`` (any approvers) /
    ``{all_of = [...]}`` / ``{any_of = [...]}``."""
    if _depth > MAX_DEPTH:
        raise ValueError(f"requirements nest at most {MAX_DEPTH} deep")
    if not isinstance(spec, dict):
        raise ValueError(f"a requirement is a table, not {type(spec).__name__}")
    keys = set(spec)
    for combinator, cls in (("all_of", AllOf), ("any_of", AnyOf)):
        if combinator in keys:
            if keys != {combinator}:
                raise ValueError(f"{combinator} stands alone in its table (found {sorted(keys)})")
            parts = spec[combinator]
            if not isinstance(parts, list) or not parts:
                raise ValueError(f"{combinator} needs a non-empty list of requirements")
            return cls(tuple(requirement(p, _depth + 1) for p in parts))
    if not keys <= {"role", "count"} or not keys:
        raise ValueError(f"unknown requirement keys {sorted(keys - {'role', 'count'}) or '(none)'}")
    count, role = spec.get("count", 1), spec.get("role")
    if type(count) is not int or not 1 <= count <= 20:
        raise ValueError("count is an integer from 1 to 20")
    if role is not None and (not isinstance(role, str) or not role or "," in role or role.strip() != role):
        raise ValueError(f"role {role!r} is not a role name")
    return Threshold(count, role)


# -- deciding a set ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    ok: bool
    code: str
    reason: str
    accepted: tuple[Verified, ...]
    missing: tuple[str, ...] = ()

    @property
    def approvers(self) -> list[str]:
        return [v.approver for v in self.accepted]


def outcome(req: Requirement, accepted: Sequence[Verified]) -> Outcome:
    approving = [v for v in accepted if v.decision == "approve"]
    w = next(iter(req.witnesses(approving)), None)
    if w is not None:
        return Outcome(True, tuple(v.approver for v in approving if v.approver in w), ())
    return Outcome(False, (), tuple(req.missing(approving)))


@dataclass(frozen=True)
class Policy:
    """What a set of approvals must meet: ``require`` (roles, by different people) and at least ``quorum``
    distinct approvers in all; each approval issued within ``ttl_seconds`` (``clock_skew_seconds`` allowed)."""

    require: Requirement = DEFAULT
    quorum: int = 2
    ttl_seconds: int = 7 * 24 * 3600
    clock_skew_seconds: int = 300
    separation_of_duties: bool = True

    @classmethod
    def from_policy(cls, ap: Any) -> Policy:
        """From airlock.toml's ``[approval]`` (an :class:`airlock.policy.ApprovalPolicy`)."""
        return cls(
            require=requirement(ap.require) if ap.require is not None else DEFAULT,
            quorum=int(ap.quorum),
            ttl_seconds=int(ap.ttl_seconds),
            clock_skew_seconds=int(ap.clock_skew_seconds),
            separation_of_duties=bool(ap.forbid_self_approval),
        )

    @classmethod
    def from_dict(cls, d: Any) -> Policy:
        """The inverse of :meth:`to_dict` (a policy recorded with a production model). Raises ValueError."""
        try:
            return cls(
                require=requirement(d["require"]),
                quorum=int(d["quorum"]),
                ttl_seconds=int(d["ttl_seconds"]),
                clock_skew_seconds=int(d["clock_skew_seconds"]),
                separation_of_duties=bool(d["separation_of_duties"]),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a recorded approval policy: {e}") from None

    def to_dict(self) -> dict:
        return {
            "require": self.require.to_dict(),
            "quorum": self.quorum,
            "ttl_seconds": self.ttl_seconds,
            "clock_skew_seconds": self.clock_skew_seconds,
            "separation_of_duties": self.separation_of_duties,
        }

    def context(self, **bindings: Any) -> Context:
        return Context(
            ttl_seconds=self.ttl_seconds,
            clock_skew_seconds=self.clock_skew_seconds,
            separation_of_duties=self.separation_of_duties,
            **bindings,
        )

    def outcome(self, accepted: Sequence[Verified]) -> Outcome:
        out = outcome(self.require, accepted)
        approving = [v for v in accepted if v.decision == "approve"]
        # Too few people: one person (or none) cannot promote alone, whatever roles they hold.
        if len(approving) < self.quorum:
            more = self.quorum - len(approving)
            return Outcome(False, (), (*out.missing, f"{more} more distinct approver{'s' if more > 1 else ''} in all"))
        return out


def decide(approvals: Sequence[Approval], ctx: Context, policy: Policy | Requirement) -> Decision:
    """Re-verify a whole set from scratch (the registry's check at promotion and at ``airlock verify``)."""
    if not isinstance(policy, Policy):
        policy = Policy(require=policy, quorum=1)
    accepted: list[Verified] = []
    for a in approvals:
        try:
            accepted.append(verify(a, ctx, accepted))
        except Refused as e:
            return Decision(False, e.code, e.one_line(), tuple(accepted))
    rejects = [v for v in accepted if v.decision != "approve"]
    if rejects:
        return Decision(
            False,
            "approval.rejected",
            f"{rejects[0].approver} rejected the model: {rejects[0].reason or 'no reason given'}",
            tuple(accepted),
        )
    out = policy.outcome(accepted)
    if not out.satisfied:
        got = ", ".join(f"{v.approver} ({'/'.join(sorted(v.roles)) or 'no role'})" for v in accepted) or "none"
        return Decision(
            False,
            "approval.policy_not_met",
            f"approval policy not met: still needed {'; '.join(out.missing)} (approved so far: {got})",
            tuple(accepted),
            out.missing,
        )
    return Decision(
        True,
        "approval.pass",
        f"{len(out.by)} approvals meet the policy: "
        + ", ".join(
            f"{v.approver} ({'/'.join(sorted(v.roles)) or 'no role'})" for v in accepted if v.approver in out.by
        ),
        tuple(accepted),
    )
