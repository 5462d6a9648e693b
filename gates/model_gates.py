"""The model gates, listed once: the evaluator runs them, the flow reports them, the policy validates them.

A new model gate goes here (plus its module in ``gates/``, a policy section in ``airlock/policy.py`` and a branch
in ``flows/_evaluate.py``); ``tests/test_policy_and_cli.py`` holds the three together: every policy key of a gate's
section must be one of its parameters (a renamed threshold fails the test instead of quietly reverting to its
default), and the defaults must agree.

Light on purpose: the parameter classes are named, not imported, so that the flow process can read this list
without importing ART (whose import reconfigures logging).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields, replace
from typing import Any

from airlock.errors import PolicyError


@dataclass(frozen=True)
class ModelGate:
    section: str  # the policy section and the evaluator's key
    params: str  # "module:Class" of the gate's parameter dataclass
    results: tuple[str, ...]  # the GateResult.gate names it produces
    blocking: bool  # False: reported and recorded, never a refusal
    policy_only: frozenset[str] = frozenset()  # policy keys that steer the evaluator, not the gate (e.g. enabled)
    supplied: frozenset[str] = frozenset({"seed", "threads"})  # parameters the evaluator sets from the run

    def params_class(self) -> type:
        module, _, name = self.params.partition(":")
        return getattr(importlib.import_module(module), name)

    def build(self, values: dict[str, Any], **run: Any) -> Any:
        """The gate's parameters from its policy section; a policy key the gate does not have is refused."""
        cls = self.params_class()
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in values if k not in known and k not in self.policy_only)
        if unknown:
            raise PolicyError(
                f"[{self.section}] {unknown[0]} is not a parameter of the {self.section} gate",
                "an Airlock bug if airlock.toml validated: report it",
            )
        from_run = {k: v for k, v in run.items() if k in known}
        given = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return replace(cls(), **{**from_run, **given})  # what the policy sets wins over the run's values


MODEL_GATES: tuple[ModelGate, ...] = (
    ModelGate("evaluation", "gates.evaluation:EvalThresholds", ("evaluation",), True, supplied=frozenset()),
    ModelGate("robustness", "gates.robustness:RobustnessParams", ("robustness",), True),
    ModelGate("backdoor", "gates.backdoor:BackdoorParams", ("backdoor",), True),
    ModelGate(
        "golden_regression",
        "gates.golden_regression:GoldenRegressionParams",
        ("golden_regression",),
        True,
        supplied=frozenset(),
    ),
    ModelGate(
        "advisory",
        "gates.advisory:AdvisoryParams",
        ("membership_inference", "extraction_effort", "spectral_signatures"),
        False,
        policy_only=frozenset({"enabled"}),
    ),
)
SECTIONS = tuple(g.section for g in MODEL_GATES)
BLOCKING_RESULTS = tuple(r for g in MODEL_GATES if g.blocking for r in g.results)


def gate(section: str) -> ModelGate:
    return next(g for g in MODEL_GATES if g.section == section)
