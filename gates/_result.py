"""The one result type every gate returns.

A gate is plain Python (no Prefect import). It returns a :class:`GateResult`: a verdict, the metrics it measured,
the evidence it looked at (file names, digests, fingerprints...) and ONE line of reason that says what is wrong and
what to do. Flows only wire gates together, record results in the ledger and publish them as reports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Verdict(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    # Reported and recorded, never blocking (e.g. advisory privacy metrics).
    ADVISORY = "advisory"


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A reason is one line: it ends up in CLI output, ledger entries and Prefect artifacts.
        object.__setattr__(self, "reason", " ".join(str(self.reason).split()))

    @property
    def passed(self) -> bool:
        return self.verdict is not Verdict.FAIL

    @classmethod
    def ok(cls, gate: str, reason: str, **kw: Any) -> GateResult:
        return cls(gate, Verdict.PASS, reason, **kw)

    @classmethod
    def fail(cls, gate: str, reason: str, **kw: Any) -> GateResult:
        return cls(gate, Verdict.FAIL, reason, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "metrics": dict(self.metrics),
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        return cls(d["gate"], Verdict(d["verdict"]), d["reason"], dict(d.get("metrics", {})), d.get("evidence", {}))
