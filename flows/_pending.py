"""``airlock pending``: the runs waiting for approval, what each still needs, how long it has waited and has left.

Read from the ledger (every request and every verdict on an approval is an entry there, hash-chained) and the
approval policy in force; the model of each run from the registry, verified. Nothing here is trusted for a
decision: the flow and the registry re-verify every approval themselves.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from airlock.approvals import Approval, Policy, Verified
from airlock.ledger import Ledger


@dataclass
class Pending:
    run_id: str
    digest: str
    requested_at: _dt.datetime
    expires_at: _dt.datetime
    approved: list[Verified] = field(default_factory=list)
    refused: int = 0

    def to_dict(self, policy: Policy, now: _dt.datetime) -> dict:
        return {
            "run_id": self.run_id,
            "model_digest": self.digest,
            "waiting_seconds": int((now - self.requested_at).total_seconds()),
            "expires_in_seconds": max(0, int((self.expires_at - now).total_seconds())),
            "approved_by": [{"approver": v.approver, "roles": sorted(v.roles)} for v in self.approved],
            "still_needed": list(policy.outcome(self.approved).missing),
            "refused_submissions": self.refused,
        }


def _approved(evidence: dict) -> Verified | None:
    """The ledger's record of an approval the flow accepted (for display: the flow and registry re-verify)."""
    try:
        return Verified(
            str(evidence["approver"]),
            str(evidence["decision"]),
            str(evidence.get("reason", "")),
            str(evidence["key_fingerprint"]),
            frozenset(str(r) for r in evidence.get("roles") or ()),
            {},
            Approval("", ""),  # the statement itself stays in the ledger entry
        )
    except (KeyError, TypeError):
        return None


def pending(ledger: Ledger, timeout_seconds: int, now: _dt.datetime | None = None) -> list[Pending]:
    now = now or _dt.datetime.now(_dt.UTC)
    runs: dict[str, Pending] = {}
    for e in ledger.entries():
        rid = e.get("run_id")
        if not rid:
            continue
        kind, data = e["kind"], e.get("data") or {}
        if kind == "approval.requested":
            at = _dt.datetime.fromisoformat(e["time"])
            runs[rid] = Pending(rid, str(data.get("digest", "")), at, at + _dt.timedelta(seconds=timeout_seconds))
        elif kind == "approval.received" and rid in runs:
            v = _approved(data.get("evidence") or {}) if data.get("verdict") == "pass" else None
            if v is not None:
                runs[rid].approved.append(v)
            else:
                runs[rid].refused += 1
        elif kind in ("run.failed", "run.promoted", "approval.timeout"):
            runs.pop(rid, None)
    return [p for p in runs.values() if p.expires_at > now]


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def table(rows: list[dict]) -> str:
    """One line per run, columns aligned."""
    head = ("RUN", "MODEL", "WAITING", "EXPIRES IN", "APPROVED BY", "STILL NEEDED")
    body = [
        (
            r["run_id"],
            r["model_digest"][:19] + "…",
            _age(r["waiting_seconds"]),
            _age(r["expires_in_seconds"]),
            ", ".join(f"{a['approver']} ({'/'.join(a['roles']) or 'no role'})" for a in r["approved_by"]) or "-",
            "; ".join(r["still_needed"]) or "nothing: promoting",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])
