"""Windows over all clients' traffic: is the population drifting, or is one client probing?

Every ``size`` requests (in this worker) the window is tested against the reference (the golden set and the
model's answers on it): KS on the top-1 confidence, chi-square on the predicted classes, a per-feature KS
(Bonferroni), and an RBF-kernel MMD with a permutation test. Then the flags of the window (serve/detectors.py) are
attributed:

* one client (or one source block) holds most of the window's flags, and its flag rate is far above everyone
  else's (binomial test, p < 1e-3): a **security alert** naming it - probing hides in a window the tests miss;
* otherwise, if the tests fire: a **drift event** - the data changed for most clients: retrain, do not block.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from serve.detectors import Reference

P_DRIFT = 1e-3
P_CLIENT = 1e-3


@dataclass
class WindowResult:
    tests: dict[str, float]  # test -> p-value
    drift: bool
    suspect: str | None  # "client:<name>" or "block:<cidr>" holding most flags
    suspect_share: float = 0.0
    suspect_p: float = 1.0
    clients: int = 0
    flags: int = 0
    by_client: dict[str, int] = field(default_factory=dict)


class Window:
    permutations = 50

    def __init__(self, ref: Reference, size: int = 300, seed: int = 0) -> None:
        self.ref, self.size = ref, size
        self.rng = np.random.default_rng(seed)
        self.rows: list[tuple[str, str, np.ndarray, np.ndarray, bool]] = []

    def add(self, client: str, block: str, x: np.ndarray, p: np.ndarray, flagged: bool) -> WindowResult | None:
        self.rows.append((client, block, x, p, flagged))
        if len(self.rows) < self.size:
            return None
        rows, self.rows = self.rows, []
        return self._judge(rows)

    def _judge(self, rows) -> WindowResult:
        from scipy.stats import binomtest, chisquare, ks_2samp

        x = np.asarray([r[2] for r in rows])
        p = np.asarray([r[3] for r in rows])
        tests: dict[str, float] = {}
        tests["confidence_ks"] = float(ks_2samp(p.max(1), self.ref.confidence, method="asymp").pvalue)
        k = p.shape[1]
        observed = np.bincount(p.argmax(1), minlength=k).astype(float)
        expected = np.maximum(self.ref.class_freq, 1e-3)
        expected = expected / expected.sum() * observed.sum()
        tests["classes_chi2"] = float(chisquare(observed, expected).pvalue)
        feats = [
            ks_2samp(x[:, j], self.ref.x[:, j], method="asymp").pvalue
            for j in range(x.shape[1])
            if np.ptp(self.ref.x[:, j]) > 0
        ]
        tests["features_ks"] = float(min(1.0, min(feats) * len(feats))) if feats else 1.0
        tests["mmd"] = self._mmd(x)
        # Fired: p < 1e-3; the permutation MMD's smallest p-value is 1/(permutations+1): it fires when no
        # permutation reached the observed statistic.
        fired = [t for t, v in tests.items() if v < P_DRIFT or (t == "mmd" and v <= 1 / (self.permutations + 1))]
        drift = len(fired) >= 2

        flags: Counter[str] = Counter()
        queries: Counter[str] = Counter()
        for client, block, _, _, f in rows:
            for who in (f"client:{client}", f"block:{block}"):
                queries[who] += 1
                flags[who] += int(f)
        total = sum(int(r[4]) for r in rows)
        result = WindowResult(tests, drift, None, clients=len({r[0] for r in rows}), flags=total)
        result.by_client = {w[7:]: n for w, n in flags.items() if w.startswith("client:") and n}
        if total >= 10:
            who, n = max(flags.items(), key=lambda kv: (kv[1], kv[0].startswith("client:")))
            rest_q, rest_f = len(rows) - queries[who], total - n
            base = max((rest_f + 1) / (rest_q + 2), 1e-3)
            pval = float(binomtest(n, queries[who], base, alternative="greater").pvalue)
            if n / total >= 0.5 and pval < P_CLIENT and len({r[0] for r in rows}) > 1:
                result.suspect, result.suspect_share, result.suspect_p = who, n / total, pval
                result.drift = False  # the flags are one sender's: not the population's
        return result

    def _mmd(self, x: np.ndarray) -> float:
        perms = self.permutations
        ref = self.ref.x[self.rng.choice(len(self.ref.x), size=min(len(self.ref.x), len(x)), replace=False)]
        z = np.concatenate([x.reshape(len(x), -1), ref])
        d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
        gamma = 1.0 / max(np.median(d2[d2 > 0]), 1e-12)
        kmat = np.exp(-gamma * d2)
        n = len(x)

        def stat(idx):
            a, b = idx[:n], idx[n:]
            return kmat[np.ix_(a, a)].mean() + kmat[np.ix_(b, b)].mean() - 2 * kmat[np.ix_(a, b)].mean()

        base = np.arange(len(z))
        observed = stat(base)
        exceed = sum(stat(self.rng.permutation(len(z))) >= observed for _ in range(perms))
        return (exceed + 1) / (perms + 1)
