"""Security gates: one module per gate, plain Python, each returning a :class:`GateResult`."""

from gates._result import GateResult, Verdict

__all__ = ["GateResult", "Verdict"]
