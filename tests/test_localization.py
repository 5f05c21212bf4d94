"""Unit and layer scores: exact agreement with scikit-learn and with the textbook formulas, bootstrap
intervals, TRNE's gradient scores (computed, never applied), and the early-layer test."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from detox_utils import localization as loc

TOXIC = ["You are a worthless moron.", "Shut up, idiot, nobody likes you.", "I hate you"]
NEUTRAL = ["The council will open the bridge in spring.", "Thank you for your help.", "Shares rose on Monday."]


def _data(kind: str, n_t: int = 41, n_n: int = 29, units: tuple = (3, 7), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":  # few distinct integer values: ties everywhere
        return (torch.randint(0, 4, (n_t, *units), generator=gen).float(),
                torch.randint(0, 3, (n_n, *units), generator=gen).float())
    return torch.randn(n_t, *units, generator=gen) + 0.3, torch.randn(n_n, *units, generator=gen)


def _sklearn(metric, toxic, neutral) -> np.ndarray:
    x = torch.cat([toxic, neutral]).reshape(len(toxic) + len(neutral), -1).double().numpy()
    y = np.r_[np.ones(len(toxic)), np.zeros(len(neutral))]
    return np.array([metric(y, x[:, j]) for j in range(x.shape[1])]).reshape(toxic.shape[1:])


# --------------------------------------------------------------------------------------------------
# unit scores


@pytest.mark.parametrize("kind", ["ties", "continuous"])
def test_auroc_equals_sklearn(kind, monkeypatch):
    toxic, neutral = _data(kind)
    ref = _sklearn(roc_auc_score, toxic, neutral)
    got = loc.auroc(toxic, neutral)
    assert got.shape == (3, 7) and got.dtype == torch.float64
    assert np.abs(got.numpy() - ref).max() <= 1e-9
    monkeypatch.setattr(loc, "_CHUNK_ELEMENTS", 100)  # several chunks of units
    assert torch.equal(loc.auroc(toxic, neutral), got)


def test_auroc_equals_midrank_formula():
    toxic, neutral = _data("ties", units=(5,))
    n_t, n_n = len(toxic), len(neutral)
    ranks = stats.rankdata(torch.cat([toxic, neutral]).numpy(), axis=0)  # average ranks for ties
    expected = (ranks[:n_t].sum(0) - n_t * (n_t + 1) / 2) / (n_t * n_n)
    assert np.abs(loc.auroc(toxic, neutral).numpy() - expected).max() <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32])
def test_auroc_and_average_precision_in_every_dtype(dtype):
    toxic, neutral = _data("ties", units=(6,))
    toxic, neutral = (toxic - 1.5) * 4, (neutral - 1) * 4  # negative values too
    t, n = toxic.to(dtype), neutral.to(dtype)
    for score, metric in ((loc.auroc, roc_auc_score), (loc.average_precision, average_precision_score)):
        ref = _sklearn(metric, t.double(), n.double())
        assert np.abs(score(t, n).numpy() - ref).max() <= 1e-9, (score.__name__, dtype)


def test_auroc_special_values():
    # -0.0 ties with +0.0, infinities order as numbers (sklearn refuses inf: compare with midranks)
    toxic = torch.tensor([[0.0], [float("inf")], [-1.0], [-0.0]])
    neutral = torch.tensor([[-0.0], [float("-inf")], [0.0], [2.0], [-1.0]])
    for dtype in (torch.float32, torch.float64):
        ranks = stats.rankdata(torch.cat([toxic, neutral]).double().numpy(), axis=0)
        expected = (ranks[:4].sum(0) - 4 * 5 / 2) / (4 * 5)
        assert np.abs(loc.auroc(toxic.to(dtype), neutral.to(dtype)).numpy() - expected).max() <= 1e-12


def test_auroc_edge_cases():
    x = torch.zeros(4, 2)
    assert torch.equal(loc.auroc(x, x), torch.full((2,), 0.5, dtype=torch.float64))
    assert loc.auroc(torch.ones(3, 1), torch.zeros(2, 1)).item() == 1.0
    assert loc.auroc(torch.zeros(3, 1), torch.ones(2, 1)).item() == 0.0
    assert loc.auroc(np.array([2, 3]), np.array([1])).item() == 1.0  # numpy and ints accepted


def test_scores_reject_bad_input():
    with pytest.raises(ValueError, match="unit shapes differ"):
        loc.auroc(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least one toxic"):
        loc.auroc(torch.zeros(0, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        loc.mean_diff(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="more than 2 texts"):
        loc.cohens_d(torch.zeros(1, 2), torch.zeros(1, 2))


@pytest.mark.parametrize("kind", ["ties", "continuous"])
def test_average_precision_equals_sklearn(kind, monkeypatch):
    toxic, neutral = _data(kind)
    ref = _sklearn(average_precision_score, toxic, neutral)
    assert np.abs(loc.average_precision(toxic, neutral).numpy() - ref).max() <= 1e-9
    monkeypatch.setattr(loc, "_CHUNK_ELEMENTS", 100)
    assert np.abs(loc.average_precision(toxic, neutral).numpy() - ref).max() <= 1e-9


def test_mean_diff_and_cohens_d_formulas():
    toxic, neutral = _data("continuous")
    t, n = toxic.double().numpy(), neutral.double().numpy()
    np.testing.assert_allclose(loc.mean_diff(toxic, neutral).numpy(), t.mean(0) - n.mean(0), rtol=1e-12)
    pooled = np.sqrt(((len(t) - 1) * t.var(0, ddof=1) + (len(n) - 1) * n.var(0, ddof=1)) / (len(t) + len(n) - 2))
    np.testing.assert_allclose(loc.cohens_d(toxic, neutral).numpy(), (t.mean(0) - n.mean(0)) / pooled, rtol=1e-10)
    constant = torch.ones(5, 2)
    assert torch.equal(loc.cohens_d(constant, constant), torch.zeros(2, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# layer scores


def test_layer_scores_reductions():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.4, 0.4, 0.6, 0.2]], dtype=torch.float64)
    assert torch.allclose(loc.layer_scores(s, "mean"), s.mean(1))
    assert torch.equal(loc.layer_scores(s, "max"), torch.tensor([0.9, 0.6], dtype=torch.float64))
    assert torch.allclose(loc.layer_scores(s, "top_k_mean", k=2), torch.tensor([0.8, 0.5], dtype=torch.float64))
    assert torch.equal(loc.layer_scores(s, "frac_above", threshold=0.5), torch.tensor([0.5, 0.25], dtype=torch.float64))
    with pytest.raises(ValueError, match="needs an int k"):
        loc.layer_scores(s, "top_k_mean")
    with pytest.raises(ValueError, match="threshold"):
        loc.layer_scores(s, "frac_above")
    with pytest.raises(ValueError, match="reduce must be one of"):
        loc.layer_scores(s, "median")
    with pytest.raises(ValueError, match=r"\[n_layers, units\]"):
        loc.layer_scores(s[0])


def test_bootstrap_layer_ci_finds_a_planted_layer():
    gen = torch.Generator().manual_seed(1)
    toxic, neutral = torch.randn(60, 4, 16, generator=gen), torch.randn(50, 4, 16, generator=gen)
    toxic[:, 2] += 1.0  # layer 2 separates toxic from neutral
    out = loc.bootstrap_layer_ci(toxic, neutral, score="auroc", n_boot=50, seed=3, progress=False)
    assert out["boot"].shape == (50, 4) and out["point"].shape == out["lo"].shape == out["hi"].shape == (4,)
    assert torch.allclose(out["point"], loc.auroc(toxic, neutral).mean(1))
    assert out["lo"][2] > out["hi"][[0, 1, 3]].max()
    assert (out["lo"] <= out["hi"]).all()
    again = loc.bootstrap_layer_ci(toxic, neutral, score="auroc", n_boot=50, seed=3, progress=False)
    assert torch.equal(again["boot"], out["boot"])
    other = loc.bootstrap_layer_ci(toxic, neutral, score="mean_diff", reduce="max", n_boot=50, seed=4, progress=False)
    assert not torch.equal(other["boot"], out["boot"])
    with pytest.raises(ValueError, match="score must be one of"):
        loc.bootstrap_layer_ci(toxic, neutral, score="gini")


def test_top_units_across_sites():
    a = torch.zeros(3, 5, dtype=torch.float64)
    b = torch.zeros(2, 4, dtype=torch.float64)
    a[2, 4], b[1, 0], a[0, 1] = 0.9, 0.8, 0.7
    assert loc.top_units({"post": a, "out": b}, 3) == [("post", 2, 4, 0.9), ("out", 1, 0, 0.8),
                                                       ("post", 0, 1, 0.7)]
    assert loc.top_units({"post": -a}, 1, largest=False)[0][:3] == ("post", 2, 4)
    with pytest.raises(ValueError, match="k must be"):
        loc.top_units({"post": a}, 16)


# --------------------------------------------------------------------------------------------------
# TRNE: contrastive gradient scores


def _reference_gradient_norms(lm, site: str) -> torch.Tensor:
    """The same quantity by the textbook route on a copy: one unpadded text at a time, the HF loss
    (mean next-token NLL of that text), ``backward`` into ``.grad``."""
    model = copy.deepcopy(lm.model)
    model.zero_grad()

    def mean_loss(texts):
        return sum(model(**(enc := lm.tokenizer(t, return_tensors="pt")), labels=enc["input_ids"]).loss
                   for t in texts) / len(texts)

    (mean_loss(TOXIC) - mean_loss(NEUTRAL)).backward()
    weights = [model.get_submodule(lm.arch.module_name(l, site)).weight for l in range(lm.n_layers)]
    return torch.stack([w.grad.double().norm() for w in weights])


@pytest.mark.parametrize("site", ["out", "pre"])
def test_contrastive_gradient_scores_never_touch_the_model(tiny_any, site):
    lm = tiny_any
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    frozen = next(lm.model.parameters())
    frozen.requires_grad_(False)  # a flag the function must restore as it found it
    scores = loc.contrastive_gradient_scores(lm, TOXIC, NEUTRAL, site=site, batch_size=2, progress=False)
    assert scores.shape == (lm.n_layers,) and (scores > 0).all()
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in lm.model.parameters())
    assert not frozen.requires_grad
    assert all(p.requires_grad for p in list(lm.model.parameters())[1:])
    frozen.requires_grad_(True)
    torch.testing.assert_close(scores, _reference_gradient_norms(lm, site), rtol=1e-4, atol=1e-7)


def test_contrastive_gradient_scores_validate(tiny_gpt2):
    with torch.no_grad():  # a caller's no_grad must not break the gradients
        inside = loc.contrastive_gradient_scores(tiny_gpt2, TOXIC, NEUTRAL, progress=False)
    assert torch.equal(inside, loc.contrastive_gradient_scores(tiny_gpt2, TOXIC, NEUTRAL, progress=False))
    with pytest.raises(ValueError, match="site must be the output of an MLP linear module"):
        loc.contrastive_gradient_scores(tiny_gpt2, TOXIC, NEUTRAL, site="post", progress=False)
    with pytest.raises(ValueError, match="fewer than 2 token"):
        loc.contrastive_gradient_scores(tiny_gpt2, ["a"], NEUTRAL, progress=False)


# --------------------------------------------------------------------------------------------------
# the early-layer test


def test_early_layer_test_exact_permutation_golden():
    # strictly decreasing scores over 6 layers, early = first 2: only the observed split reaches the
    # observed statistic, so the exact one-sided p-value is 1 / C(6, 2)
    out = loc.early_layer_test(torch.arange(6, 0, -1).double())
    assert out["early_layers"] == [0, 1]
    assert out["p_permutation"] == pytest.approx(1 / math.comb(6, 2))
    assert out["statistic"] == pytest.approx((6 + 5) / 2 - (4 + 3 + 2 + 1) / 4)
    assert out["spearman_rho"] == pytest.approx(-1.0)
    assert out["permutation"].startswith("exact")
    assert out["verdict"].startswith("not supported")  # 1/15 > 0.05: six layers cannot show it
    rising = loc.early_layer_test(torch.arange(6).double())
    assert rising["p_permutation"] == pytest.approx(1.0) and rising["verdict"].startswith("not supported")


def test_early_layer_test_monte_carlo_and_units():
    gen = torch.Generator().manual_seed(0)
    units = torch.rand(30, 50, generator=gen)
    units[:10] += 0.5  # the first third carries the signal
    out = loc.early_layer_test(units, n_perm=999, seed=0)
    assert out["permutation"].startswith("Monte Carlo")
    assert out["p_permutation"] == pytest.approx(1 / 1000)  # no relabelling beats the true split
    assert out["verdict"].startswith("supported")
    assert out["top_k"] == 15 and out["top_k_early"] == 15
    assert out["p_hypergeom"] == pytest.approx(stats.hypergeom.sf(14, 1500, 500, 15))
    assert "permutation test" in out["tested"]
    with pytest.raises(ValueError, match="at least 3 layers"):
        loc.early_layer_test(torch.ones(2))
