"""The one result type every gate returns.

A gate is plain Python (no Prefect import). It returns a :class:`GateResult`: a verdict, the metrics it measured,
the evidence it looked at (file names, digests, fingerprints...) and ONE line of reason that says what is wrong and
what to do. Flows only wire gates together, record results in the ledger and publish them as reports.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Any


class Verdict(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    # Reported and recorded, never blocking (e.g. advisory privacy metrics).
    ADVISORY = "advisory"


# A refusal code: "<gate family>.<what>", lower case (e.g. "commit.unsigned", "data.mismatch"). Stable: tests assert
# them and reports show them beside the reason; the reason may be reworded, the code may not.
_CODE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    code: str = ""

    def __post_init__(self) -> None:
        # A reason is one line: it ends up in CLI output, ledger entries and Prefect artifacts.
        object.__setattr__(self, "reason", " ".join(str(self.reason).split()))
        family = self.gate.split(":", 1)[0].replace("-", "_")
        if not self.code:
            # Every result has a code: a failure without a specific one is "<family>.refused".
            default = {"pass": "pass", "advisory": "advisory"}.get(self.verdict.value, "refused")
            object.__setattr__(self, "code", f"{family}.{default}")
        if not _CODE.match(self.code):
            raise ValueError(f"malformed gate code {self.code!r}")

    @property
    def passed(self) -> bool:
        return self.verdict is not Verdict.FAIL

    @classmethod
    def ok(cls, gate: str, reason: str, **kw: Any) -> GateResult:
        return cls(gate, Verdict.PASS, reason, **kw)

    @classmethod
    def fail(cls, gate: str, reason: str, code: str = "", **kw: Any) -> GateResult:
        return cls(gate, Verdict.FAIL, reason, code=code, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "verdict": self.verdict.value,
            "code": self.code,
            "reason": self.reason,
            "metrics": dict(self.metrics),
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        return cls(
            d["gate"],
            Verdict(d["verdict"]),
            d["reason"],
            dict(d.get("metrics", {})),
            d.get("evidence", {}),
            code=str(d.get("code") or ""),
        )
