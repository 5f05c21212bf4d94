"""Scoring units and layers: where does the model separate toxic from neutral text?

Unit scores (pure functions of recorded responses, ``toxic [n_t, *units]`` vs ``neutral [n_n, *units]``,
CPU tensors or arrays, results in float64, chunked over units to bound memory):

- `auroc`: the probability that a toxic text's response exceeds a neutral one's, ties counting 1/2
  (AURA's expertise; equal to ``sklearn.metrics.roc_auc_score`` with midranks).
- `average_precision`: as ``sklearn.metrics.average_precision_score`` (ml-selfcond's expertise).
- `mean_diff`: the difference of means (Meow2X's activation differential, this compendium's reading).
- `cohens_d`: the difference of means over the pooled standard deviation.

Layer scores: `layer_scores` reduces ``[L, u]`` unit scores per layer; `bootstrap_layer_ci` resamples
texts for percentile confidence intervals; `contrastive_gradient_scores` is TRNE's localization (the
gradient norm of a toxic-minus-neutral LM loss per MLP weight, computed and never applied);
`early_layer_test` tests "toxicity is disproportionately encoded in early MLP layers"; `top_units` lists
the best units over sites.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch

from . import activations
from ._progress import tqdm
from .stats import percentile_interval

log = logging.getLogger(__name__)

# responses per chunk of units (texts x units): bounds the int64 temporaries to ~8 MB each
_CHUNK_ELEMENTS = 1 << 20

Reduce = Literal["mean", "max", "top_k_mean", "frac_above"]
REDUCES: tuple[str, ...] = ("mean", "max", "top_k_mean", "frac_above")


# --------------------------------------------------------------------------------------------------
# unit scores


def _as_pair(toxic, neutral) -> tuple[torch.Tensor, torch.Tensor]:
    toxic, neutral = torch.as_tensor(toxic).detach(), torch.as_tensor(neutral).detach()
    if toxic.dim() < 1 or neutral.dim() < 1:
        raise ValueError("toxic and neutral need a leading text axis: [n_t, *units] and [n_n, *units]")
    if toxic.shape[1:] != neutral.shape[1:]:
        raise ValueError(
            f"unit shapes differ: toxic {tuple(toxic.shape)} vs neutral {tuple(neutral.shape)} "
            "(expected [n_t, *units] and [n_n, *units])"
        )
    if toxic.shape[0] < 1 or neutral.shape[0] < 1:
        raise ValueError(
            f"need at least one toxic and one neutral text, got {toxic.shape[0]} and {neutral.shape[0]}"
        )
    for name, x in (("toxic", toxic), ("neutral", neutral)):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be real numbers, got {x.dtype}")
        if x.is_floating_point() and torch.isnan(x).any():
            raise ValueError(f"{name} contains NaN")
    return toxic, neutral


def _per_unit(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], toxic, neutral, chunk: int | None = None
) -> torch.Tensor:
    """Apply ``fn(toxic [n_t, c], neutral [n_n, c]) -> [c]`` over chunks of units (inputs on CPU, in
    their own dtype; half precision widened to float32, which is exact), the chunks spread over
    ``torch.get_num_threads()`` threads (each chunk's result is the same whichever thread runs it)."""
    toxic, neutral = _as_pair(toxic, neutral)
    units = toxic.shape[1:]
    t, n = toxic.reshape(toxic.shape[0], -1).cpu(), neutral.reshape(neutral.shape[0], -1).cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t, n = t.float(), n.float()
    chunk = chunk or max(1, _CHUNK_ELEMENTS // (t.shape[0] + n.shape[0]))
    out = torch.empty(t.shape[1], dtype=torch.float64)
    starts = range(0, t.shape[1], chunk)

    def one(s: int) -> None:
        out[s : s + chunk] = fn(t[:, s : s + chunk], n[:, s : s + chunk])

    workers = min(torch.get_num_threads(), len(starts))
    if workers <= 1:
        for s in starts:
            one(s)
    else:  # chunks are independent and NumPy's sorts release the GIL: one chunk per torch thread
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, starts))
    return out.reshape(units)


@dataclass(frozen=True)
class _TieGroups:
    """The runs of equal values in each unit's sorted responses (toxic and neutral pooled), for all units
    of a chunk, concatenated. Every array is ``[n_groups]`` int64."""

    unit: np.ndarray  # the unit (column) the group belongs to
    toxic: np.ndarray  # toxic responses in the group
    neutral: np.ndarray  # neutral responses in the group
    toxic_below: np.ndarray  # toxic responses of that unit below the group's value
    neutral_below: np.ndarray  # neutral responses of that unit below the group's value


def _sorted_with_labels(t: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's responses (toxic and neutral pooled) sorted ascending, ``[c, n_t + n_n]``, and
    whether each is toxic.

    Values of 32 bits or fewer become order-preserving integer keys with the label packed in the lowest
    bit, so one plain integer sort (SIMD-accelerated in NumPy) does it; 64-bit values use an argsort.
    """
    n_t, c = t.shape
    x = np.empty((c, n_t + n.shape[0]), dtype=np.result_type(t, n))  # units-major: rows sort fast
    x[:, :n_t], x[:, n_t:] = t.T, n.T
    if x.dtype.itemsize > 4:
        order = np.argsort(x, axis=1)
        return np.take_along_axis(x, order, axis=1), order < n_t
    if x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
        x += np.float32(0)  # -0.0 -> +0.0: they are equal
        bits = x.view(np.int32)
        bits ^= (bits >> 31) & 0x7FFFFFFF  # IEEE order as signed-integer order
        x = bits
    keys = x.astype(np.int64)
    keys <<= 1
    keys[:, n_t:] |= 1  # neutral: lowest bit 1, so equal values stay equal after >> 1
    keys.sort(axis=1)
    is_toxic = (keys & 1) == 0
    keys >>= 1
    return keys, is_toxic


def _tie_groups(t: np.ndarray, n: np.ndarray) -> _TieGroups:
    values, is_toxic = _sorted_with_labels(t, n)
    c, m = values.shape
    ends = np.ones((c, m), dtype=bool)  # last element of each run of equal values
    np.not_equal(values[:, 1:], values[:, :-1], out=ends[:, :-1])
    flat = np.flatnonzero(ends)
    unit, upto = np.divmod(flat, m)
    # toxic responses at or below each group's value
    toxic_upto = np.cumsum(is_toxic, axis=1, dtype=np.int32).ravel()[flat].astype(np.int64)
    all_upto = upto + 1
    first = np.ones(len(flat), dtype=bool)
    first[1:] = unit[1:] != unit[:-1]
    toxic_below = np.where(first, 0, np.roll(toxic_upto, 1))
    all_below = np.where(first, 0, np.roll(all_upto, 1))
    return _TieGroups(
        unit=unit,
        toxic=toxic_upto - toxic_below,
        neutral=(all_upto - all_below) - (toxic_upto - toxic_below),
        toxic_below=toxic_below,
        neutral_below=all_below - toxic_below,
    )


def _auroc(t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    g = _tie_groups(t.numpy(), n.numpy())
    wins2 = g.toxic * (2 * g.neutral_below + g.neutral)  # 2 x (#(t > n) + #(t == n) / 2), exact
    total = np.bincount(g.unit, weights=wins2, minlength=t.shape[1])
    return torch.from_numpy(total / (2.0 * t.shape[0] * n.shape[0]))


def auroc(toxic, neutral) -> torch.Tensor:
    """Area under the ROC curve of each unit, toxic as the positive class: ``[n_t, *units]``,
    ``[n_n, *units]`` -> ``[*units]`` float64.

    AUROC = P(x_toxic > x_neutral) + 1/2 P(x_toxic = x_neutral), computed exactly from one sort per unit:
    for each run of g_t toxic and g_n neutral equal values with b_n neutral values below, the run adds
    g_t (b_n + g_n / 2) wins. This is the Mann-Whitney midrank formula
    ``(sum of toxic ranks - n_t (n_t + 1) / 2) / (n_t n_n)`` and equals ``sklearn.metrics.roc_auc_score``.
    """
    return _per_unit(_auroc, toxic, neutral)


def _average_precision(t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    g = _tie_groups(t.numpy(), n.numpy())
    n_t, n_all = t.shape[0], t.shape[0] + n.shape[0]
    precision = (n_t - g.toxic_below) / (n_all - g.toxic_below - g.neutral_below)  # at threshold = value
    total = np.bincount(g.unit, weights=g.toxic * precision, minlength=t.shape[1])
    return torch.from_numpy(total / n_t)


def average_precision(toxic, neutral) -> torch.Tensor:
    """Average precision of each unit's response as a toxicity detector: ``[n_t, *units]``,
    ``[n_n, *units]`` -> ``[*units]`` float64.

    AP = sum over distinct thresholds of (recall step) x precision, as in
    ``sklearn.metrics.average_precision_score``; equivalently the mean over toxic texts i of
    ``#(toxic >= x_i) / #(all >= x_i)`` (tied scores share one threshold).
    """
    return _per_unit(_average_precision, toxic, neutral)


def mean_diff(toxic, neutral) -> torch.Tensor:
    """Difference of means, ``mean(toxic) - mean(neutral)``: ``[n_t, *units]``, ``[n_n, *units]`` ->
    ``[*units]`` float64."""
    return _per_unit(lambda t, n: t.double().mean(dim=0) - n.double().mean(dim=0), toxic, neutral)


def cohens_d(toxic, neutral, eps: float = 1e-8) -> torch.Tensor:
    """Cohen's d: ``(mean_t - mean_n) / s_pooled`` with
    ``s_pooled^2 = ((n_t - 1) var_t + (n_n - 1) var_n) / (n_t + n_n - 2)`` (unbiased variances) and
    ``s_pooled`` floored at ``eps`` (a constant unit scores 0). ``[n_t, *units]``, ``[n_n, *units]`` ->
    ``[*units]`` float64. Needs n_t + n_n > 2."""
    toxic, neutral = _as_pair(toxic, neutral)
    n_t, n_n = toxic.shape[0], neutral.shape[0]
    if n_t + n_n <= 2:
        raise ValueError(f"Cohen's d needs more than 2 texts in all, got {n_t} + {n_n}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")

    def d(t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        t, n = t.double(), n.double()
        ss = ((t - t.mean(dim=0)) ** 2).sum(dim=0) + ((n - n.mean(dim=0)) ** 2).sum(dim=0)
        sd = (ss / (n_t + n_n - 2)).sqrt().clamp_min(eps)
        return (t.mean(dim=0) - n.mean(dim=0)) / sd

    return _per_unit(d, toxic, neutral)


SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "auroc": auroc,
    "average_precision": average_precision,
    "mean_diff": mean_diff,
    "cohens_d": cohens_d,
}


# --------------------------------------------------------------------------------------------------
# layer scores


def layer_scores(
    unit_scores: torch.Tensor,
    reduce: Reduce = "mean",
    k: int | None = None,
    threshold: float | None = None,
) -> torch.Tensor:
    """One score per layer from ``unit_scores [L, u]`` -> ``[L]`` float64.

    ``mean`` / ``max`` over units; ``top_k_mean``: the mean of the ``k`` largest; ``frac_above``: the
    fraction of units scoring strictly above ``threshold`` (e.g. AUROC > 0.5).
    """
    scores = torch.as_tensor(unit_scores).double()
    if scores.dim() != 2:
        raise ValueError(f"unit_scores must be [n_layers, units], got shape {tuple(scores.shape)}")
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    if reduce == "mean":
        return scores.mean(dim=1)
    if reduce == "max":
        return scores.amax(dim=1)
    if reduce == "top_k_mean":
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= scores.shape[1]:
            raise ValueError(f"top_k_mean needs an int k in [1, {scores.shape[1]}], got {k!r}")
        return scores.topk(k, dim=1).values.mean(dim=1)
    if threshold is None:
        raise ValueError("frac_above needs a threshold (e.g. threshold=0.5 for AUROC)")
    return (scores > threshold).double().mean(dim=1)


def bootstrap_layer_ci(
    toxic,
    neutral,
    score: str = "auroc",
    reduce: Reduce = "mean",
    k: int | None = None,
    threshold: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    progress: bool = True,
) -> dict:
    """Percentile bootstrap confidence intervals for per-layer scores.

    ``toxic [n_t, L, u]`` and ``neutral [n_n, L, u]`` are recorded responses. Each replicate resamples
    toxic and neutral texts separately, with replacement, recomputes the unit scores (``score`` in
    `SCORES`) and reduces them per layer (`layer_scores` with ``reduce``, ``k``, ``threshold``).

    Returns ``dict(point [L], lo [L], hi [L], boot [n_boot, L], ci, n_boot, score, reduce)``: the point
    estimate on the full data and the ``(1-ci)/2`` and ``(1+ci)/2`` quantiles of the replicates.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}, got {score!r}")
    toxic, neutral = _as_pair(toxic, neutral)
    if toxic.dim() != 3:
        raise ValueError(f"expected toxic [n_t, L, u] and neutral [n_n, L, u], got {tuple(toxic.shape)}")
    if not isinstance(n_boot, int) or n_boot < 2:
        raise ValueError(f"n_boot must be an int >= 2, got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    fn = SCORES[score]

    def per_layer(t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return layer_scores(fn(t, n), reduce=reduce, k=k, threshold=threshold)

    point = per_layer(toxic, neutral)
    gen = torch.Generator().manual_seed(seed)
    n_t, n_n = toxic.shape[0], neutral.shape[0]
    boot = torch.empty(n_boot, toxic.shape[1], dtype=torch.float64)
    for b in tqdm(range(n_boot), desc=f"bootstrap {score}", disable=not progress):
        ti = torch.randint(n_t, (n_t,), generator=gen)
        ni = torch.randint(n_n, (n_n,), generator=gen)
        boot[b] = per_layer(toxic[ti], neutral[ni])
    lo, hi = (torch.from_numpy(b) for b in percentile_interval(boot.numpy(), ci, axis=0))
    return dict(point=point, lo=lo, hi=hi, boot=boot, ci=ci, n_boot=n_boot, score=score, reduce=reduce)


def top_units(
    scores: Mapping[str, torch.Tensor], k: int, largest: bool = True
) -> list[tuple[str, int, int, float]]:
    """The ``k`` best units over all sites: ``scores`` maps a site to ``[L, u]`` unit scores; returns
    ``[(site, layer, unit, score), ...]`` best first (highest, or lowest with ``largest=False``)."""
    if not scores:
        raise ValueError("scores is empty; expected {site: [n_layers, units]}")
    total = sum(torch.as_tensor(s).numel() for s in scores.values())
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= total:
        raise ValueError(f"k must be an int in [1, {total}], got {k!r}")
    found: list[tuple[str, int, int, float]] = []
    for site, s in scores.items():
        s = torch.as_tensor(s)
        if s.dim() != 2:
            raise ValueError(f"scores[{site!r}] must be [n_layers, units], got {tuple(s.shape)}")
        values, flat = s.flatten().topk(min(k, s.numel()), largest=largest)
        found += [(site, int(i) // s.shape[1], int(i) % s.shape[1], float(v)) for v, i in zip(values, flat)]
    found.sort(key=lambda row: row[3], reverse=largest)
    return found[:k]


# --------------------------------------------------------------------------------------------------
# TRNE: contrastive gradient norms


@contextlib.contextmanager
def _only_these_require_grad(model: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Within the block, ``params`` require grad and nothing else does; eval mode. Restored in finally."""
    flags = {p: p.requires_grad for p in model.parameters()}
    training = model.training
    chosen = {id(p) for p in params}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(training)


def _per_text_nll(logits: torch.Tensor, batch: activations.Batch) -> torch.Tensor:
    """Mean next-token NLL of each text, ``logits [b, t, V]`` -> ``[b]``, over positions whose input and
    target are both real tokens."""
    device = logits.device
    mask = batch.attention_mask.to(device).bool()
    valid = mask[:, :-1] & mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch.input_ids[:, 1:].to(device).flatten(), reduction="none"
    ).view(valid.shape)
    return torch.where(valid, nll, 0.0).sum(dim=1) / valid.sum(dim=1)


def contrastive_gradient_scores(
    lm,
    toxic_texts: Sequence[str],
    neutral_texts: Sequence[str],
    site: str = "out",
    batch_size: int = 8,
    max_length: int = 64,
    progress: bool = True,
) -> torch.Tensor:
    """TRNE's layer localization: ``||dJ/dW_l||_F`` for each layer's MLP weight ``W_l`` -> ``[n_layers]``.

    ``J = mean_toxic NLL - mean_neutral NLL``, where a text's NLL is its mean next-token negative
    log-likelihood (every text weighs the same). ``W_l`` is the weight of the linear module producing
    ``site`` at layer ``l`` (``out``: the MLP output projection; ``pre``/``up``: the input projections).
    Gradients are taken with ``torch.autograd.grad`` for those weights only: nothing is written to
    ``.grad``, no weight changes, and every ``requires_grad`` flag is restored afterwards.
    """
    if site not in lm.arch.linear_sites():
        raise ValueError(
            f"site must be the output of an MLP linear module, one of {lm.arch.linear_sites()}; got {site!r}"
        )
    params = [lm.model.get_submodule(lm.arch.module_name(l, site)).weight for l in range(lm.n_layers)]
    grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    sets = [  # a text needs two tokens for one next-token prediction
        (sign, activations.batches(lm, texts, batch_size, max_length, skip_special=False, min_tokens=2))
        for sign, texts in ((1.0, toxic_texts), (-1.0, neutral_texts))
    ]
    bar = tqdm(total=sum(len(b) for _, b in sets), desc=f"contrastive gradients {lm.name}",
               disable=not progress, unit="batch")
    with bar, torch.enable_grad(), _only_these_require_grad(lm.model, params):
        for sign, text_batches in sets:
            n_texts = sum(len(batch.index) for batch in text_batches)
            for batch in text_batches:
                logits = lm.model(**batch.model_inputs(lm.device)).logits
                loss = sign * _per_text_nll(logits, batch).sum() / n_texts
                for g, d in zip(grads, torch.autograd.grad(loss, params)):
                    g += d.float()
                bar.update(1)
    return torch.stack([g.double().norm() for g in grads]).cpu()


# --------------------------------------------------------------------------------------------------
# the "early layers" claim


def _permutation_p(
    scores: torch.Tensor, n_early: int, n_perm: int, gen: torch.Generator
) -> tuple[float, str]:
    """One-sided p-value of ``mean(first n_early) - mean(rest)`` under random layer labels."""
    L = scores.shape[0]

    def stat(early_sum: torch.Tensor) -> torch.Tensor:
        return early_sum / n_early - (scores.sum() - early_sum) / (L - n_early)

    observed = stat(scores[:n_early].sum())
    tol = 1e-12 * max(1.0, abs(float(observed)))
    if math.comb(L, n_early) <= n_perm:
        combos = torch.tensor(list(itertools.combinations(range(L), n_early)))
        null = stat(scores[combos].sum(dim=1))
        return float((null >= observed - tol).double().mean()), f"exact ({len(combos)} splits)"
    perms = torch.argsort(torch.rand(n_perm, L, generator=gen), dim=1)[:, :n_early]
    null = stat(scores[perms].sum(dim=1))
    return float((1 + (null >= observed - tol).sum()) / (1 + n_perm)), f"Monte Carlo ({n_perm} permutations)"


def early_layer_test(
    scores,
    early_frac: float = 1 / 3,
    reduce: Reduce = "mean",
    k: int | None = None,
    threshold: float | None = None,
    top_k: int | None = None,
    n_perm: int = 20_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Test "toxicity is disproportionately encoded in early MLP layers".

    ``scores`` is ``[L]`` (a score per layer, larger = more toxicity-related) or ``[L, u]`` unit scores,
    reduced per layer by `layer_scores` (``reduce``, ``k``, ``threshold``). The early layers are the
    first ``max(1, round(early_frac * L))``.

    What is tested (all one-sided, H1: early layers score higher):

    1. primary, permutation test: statistic = mean score of the early layers minus mean of the others;
       p = share of layer relabellings (all of them when there are at most ``n_perm``, else ``n_perm``
       random ones, with the +1 correction) whose statistic is >= the observed one.
    2. Spearman correlation of layer index with layer score (H1: rho < 0, scores fall with depth).
    3. only for unit scores: hypergeometric test that the ``top_k`` highest-scoring units (default 1% of
       all units) fall in the early layers more often than the early layers' share of units.

    The verdict says "supported" when the primary p-value is below ``alpha``. Layers are few (tens), so
    the test has little power; it says nothing about why a layer scores high.
    """
    from scipy import stats

    s = torch.as_tensor(scores).double()
    if s.dim() not in (1, 2):
        raise ValueError(f"scores must be [n_layers] or [n_layers, units], got shape {tuple(s.shape)}")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    per_layer = layer_scores(s, reduce, k, threshold) if s.dim() == 2 else s
    L = per_layer.shape[0]
    if L < 3:
        raise ValueError(f"need at least 3 layers to compare early with later ones, got {L}")
    if not 0 < early_frac < 1:
        raise ValueError(f"early_frac must be in (0, 1), got {early_frac}")
    n_early = min(L - 1, max(1, round(early_frac * L)))
    gen = torch.Generator().manual_seed(seed)
    p_perm, how = _permutation_p(per_layer, n_early, n_perm, gen)
    rho, p_rho = stats.spearmanr(torch.arange(L).numpy(), per_layer.numpy(), alternative="less")
    early_mean = float(per_layer[:n_early].mean())
    rest_mean = float(per_layer[n_early:].mean())
    result = {
        "n_layers": L,
        "early_layers": list(range(n_early)),
        "layer_scores": per_layer.tolist(),
        "early_mean": early_mean,
        "rest_mean": rest_mean,
        "statistic": early_mean - rest_mean,
        "p_permutation": p_perm,
        "permutation": how,
        "spearman_rho": float(rho),
        "p_spearman": float(p_rho),
        "alpha": alpha,
    }
    if s.dim() == 2:
        n_units = s.numel()
        top_k = top_k or max(1, round(0.01 * n_units))
        if not 1 <= top_k <= n_units:
            raise ValueError(f"top_k must be in [1, {n_units}], got {top_k}")
        in_early = int((s.flatten().topk(top_k).indices // s.shape[1] < n_early).sum())
        early_units = n_early * s.shape[1]
        result |= {
            "top_k": top_k,
            "top_k_early": in_early,
            "top_k_early_expected": top_k * early_units / n_units,
            "p_hypergeom": float(stats.hypergeom.sf(in_early - 1, n_units, early_units, top_k)),
        }
    result["tested"] = (
        f"H1: the first {n_early} of {L} layers score higher than the rest (one-sided permutation test on "
        f"the difference of mean layer scores, {how}); secondary: Spearman rho(layer, score) < 0"
        + ("; top-k units over-represented in early layers (hypergeometric)" if s.dim() == 2 else "")
    )
    verdict = "supported" if p_perm < alpha else "not supported"
    result["verdict"] = (
        f"{verdict} at alpha={alpha}: early-layer mean {early_mean:.4g} vs later {rest_mean:.4g} "
        f"(permutation p={p_perm:.3g}; Spearman rho={float(rho):.2f}, p={float(p_rho):.3g})"
    )
    return result
