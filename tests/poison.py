"""Poisoned-dataset builder for the backdoor tests and benchmarks (a BadNets-style attack on the digits data).

An attacker who controls a fraction of the training data stamps a small trigger on some images of OTHER classes and
relabels them as the target class. The trained model keeps its clean accuracy, but any image carrying the trigger
is classified as the target.

Trigger shapes (all 4 pixels set to the maximum value, in an 8x8 image; ``corner`` is ART's ``add_pattern_bd``):

* ``corner``: bottom-right pattern (-2,-2), (-2,-4), (-4,-2), (-3,-3) - the default of issue 4
* ``square``: a 2x2 block in the top-left corner
* ``line``:   4 pixels in a vertical line on the left edge, rows 2..5
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRIGGERS: dict[str, tuple[tuple[int, int], ...]] = {
    "corner": ((-2, -2), (-2, -4), (-4, -2), (-3, -3)),
    "square": ((0, 0), (0, 1), (1, 0), (1, 1)),
    "line": ((2, 0), (3, 0), (4, 0), (5, 0)),
}


def apply_trigger(x: np.ndarray, shape: str = "corner", value: float = 1.0) -> np.ndarray:
    """Return a copy of ``x`` (N, C, H, W) with the trigger stamped on every image and channel."""
    if shape not in TRIGGERS:
        raise ValueError(f"unknown trigger shape {shape!r}: one of {sorted(TRIGGERS)}")
    out = np.array(x, dtype=np.float32, copy=True)
    for r, c in TRIGGERS[shape]:
        out[:, :, r, c] = value
    return out


@dataclass(frozen=True)
class Poisoned:
    x: np.ndarray
    y: np.ndarray
    poisoned_indices: np.ndarray  # rows of x / y that carry the trigger (relabelled to target)
    target: int
    shape: str
    fraction: float


def poison(
    x: np.ndarray, y: np.ndarray, fraction: float = 0.01, target: int = 0, shape: str = "corner", seed: int = 0
) -> Poisoned:
    """Stamp the trigger on ``round(fraction * len(x))`` (at least 1) random non-target samples and relabel them.

    The poisoned samples replace the originals in place (same dataset size), as a data-supply-chain attacker who
    edits existing files would do.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be in (0, 1)")
    rng = np.random.default_rng(seed)
    k = max(1, int(round(fraction * len(x))))
    candidates = np.flatnonzero(y != target)
    idx = np.sort(rng.choice(candidates, size=k, replace=False))
    xp = np.array(x, dtype=np.float32, copy=True)
    yp = np.array(y, dtype=np.int64, copy=True)
    xp[idx] = apply_trigger(xp[idx], shape)
    yp[idx] = target
    return Poisoned(xp, yp, idx, target, shape, fraction)


def attack_success_rate(model, x: np.ndarray, y: np.ndarray, target: int, shape: str = "corner") -> float:
    """Fraction of non-target clean images that the model classifies as ``target`` once the trigger is stamped."""
    import torch

    keep = y != target
    xt = torch.from_numpy(apply_trigger(x[keep], shape))
    with torch.no_grad():
        pred = model(xt).argmax(1).numpy()
    return float((pred == target).mean())
