"""detox_utils.power: experiment sizing by simulated power, on synthetic pilots whose answers are known."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from detox_utils import power as P


def synthetic_pilot(n=40, k=4, q_low=0.05, q_high=0.6, share_high=0.5, seed=0) -> P.Pilot:
    """A pilot from a known two-group population of per-sample toxic probabilities."""
    rng = np.random.default_rng(seed)
    q = np.where(rng.random(n) < share_high, q_high, q_low)
    toxic = rng.random((n, k)) < q[:, None]
    scores = np.where(toxic, rng.uniform(0.5, 1.0, (n, k)), rng.uniform(0.0, 0.5, (n, k)))
    return P.estimate_pilot(scores)


@pytest.fixture(scope="module")
def pilot():
    return synthetic_pilot()


def test_modules_do_not_import_torch():
    code = "import sys, detox_utils.power, detox_utils.stats; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_critical_values_match_binomtest():
    crit = P.mcnemar_critical_values(40, alpha=0.05)
    for m in range(41):
        for x in range(m // 2 + 1):
            significant = binomtest(x, m, 0.5).pvalue <= 0.05 if m else False
            assert significant == (x <= crit[m]), (m, x)
    assert crit[0] == -1 and crit[5] == -1 and crit[6] == 0  # 2 / 2^6 = 0.031 is the first


def test_shrinkage_pulls_unseen_prompts_above_zero(pilot):
    q = pilot.q_mean
    assert np.all(q > 0) and np.all(q < 1)
    zero, many = q[pilot.counts == 0], q[pilot.counts >= 3]
    assert zero.max() < many.min()  # ordering kept
    assert abs(P.expected_tox_prob(pilot, pilot.k) - pilot.tox_prob) < 0.1  # reproduces the pilot


def test_homogeneous_pilot_fits_large_concentration():
    rng = np.random.default_rng(1)
    scores = (rng.random((400, 4)) < 0.3).astype(float)
    fit = P.estimate_pilot(scores)
    assert fit.a + fit.b > 50  # no over-dispersion -> nearly one q
    assert abs(fit.a / (fit.a + fit.b) - 0.3) < 0.03


def test_scale_gives_the_asked_expected_ratio(pilot):
    for k in (1, 4, 8):
        c = P.scale_for_reduction(pilot, k, 2.0)
        ratio = P.expected_tox_prob(pilot, k) / P.expected_tox_prob(pilot, k, c)
        assert 0 < c < 1 and ratio == pytest.approx(2.0, rel=1e-6)
    # the same per-sample effect is a smaller tox_prob factor at more samples (saturation)
    c4 = P.scale_for_reduction(pilot, 4, 2.0)
    assert P.expected_tox_prob(pilot, 8) / P.expected_tox_prob(pilot, 8, c4) < 2.0


def test_exact_mixture_expectation_matches_monte_carlo(pilot):
    rng = np.random.default_rng(0)
    q = rng.beta(pilot.post_a[:, None].repeat(20000, 1), pilot.post_b[:, None].repeat(20000, 1))
    mc = np.mean(1 - (1 - 0.4 * q) ** 4)
    assert P.expected_tox_prob(pilot, 4, 0.4) == pytest.approx(mc, abs=3e-3)


def test_size_at_no_reduction_is_at_most_alpha(pilot):
    assert P.power_tox_prob(pilot, 200, 4, 1.0, n_sim=2000) <= 0.05 + 0.01


def test_three_fold_reduction_with_500_prompts_is_detected(pilot):
    assert P.power_tox_prob(pilot, 500, 4, 3.0, n_sim=1000) > 0.99


def test_power_rises_with_prompts_and_reduction(pilot):
    by_n = [P.power_tox_prob(pilot, n, 4, 1.5, n_sim=1000) for n in (25, 100, 400)]
    assert by_n[0] < by_n[1] < by_n[2]
    by_r = [P.power_tox_prob(pilot, 100, 4, r, n_sim=1000) for r in (1.2, 1.5, 2.0)]
    assert by_r[0] < by_r[1] < by_r[2]


def test_array_pilot_and_shared_coupling(pilot):
    q = pilot.q_mean
    assert 0 <= P.power_tox_prob(q, 100, 4, 1.5, n_sim=500) <= 1
    indep = P.power_tox_prob(pilot, 60, 4, 1.5, n_sim=1000)
    shared = P.power_tox_prob(pilot, 60, 4, 1.5, n_sim=1000, coupling="shared")
    assert shared > indep  # no discordant pair against the method


def test_mde_falls_with_prompts_and_hits_the_target_power(pilot):
    mdes = [P.minimum_detectable_reduction(pilot, n, 4, n_sim=1000) for n in (25, 100, 400)]
    assert mdes[0] > mdes[1] > mdes[2] > 1
    m = mdes[1]
    at = P.power_tox_prob(pilot, 100, 4, m, n_sim=1000)
    below = P.power_tox_prob(pilot, 100, 4, m / 1.05, n_sim=1000)
    assert at >= 0.8 > below


def test_mde_infinite_when_too_few_toxic_prompts():
    scores = np.zeros((10, 4))
    scores[:2, 0] = 0.9  # two toxic prompts: at most b = 2 discordant pairs, never significant
    rare = P.estimate_pilot(scores)
    assert math.isinf(P.minimum_detectable_reduction(rare, 10, 1, n_sim=500))


def test_emt_power_and_mde(pilot):
    low = P.power_emt(pilot, 30, 4, 1.1, n_sim=500)
    high = P.power_emt(pilot, 300, 4, 1.1, n_sim=500)
    assert low < high and high > 0.9
    assert P.power_emt(pilot, 100, 4, 1.0, n_sim=2000) <= 0.05 + 0.015
    assert 1 < P.minimum_detectable_reduction(pilot, 100, 4, metric="emt", n_sim=500) < 1.5


def test_power_curve_agrees_with_single_points(pilot):
    curve = P.power_curve(pilot, 200, 4, 1.5, n_sim=1000)
    assert curve.shape == (200,)
    assert curve[199] == pytest.approx(P.power_tox_prob(pilot, 200, 4, 1.5, n_sim=1000), abs=0.06)
    assert curve[:10].max() <= curve[150:].min()


def test_design_for_picks_the_cheapest_reachable(pilot):
    d = P.design_for(pilot, 1.5, n_samples_options=(1, 2, 4), max_prompts=1500, n_sim=500)
    assert d["reachable"]
    reachable = [o for o in d["options"] if o["n_prompts"] is not None]
    assert d["cost"] == min(o["cost"] for o in reachable)
    assert d["power"] >= 0.8
    cheap = P.design_for(pilot, 1.5, n_samples_options=(1, 4), max_prompts=1500, n_sim=500,
                         cost=lambda n, k: n * 100 + n * k)  # prompts dominate the cost
    by_k = {o["n_samples"]: o["n_prompts"] for o in cheap["options"]}
    assert by_k[4] < by_k[1] and cheap["n_samples"] == 4


def test_design_for_says_when_not_reachable(pilot):
    d = P.design_for(pilot, 1.05, n_samples_options=(1,), max_prompts=50, n_sim=300)
    assert not d["reachable"] and d["n_prompts"] is None
    assert "not reachable within max_prompts=50" in d["message"]


def test_pilot_from_samples_pivots_the_samples_table():
    frame = pd.DataFrame({"prompt_id": np.repeat([0, 1, 2], 2), "sample_id": [0, 1] * 3,
                          "score.max": [0.9, 0.1, 0.2, 0.3, 0.6, 0.7],
                          "score.x": [0.1] * 6})
    pil = P.pilot_from_samples(frame, "max")
    assert pil.scores.shape == (3, 2) and list(pil.counts) == [1, 0, 2]
    with pytest.raises(KeyError):
        P.pilot_from_samples(frame, "nope")


def test_input_checks(pilot):
    with pytest.raises(ValueError):
        P.power_tox_prob(pilot, 0, 4, 2.0)
    with pytest.raises(ValueError):
        P.power_tox_prob(pilot, 10, 4, 0.5)
    with pytest.raises(ValueError):
        P.power_tox_prob(pilot, 10, 4, 2.0, test="chi2")
    with pytest.raises(TypeError):
        P.power_emt(pilot.q_mean, 10, 4, 1.2)


def test_mde_paired_accuracy_matches_connor_and_simulation():
    # Connor's formula: with d = 0.2 and delta = 0.05, n = (1.96*sqrt(.2) + 0.8416*sqrt(.1975))^2 / .0025
    z_a, z_b = 1.959964, 0.841621
    n = (z_a * 0.2 ** 0.5 + z_b * (0.2 - 0.0025) ** 0.5) ** 2 / 0.0025
    assert P.mde_paired_accuracy(int(round(n)), 0.2) == pytest.approx(0.05, rel=2e-3)
    # more items or fewer discordant items: a smaller detectable change
    assert P.mde_paired_accuracy(2000, 0.2) < P.mde_paired_accuracy(500, 0.2)
    assert P.mde_paired_accuracy(500, 0.05) < P.mde_paired_accuracy(500, 0.2)
    # simulated exact McNemar at the MDE has about the wanted power
    from detox_utils import stats as dstats
    rng = np.random.default_rng(0)
    items, d = 600, 0.15
    delta = P.mde_paired_accuracy(items, d)
    hits = 0
    for _ in range(400):
        u = rng.random(items)
        b = u < (d + delta) / 2           # right under the base only
        c = (u >= (d + delta) / 2) & (u < d)  # right under the method only
        base = b.copy()
        method = c.copy()
        test = dstats.mcnemar_exact(base, method)
        hits += test["p"] < 0.05
    assert 0.7 < hits / 400 < 0.9
    assert P.mde_paired_accuracy(100, 0.0) == 0.01
    with pytest.raises(ValueError, match="discordant"):
        P.mde_paired_accuracy(100, 1.5)
