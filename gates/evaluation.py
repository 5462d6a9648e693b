"""Evaluation gate: clean accuracy on the test split and the golden set, robust accuracy under ART's PGD.

Attacks it blocks:
* a sabotaged or broken training run (bad code, poisoned labels) that degrades accuracy on held-out data;
* a swap of the test split by whoever controls the training data: the golden set is kept apart, pinned by its own
  manifest, and must pass too;
* a model that is trivially fooled by small perturbations (robust accuracy under PGD at the policy's epsilon).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from gates._result import GateResult

GATE = "evaluation"


@dataclass(frozen=True)
class EvalThresholds:
    min_test_accuracy: float
    min_golden_accuracy: float
    epsilon: float
    min_robust_accuracy: float
    pgd_steps: int = 10
    robust_samples: int = 360
    seed: int = 0


def art_classifier(model, input_shape, nb_classes: int, clip_values=(0.0, 1.0)):
    """Wrap a torch module for ART. ART's progress bars stay off; import ART before anything configures logging."""
    import torch
    from art.estimators.classification import PyTorchClassifier

    model.eval()
    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=None,
        input_shape=tuple(input_shape),
        nb_classes=int(nb_classes),
        clip_values=tuple(clip_values),
        device_type="cpu",
    )


def accuracy(classifier, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    pred = classifier.predict(x, batch_size=batch_size).argmax(axis=1)
    return float((pred == y).mean())


def pgd_robust_accuracy(classifier, x, y, epsilon: float, steps: int, seed: int = 0) -> float:
    from art.attacks.evasion import ProjectedGradientDescent

    np.random.seed(seed)
    import torch

    torch.manual_seed(seed)
    attack = ProjectedGradientDescent(
        classifier, eps=epsilon, eps_step=epsilon / 4, max_iter=steps, batch_size=len(x), num_random_init=0,
        verbose=False,
    )
    adv = attack.generate(x=x, y=y)
    return accuracy(classifier, adv, y)


def check(model, meta: dict, test: tuple[np.ndarray, np.ndarray], golden: tuple[np.ndarray, np.ndarray],
          t: EvalThresholds) -> GateResult:
    clf = art_classifier(model, meta["input_shape"], meta["nb_classes"], meta.get("clip_values", (0.0, 1.0)))
    x_te, y_te = test
    x_go, y_go = golden
    test_acc = accuracy(clf, x_te, y_te)
    golden_acc = accuracy(clf, x_go, y_go)
    n = min(t.robust_samples, len(x_te))
    robust_acc = pgd_robust_accuracy(clf, x_te[:n], y_te[:n], t.epsilon, t.pgd_steps, t.seed)
    metrics = {"test_accuracy": test_acc, "golden_accuracy": golden_acc, "robust_accuracy": robust_acc,
               "epsilon": t.epsilon}
    evidence = {"test_samples": int(len(y_te)), "golden_samples": int(len(y_go)), "robust_samples": int(n),
                "attack": f"ART ProjectedGradientDescent eps={t.epsilon} eps_step={t.epsilon / 4} steps={t.pgd_steps}",
                "thresholds": t.__dict__, "torch_threads": os.environ.get("OMP_NUM_THREADS", "")}
    failures = []
    # Sabotaged or degraded training: accuracy on the held-out test split.
    if test_acc < t.min_test_accuracy:
        failures.append(f"test accuracy {test_acc:.3f} < {t.min_test_accuracy}")
    # A test split swapped or poisoned along with the training data: the separately pinned golden set.
    if golden_acc < t.min_golden_accuracy:
        failures.append(f"golden accuracy {golden_acc:.3f} < {t.min_golden_accuracy}")
    # Evasion: a model fooled by small perturbations.
    if robust_acc < t.min_robust_accuracy:
        failures.append(f"PGD robust accuracy {robust_acc:.3f} at eps={t.epsilon} < {t.min_robust_accuracy}")
    if failures:
        return GateResult.fail(GATE, "; ".join(failures) + " — inspect the training run and data before retrying",
                               metrics=metrics, evidence=evidence)
    return GateResult.ok(GATE, f"test {test_acc:.3f}, golden {golden_acc:.3f}, robust {robust_acc:.3f} at eps={t.epsilon}",
                         metrics=metrics, evidence=evidence)
