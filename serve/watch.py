"""Watching production (``airlock watch``; the scheduled ``airlock-watch`` deployment in templates/prefect/prefect.yaml).

Each check, in order, and the attack or failure it catches:

1. **The model still verifies** - signature, every file's digest, approvals under the policy in force now (a revoked
   key, a removed approver), the ledger anchor, gate evidence and AIBOM (registry/loading.py): a model swapped or
   altered at rest, or one that no longer meets the policy.
2. **The ledger is whole** - every published checkpoint still holds (airlock/checkpoints.py): a cut or rewritten log.
3. **It is still as good on the golden set** - production re-evaluated, answering from its sandbox, on the golden set
   *as it is now* (checked against its current manifest: new known-clean data arrives through ingestion), against
   the golden accuracy signed with the model at promotion: a drop beyond ``watch.max_golden_drop`` (decay, or a
   golden set that exposes a backdoor or a labelling error the training data carried).

Any failure is an alert in Falco's format (serve/alerts.py) and exit 1. Plain Python: the Prefect flow in
flows/watch.py only runs it and publishes the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from airlock.errors import AirlockError
from serve.alerts import Alerts


@dataclass
class WatchReport:
    digest: str | None = None
    checks: list[dict] = field(default_factory=list)  # {"check", "ok", "detail"}
    golden_accuracy: float | None = None
    promoted_accuracy: float | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)

    def add(self, check: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": check, "ok": ok, "detail": detail})

    def markdown(self) -> str:
        rows = "\n".join(f"| {c['check']} | {'ok' if c['ok'] else '**FAILED**'} | {c['detail']} |" for c in self.checks)
        return (
            f"# Production watch: {self.digest or 'no model'}\n\n| check | result | detail |\n|---|---|---|\n{rows}\n"
        )


def check(pol, alerts: Alerts | None = None) -> WatchReport:
    from airlock import checkpoints, manifest
    from airlock.datasets import load_split
    from airlock.hashing import hash_tree
    from airlock.ledger import Ledger
    from serve.model import ServedModel

    alerts = alerts or Alerts(pol.serve.alerts if pol.serve else None)
    report = WatchReport()
    model = None
    try:
        model = ServedModel(pol, golden=False)  # verified loading, then its sandbox
        report.digest = model.digest
        report.add("verify", True, f"{model.digest[:19]}… verifies; approved by {', '.join(model.verified.approvers)}")
    except AirlockError as e:
        report.add("verify", False, e.one_line())
    try:
        if pol.ledger.checkpoints is not None:
            n = checkpoints.check(Ledger.from_policy(pol), pol.ledger.checkpoints)
            report.add("ledger", True, f"all {n} published checkpoint(s) hold")
        else:
            report.add("ledger", True, "no checkpoints configured (ledger.checkpoints); the anchor was checked")
    except AirlockError as e:
        report.add("ledger", False, e.one_line())
    if model is not None:
        try:
            golden = pol.data.golden
            current = manifest.load(golden.manifest)
            have = hash_tree(golden.dir).root_digest
            if have != current["root_digest"]:
                raise AirlockError(
                    f"the golden set in {golden.dir} does not match its manifest ({have[:19]}…)",
                    "restore it, or ingest the change (airlock data ingest)",
                )
            x, y = load_split(golden.dir, "golden")
            acc = float((model.probabilities(x).argmax(1) == y).mean())
            promoted = _signed_golden_accuracy(model.verified.provenance)
            report.golden_accuracy, report.promoted_accuracy = acc, promoted
            bound = pol.watch.max_golden_drop
            if promoted is None:
                report.add("golden", False, f"accuracy {acc:.3f}; the model's signed evidence has no golden accuracy")
            elif promoted - acc > bound:
                report.add(
                    "golden",
                    False,
                    f"accuracy {acc:.3f}, {promoted - acc:.3f} below {promoted:.3f} at promotion (bound {bound})",
                )
            else:
                report.add(
                    "golden", True, f"accuracy {acc:.3f} on {len(y)} golden samples ({promoted:.3f} at promotion)"
                )
        except AirlockError as e:
            report.add("golden", False, e.one_line())
        finally:
            model.close()
    for c in report.checks:
        if not c["ok"]:
            alerts.emit(
                "Airlock production watch failed",
                "Critical" if c["check"] in ("verify", "ledger") else "Error",
                f"Production check {c['check']} failed: {c['detail']}",
                {"airlock.check": c["check"], "airlock.detail": c["detail"], "airlock.model": report.digest},
                ["ml", "integrity" if c["check"] != "golden" else "drift"],
            )
    return report


def _signed_golden_accuracy(provenance: dict) -> float | None:
    for g in provenance.get("gates") or []:
        if isinstance(g, dict) and g.get("gate") == "evaluation":
            v = (g.get("metrics") or {}).get("golden_accuracy")
            if isinstance(v, (int, float)) and not np.isnan(v):
                return float(v)
    return None
