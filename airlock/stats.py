"""Statistics and reproducibility helpers the model gates share (not gates themselves).

* :func:`wilson_interval` - the Wilson score interval of a binomial proportion (robust accuracy on n samples);
  gates decide on its LOWER bound, so that a small sample cannot pass on luck.
* :func:`mcnemar` - the paired test for two classifiers scored on the SAME samples (candidate vs production):
  only the discordant pairs carry information. Exact binomial or mid-p (Fagerland, Lydersen & Laake 2013,
  "The McNemar test for binary matched-pairs data: mid-p and asymptotic are better than exact conditional").
* :func:`seeded` - seeds numpy and torch and pins torch's thread count for the duration of a gate, then restores
  the previous thread count: 1 vs 2 threads give different floating-point sums, hence different numbers.
* :func:`torch_threads` - the thread count alone, for work that draws from its own generator beside a seeded one.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n``. Returns (lower, upper), both in [0, 1]."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, {n}]")
    z = float(_st.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_half_width(successes: int, n: int, confidence: float = 0.95) -> float:
    lo, hi = wilson_interval(successes, n, confidence)
    return (hi - lo) / 2.0


def samples_for_half_width(half_width: float, p: float = 0.5, confidence: float = 0.95) -> int:
    """Smallest n whose Wilson half-width at proportion ``p`` is <= ``half_width`` (for sizing the policy)."""
    n = 1
    while wilson_half_width(round(p * n), n, confidence) > half_width:
        n = n * 2
    lo, hi = n // 2, n
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if wilson_half_width(round(p * mid), mid, confidence) <= half_width:
            hi = mid
        else:
            lo = mid
    return hi


@dataclass(frozen=True)
class McNemarResult:
    """Paired comparison of a candidate against a reference on the same samples."""

    n: int
    reference_correct: int
    candidate_correct: int
    reference_only: int  # b: reference right, candidate wrong
    candidate_only: int  # c: candidate right, reference wrong
    p_value: float  # one-sided: H1 = the candidate is worse than the reference
    method: str

    @property
    def reference_accuracy(self) -> float:
        return self.reference_correct / self.n if self.n else 0.0

    @property
    def candidate_accuracy(self) -> float:
        return self.candidate_correct / self.n if self.n else 0.0

    @property
    def drop(self) -> float:
        return self.reference_accuracy - self.candidate_accuracy


def mcnemar(reference_correct: np.ndarray, candidate_correct: np.ndarray, method: str = "midp") -> McNemarResult:
    """One-sided McNemar test that the candidate is WORSE than the reference on the same samples.

    ``reference_correct`` and ``candidate_correct`` are per-sample booleans. Under H0 (equal accuracy) the number
    b of samples only the reference gets right is Binomial(b + c, 1/2). The p-value is P(X >= b) ("exact") or
    P(X > b) + P(X = b) / 2 ("midp"). With no discordant pair the p-value is 1.
    """
    if method not in ("exact", "midp"):
        raise ValueError(f"unknown McNemar method {method!r}: use 'exact' or 'midp'")
    r = np.asarray(reference_correct, dtype=bool)
    c_ = np.asarray(candidate_correct, dtype=bool)
    if r.shape != c_.shape or r.ndim != 1:
        raise ValueError(f"paired vectors must be 1-D and the same length, got {r.shape} and {c_.shape}")
    b = int(np.sum(r & ~c_))
    c = int(np.sum(~r & c_))
    m = b + c
    if m == 0:
        p = 1.0
    elif method == "exact":
        p = float(_st.binom.sf(b - 1, m, 0.5))
    else:
        p = float(_st.binom.sf(b, m, 0.5) + 0.5 * _st.binom.pmf(b, m, 0.5))
    return McNemarResult(
        n=int(r.size),
        reference_correct=int(r.sum()),
        candidate_correct=int(c_.sum()),
        reference_only=b,
        candidate_only=c,
        p_value=min(1.0, p),
        method=method,
    )


@contextlib.contextmanager
def torch_threads(threads: int = 1) -> Iterator[None]:
    """Pin torch to ``threads`` threads and restore the count afterwards, touching no random state: for a
    computation whose randomness is its own generator, which may run beside another thread's seeded one."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def seeded(seed: int, threads: int = 1) -> Iterator[None]:
    """Seed python, numpy and torch and pin torch to ``threads`` threads; restore the thread count afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
