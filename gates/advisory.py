"""Advisory model checks: measured, reported and recorded for the bill of materials, never blocking.

Each function returns a :class:`GateResult` with verdict ADVISORY.

* :func:`membership_inference` - privacy: can an attacker who queries the model tell whether a record was in the
  training set? ART's MembershipInferenceBlackBox (a random forest on the model's outputs, seeded), trained on half
  of a balanced member / non-member sample and measured on the other half. Advantage = TPR - FPR (0 = no leak).
* :func:`extraction_effort` - model theft: how many queries a copycat (ART CopycatCNN, same architecture,
  in-distribution queries labelled by the victim) needs to agree with the model on >= 90% of held-out inputs.
* :func:`spectral_signatures` - data poisoning triage: the training samples whose penultimate-layer activations
  lie furthest along their class's top singular directions (Tran, Li & Madry 2018). Poisoned samples relabelled
  to a target class form a separate cluster in that class and score high. Returned as training-set row indices so
  that each can be traced to its manifest file and provenance entry. Not a verdict: the flagged fraction is fixed
  by construction (ART's own SpectralSignatureDefense flags a fixed share of every class).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import art  # noqa: F401  (first: `import art` runs logging.config.dictConfig, closing handlers configured before it)
import numpy as np

from airlock.classifiers import art_classifier
from airlock.stats import seeded
from gates._result import GateResult, Verdict


@dataclass(frozen=True)
class AdvisoryParams:
    # Membership inference: up to this many members and as many non-members; half fit the attack, half measure it.
    mia_samples: int = 360
    # Extraction: query budgets tried in order until the copycat agrees >= extraction_agreement.
    extraction_budgets: tuple[int, ...] = (25, 50, 100, 150, 200, 300, 400, 600, 800)
    extraction_agreement: float = 0.90
    extraction_steps: int = 300  # optimiser steps per copycat (epochs scale with the budget)
    extraction_batch_size: int = 64
    extraction_learning_rate: float = 0.002
    # Spectral signatures: how many of the highest-scoring training samples to report.
    spectral_top: int = 20
    spectral_components: int = 3
    seed: int = 0
    threads: int = 1


def _advisory(gate: str, reason: str, metrics: dict[str, float], evidence: dict[str, Any]) -> GateResult:
    return GateResult(gate, Verdict.ADVISORY, reason, metrics=metrics, evidence=evidence)


# ----------------------------------------------------------------------------------------------------------------------
# Membership inference


def membership_inference(
    model,
    meta: dict,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    params: AdvisoryParams = AdvisoryParams(),
) -> GateResult:
    """Membership-inference advantage of ART's black-box attack (members: training rows; non-members: test rows).

    Reports the advantage of two attack features - the model's outputs ("prediction") and the per-sample loss
    ("loss") - and the larger one as ``membership_advantage``.
    """
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from sklearn.ensemble import RandomForestClassifier

    # Privacy leak (membership inference): a model that memorises its training records answers them differently.
    t0 = time.perf_counter()
    m = int(min(params.mia_samples, len(x_train), len(x_test)))
    m -= m % 2
    rng = np.random.default_rng(params.seed)
    mem = np.sort(rng.choice(len(x_train), m, replace=False))
    non = np.sort(rng.choice(len(x_test), m, replace=False))
    h = m // 2
    xm, ym = x_train[mem].astype(np.float32), np.asarray(y_train)[mem]
    xn, yn = x_test[non].astype(np.float32), np.asarray(y_test)[non]
    metrics: dict[str, float] = {}
    with seeded(params.seed, params.threads):
        clf = art_classifier(model, meta["input_shape"], meta["nb_classes"], meta.get("clip_values", (0.0, 1.0)))
        for input_type in ("prediction", "loss"):
            attack = MembershipInferenceBlackBox(clf, input_type=input_type, attack_model_type="rf")
            # A seeded forest. Passed as ``attack_model=`` an unfitted sklearn ensemble breaks ART 1.20's
            # ``if self.attack_model:`` (len() of an unfitted ensemble raises), so it replaces the default one.
            attack.attack_model = RandomForestClassifier(n_estimators=100, min_samples_leaf=3, random_state=params.seed)
            attack.fit(x=xm[:h], y=ym[:h], test_x=xn[:h], test_y=yn[:h])
            tpr = float(np.mean(attack.infer(xm[h:], ym[h:]).ravel() == 1))
            fpr = float(np.mean(attack.infer(xn[h:], yn[h:]).ravel() == 1))
            metrics[f"membership_advantage_{input_type}"] = tpr - fpr
            metrics[f"membership_tpr_{input_type}"] = tpr
            metrics[f"membership_fpr_{input_type}"] = fpr
    adv = max(metrics["membership_advantage_prediction"], metrics["membership_advantage_loss"])
    metrics["membership_advantage"] = adv
    evidence = {
        "attack": "ART MembershipInferenceBlackBox, RandomForest(100, min_samples_leaf=3), features: "
        "prediction and loss",
        "members": int(m),
        "non_members": int(m),
        "fit_per_side": h,
        "measure_per_side": m - h,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    hint = (
        "the model leaks training membership: regularise, early-stop or train with differential privacy"
        if adv > 0.1
        else "no material leak at this sample size"
    )
    return _advisory(
        "membership_inference",
        f"membership-inference advantage {adv:.3f} (TPR-FPR on {m - h}+{m - h} held-out records) - {hint}",
        metrics,
        evidence,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Extraction effort


def _fresh_copy(model):
    """Same architecture, freshly initialised weights (the attacker knows the architecture: worst case)."""
    clone = copy.deepcopy(model)
    for mod in clone.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    return clone


def copycat_network(input_shape, nb_classes: int, hidden: int = 64):
    """Airlock's own thief architecture, for a victim whose code stays in its sandbox (a RemoteModel has no
    architecture to copy): for image inputs (C, H, W) two 3x3 convolutions, a 2x2 max-pool and two linear layers
    (the shape of the example model, so the digits numbers compare); for flat inputs a two-layer MLP."""
    from torch import nn

    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3:
        c, h, w = shape
        pool = 2 if h >= 2 and w >= 2 else 1
        return nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(pool),
            nn.Flatten(),
            nn.Linear(32 * (h // pool) * (w // pool), hidden),
            nn.ReLU(),
            nn.Linear(hidden, int(nb_classes)),
        )
    n = math.prod(shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n, 4 * hidden),
        nn.ReLU(),
        nn.Linear(4 * hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, int(nb_classes)),
    )


def extraction_effort(
    model,
    meta: dict,
    x_pool: np.ndarray,
    x_eval: np.ndarray,
    params: AdvisoryParams = AdvisoryParams(),
    copycat_factory: Callable | None = None,
) -> GateResult:
    """Queries a copycat needs to agree with ``model`` on >= ``extraction_agreement`` of ``x_eval``.

    ``x_pool``: in-distribution inputs the attacker queries (unlabelled; e.g. the training inputs stand for what an
    attacker can collect); ``x_eval``: held-out inputs for agreement (e.g. the test split). ``copycat_factory()``
    returns a fresh torch module (default: the victim's architecture, re-initialised).
    """
    import torch
    from art.attacks.extraction import CopycatCNN
    from art.estimators.classification import PyTorchClassifier

    # Model theft (extraction): an attacker with query access trains a copy on the model's answers.
    t0 = time.perf_counter()
    shape, k, clip = tuple(meta["input_shape"]), int(meta["nb_classes"]), tuple(meta.get("clip_values", (0.0, 1.0)))
    x_pool = np.ascontiguousarray(x_pool, dtype=np.float32)
    x_eval = np.ascontiguousarray(x_eval, dtype=np.float32)
    curve = []
    reached = None
    with seeded(params.seed, params.threads):
        victim = art_classifier(model, shape, k, clip)
        target = victim.predict(x_eval, batch_size=len(x_eval)).argmax(1)
        for budget in params.extraction_budgets:
            budget = int(min(budget, len(x_pool)))
            np.random.seed(params.seed + budget)
            torch.manual_seed(params.seed + budget)
            if copycat_factory:
                net = copycat_factory()
            elif any(True for _ in model.parameters()):
                net = _fresh_copy(model)
            else:  # out-of-process victim: its code is not ours to copy
                net = copycat_network(shape, k)
            thief = PyTorchClassifier(
                net,
                loss=torch.nn.CrossEntropyLoss(),
                optimizer=torch.optim.Adam(net.parameters(), lr=params.extraction_learning_rate),
                input_shape=shape,
                nb_classes=k,
                clip_values=clip,
                device_type="cpu",
            )
            batches = math.ceil(budget / params.extraction_batch_size)
            epochs = max(1, math.ceil(params.extraction_steps / batches))
            attack = CopycatCNN(
                victim,
                batch_size_fit=params.extraction_batch_size,
                batch_size_query=budget,
                nb_epochs=epochs,
                nb_stolen=budget,
                use_probability=False,
            )
            stolen = attack.extract(x_pool, thieved_classifier=thief)
            agreement = float((stolen.predict(x_eval, batch_size=len(x_eval)).argmax(1) == target).mean())
            curve.append({"queries": budget, "agreement": round(agreement, 4)})
            if agreement >= params.extraction_agreement:
                reached = budget
                break
            if budget >= len(x_pool):
                break
    # JSON has no infinity: when the target is never reached, report the largest budget tried and reached = 0.
    metrics = {
        "extraction_queries_to_target": float(reached if reached is not None else curve[-1]["queries"]),
        "extraction_reached": 1.0 if reached is not None else 0.0,
        "extraction_target_agreement": float(params.extraction_agreement),
        "extraction_best_agreement": max(p["agreement"] for p in curve),
    }
    evidence = {
        "attack": "ART CopycatCNN, victim labels (argmax), copycat = "
        + (
            "the given factory"
            if copycat_factory
            else "victim architecture re-initialised"
            if any(True for _ in model.parameters())
            else "Airlock's copycat_network"
        ),
        "curve": curve,
        "pool": int(len(x_pool)),
        "eval": int(len(x_eval)),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if reached is None:
        reason = (
            f"a copycat did not reach {params.extraction_agreement:.0%} agreement within "
            f"{curve[-1]['queries']} queries (best {metrics['extraction_best_agreement']:.3f})"
        )
    else:
        reason = (
            f"a copycat reaches {params.extraction_agreement:.0%} agreement after {reached} queries - "
            "rate-limit and monitor the serving endpoint accordingly"
        )
    return _advisory("extraction_effort", reason, metrics, evidence)


# ----------------------------------------------------------------------------------------------------------------------
# Spectral signatures


def penultimate_activations(model, x: np.ndarray, layer: str = "penultimate", batch_size: int = 1024) -> np.ndarray:
    """Activations of ``model.<layer>`` (a submodule) for every row of x, via a forward hook; a RemoteModel is asked
    for them (its layers live in its sandbox)."""
    import torch

    if hasattr(model, "activations"):
        return model.activations(x, layer, batch_size)
    module = model.get_submodule(layer)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().reshape(len(out), -1)))
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)))
    finally:
        handle.remove()
    return torch.cat(captured).numpy().astype(np.float64)


def spectral_scores(activations: np.ndarray, labels: np.ndarray, components: int = 3) -> np.ndarray:
    """Per sample, within its class: the whitened squared projection of its centred activation on the class's top
    ``components`` singular vectors, scaled so that each class averages 1 (scores compare across classes).

    With ``components=1`` this is Tran et al.'s spectral signature up to a per-class constant. Whitening a few top
    directions (a Mahalanobis distance in the top principal subspace) is what finds the poisoned rows here: on the
    example model, 1%-poisoned retrains put 8-10 of the 11 poisoned rows among the target class's top 20, against
    3-7 for the single top direction (measured on 4 seeds).
    """
    scores = np.zeros(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if idx.size < 2:
            continue
        a = activations[idx] - activations[idx].mean(axis=0)
        _, sv, vt = np.linalg.svd(a, full_matrices=False)
        k = int(min(components, int(np.sum(sv > 1e-9 * max(sv[0], 1e-30)))))
        if k == 0:
            continue
        s = ((a @ vt[:k].T) ** 2 / sv[:k] ** 2).sum(axis=1)  # sums to k over the class
        scores[idx] = s * idx.size / k
    return scores


def spectral_signatures(
    model,
    meta: dict,
    x_train: np.ndarray,
    y_train: np.ndarray,
    params: AdvisoryParams = AdvisoryParams(),
    layer: str = "penultimate",
    classes: list[int] | None = None,
) -> GateResult:
    """Rank training samples by spectral-signature score; report the top ``spectral_top`` as row indices.

    ``classes``: restrict the ranking to these labels - pass the class(es) the backdoor gate flagged (its
    ``evidence["ratios"]`` below threshold, or ``metrics["min_trigger_ratio_class"]``): poisoned rows carry the
    target label, and within the target class they rank near the top (8-10 of 11 in the top 20 on 1%-poisoned
    retrains), while a ranking over all classes mixes in every class's natural outliers (3-7 of 11).

    ``evidence["suspicious"]`` is a list of ``{"index": row in x_train, "label": int, "score": float}``, highest
    first: map ``index`` to the manifest file holding that row and to its provenance entry.
    ``evidence["per_class"]`` lists each class's 5 highest rows.
    """
    # Data poisoning (backdoor samples hidden among a class): they separate along the class's top singular directions.
    t0 = time.perf_counter()
    y = np.asarray(y_train)
    with seeded(params.seed, params.threads):
        act = penultimate_activations(model, x_train, layer)
    scores = spectral_scores(act, y, params.spectral_components)
    pool = np.flatnonzero(np.isin(y, classes)) if classes is not None else np.arange(len(y))
    order = pool[np.argsort(-scores[pool], kind="stable")][: params.spectral_top]
    suspicious: list[dict[str, Any]] = [
        {"index": int(i), "label": int(y[i]), "score": round(float(scores[i]), 3)} for i in order
    ]
    per_class = {}
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        per_class[str(int(c))] = [int(i) for i in idx[np.argsort(-scores[idx], kind="stable")][:5]]
    by_class: dict[int, int] = {}
    for s in suspicious:
        by_class[s["label"]] = by_class.get(s["label"], 0) + 1
    top_class = max(by_class, key=lambda c: by_class[c]) if by_class else -1
    metrics = {
        "spectral_max_score": float(scores[order[0]]) if len(order) else 0.0,
        "spectral_top_class": float(top_class),
        "spectral_top_class_share": by_class.get(top_class, 0) / max(1, len(suspicious)),
    }
    evidence = {
        "method": f"spectral signatures (Tran et al. 2018) on model.{layer} activations: per class, whitened "
        f"projection on the top {params.spectral_components} singular vectors, class mean = 1",
        "classes": None if classes is None else [int(c) for c in classes],
        "suspicious": suspicious,
        "per_class": per_class,
        "by_class": {str(k): v for k, v in sorted(by_class.items())},
        "samples": int(len(y)),
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    scope = "all classes" if classes is None else f"class(es) {sorted(int(c) for c in classes)}"
    return _advisory(
        "spectral_signatures",
        f"top {len(suspicious)} suspicious training samples in {scope} listed (highest score "
        f"{metrics['spectral_max_score']:.1f}x class mean, {by_class.get(top_class, 0)} of them in "
        f"class {top_class}) - review those rows' files and provenance",
        metrics,
        evidence,
    )
