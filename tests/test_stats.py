"""detox_utils.stats: every verdict rule on a synthetic input whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pytest

from detox_utils import stats as S


# ---- bootstrap


def test_bootstrap_ci_is_linear_percentile():
    reps = np.arange(101, dtype=float)
    assert S.bootstrap_ci(reps, 0.9) == pytest.approx((5.0, 95.0))
    x = np.random.default_rng(0).normal(size=999)
    lo, hi = S.bootstrap_ci(x, 0.95)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(x, [0.025, 0.975], method="linear")))
    lo2, hi2 = S.bootstrap_ci(np.c_[x, 2 * x], 0.95)
    assert lo2 == pytest.approx([lo, 2 * lo]) and hi2 == pytest.approx([hi, 2 * hi])


def test_bootstrap_ci_drops_nan_and_keeps_inf():
    reps = np.array([1.0, 2.0, 3.0, np.nan, np.inf])
    lo, hi = S.bootstrap_ci(reps, 0.5)
    assert lo == pytest.approx(1.75) and math.isinf(hi)
    assert all(math.isnan(v) for v in S.bootstrap_ci(np.array([np.nan, np.nan])))


# ---- McNemar, sign flip


def paired(b, c, both=0, neither=0):
    base = np.r_[np.ones(b), np.zeros(c), np.ones(both), np.zeros(neither)].astype(bool)
    meth = np.r_[np.zeros(b), np.ones(c), np.ones(both), np.zeros(neither)].astype(bool)
    return base, meth


def test_mcnemar_golden_values():
    r = S.mcnemar_exact(*paired(10, 2, both=5, neither=8))
    assert (r["b"], r["c"], r["n"]) == (10, 2, 25)
    assert r["p"] == pytest.approx(158 / 4096)  # 2 * (1 + 12 + 66) / 2^12 = 0.03857
    assert r["p"] == pytest.approx(0.0385742, abs=1e-6) and r["favours"] == "method"
    assert S.mcnemar_exact(*paired(0, 0, both=3, neither=3))["p"] == 1.0
    assert S.mcnemar_exact(*paired(4, 4))["p"] == 1.0
    assert S.mcnemar_exact(*paired(6, 0))["p"] == pytest.approx(2 / 64)
    assert S.mcnemar_exact(*paired(2, 10))["favours"] == "baseline"


def test_signflip_exact_golden():
    # d = (1, 1, 1, 1, 1): only the all-positive and all-negative patterns reach |mean| = 1
    r = S.paired_signflip(np.ones(5), np.zeros(5))
    assert r["exact"] and r["p"] == pytest.approx(2 / 32)
    assert S.paired_signflip(np.ones(5), np.zeros(5), alternative="greater")["p"] == pytest.approx(1 / 32)
    # zeros are kept: they do not change the p of the non-zero part's patterns
    r0 = S.paired_signflip(np.r_[np.ones(5), np.zeros(3)], np.zeros(8))
    assert r0["n_nonzero"] == 5 and r0["p"] == pytest.approx(2 / 32)
    assert S.paired_signflip(np.zeros(4), np.zeros(4))["p"] == 1.0


def test_signflip_monte_carlo_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 200)
    shifted = S.paired_signflip(base, base - 0.1 + rng.normal(0, 0.1, 200), n_perm=2000)
    assert not shifted["exact"] and shifted["p"] < 0.01
    null = S.paired_signflip(base, base + rng.normal(0, 0.1, 200), n_perm=2000)
    assert null["p"] > 0.05


# ---- multiplicity


def test_holm_and_bh_golden_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 -> 4*.005=.02, 3*.01=.03, 2*.03=.06, max(.06, 1*.04)=.06
    assert S.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: m p / rank = .02, .02, .04, .04, then running min from the top
    assert S.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert S.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert S.benjamini_hochberg([0.2, 0.9, 0.5]) == pytest.approx([0.6, 0.9, 0.75])
    out = S.holm([0.01, np.nan, 0.02])
    assert math.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.02])


# ---- layer profiles


def tied_profiles(L=30, seed=0, n_boot=400, noise=0.01):
    """Two profiles with two tied maxima at layers 5 and 24, the tie broken either way by 1e-6,
    plus bootstrap replicates with noise."""
    rng = np.random.default_rng(seed)
    base = np.full(L, 0.02)
    base[[5, 24]] = 0.1
    a, b = base.copy(), base.copy()
    a[5] += 1e-6
    b[24] += 1e-6
    boot = lambda p: np.clip(p + rng.normal(0, noise, (n_boot, L)), 0, None)  # noqa: E731
    return (boot(a), a), (boot(b), b)


def test_profile_location_of_known_profiles():
    flat = S.profile_location(None, np.ones(9))
    assert flat["com"] == pytest.approx(0.5) and flat["median_depth"] == pytest.approx(0.5)
    assert flat["early_share"] == pytest.approx(1 / 3) and math.isnan(flat["com_lo"])
    first = S.profile_location(None, np.r_[1.0, np.zeros(9)])
    assert first["com"] == pytest.approx(0.05) and first["median_depth"] == pytest.approx(0.05)
    assert first["early_share"] == 1.0
    # L not divisible by 3: the straddling layer counts in proportion
    assert S.profile_location(None, np.ones(4))["early_share"] == pytest.approx(1 / 3)
    # a floor removes chance (e.g. mean AUROC 0.5)
    auroc = S.profile_location(None, np.r_[0.5, 0.5, 0.7, 0.5], floor=0.5)
    assert auroc["com"] == pytest.approx(2.5 / 4)
    assert math.isnan(S.profile_location(None, np.zeros(5))["com"])


def test_profile_location_bootstrap_ci_covers_point():
    (ba, a), _ = tied_profiles()
    loc = S.profile_location(ba, a)
    assert loc["com_lo"] < loc["com"] < loc["com_hi"]
    assert loc["replicates"].shape == (400, 3)


def test_tied_maxima_do_not_flip_the_comparison():
    pa, pb = tied_profiles()
    la, lb = S.profile_location(*pa), S.profile_location(*pb)
    assert abs(la["argmax_depth"] - lb["argmax_depth"]) > 0.6  # the argmax rule would flip
    cmp = S.compare_profiles(la, lb)
    assert cmp["verdict"] == "not distinguishable" and abs(cmp["diff"]) < 1e-4
    assert S.compare_profiles(pa, pb, quantity="median_depth")["verdict"] == "not distinguishable"
    assert S.early_layers_verdict(*pa)["verdict"] == S.early_layers_verdict(*pb)["verdict"]


def test_compare_profiles_detects_a_real_shift():
    rng = np.random.default_rng(1)
    L = 20
    early, late = np.zeros(L), np.zeros(L)
    early[:5], late[-5:] = 0.1, 0.1
    boot = lambda p: np.clip(p + rng.normal(0, 0.01, (300, L)), 0, None)  # noqa: E731
    cmp = S.compare_profiles((boot(early), early), (boot(late), late))
    assert cmp["verdict"] == "differs" and cmp["hi"] < 0
    assert S.compare_profiles((None, early), (None, late))["verdict"].startswith("no CI")


def test_early_layers_verdict_each_branch():
    rng = np.random.default_rng(2)
    L = 30
    boot = lambda p: np.clip(p + rng.normal(0, 0.005, (300, L)), 0, None)  # noqa: E731
    front = np.r_[np.full(10, 0.05), np.full(20, 0.01)]
    back = front[::-1].copy()
    flat = np.full(L, 0.03)
    assert S.early_layers_verdict(boot(front), front)["verdict"] == "early (supported)"
    assert S.early_layers_verdict(boot(back), back)["verdict"] == "later than uniform (contradicted)"
    assert S.early_layers_verdict(boot(flat), flat)["verdict"] == "not distinguishable from uniform"
    # two tied maxima, one early and one late: not "early", whichever way the tie is broken
    pa, pb = tied_profiles()
    for p in (pa, pb):
        assert S.early_layers_verdict(*p)["verdict"] != "early (supported)"


# ---- evaluators at matched FPR


def labelled(n_pos=400, n_neg=1600, seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    signal = np.where(y, rng.normal(0.7, 0.12, y.size), rng.normal(0.35, 0.12, y.size))
    return y, np.clip(signal, 0, 1), rng


def test_threshold_at_fpr_respects_the_target_with_ties():
    y = np.r_[np.ones(4, bool), np.zeros(10, bool)]
    s = np.r_[0.9, 0.8, 0.6, 0.2, 0.7, 0.6, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0]
    r = S.threshold_at_fpr(s, y, 0.2)  # two false positives allowed; the 3rd highest negative ties
    assert r["fpr"] == pytest.approx(0.1) and r["threshold"] > 0.6
    assert r["tpr"] == pytest.approx(0.5)
    r = S.threshold_at_fpr(s, y, 0.3)
    assert r["fpr"] == pytest.approx(0.3) and r["tpr"] == pytest.approx(0.75)
    assert S.threshold_at_fpr(s, y, 0.0)["fpr"] == 0.0
    assert S.threshold_at_fpr(s, y, 1.0)["fpr"] == 1.0


def test_union_at_fpr_hits_the_target():
    y, sig, rng = labelled()
    scores = {"a": sig, "b": np.clip(sig + rng.normal(0, 0.1, sig.size), 0, 1)}
    u = S.union_at_fpr(scores, y, 0.05)
    assert u["fpr"] <= 0.05 and u["fpr"] > 0.045
    assert u["level"] <= u["fpr"]
    flags = np.any(np.stack([scores[n] >= u["thresholds"][n] for n in scores]), axis=0)
    assert (flags == u["flags"]).all()


def test_union_no_better_at_matched_fpr_is_not_underestimation():
    y, sig, rng = labelled()
    noise = rng.uniform(0, 1, sig.size)  # an uninformative evaluator that flags ~half at 0.5
    r = S.underestimation_at_matched_fpr({"good": sig, "noise": noise}, y, n_boot=500)
    assert r["naive"]["verdict"] == "underestimates"  # at 0.5 the union flags more
    assert r["naive"]["union_rate"] > r["naive"]["best_rate"]
    assert r["verdict"] == "not shown at matched FPR"
    assert r["best"] == "good" and r["recall_diff"] <= 0
    # identical evaluators: the union is each of them
    same = S.underestimation_at_matched_fpr({"a": sig, "b": sig.copy()}, y, n_boot=200)
    assert same["recall_diff"] == 0 and same["p"] == 1.0
    assert same["verdict"] == "not shown at matched FPR"


def test_complementary_evaluators_do_underestimate():
    rng = np.random.default_rng(3)
    n_pos, n_neg = 400, 1600
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    kind = rng.random(y.size) < 0.5  # half the insults are of a kind only evaluator A sees
    base = rng.uniform(0, 0.4, y.size)
    a = np.where(y & kind, rng.uniform(0.6, 1, y.size), base)
    b = np.where(y & ~kind, rng.uniform(0.6, 1, y.size), rng.uniform(0, 0.4, y.size))
    r = S.underestimation_at_matched_fpr({"a": a, "b": b}, y, fpr=0.01, n_boot=500)
    assert r["verdict"] == "underestimates" and r["lo"] > 0.3


# ---- pre-prompt readings


def test_preprompt_readings_separate_the_two_readings():
    n = 400
    idx = np.arange(n)
    base = idx < 200          # T = .5
    aura = idx < 160          # T = .4 -> F(aura|base) = 1.25
    pre = idx < 100           # T = .25 -> pre-prompting alone does 2x
    aura_pre = idx < 80       # T = .2 -> F(aura_pre|base) = 2.5, F(aura_pre|pre) = 1.25
    r = S.preprompt_readings(base, aura, pre, aura_pre, n_boot=500)
    assert r["i"]["aura"]["factor"] == pytest.approx(1.25)
    assert r["i"]["aura_pre"]["factor"] == pytest.approx(2.5)
    assert r["i"]["lift"]["factor"] == pytest.approx(2.0) and r["i"]["lift"]["p"] < 1e-6
    assert r["ii"]["aura_pre_vs_pre"]["factor"] == pytest.approx(1.25)
    assert r["ii"]["lift"]["factor"] == pytest.approx(1.0)
    assert r["ii"]["lift"]["lo"] < 1 < r["ii"]["lift"]["hi"]  # AURA gains nothing from the pre-prompt
    assert r["pre_vs_base"]["factor"] == pytest.approx(2.0)
    for f in (r["i"]["aura"], r["i"]["aura_pre"], r["ii"]["aura_pre_vs_pre"]):
        assert f["lo"] <= f["factor"] <= f["hi"]


# ---- method against control at equal perplexity cost


def test_at_equal_cost_hand_computed():
    n = 200
    base, method, control = np.full(n, 0.8), np.full(n, 0.4), np.full(n, 0.2)   # factors 2 and 4
    # the control costs +46.41% = 1.21**2 - 1: twice the method's log-perplexity (+21%), so along
    # log factor ∝ log perplexity its factor at +21% is 4 ** (1/2) = 2, the method's: ratio 1
    r = S.at_equal_cost(base, method, control, 0.21, 1.21 ** 2 - 1, n_boot=200)
    assert r["relation"] == "trade-off"
    assert (r["method_factor"], r["control_factor"]) == (pytest.approx(2.0), pytest.approx(4.0))
    assert r["at_cost"] == pytest.approx(0.21)
    assert r["ratio"] == pytest.approx(1.0) and r["lo"] == pytest.approx(1.0) and r["hi"] == pytest.approx(1.0)
    # the grid's Gemma Meow2X cell: 1.258x at +15.5% against a control's 1.109x at +6.4%;
    # exp(log 1.258 * log 1.064 / log 1.155) = 1.104, so 1.104 / 1.109 = 0.995 at +6.4%
    m = np.full(n, 0.8 / 1.258)
    c = np.full(n, 0.8 / 1.109)
    r = S.at_equal_cost(base, m, c, 0.155, 0.064, n_boot=200)
    assert r["relation"] == "trade-off" and r["at_cost"] == pytest.approx(0.064)
    expected = math.exp(math.log(1.258) * math.log(1.064) / math.log(1.155)) / 1.109
    assert r["ratio"] == pytest.approx(expected) and r["ratio"] == pytest.approx(0.995, abs=1e-3)


def test_at_equal_cost_relations_and_interval():
    rng = np.random.default_rng(0)
    n = 600
    base = rng.random(n) < 0.6
    method = base & (rng.random(n) < 0.5)           # about 2x
    control = base & (rng.random(n) < 0.9)          # about 1.1x
    r = S.at_equal_cost(base, method, control, 0.05, 0.30, n_boot=500)
    assert r["relation"] == "method dominates"
    assert r["lo"] > 1 and r["lo"] <= r["ratio"] <= r["hi"]
    r = S.at_equal_cost(base, control, method, 0.30, 0.05, n_boot=500)
    assert r["relation"] == "control dominates" and r["hi"] < 1
    # a free arm (cost <= 0) gives nothing to interpolate by: the relation only
    r = S.at_equal_cost(base, method, control, -0.02, 0.30, n_boot=100)
    assert r["relation"] == "method dominates" and math.isnan(r["ratio"])
    # pooled control seeds are rates, not indicators
    r = S.at_equal_cost(base, method, (control + base) / 2, 0.05, 0.30, n_boot=100)
    assert r["control_factor"] > 0.99


def test_at_equal_cost_rejects_bad_input():
    ok = np.ones(5)
    with pytest.raises(ValueError, match="same prompts"):
        S.at_equal_cost(ok, ok, np.ones(4), 0.1, 0.1)
    with pytest.raises(ValueError, match=r"rates in \[0, 1\]"):
        S.at_equal_cost(ok, ok * 2, ok, 0.1, 0.1)
    with pytest.raises(ValueError, match="control_cost must be a finite"):
        S.at_equal_cost(ok, ok, ok, 0.1, math.nan)
    with pytest.raises(ValueError, match="method_cost must be a finite"):
        S.at_equal_cost(ok, ok, ok, -1.0, 0.1)


# ---- verdict


def test_verdict_each_branch():
    # significant, right direction
    assert S.verdict((1.6, 3.0), 0.001, mde=1.5, claimed=2.2) == "reproduces"
    # significant but the wrong way (the method raises toxicity), powered: does not reproduce
    assert S.verdict((0.5, 0.8), 0.001, mde=1.5, claimed=2.2, effect=0.65) == "does not reproduce"
    # not significant, powered, CI excludes the claim
    assert S.verdict((0.8, 1.4), 0.4, mde=1.5, claimed=2.2) == "does not reproduce"
    # not significant, powered, CI contains the claim
    assert S.verdict((0.9, 2.5), 0.06, mde=1.5, claimed=2.2) == "inconclusive (underpowered)"
    # not significant, underpowered (MDE 2.8 > claimed 2.2), even though the CI excludes 2.2
    assert S.verdict((0.8, 1.4), 0.4, mde=2.8, claimed=2.2) == "inconclusive (underpowered)"
    assert S.verdict((0.8, 1.4), 0.4, mde=math.inf, claimed=2.2) == "inconclusive (underpowered)"
    # adjustment matters: raw p .01 -> adjusted .08
    assert S.verdict((1.2, 3.0), 0.08, mde=3.0, claimed=2.2) == "inconclusive (underpowered)"
    # an infinite upper bound is fine
    assert S.verdict((1.5, math.inf), 0.01, mde=2.0, claimed=2.2) == "reproduces"


def test_percentile_interval_is_the_one_helper():
    x = np.random.default_rng(1).normal(size=(401, 3))
    lo, hi = S.percentile_interval(x, 0.9, axis=0)
    assert np.allclose(lo, np.quantile(x, 0.05, axis=0)) and np.allclose(hi, np.quantile(x, 0.95, axis=0))
    lo, hi = S.percentile_interval(x[:, 0], 0.9, method="inverted_cdf")
    assert isinstance(lo, float) and (lo, hi) == tuple(np.quantile(x[:, 0], [0.05, 0.95],
                                                                   method="inverted_cdf"))
    assert S.percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    # next to +inf the bound is +inf (numpy alone gives inf - inf = NaN)
    assert S.percentile_interval([1.0, 2.0, np.inf, np.inf], 0.5) == (1.75, np.inf)
    with pytest.raises(ValueError, match="ci must be"):
        S.percentile_interval(x, 95)
    with pytest.raises(ValueError, match="non-empty"):
        S.percentile_interval([], 0.95)
