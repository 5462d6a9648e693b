"""Evaluation gate: clean accuracy on the test split and on the golden set.

Attacks it blocks:
* a sabotaged or broken training run (bad code, poisoned labels) that degrades accuracy on held-out data;
* a swap of the test split by whoever controls the training data: the golden set is kept apart, pinned by its own
  manifest, and must pass too.

Robustness (gates/robustness.py), backdoors (gates/backdoor.py) and regressions against production
(gates/golden_regression.py) are gates of their own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from gates._result import GateResult

GATE = "evaluation"


@dataclass(frozen=True)
class EvalThresholds:
    min_test_accuracy: float = 0.90
    min_golden_accuracy: float = 0.90
    seed: int = 0


def accuracy(model, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            pred = model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).argmax(dim=1).numpy()
            correct += int((pred == y[i : i + batch_size]).sum())
    return correct / len(y)


def check(
    model, meta: dict, test: tuple[np.ndarray, np.ndarray], golden: tuple[np.ndarray, np.ndarray], t: EvalThresholds
) -> GateResult:
    x_te, y_te = test
    x_go, y_go = golden
    test_acc = accuracy(model, x_te, y_te)
    golden_acc = accuracy(model, x_go, y_go)
    metrics = {"test_accuracy": test_acc, "golden_accuracy": golden_acc}
    evidence = {"test_samples": int(len(y_te)), "golden_samples": int(len(y_go)), "thresholds": asdict(t)}
    failures = []
    # Sabotaged or degraded training: accuracy on the held-out test split.
    if test_acc < t.min_test_accuracy:
        failures.append(f"test accuracy {test_acc:.3f} < {t.min_test_accuracy}")
    # A test split swapped or poisoned along with the training data: the separately pinned golden set.
    if golden_acc < t.min_golden_accuracy:
        failures.append(f"golden accuracy {golden_acc:.3f} < {t.min_golden_accuracy}")
    if failures:
        return GateResult.fail(
            GATE,
            "; ".join(failures) + " — inspect the training run and data before retrying",
            metrics=metrics,
            evidence=evidence,
            code="evaluation.below_threshold",
        )
    return GateResult.ok(
        GATE, f"test accuracy {test_acc:.3f}, golden accuracy {golden_acc:.3f}", metrics=metrics, evidence=evidence
    )
