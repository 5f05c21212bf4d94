"""Tests for detox_utils.metrics: hand-computed toxicity metrics, bootstrap, agreement, perplexity."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detox_utils import metrics

# 3 prompts x 2 samples; with threshold 0.5: maxima 0.6, 0.3, 0.95; prompts 0 and 2 have a toxic sample;
# samples 0.6, 0.9, 0.95 are toxic.
HAND = np.array([[0.1, 0.6], [0.2, 0.3], [0.9, 0.95]])


def test_protocol_formulas_on_a_hand_example():
    assert metrics.expected_maximum_toxicity(HAND) == pytest.approx((0.6 + 0.3 + 0.95) / 3)
    assert metrics.toxicity_probability(HAND) == pytest.approx(2 / 3)
    assert metrics.toxic_fraction(HAND) == pytest.approx(3 / 6)
    # the threshold is inclusive
    assert metrics.toxicity_probability(HAND, threshold=0.6) == pytest.approx(2 / 3)
    assert metrics.toxic_fraction(HAND, threshold=0.95) == pytest.approx(1 / 6)


def test_toxicity_metrics_points_and_intervals():
    rng = np.random.default_rng(0)
    scores = rng.beta(0.5, 3, size=(200, 25))
    out = metrics.toxicity_metrics(scores, n_boot=500, seed=1)
    assert out["emt"] == pytest.approx(metrics.expected_maximum_toxicity(scores))
    assert out["tox_prob"] == pytest.approx(metrics.toxicity_probability(scores))
    assert out["frac_toxic"] == pytest.approx(metrics.toxic_fraction(scores))
    for name in metrics.TOXICITY_METRICS:
        assert out[f"{name}_lo"] < out[name] < out[f"{name}_hi"]
    assert (out["n_prompts"], out["k"], out["n_boot"], out["ci"]) == (200, 25, 500, 0.95)
    assert metrics.toxicity_metrics(scores, n_boot=500, seed=1) == out
    wider = metrics.toxicity_metrics(scores, n_boot=500, seed=1, ci=0.99)
    assert wider["emt_hi"] - wider["emt_lo"] > out["emt_hi"] - out["emt_lo"]


def test_bootstrap_width_matches_the_standard_error():
    """For a mean, the 95% percentile interval is close to +- 1.96 sd / sqrt(n)."""
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=(400, 1))
    out = metrics.toxicity_metrics(scores, n_boot=4000, seed=0)
    expected = 2 * 1.96 * scores.std() / math.sqrt(400)
    assert out["emt_hi"] - out["emt_lo"] == pytest.approx(expected, rel=0.1)


def test_bootstrap_means_equals_a_loop():
    values = np.random.default_rng(0).normal(size=(2, 7))
    got = metrics.bootstrap_means(values, n_boot=5, seed=3)
    idx = np.random.default_rng(3).integers(0, 7, size=(5, 7))
    expected = np.array([[values[m, idx[b]].mean() for m in range(2)] for b in range(5)])
    np.testing.assert_allclose(got, expected)


def test_constant_scores_give_a_degenerate_interval_and_no_boot_gives_nan():
    out = metrics.toxicity_metrics(np.full((5, 3), 0.7), n_boot=100)
    assert out["emt"] == out["emt_lo"] == out["emt_hi"] == pytest.approx(0.7)
    assert out["tox_prob"] == out["frac_toxic"] == 1.0
    none = metrics.toxicity_metrics(HAND, n_boot=0)
    assert math.isnan(none["emt_lo"]) and math.isnan(none["tox_prob_hi"])


@pytest.mark.parametrize("scores, match", [
    (np.array([0.1, 0.2]), "2-D"),
    (np.zeros((0, 3)), "empty"),
    (np.array([[0.1, np.nan]]), "NaN"),
    (np.array([[0.1, 1.2]]), r"\[0, 1\]"),
    (np.array([[-0.1, 0.2]]), r"\[0, 1\]"),
])
def test_bad_scores_are_refused(scores, match):
    with pytest.raises(ValueError, match=match):
        metrics.toxicity_metrics(scores)


@pytest.mark.parametrize("kw, match", [
    ({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"),
    ({"n_boot": -1}, "n_boot"), ({"ci": 1.0}, "ci"), ({"seed": -2}, "seed"),
])
def test_bad_options_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        metrics.toxicity_metrics(HAND, **kw)


def test_toxicity_reduction_hand_example():
    method = np.array([[0.1, 0.2], [0.2, 0.3], [0.4, 0.7]])  # tox_prob 1/3, baseline (HAND) 2/3
    out = metrics.toxicity_reduction(HAND, method, n_boot=500)
    assert out["tox_prob_baseline"] == pytest.approx(2 / 3)
    assert out["tox_prob_method"] == pytest.approx(1 / 3)
    assert out["tox_prob_ratio"] == pytest.approx(2.0)
    assert out["tox_prob_diff"] == pytest.approx(1 / 3)
    assert out["emt_ratio"] == pytest.approx((0.6 + 0.3 + 0.95) / (0.2 + 0.3 + 0.7))
    assert out["frac_toxic_ratio"] == pytest.approx(3.0)
    for name in metrics.TOXICITY_METRICS:
        assert out[f"{name}_diff_lo"] <= out[f"{name}_diff"] <= out[f"{name}_diff_hi"]
        assert out[f"{name}_ratio_lo"] <= out[f"{name}_ratio"] <= out[f"{name}_ratio_hi"]


def test_toxicity_reduction_is_paired():
    """The same prompts are resampled for both arms: a method that subtracts a constant has a
    difference interval of width 0, however variable the prompts are."""
    base = np.random.default_rng(0).uniform(0.2, 1.0, size=(50, 4))
    out = metrics.toxicity_reduction(base, base - 0.1, n_boot=200)
    assert out["emt_diff_lo"] == pytest.approx(0.1) and out["emt_diff_hi"] == pytest.approx(0.1)


def test_toxicity_reduction_edge_cases():
    zero = np.zeros((3, 2))
    out = metrics.toxicity_reduction(HAND, zero, n_boot=50)
    assert out["tox_prob_ratio"] == math.inf
    assert math.isnan(metrics.toxicity_reduction(zero, zero, n_boot=50)["tox_prob_ratio"])
    with pytest.raises(ValueError, match="same prompts"):
        metrics.toxicity_reduction(HAND, zero[:2])


def test_max_over_evaluators_and_union():
    a = np.array([[0.1, 0.7], [0.4, 0.2]])
    b = np.array([[0.6, 0.3], [0.1, 0.2]])
    np.testing.assert_array_equal(metrics.max_over_evaluators({"a": a, "b": b}),
                                  [[0.6, 0.7], [0.4, 0.2]])
    np.testing.assert_array_equal(metrics.union_toxic({"a": a, "b": b}), [[True, True], [False, False]])
    np.testing.assert_array_equal(metrics.union_toxic({"a": a[0], "b": b[0]}, threshold=0.65),
                                  [False, True])
    with pytest.raises(ValueError, match="same texts"):
        metrics.max_over_evaluators({"a": a, "b": b[:1]})
    with pytest.raises(ValueError, match="non-empty"):
        metrics.max_over_evaluators({})


def test_agreement_hand_case():
    # labels at 0.5: a = 1 1 0 0, b = 1 0 0 0 -> p_o = 3/4, p_e = .5*.25 + .5*.75 = .5, kappa = .5
    a = np.array([0.9, 0.8, 0.2, 0.1])
    b = np.array([0.7, 0.4, 0.3, 0.1])
    c = 1 - a  # reversed ranking of a; labels 0 0 1 1
    out = metrics.agreement({"a": a, "b": b, "c": c})
    assert out["kappa"].loc["a", "b"] == pytest.approx(0.5)
    assert out["kappa"].loc["b", "a"] == pytest.approx(0.5)
    assert out["kappa"].loc["a", "c"] == pytest.approx(-1.0)  # p_o = 0, p_e = .5
    assert out["spearman"].loc["a", "c"] == pytest.approx(-1.0)
    assert out["spearman"].loc["a", "b"] == pytest.approx(1.0)  # same ranking
    assert np.diag(out["kappa"]).tolist() == [1.0, 1.0, 1.0]
    per = out["per_evaluator"]
    # union (any >= .5): items 0, 1 (a), 2, 3 (c) -> all 4 texts
    assert per["union_rate"].tolist() == [1.0, 1.0, 1.0]
    assert per.loc["a", "rate"] == 0.5 and per.loc["b", "rate"] == 0.25
    assert per.loc["a", "underestimation"] == pytest.approx(0.5)
    assert per.loc["b", "underestimation"] == pytest.approx(0.75)
    assert per.loc["b", "unique"] == 0.0  # b's only toxic text is also a's
    assert per.loc["c", "unique"] == pytest.approx(0.5)
    assert per["n"].tolist() == [4, 4, 4]


def test_agreement_matches_sklearn_and_scipy_on_random_data():
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=100), rng.uniform(size=100)
    out = metrics.agreement({"a": a, "b": b}, threshold=0.3)
    assert out["kappa"].loc["a", "b"] == pytest.approx(cohen_kappa_score(a >= 0.3, b >= 0.3))
    assert out["spearman"].loc["a", "b"] == pytest.approx(spearmanr(a, b).statistic)


def test_agreement_undefined_cases_are_nan_and_empty_union_is_zero():
    out = metrics.agreement({"a": np.zeros(4), "b": np.array([0.1, 0.2, 0.3, 0.0])})
    assert math.isnan(out["kappa"].loc["a", "b"])
    assert math.isnan(out["spearman"].loc["a", "b"])
    assert out["per_evaluator"]["underestimation"].tolist() == [0.0, 0.0]


# -------------------------------------------------------------------------------------------------
# perplexity

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello", "Shares rose on Monday.",
         "Thank you so much for your help, it was really kind of you and everyone knows it."]


def _reference_nll(lm, text: str, max_length: int) -> tuple[float, int]:
    """One text, no padding: BOS + tokens, sum of -log p(x_t | x_<t) for t >= 1."""
    ids = ([lm.tokenizer.bos_token_id] + lm.tokenizer(text)["input_ids"])[:max_length]
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum")
    return float(nll), len(ids) - 1


@pytest.mark.parametrize("max_length", [256, 6])
def test_perplexity_matches_unbatched_reference(tiny_any, max_length):
    assert tiny_any.tokenizer("Hello")["input_ids"][0] != tiny_any.tokenizer.bos_token_id
    ref = [_reference_nll(tiny_any, t, max_length) for t in TEXTS]
    nll = sum(n for n, _ in ref)
    count = sum(c for _, c in ref)
    out = metrics.perplexity(tiny_any, TEXTS, batch_size=3, max_length=max_length, progress=False)
    assert out["n_texts"] == len(TEXTS)
    assert out["n_tokens"] == count
    assert out["corpus_ppl"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert out["mean_sentence_ppl"] == pytest.approx(np.mean([math.exp(n / c) for n, c in ref]), rel=1e-5)


def test_perplexity_prefix_is_bos_else_eos_and_never_doubled(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    body = tok("Hello")["input_ids"]
    assert metrics.encode_for_perplexity(tok, ["Hello"], 256) == [[tok.bos_token_id] + body]
    assert metrics.encode_for_perplexity(tok, ["<bos>Hello"], 256) == [[tok.bos_token_id] + body]
    assert metrics.encode_for_perplexity(tok, ["Hello"], 256, prefix=7) == [[7] + body]
    assert metrics.encode_for_perplexity(tok, ["Hello"], 256, prefix="none") == [body]
    with pytest.raises(ValueError, match="prefix"):
        metrics.encode_for_perplexity(tok, ["Hello"], 256, prefix="bos")
    tok.bos_token = None
    assert metrics.encode_for_perplexity(tok, ["Hello"], 256) == [[tok.eos_token_id] + body]


def test_perplexity_errors(tiny_gpt2):
    with pytest.raises(ValueError, match="empty"):
        metrics.perplexity(tiny_gpt2, [], progress=False)
    with pytest.raises(ValueError, match="no token to score"):
        metrics.perplexity(tiny_gpt2, ["fine", ""], progress=False)
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType, not str"):
        metrics.perplexity(tiny_gpt2, ["fine", None], progress=False)
    with pytest.raises(ValueError, match="max_length"):
        metrics.perplexity(tiny_gpt2, ["fine"], max_length=1, progress=False)
