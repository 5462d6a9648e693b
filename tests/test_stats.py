"""Statistics shared by the model gates: Wilson interval, McNemar, seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from airlock.stats import mcnemar, samples_for_half_width, seeded, wilson_half_width, wilson_interval


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (81, 263), (300, 360), (612, 1021)])
def test_wilson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-9)
    assert hi == pytest.approx(ci.high, abs=1e-9)


def test_wilson_lower_bound_is_below_point_estimate_and_shrinks_with_n():
    lo_small, _ = wilson_interval(45, 50)  # 0.9 on 50 samples
    lo_large, _ = wilson_interval(900, 1000)  # 0.9 on 1000 samples
    assert lo_small < lo_large < 0.9
    assert lo_small < 0.8  # a 0.8 threshold would pass on the point estimate but not on 50 samples


def test_sample_size_for_half_width():
    # ~1021 samples give a +/-0.03 half-width at p = 0.6 (measured in the ART notes)
    n = samples_for_half_width(0.03, p=0.6)
    assert 1000 <= n <= 1030
    assert wilson_half_width(round(0.6 * n), n) <= 0.03 < wilson_half_width(round(0.6 * (n - 5)), n - 5)


def test_mcnemar_exact_matches_binomial_test():
    rng = np.random.default_rng(0)
    ref = rng.random(300) < 0.95
    cand = ref.copy()
    cand[np.flatnonzero(ref)[:12]] = False  # the candidate loses 12 samples...
    cand[np.flatnonzero(~ref)[:2]] = True  # ...and gains 2
    r = mcnemar(ref, cand, "exact")
    assert (r.reference_only, r.candidate_only) == (12, 2)
    assert r.p_value == pytest.approx(stats.binomtest(12, 14, 0.5, alternative="greater").pvalue)
    mid = mcnemar(ref, cand, "midp")
    assert mid.p_value < r.p_value < 0.05
    assert r.drop == pytest.approx(10 / 300)


def test_mcnemar_one_sided_and_degenerate_cases():
    ref = np.array([True] * 50 + [False] * 50)
    assert mcnemar(ref, ref).p_value == 1.0  # no discordant pair
    better = ref.copy()
    better[50:70] = True  # the candidate is better: not evidence of a drop
    assert mcnemar(ref, better).p_value > 0.99
    with pytest.raises(ValueError):
        mcnemar(ref, ref[:10])
    with pytest.raises(ValueError):
        mcnemar(ref, ref, "chi2")


def test_seeded_pins_threads_and_restores():
    before = torch.get_num_threads()
    with seeded(7, threads=1):
        assert torch.get_num_threads() == 1
        a = (np.random.rand(3), torch.rand(3))
    with seeded(7, threads=1):
        b = (np.random.rand(3), torch.rand(3))
    assert torch.get_num_threads() == before
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])
