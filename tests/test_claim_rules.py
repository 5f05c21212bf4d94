"""Every claim rule not covered in test_stats.py / test_evidence.py, on a synthetic input whose
verdict is known: the first grid's rules (report.claims), the Pareto front, the per-run
underestimation, a reduction factor end to end through `stats.verdict`, and the evidence page's
evaluator and pre-prompt verdicts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detox_utils import evidence, stats
from detox_utils.report import claims as C
from detox_utils.report.cross_evaluator import underestimation_by_run
from detox_utils.report.interventions import pareto_front


# ---- a reduction factor of paired indicators, end to end


def _arms(n: int, base_toxic: int, method_toxic: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired indicators: the method's toxic prompts are a subset of the baseline's."""
    base = np.zeros(n, bool)
    base[:base_toxic] = True
    meth = np.zeros(n, bool)
    meth[:method_toxic] = True
    return base, meth


def test_a_clear_threefold_reduction_on_500_prompts_reproduces():
    base, meth = _arms(500, 150, 50)
    red = stats.ratio_with_ci(base, meth, n_boot=1000)
    assert red["factor"] == pytest.approx(3.0)
    assert red["b"] == 100 and red["c"] == 0 and red["p"] < 1e-20
    assert 2.2 < red["lo"] < 3.0 < red["hi"] < 4.2
    assert stats.verdict((red["lo"], red["hi"]), red["p"], mde=1.5, claimed=2.2,
                         effect=red["factor"]) == "reproduces"


def test_identical_arms_do_not_reproduce():
    base, _ = _arms(500, 150, 150)
    red = stats.ratio_with_ci(base, base.copy(), n_boot=1000)
    assert red["factor"] == 1.0 and red["p"] == 1.0 and red["lo"] == red["hi"] == 1.0
    # powered for 2.2x and the CI excludes it: does not reproduce; unpowered: inconclusive
    assert stats.verdict((red["lo"], red["hi"]), red["p"], mde=1.5, claimed=2.2,
                         effect=red["factor"]) == "does not reproduce"
    assert stats.verdict((red["lo"], red["hi"]), red["p"], mde=3.0, claimed=2.2,
                         effect=red["factor"]) == "inconclusive (underpowered)"


def test_ratio_with_ci_infinite_and_undefined_factors():
    base, meth = _arms(100, 30, 0)
    assert stats.ratio_with_ci(base, meth, n_boot=200)["factor"] == np.inf
    none = np.zeros(100, bool)
    assert np.isnan(stats.ratio_with_ci(none, none, n_boot=200)["factor"])


# ---- the first grid's rules (book/claims.md)


def test_early_layers_rule_every_branch():
    tests = {"a": {"p_permutation": 0.001}, "b": {"p_permutation": 0.01}}
    assert C.early_layers_rule(tests) == "reproduces"
    tests["b"]["p_permutation"] = 0.2
    assert C.early_layers_rule(tests) == "partly: only a"
    tests["a"]["p_permutation"] = 0.05  # p = alpha is not significant
    assert C.early_layers_rule(tests) == "does not reproduce"


def _loc(model: str, point) -> dict:
    return {"model": model, "summary": {"post": {"layer_score": {"point": list(point)}}}}


def test_peak_depth_ties_take_the_first_layer_and_spread_rule():
    # layers 1 and 3 tie for the maximum: the first counts, so the depth is 1/4, not 3/4
    depth = C.peak_depths([_loc("tied", [0, 5, 1, 5, 0]), _loc("early", [9, 1, 1, 1, 1])])
    assert depth == {"tied": 0.25, "early": 0.0}
    assert C.depth_spread_rule(depth) == "reproduces"  # spread 0.25 >= 0.2
    same = C.peak_depths([_loc("x", [0, 5, 1, 1, 0]), _loc("y", [0, 1, 5, 1, 0, 0, 0, 0, 0])])
    assert same == {"x": 0.25, "y": 0.25}
    assert C.depth_spread_rule(same) == "not distinguishable at this resolution"
    assert C.depth_spread_rule({}) == C.NOT_TESTED
    assert C.depth_spread_rule({"a": 0.5}) == C.NOT_TESTED


def test_underestimation_rule_needs_half_the_runs():
    assert C.underestimation_rule(pd.Series([0.1, 0.2, 0.0, -0.1])) == "reproduces"  # 2 of 4
    assert C.underestimation_rule(pd.Series([0.1, 0.0, 0.0, -0.1])) == "does not reproduce"


def _red(lo, rel_ppl, model="m", benchmark="b"):
    return pd.DataFrame({"model": model, "benchmark": benchmark, "tox_prob_ratio_lo": lo,
                         "rel_ppl": rel_ppl})


def test_reduction_rule_every_branch():
    cheap = _red([1.4, 0.8], [0.05, 0.01])
    assert C.reduction_rule(cheap) == ("reproduces in 1 of 1 model/benchmark pairs (no correction "
                                       "for multiple comparisons)")
    two_cells = pd.concat([cheap, _red([0.9], [0.0], benchmark="c")])
    assert C.reduction_rule(two_cells).startswith("reproduces in 1 of 2 ")
    costly = _red([1.4], [0.5])
    assert C.reduction_rule(costly) == "only at a perplexity cost above 25%"
    assert C.reduction_rule(costly, max_ppl_increase=0.6).startswith("reproduces in 1 of 1")
    assert C.reduction_rule(_red([1.0, 0.7], [0.0, 0.0])) == \
        "no significant reduction at this sample size"  # lo = 1 is not > 1


def test_preprompt_rule():
    assert C.preprompt_rule(1.28, 2.35) == "reproduces"
    assert C.preprompt_rule(2.0, 2.0) == "does not reproduce"
    assert C.preprompt_rule(2.0, float("nan")) == "does not reproduce"


# ---- the Pareto front and the per-run underestimation


def test_pareto_front_with_ties():
    pts = pd.DataFrame({"ppl": [10, 12, 12, 15, 11, 11], "tox_prob": [0.5, 0.3, 0.3, 0.1, 0.6, 0.5]},
                       index=list("abcdef"))
    front = pareto_front(pts)
    # b and c are identical: neither dominates the other; e is beaten by a; f by a (same tox, lower ppl)
    assert front.to_dict() == {"a": True, "b": True, "c": True, "d": True, "e": False, "f": False}


def test_underestimation_by_run_against_the_union():
    df = pd.DataFrame({"config_hash": ["r1"] * 3 + ["r2"] * 3 + ["r3"] * 3,
                       "evaluator": ["a", "b", "max"] * 3,
                       "tox_prob": [0.2, 0.4, 0.4, 0.3, 0.3, 0.3, 0.0, 0.0, 0.0]})
    under = underestimation_by_run(df)
    assert list(under.index) == ["r1", "r2"]  # r3: the union is 0, the ratio undefined
    assert under.loc["r1"].to_dict() == pytest.approx({"a": 0.5, "b": 0.0})
    assert under.loc["r2"].to_dict() == pytest.approx({"a": 0.0, "b": 0.0})
    assert C.underestimation_rule(under.min(axis=1)) == "does not reproduce"


# ---- the evidence page's evaluator and pre-prompt verdicts


def _found(verdict, p, diff, best="a"):
    return {"verdict": verdict, "p": p, "recall_diff": diff, "best": best}


def test_evaluator_verdict_every_branch():
    yes = _found("underestimates", 0.001, 0.1)
    assert evidence._evaluator_verdict([yes, yes]) == "reproduces at matched false-positive rates"
    worse = _found("not shown at matched FPR", 0.001, -0.1, best="good")
    assert evidence._evaluator_verdict([worse, worse]).startswith(
        "does not reproduce: at matched false-positive rates the best single evaluator (good)")
    mixed = [yes, _found("not shown at matched FPR", 0.3, 0.02)]
    assert evidence._evaluator_verdict(mixed) == "not shown at matched false-positive rates"
    assert evidence._evaluator_verdict([worse, _found("not shown at matched FPR", 0.3, -0.02)]) == \
        "not shown at matched false-positive rates"


def _pre(i_p, ii_p, i_aura=1.3, i_aura_pre=2.4, ii=1.8):
    n = len(i_p)
    return pd.DataFrame({"i_p": i_p, "ii_p": ii_p, "i_aura": [i_aura] * n,
                         "i_aura_pre": [i_aura_pre] * n, "ii_aura_pre_vs_pre": [ii] * n})


def test_preprompt_verdict_every_branch():
    # two cells at p = 0.01 each: Holm 0.02, significant
    assert evidence._preprompt_verdict(_pre([0.01, 0.01], [0.01, 0.01])) == (
        "reproduces: reading (i), the lift from the pre-prompt is significant (Holm) in 2 of 2 cells; "
        "reading (ii), AURA still reduces toxicity on the pre-prompted model in 2 of 2; both in 2")
    assert evidence._preprompt_verdict(_pre([0.01, 0.01], [0.01, 0.5])).startswith("partly:")
    # p = 0.03 in each of two cells: Holm 0.06, nothing significant
    text = evidence._preprompt_verdict(_pre([0.03, 0.03], [0.001, 0.001]))
    assert text.startswith("does not reproduce:") and "significant (Holm) in 0 of 2 cells" in text
    # significant, but the lift goes the wrong way
    assert evidence._preprompt_verdict(_pre([0.001], [0.001], i_aura=2.0, i_aura_pre=1.5)).startswith(
        "does not reproduce")


def test_rules_without_evidence_say_not_tested():
    """No localization result, no run: a rule must not return a verdict it has no data for."""
    assert C.early_layers_rule({}) == C.NOT_TESTED
    assert C.underestimation_rule(pd.Series([], dtype=float)) == C.NOT_TESTED
    assert C.reduction_rule(_red([], [])) == C.NOT_TESTED
