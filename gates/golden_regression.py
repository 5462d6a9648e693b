"""Golden-set regression gate: the candidate against the production model on the known-clean golden set.

Attack it blocks: a retrain that is worse than what is serving - sabotaged or broken training code, mislabelled or
poisoned data that costs accuracy, a swapped test split that hid the damage from the evaluation gate. The golden
set is pinned apart from the training data, and both models are scored on the same samples, so the comparison is a
PAIRED test: McNemar on the discordant samples (one-sided: is the candidate worse?). A fixed accuracy threshold
alone lets a model slide down by a point per release; a paired test catches a drop a threshold would miss, and
does not fail on the few-sample noise between two equally good retrains.

With no production model there is nothing to regress against: the gate passes and says so (the evaluation gate's
absolute thresholds still apply).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from airlock.stats import mcnemar
from gates._result import GateResult

GATE = "golden_regression"


@dataclass(frozen=True)
class GoldenRegressionParams:
    # One-sided significance level of the drop. 0.01, not 0.05: two clean retrains are two different models, and at
    # 0.05 one in ten clean retrains of the demo failed against production (BENCHMARKS.md).
    alpha: float = 0.01
    method: str = "midp"  # "midp" (default; Fagerland et al. 2013) or "exact" (more conservative)
    # A drop must also exceed this many accuracy points to fail (0 = any significant drop fails).
    margin: float = 0.0
    batch_size: int = 1024


def _correct(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(
                model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))).argmax(1).numpy()
            )
    return np.concatenate(out) == np.asarray(y)


def check(
    candidate,
    meta: dict | None,
    x_golden: np.ndarray,
    y_golden: np.ndarray,
    params: GoldenRegressionParams = GoldenRegressionParams(),
    reference=None,
) -> GateResult:
    """McNemar (one-sided) of ``candidate`` against ``reference`` (production, or None) on the golden set.

    ``meta`` (training.json) is accepted for a uniform gate signature; it is not needed here.
    """
    cand = _correct(candidate, x_golden, y_golden, params.batch_size)
    metrics: dict[str, float] = {"candidate_accuracy": float(cand.mean()), "samples": float(len(cand))}
    evidence = {"params": asdict(params), "samples": int(len(cand))}
    if reference is None:
        return GateResult.ok(
            GATE,
            f"no production model to regress against (golden accuracy "
            f"{cand.mean():.3f}); the first promotion becomes the reference",
            metrics=metrics,
            evidence=evidence | {"reference": None},
        )
    ref = _correct(reference, x_golden, y_golden, params.batch_size)
    t = mcnemar(ref, cand, params.method)
    metrics.update(
        {
            "reference_accuracy": t.reference_accuracy,
            "drop": t.drop,
            "p_value": t.p_value,
            "reference_only_correct": float(t.reference_only),
            "candidate_only_correct": float(t.candidate_only),
        }
    )
    evidence["discordant"] = {"reference_only": t.reference_only, "candidate_only": t.candidate_only}
    # Degraded / sabotaged retrain: significantly fewer golden samples right than production, pairwise.
    if t.p_value < params.alpha and t.drop > params.margin:
        return GateResult.fail(
            GATE,
            f"golden accuracy dropped from {t.reference_accuracy:.3f} (production) to {t.candidate_accuracy:.3f} "
            f"(McNemar {params.method} p={t.p_value:.2g} < {params.alpha}; {t.reference_only} samples lost, "
            f"{t.candidate_only} gained) - inspect the training data and code changes since production",
            metrics=metrics,
            evidence=evidence,
            code="golden_regression.regression",
        )
    return GateResult.ok(
        GATE,
        f"golden accuracy {t.candidate_accuracy:.3f} vs production {t.reference_accuracy:.3f} "
        f"(McNemar {params.method} p={t.p_value:.2g}, alpha {params.alpha})",
        metrics=metrics,
        evidence=evidence,
    )
