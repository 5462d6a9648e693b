"""Per-client detectors of model extraction and probing (measured on digits: ../shared/notes/runtime-guard.md).

Each detector observes one client's queries (the input, the model's class probabilities) and says, per query,
whether it is *flagged* (counted by the drift windows, serve/drift.py) and, over its window, whether the client is
*alarmed* (the guard then climbs the response ladder). Thresholds are calibrated at start-up on the reference
data (the golden set the model was promoted against, verified against the signed provenance), never on traffic.

| detector | the attack it catches | signal |
|---|---|---|
| :class:`Prada` | synthetic queries (Jacobian augmentation, JBDA) | Shapiro-Wilk W of the per-class minimum distances < 0.945 |
| :class:`TooSimilar` | probing around points (JBDA, boundary walks, HopSkipJump) | median nearest-neighbour distance of the last 50 queries far below natural data's |
| :class:`OutOfDistribution` | Knockoff-style natural but foreign images, uniform noise | > 10% of the last 100 beyond the reference's p99 nearest-neighbour distance |
| :class:`OutOfRange` | noise and crafted inputs | > 10% of the last 100 with more than a tenth of their features outside the training range |
| :class:`LowMargin` | boundary probing (HopSkipJump, PGD floods) | low-margin rate of the last 100 far above the reference's |

A copycat with natural in-distribution images is statistically benign: only the lifetime budget (serve/guard.py)
and its volume milestones stop it. A new detector is a class with ``name``, ``attack`` and ``observe(x, p)``
returning ``(flagged, alarm reason or None)``, added to ``DETECTORS``.
"""

from __future__ import annotations

import abc
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Detector(Protocol):
    name: str
    attack: str

    def observe(self, x: np.ndarray, p: np.ndarray) -> tuple[bool, str | None]: ...


@dataclass(frozen=True)
class Reference:
    """Natural data's statistics, from the reference set and the model's answers on it."""

    x: np.ndarray  # (n, d) flattened reference inputs
    lo: np.ndarray  # per-feature training range
    hi: np.ndarray
    tolerance: float
    ood_distance: float  # p99 of the leave-one-out nearest-neighbour distance
    similar_distance: float  # below this, a window's median NN distance is not natural
    low_margin_rate: float  # how often the model answers the reference with a low margin
    class_freq: np.ndarray  # predicted-class frequencies on the reference
    confidence: np.ndarray  # top-1 confidences on the reference
    prada_w: float  # the lowest Shapiro-Wilk W natural clients reach (simulated on the reference), minus a margin

    @classmethod
    def build(cls, x: np.ndarray, probs: np.ndarray, similar_window: int, low_margin: float, seed: int = 0):
        x = x.reshape(len(x), -1).astype(np.float32)
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        loo = d.min(1)
        rng = np.random.default_rng(seed)
        medians = []
        for _ in range(200):  # benign clients: windows of natural queries, their sequential NN distances
            idx = rng.choice(len(x), size=min(similar_window + 1, len(x)), replace=False)
            sub = d[np.ix_(idx, idx)]
            medians.append(np.median([sub[i, :i].min() for i in range(1, len(idx))]))
        top2 = np.sort(probs, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        k = probs.shape[1]
        prada_w = _natural_prada_w(x, probs.argmax(1), rng)
        return cls(
            x=x,
            lo=x.min(0),
            hi=x.max(0),
            tolerance=0.1 * float(x.max() - x.min() or 1.0),
            ood_distance=float(np.quantile(loo, 0.99)),
            similar_distance=0.5 * float(np.min(medians)),
            low_margin_rate=float((margin < low_margin).mean()),
            class_freq=np.bincount(probs.argmax(1), minlength=k) / len(probs),
            confidence=top2[:, 1],
            prada_w=prada_w,
        )

    def nn_distance(self, q: np.ndarray) -> float:
        return float(np.sqrt(((self.x - q) ** 2).sum(1)).min())


def _natural_prada_w(x: np.ndarray, labels: np.ndarray, rng, clients: int = 60, queries: int = 200) -> float:
    """PRADA on simulated natural clients (reference samples, drawn with replacement, jittered): the lowest W any of
    them reaches on its way, minus 0.05. On few queries natural data is not that normal (measured on digits: 0.84-0.92
    for some natural clients at 50-150 queries, 0.3-0.6 for Jacobian augmentation)."""
    lows = []
    for _ in range(clients):
        idx = rng.integers(len(x), size=queries)
        p = Prada(None, 0.0, 100)
        for q, c in zip(np.clip(x[idx] + rng.normal(0, 0.02, (queries, x.shape[1])), 0, 1), labels[idx]):
            onehot = np.zeros(int(labels.max()) + 1)
            onehot[c] = 1
            p.observe(q, onehot)
            if p.w is not None:
                lows.append(p.w)
    return float(min(lows)) - 0.05 if lows else 0.9


class Prada:
    name, attack = "prada", "synthetic (Jacobian-augmented) queries"

    def __init__(self, ref: Reference | None, threshold: float, warmup: int, keep: int = 1000) -> None:
        # The policy's threshold (0.945, the paper's), lowered to what natural clients reach on this model's data.
        self.ref, self.warmup = ref, warmup
        self.threshold = min(threshold, ref.prada_w) if ref is not None else threshold
        self.groups: dict[int, list[np.ndarray]] = {}
        self.distances: deque[float] = deque(maxlen=keep)
        self.seen = 0
        self.w: float | None = None

    def observe(self, x: np.ndarray, p: np.ndarray) -> tuple[bool, str | None]:
        from scipy.stats import shapiro

        c = int(p.argmax())
        g = self.groups.setdefault(c, [])
        if g:
            self.distances.append(float(np.sqrt(((np.asarray(g) - x) ** 2).sum(1)).min()))
        if len(g) < 500:
            g.append(x)
        self.seen += 1
        if len(self.distances) < self.warmup or self.seen % 10:
            return False, None
        self.w = float(shapiro(np.asarray(self.distances)).statistic)
        if self.w < self.threshold:
            return False, f"PRADA: W = {self.w:.3f} < {self.threshold} over {len(self.distances)} queries"
        return False, None


class TooSimilar:
    name, attack = "too_similar", "probing around points (JBDA, boundary walks)"

    def __init__(self, ref: Reference, window: int) -> None:
        self.ref, self.window = ref, window
        self.recent: deque[np.ndarray] = deque(maxlen=window)
        self.nn: deque[float] = deque(maxlen=window)

    def observe(self, x: np.ndarray, p: np.ndarray) -> tuple[bool, str | None]:
        flagged = False
        if self.recent:
            d = float(np.sqrt(((np.asarray(self.recent) - x) ** 2).sum(1)).min())
            self.nn.append(d)
            flagged = d < self.ref.similar_distance
        self.recent.append(x)
        if len(self.nn) >= self.window - 1:
            med = float(np.median(self.nn))
            if med < self.ref.similar_distance:
                return (
                    flagged,
                    f"too similar: median nearest-neighbour distance {med:.3f} < {self.ref.similar_distance:.3f}",
                )
        return flagged, None


class _Rate(abc.ABC):
    """A flag per query; alarm when the rate over the last ``window`` exceeds ``limit``."""

    name = attack = ""
    what = ""

    def __init__(self, window: int, limit: float) -> None:
        self.flags: deque[bool] = deque(maxlen=window)
        self.window, self.limit = window, limit

    @abc.abstractmethod
    def flag(self, x: np.ndarray, p: np.ndarray) -> bool:
        """Whether this one query counts against the client."""

    def observe(self, x: np.ndarray, p: np.ndarray) -> tuple[bool, str | None]:
        f = self.flag(x, p)
        self.flags.append(f)
        if len(self.flags) >= self.window // 2:
            rate = sum(self.flags) / len(self.flags)
            if rate > self.limit:
                return f, f"{self.what}: {rate:.0%} of the last {len(self.flags)} > {self.limit:.0%}"
        return f, None


class OutOfDistribution(_Rate):
    name, attack, what = "ood", "foreign images (Knockoff), noise", "out of distribution"

    def __init__(self, ref: Reference, window: int, limit: float) -> None:
        super().__init__(window, limit)
        self.ref = ref

    def flag(self, x, p) -> bool:
        return self.ref.nn_distance(x) > self.ref.ood_distance


class OutOfRange(_Rate):
    name, attack, what = "out_of_range", "noise and crafted inputs", "outside the training range"

    def __init__(self, ref: Reference, window: int, limit: float) -> None:
        super().__init__(window, limit)
        self.ref = ref

    def flag(self, x, p) -> bool:
        t = self.ref.tolerance
        outside = (x < self.ref.lo - t) | (x > self.ref.hi + t)
        return bool(outside.mean() > 0.1)


class LowMargin(_Rate):
    name, attack, what = "low_margin", "boundary probing (HopSkipJump, PGD floods)", "low-margin answers"

    def __init__(self, ref: Reference, window: int, margin: float, limit: float) -> None:
        super().__init__(window, max(limit, 3 * ref.low_margin_rate + 0.1))
        self.margin = margin

    def flag(self, x, p) -> bool:
        top2 = np.sort(p)[-2:]
        return bool(top2[1] - top2[0] < self.margin)


DETECTORS = (Prada, TooSimilar, OutOfDistribution, OutOfRange, LowMargin)


class ClientDetectors:
    """One client's detectors (in this worker)."""

    def __init__(self, ref: Reference, cfg) -> None:
        self.all: list[Detector] = [
            Prada(ref, cfg.prada_threshold, cfg.prada_warmup),
            TooSimilar(ref, cfg.similar_window),
            OutOfDistribution(ref, cfg.rate_window, cfg.ood_rate),
            OutOfRange(ref, cfg.rate_window, cfg.range_rate),
            LowMargin(ref, cfg.rate_window, cfg.low_margin, cfg.low_margin_rate),
        ]

    def observe(self, x: np.ndarray, p: np.ndarray) -> tuple[list[str], list[tuple[str, str]]]:
        """(detectors that flagged this query, [(detector, alarm reason)])."""
        flags, alarms = [], []
        for d in self.all:
            f, alarm = d.observe(x, p)
            if f:
                flags.append(d.name)
            if alarm:
                alarms.append((d.name, alarm))
        return flags, alarms
