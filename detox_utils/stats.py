"""Verdict rules that hold up: exact paired tests, multiplicity corrections, tie-robust layer-profile
summaries, evaluator comparisons at a matched false-positive rate, the two readings of the
pre-prompting claim, and one rule that turns an effect, its CI, an adjusted p and the study's power
into "reproduces" / "does not reproduce" / "inconclusive (underpowered)".

Conventions (one for the whole module)
--------------------------------------
- **Bootstrap intervals** are percentile intervals: the ``(1 - ci) / 2`` and ``(1 + ci) / 2``
  quantiles of the replicates with numpy's ``method="linear"`` (type 7) interpolation, computed by
  `bootstrap_ci` (on `percentile_interval`, the package's one interval helper). Replicates where a
  statistic is undefined (NaN, e.g. a 0 / 0 ratio) are dropped; ``+inf`` replicates (a ratio over a zero) are
  kept and sort last. Paired data are resampled by one index array shared by every arm
  (`paired_bootstrap_indices`), so pairs stay pairs.
  (``detox_utils.metrics`` and ``detox_utils.zeroshot`` call `percentile_interval` with
  ``inverted_cdf``, as the committed grid results were computed; the two differ by less than one
  replicate's gap.)
- **Reduction factors** are baseline / method (2.0 = halved); "the claimed direction" of a reduction
  claim is factor > 1.
- **p-values** are two-sided unless a function says otherwise; "significant" means p < alpha after
  the stated adjustment.

Nothing here imports torch.
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as _st

__all__ = [
    "percentile_interval", "bootstrap_ci", "paired_bootstrap_indices", "mcnemar_exact", "paired_signflip", "holm",
    "benjamini_hochberg", "ratio_with_ci", "profile_location", "compare_profiles",
    "early_layers_verdict", "threshold_at_fpr", "union_at_fpr", "underestimation_at_matched_fpr",
    "preprompt_readings", "at_equal_cost", "verdict",
]


# --------------------------------------------------------------------------------------------------
# bootstrap


def _check_ci(ci: float) -> float:
    if isinstance(ci, bool) or not isinstance(ci, (int, float)) or not 0 < ci < 1:
        raise ValueError(f"ci must be a number in (0, 1), e.g. 0.95, got {ci!r}")
    return float(ci)


def percentile_interval(samples, level: float = 0.95, axis: int = 0, method: str = "linear"):
    """The central ``level`` interval of ``samples`` along ``axis``: its ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles by numpy's quantile ``method`` -> ``(lo, hi)``, floats for 1-D
    input, arrays (``axis`` removed) otherwise. The one interval helper of the package; callers name
    their ``method`` ("linear" here and in the localization, "inverted_cdf" in `detox_utils.metrics`).
    Infinite samples are kept (an interpolation next to ``+inf`` is ``+inf``, not numpy's
    ``inf - inf`` NaN); NaN samples are not dropped here (`bootstrap_ci` drops them)."""
    level = _check_ci(level)
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"samples must be non-empty, got shape {arr.shape}")
    qs = ((1 - level) / 2, (1 + level) / 2)
    with np.errstate(invalid="ignore"):
        bounds = np.quantile(arr, qs, axis=axis, method=method)
    if np.isinf(arr).any():
        above = np.quantile(arr, qs, axis=axis, method="higher")
        below = np.quantile(arr, qs, axis=axis, method="lower")
        bad = np.isnan(bounds) & ~np.isnan(above) & ~np.isnan(below)
        bounds = np.where(bad, np.where(np.isposinf(above), above, below), bounds)
    if bounds.ndim == 1:
        return float(bounds[0]), float(bounds[1])
    return bounds[0], bounds[1]


def bootstrap_ci(replicates, ci: float = 0.95) -> tuple:
    """Percentile interval of bootstrap ``replicates``: [n_boot] -> (lo, hi) floats, or
    [n_boot, m] -> (lo [m], hi [m]) arrays. NaN replicates are dropped (all NaN -> NaN bounds);
    `percentile_interval` with numpy quantile method "linear"."""
    ci = _check_ci(ci)
    arr = np.asarray(replicates, dtype=np.float64)
    if arr.ndim not in (1, 2) or arr.shape[0] == 0:
        raise ValueError(f"replicates must be a non-empty [n_boot] or [n_boot, m] array, got {arr.shape}")

    def one(col: np.ndarray) -> tuple[float, float]:
        col = col[~np.isnan(col)]
        return (math.nan, math.nan) if col.size == 0 else percentile_interval(col, ci)

    if arr.ndim == 1:
        return one(arr)
    bounds = np.array([one(arr[:, j]) for j in range(arr.shape[1])]).reshape(-1, 2)
    return bounds[:, 0], bounds[:, 1]


def paired_bootstrap_indices(n: int, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """[n_boot, n] resample indices (with replacement) to apply to every arm of paired data."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _ratio(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, np.nan))


# --------------------------------------------------------------------------------------------------
# paired tests


def _as_bool(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1)")
        arr = arr.astype(bool)
    return arr


def mcnemar_exact(base_toxic, method_toxic) -> dict:
    """Exact two-sided McNemar test of paired binary outcomes (row i of both = the same prompt).

    ``b`` = prompts toxic under the baseline only, ``c`` = under the method only;
    p = min(1, 2 P(Bin(b + c, 1/2) <= min(b, c))), 1 when there is no discordant pair. Returns
    ``{b, c, n_discordant, n, p, base_rate, method_rate, favours}`` (``favours`` "method" when b > c,
    "baseline" when c > b, "neither")."""
    base, meth = _as_bool(base_toxic, "base_toxic"), _as_bool(method_toxic, "method_toxic")
    if base.shape != meth.shape:
        raise ValueError(f"base_toxic and method_toxic must be paired: shapes {base.shape} and {meth.shape}")
    b, c = int((base & ~meth).sum()), int((meth & ~base).sum())
    m = b + c
    p = 1.0 if m == 0 else float(min(1.0, 2 * _st.binom.cdf(min(b, c), m, 0.5)))
    return {"b": b, "c": c, "n_discordant": m, "n": int(base.size), "p": p,
            "base_rate": float(base.mean()), "method_rate": float(meth.mean()),
            "favours": "method" if b > c else "baseline" if c > b else "neither"}


def paired_signflip(base, method, n_perm: int = 10000, seed: int = 0, exact_max: int = 16,
                    alternative: str = "two-sided") -> dict:
    """Paired sign-flip (randomisation) test of the mean difference d = base - method, e.g. of the
    per-prompt max scores behind EMT.

    Under H0 each d_i is symmetric about 0, so its sign is flipped at random. Zero differences
    (ties) are kept: their flip changes nothing, so they only dilute the mean, which is the
    conservative zero rule (unlike Wilcoxon's "drop zeros"). Exact (all 2^m sign patterns of the m
    non-zero differences) when m <= ``exact_max``, otherwise Monte Carlo with ``n_perm`` patterns and
    p = (1 + #{|T*| >= |T|}) / (1 + n_perm). ``alternative``: "two-sided" or "greater" (base higher).
    Returns ``{mean_diff, p, n, n_nonzero, exact, n_perm}``."""
    b, m = np.asarray(base, float), np.asarray(method, float)
    if b.ndim != 1 or b.shape != m.shape or b.size == 0:
        raise ValueError(f"base and method must be paired 1-D arrays, got {b.shape} and {m.shape}")
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative must be 'two-sided' or 'greater', got {alternative!r}")
    d = b - m
    n = d.size
    observed = d.mean()
    nz = d[d != 0]
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if nz.size == 0:
        return {"mean_diff": 0.0, "p": 1.0, "n": n, "n_nonzero": 0, "exact": True, "n_perm": 1}
    if nz.size <= exact_max:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=nz.size)))
        null = signs @ nz / n
        exact, count_perm = True, len(signs)
    else:
        rng = np.random.default_rng(seed)
        null = np.empty(n_perm)
        for start in range(0, n_perm, 1000):
            size = min(1000, n_perm - start)
            s = rng.choice((-1.0, 1.0), size=(size, nz.size))
            null[start:start + size] = s @ nz / n
        exact, count_perm = False, n_perm
    if alternative == "two-sided":
        hits = np.sum(np.abs(null) >= abs(observed) - tol)
    else:
        hits = np.sum(null >= observed - tol)
    p = hits / count_perm if exact else (1 + hits) / (1 + count_perm)
    return {"mean_diff": float(observed), "p": float(min(1.0, p)), "n": n, "n_nonzero": int(nz.size),
            "exact": exact, "n_perm": int(count_perm)}


# --------------------------------------------------------------------------------------------------
# multiplicity


def _pvals(pvals) -> np.ndarray:
    p = np.asarray(pvals, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvals must be 1-D, got shape {p.shape}")
    if np.any((p[~np.isnan(p)] < 0) | (p[~np.isnan(p)] > 1)):
        raise ValueError("p-values must be in [0, 1]")
    return p


def _adjusted(pvals, step) -> np.ndarray:
    """Apply ``step`` (sorted non-NaN p-values [m] -> adjusted [m]) and put the results back in the
    input order; NaNs stay NaN and do not count in m."""
    p = _pvals(pvals)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    if q.size:
        order = np.argsort(q, kind="stable")
        res = np.empty(q.size)
        res[order] = np.minimum(1.0, step(q[order], q.size))
        out[ok] = res
    return out


def holm(pvals) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels ``multipletests(method="holm")``): sorted
    ascending, p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j)). NaNs stay NaN and do not count in m."""
    return _adjusted(pvals, lambda q, m: np.maximum.accumulate((m - np.arange(m)) * q))


def benjamini_hochberg(pvals) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (statsmodels ``method="fdr_bh"``): sorted ascending,
    p_adj(i) = min_{j >= i} min(1, m p(j) / j). NaNs stay NaN and do not count in m."""
    return _adjusted(pvals, lambda q, m: np.minimum.accumulate((q * m / np.arange(1, m + 1))[::-1])[::-1])


# --------------------------------------------------------------------------------------------------
# a reduction factor of paired binary outcomes


def ratio_with_ci(base_toxic, method_toxic, n_boot: int = 2000, seed: int = 0, ci: float = 0.95,
                  idx: np.ndarray | None = None) -> dict:
    """Reduction factor mean(base) / mean(method) of paired indicators with a paired percentile
    bootstrap CI and the exact McNemar p. Returns ``{factor, lo, hi, p, b, c, base_rate,
    method_rate}`` (factor inf when only the method's rate is 0, NaN when both are)."""
    base, meth = _as_bool(base_toxic, "base_toxic"), _as_bool(method_toxic, "method_toxic")
    idx = paired_bootstrap_indices(base.size, n_boot, seed) if idx is None else idx
    reps = _ratio(base[idx].mean(1), meth[idx].mean(1))
    lo, hi = bootstrap_ci(reps, ci)
    test = mcnemar_exact(base, meth)
    return {"factor": float(_ratio(base.mean(), meth.mean())), "lo": lo, "hi": hi, "p": test["p"],
            "b": test["b"], "c": test["c"], "base_rate": test["base_rate"],
            "method_rate": test["method_rate"]}


# --------------------------------------------------------------------------------------------------
# where a per-layer profile sits


def _mass(profile: np.ndarray, floor: float) -> np.ndarray:
    return np.clip(profile - floor, 0.0, None)


def _location_stats(w: np.ndarray, early_fraction: float) -> np.ndarray:
    """w: [..., L] non-negative masses -> [..., 3]: centre of mass over relative depth (l + 0.5) / L,
    the relative depth below which half the mass lies (each layer's mass spread uniformly over
    [l / L, (l + 1) / L]) and the share of mass at relative depth < early_fraction."""
    L = w.shape[-1]
    total = w.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = w / total[..., None]
    depth = (np.arange(L) + 0.5) / L
    com = (share * depth).sum(axis=-1)
    cum = np.cumsum(share, axis=-1)
    prev = np.concatenate([np.zeros_like(cum[..., :1]), cum[..., :-1]], axis=-1)
    # the layer where the cumulative share crosses 1/2, then linear within it
    j = np.clip((cum < 0.5).sum(axis=-1), 0, L - 1)
    cj = np.take_along_axis(share, j[..., None], axis=-1)[..., 0]
    pj = np.take_along_axis(prev, j[..., None], axis=-1)[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        median = (j + np.where(cj > 0, (0.5 - pj) / cj, 0.5)) / L
    cover = np.clip(early_fraction * L - np.arange(L), 0.0, 1.0)  # part of each layer before the cut
    early = (share * cover).sum(axis=-1)
    out = np.stack([com, median, early], axis=-1)
    out[total <= 0] = np.nan
    return out


def profile_location(boot, point, ci: float = 0.95, early_fraction: float = 1 / 3,
                     floor: float = 0.0) -> dict:
    """Where a per-layer score profile sits, summarised by functionals of the whole profile (so two
    layers tied for the maximum cannot flip the answer, unlike the argmax layer).

    ``point``: [L] per-layer scores (e.g. the share of toxic-selective units per layer); ``boot``:
    [n_boot, L] bootstrap replicates of it (``localization.bootstrap_layer_ci``'s ``boot``), or None
    (no CIs). The mass of layer l is max(score - ``floor``, 0) (use ``floor=0.5`` for a mean-AUROC
    profile, so chance contributes nothing). Returns ``{com, com_lo, com_hi, median_depth,
    median_depth_lo, median_depth_hi, early_share, early_share_lo, early_share_hi, uniform_share,
    argmax_depth, n_layers, n_boot, ci, replicates}``: ``com`` = centre of mass of relative depth
    (l + 0.5) / L (0.5 for a flat profile), ``median_depth`` = the relative depth below which half
    the mass lies, ``early_share`` = the share of mass in the first ``early_fraction`` of the depth
    (``uniform_share`` = ``early_fraction`` for a flat profile); ``argmax_depth`` = (argmax + 0.5) / L,
    for reference only (not tie-robust); ``replicates`` [n_boot, 3] (com, median, early) for
    `compare_profiles`. All NaN when the profile has no mass."""
    ci = _check_ci(ci)
    pt = np.asarray(point, dtype=np.float64)
    if pt.ndim != 1 or pt.size < 1 or np.isnan(pt).any():
        raise ValueError(f"point must be a 1-D profile without NaN, got shape {pt.shape}")
    if not 0 < early_fraction < 1:
        raise ValueError(f"early_fraction must be in (0, 1), got {early_fraction!r}")
    L = pt.size
    stats_pt = _location_stats(_mass(pt, floor), early_fraction)
    out = {"com": float(stats_pt[0]), "median_depth": float(stats_pt[1]),
           "early_share": float(stats_pt[2]), "uniform_share": float(early_fraction),
           "argmax_depth": float((np.argmax(pt) + 0.5) / L), "n_layers": L, "ci": ci}
    if boot is None:
        reps = np.full((0, 3), np.nan)
        bounds = [(math.nan, math.nan)] * 3
    else:
        bt = np.asarray(boot, dtype=np.float64)
        if bt.ndim != 2 or bt.shape[1] != L:
            raise ValueError(f"boot must be [n_boot, {L}], got shape {bt.shape}")
        reps = _location_stats(_mass(bt, floor), early_fraction)
        bounds = [bootstrap_ci(reps[:, j], ci) for j in range(3)]
    for name, (lo, hi) in zip(("com", "median_depth", "early_share"), bounds):
        out[f"{name}_lo"], out[f"{name}_hi"] = float(lo), float(hi)
    out["n_boot"] = int(reps.shape[0])
    out["replicates"] = reps
    return out


_QUANTITIES = {"com": 0, "median_depth": 1, "early_share": 2}


def compare_profiles(a, b, ci: float = 0.95, quantity: str = "com") -> dict:
    """Does profile ``a`` sit at a different relative depth than profile ``b`` (e.g. two models with
    different numbers of layers)?

    ``a``, ``b``: `profile_location` results or ``(boot, point)`` pairs. The difference a - b of
    ``quantity`` ("com", "median_depth" or "early_share") with a percentile CI from differencing the
    replicates index by index (valid for independent bootstraps and for bootstraps that shared their
    resample indices; with unequal n_boot the first min(n_boot) are used). Verdict "differs" when the
    CI excludes 0, else "not distinguishable"; "no CI" without replicates. Returns ``{diff, lo, hi,
    a, b, quantity, verdict, n_boot}``."""
    if quantity not in _QUANTITIES:
        raise ValueError(f"quantity must be one of {list(_QUANTITIES)}, got {quantity!r}")
    ci = _check_ci(ci)
    pa = a if isinstance(a, Mapping) else profile_location(*a, ci=ci)
    pb = b if isinstance(b, Mapping) else profile_location(*b, ci=ci)
    j = _QUANTITIES[quantity]
    diff = pa[quantity] - pb[quantity]
    n = min(pa["replicates"].shape[0], pb["replicates"].shape[0])
    if n == 0:
        lo = hi = math.nan
        word = "no CI (no bootstrap replicates)"
    else:
        lo, hi = bootstrap_ci(pa["replicates"][:n, j] - pb["replicates"][:n, j], ci)
        word = "differs" if (lo > 0 or hi < 0) else "not distinguishable"
    return {"diff": float(diff), "lo": float(lo), "hi": float(hi), "a": float(pa[quantity]),
            "b": float(pb[quantity]), "quantity": quantity, "verdict": word, "n_boot": int(n)}


def early_layers_verdict(boot, point, early_fraction: float = 1 / 3, ci: float = 0.95,
                         floor: float = 0.0) -> dict:
    """The "toxicity sits in early MLP layers" claim, from the share of a per-layer profile's mass in
    the first ``early_fraction`` of the depth (a layer straddling the cut counts in proportion), with
    its bootstrap CI, against the share of a flat profile (= ``early_fraction``).

    Verdict "early (supported)" when the CI lies above the flat share, "later than uniform
    (contradicted)" when it lies below, "not distinguishable from uniform" otherwise ("no CI" without
    replicates). Mass-based, so tied layers cannot flip it. Returns ``{early_share, lo, hi,
    uniform_share, com, verdict, n_layers}``."""
    loc = profile_location(boot, point, ci=ci, early_fraction=early_fraction, floor=floor)
    lo, hi = loc["early_share_lo"], loc["early_share_hi"]
    if math.isnan(lo):
        word = "no CI (no bootstrap replicates)"
    elif lo > early_fraction:
        word = "early (supported)"
    elif hi < early_fraction:
        word = "later than uniform (contradicted)"
    else:
        word = "not distinguishable from uniform"
    return {"early_share": loc["early_share"], "lo": lo, "hi": hi,
            "uniform_share": float(early_fraction), "com": loc["com"], "verdict": word,
            "n_layers": loc["n_layers"]}


# --------------------------------------------------------------------------------------------------
# evaluators at a matched false-positive rate


def _labelled(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = _as_bool(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same shape, got {s.shape} and {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores hold NaN")
    if y.all() or not y.any():
        raise ValueError("labels need both positives and negatives")
    return s, y


def _threshold_for_count(neg_desc: np.ndarray, allowed: int) -> float:
    """Smallest threshold t with #(negatives >= t) <= allowed (flag = score >= t)."""
    if allowed >= neg_desc.size:
        return -math.inf
    return float(np.nextafter(neg_desc[allowed], math.inf))


def threshold_at_fpr(scores, labels, fpr: float) -> dict:
    """The lowest threshold t (flag = score >= t) whose false-positive rate on the labelled data is
    <= ``fpr``: t is just above the (floor(fpr * n_neg) + 1)-th highest negative score, so ties never
    push the FPR over the target (with tied negative scores the achieved FPR can be below it).
    Returns ``{threshold, fpr, tpr, n_pos, n_neg}``."""
    s, y = _labelled(scores, labels)
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr!r}")
    neg = np.sort(s[~y])[::-1]
    t = _threshold_for_count(neg, int(math.floor(fpr * neg.size + 1e-9)))
    flags = s >= t
    return {"threshold": t, "fpr": float(flags[~y].mean()), "tpr": float(flags[y].mean()),
            "n_pos": int(y.sum()), "n_neg": int((~y).sum())}


def _check_dict(score_dict, labels) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if not isinstance(score_dict, Mapping) or not score_dict:
        raise ValueError("score_dict must be a non-empty {evaluator: scores} mapping")
    arrays, y = {}, None
    for name, s in score_dict.items():
        arrays[str(name)], y = _labelled(s, labels)
    return arrays, y


def union_at_fpr(score_dict, labels, fpr: float) -> dict:
    """Per-evaluator thresholds at one common quantile level such that the union (flag when any
    evaluator scores >= its threshold) has false-positive rate <= ``fpr``, as close as the data allow.

    The level is a number f of allowed false positives per evaluator (every evaluator's threshold is
    `threshold_at_fpr` at f / n_neg, the same quantile of its own negative scores); the union's FPR
    grows with f, and the largest f with union FPR <= ``fpr`` is found by bisection. Returns
    ``{thresholds: {name: t}, level, fpr, tpr, flags [n] bool, n_pos, n_neg}`` (``level`` = f / n_neg,
    each single evaluator's FPR)."""
    arrays, y = _check_dict(score_dict, labels)
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr!r}")
    negs = {n: np.sort(s[~y])[::-1] for n, s in arrays.items()}
    n_neg = int((~y).sum())

    def union(f: int):
        th = {n: _threshold_for_count(negs[n], f) for n in arrays}
        flags = np.any(np.stack([arrays[n] >= th[n] for n in arrays]), axis=0)
        return th, flags

    target = int(math.floor(fpr * n_neg + 1e-9))
    lo, hi = 0, target  # union FPR at f = lo may still exceed: then f = 0 is the best available
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if union(mid)[1][~y].sum() <= target:
            lo = mid
        else:
            hi = mid - 1
    th, flags = union(lo)
    return {"thresholds": th, "level": lo / n_neg, "fpr": float(flags[~y].mean()),
            "tpr": float(flags[y].mean()), "flags": flags, "n_pos": int(y.sum()), "n_neg": n_neg}


def underestimation_at_matched_fpr(score_dict, labels, fpr: float | None = None,
                                   naive_threshold: float = 0.5, alpha: float = 0.05,
                                   n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Does the best single evaluator flag fewer true positives than the union of evaluators at the
    same false-positive rate?

    The union is calibrated with `union_at_fpr` and every single evaluator with `threshold_at_fpr`
    at the union's achieved FPR (default ``fpr``: the union's FPR at ``naive_threshold``, i.e. the
    operating point the naive rule uses). The best single evaluator is the one with the highest TPR
    there. On the positives, the recall difference union - best gets a percentile bootstrap CI
    (positives resampled, thresholds held fixed) and an exact McNemar p (union flag vs best flag,
    paired by text). Verdict "underestimates" when p < alpha and the union's TPR is higher, else
    "not shown at matched FPR". For contrast, ``naive``: the same comparison at ``naive_threshold``
    for every evaluator, whose FPRs differ (so the union's extra flags may be false positives).
    Returns ``{fpr, union: {tpr, fpr, thresholds}, singles: {name: {threshold, tpr, fpr}}, best,
    recall_diff, lo, hi, p, verdict, naive: {union_tpr, best, best_tpr, union_fpr, best_fpr,
    recall_diff, p, verdict}}``."""
    arrays, y = _check_dict(score_dict, labels)
    names = list(arrays)
    naive_flags = {n: arrays[n] >= naive_threshold for n in names}
    naive_union = np.any(np.stack(list(naive_flags.values())), axis=0)
    if fpr is None:
        fpr = float(naive_union[~y].mean())
    u = union_at_fpr(arrays, y, fpr)
    singles = {n: threshold_at_fpr(arrays[n], y, u["fpr"]) for n in names}
    best = max(names, key=lambda n: (singles[n]["tpr"], -names.index(n)))
    best_flags = arrays[best] >= singles[best]["threshold"]
    pos_u, pos_b = u["flags"][y], best_flags[y]
    idx = paired_bootstrap_indices(pos_u.size, n_boot, seed)
    lo, hi = bootstrap_ci(pos_u[idx].mean(1) - pos_b[idx].mean(1), ci)
    test = mcnemar_exact(pos_u, pos_b)  # b = union-only hits, c = best-only hits
    diff = float(pos_u.mean() - pos_b.mean())
    word = "underestimates" if (test["p"] < alpha and diff > 0) else "not shown at matched FPR"
    naive_best = max(names, key=lambda n: (naive_flags[n].mean(), -names.index(n)))
    nb = naive_flags[naive_best]
    naive_test = mcnemar_exact(naive_union[y], nb[y])
    naive_diff = float(naive_union[y].mean() - nb[y].mean())
    naive_rate_gap = float(naive_union.mean() - nb.mean())
    return {
        "fpr": float(u["fpr"]),
        "union": {"tpr": u["tpr"], "fpr": u["fpr"], "thresholds": u["thresholds"]},
        "singles": {n: {"threshold": singles[n]["threshold"], "tpr": singles[n]["tpr"],
                        "fpr": singles[n]["fpr"]} for n in names},
        "best": best, "recall_diff": diff, "lo": float(lo), "hi": float(hi), "p": test["p"],
        "verdict": word,
        "naive": {"threshold": naive_threshold, "best": naive_best,
                  "union_rate": float(naive_union.mean()), "best_rate": float(nb.mean()),
                  "union_tpr": float(naive_union[y].mean()), "best_tpr": float(nb[y].mean()),
                  "union_fpr": float(naive_union[~y].mean()), "best_fpr": float(nb[~y].mean()),
                  "recall_diff": naive_diff, "p": naive_test["p"],
                  "verdict": "underestimates" if naive_rate_gap > 0 else "no shortfall"},
    }


# --------------------------------------------------------------------------------------------------
# the pre-prompting claim


def preprompt_readings(base, aura, pre, aura_pre, n_boot: int = 2000, seed: int = 0,
                       ci: float = 0.95) -> dict:
    """The AURA paper's "pre-prompting boosts AURA's average mitigation from 1.28x to 2.35x", read
    two ways, from four runs' per-prompt toxic indicators on the same prompts (``base``: plain model;
    ``aura``: AURA; ``pre``: pre-prompt only; ``aura_pre``: AURA + pre-prompt).

    - Reading (i), **same reference**: F(aura | base) = T(base) / T(aura) is the "before" (1.28x),
      F(aura_pre | base) = T(base) / T(aura_pre) the "after" (2.35x). The lift (i) is their ratio,
      T(aura) / T(aura_pre), tested by exact McNemar between the aura and aura_pre runs.
    - Reading (ii), **AURA on a pre-prompted model**: F(aura_pre | pre) = T(pre) / T(aura_pre), AURA's
      own mitigation when the model is already pre-prompted, against F(aura | base). Lift (ii) =
      F(aura_pre | pre) / F(aura | base); its CI is bootstrapped (no single exact test: it compares
      two contrasts), and F(aura_pre | pre) > 1 is tested by exact McNemar between pre and aura_pre.
    - Also returned: F(pre | base), pre-prompting alone, which splits reading (i)'s "after".

    **Which reading the book should take: (i).** Both of the paper's numbers are "mitigation
    potentials", and a mitigation factor is stated against the unmitigated model; only reading (i)
    keeps that one reference for the 1.28x and the 2.35x, so the "boost" is the change of method
    (AURA -> AURA + pre-prompt) and not also a change of denominator. Reading (i) alone, however,
    credits AURA with whatever the pre-prompt does by itself, so the book should state reading (i)'s
    factors as the test of the claim *and* report reading (ii)'s F(aura_pre | pre) (with
    F(pre | base)) as the check that the combination is more than the pre-prompt: "pre-prompting
    combines with AURA" is supported only when F(aura_pre | pre) is significantly > 1 as well.

    Every factor comes with a paired percentile bootstrap CI (prompts resampled jointly for the four
    runs) and an exact McNemar p. Returns ``{"i": {aura, aura_pre, lift}, "ii": {aura,
    aura_pre_vs_pre, lift}, "pre_vs_base": {...}}``, each factor a dict ``{factor, lo, hi, p, ...}``
    (a lift: ``{factor, lo, hi, p}``, p NaN where no single exact test applies)."""
    arms = [_as_bool(x, name) for x, name in
            ((base, "base"), (aura, "aura"), (pre, "pre"), (aura_pre, "aura_pre"))]
    if len({a.shape for a in arms}) != 1:
        raise ValueError("the four runs must score the same prompts (equal lengths)")
    b, a, p, ap = arms
    idx = paired_bootstrap_indices(b.size, n_boot, seed)
    f_aura = ratio_with_ci(b, a, ci=ci, idx=idx)
    f_aura_pre = ratio_with_ci(b, ap, ci=ci, idx=idx)
    f_pre = ratio_with_ci(b, p, ci=ci, idx=idx)
    f_on_pre = ratio_with_ci(p, ap, ci=ci, idx=idx)
    lift_i = ratio_with_ci(a, ap, ci=ci, idx=idx)  # T(aura) / T(aura_pre) = F(ap|b) / F(a|b)
    rb, ra, rp, rap = (x[idx].mean(1) for x in arms)
    lift_ii_reps = _ratio(_ratio(rp, rap), _ratio(rb, ra))
    lo2, hi2 = bootstrap_ci(lift_ii_reps, ci)
    lift_ii = float(_ratio(f_on_pre["factor"], f_aura["factor"])) if np.isfinite(
        f_aura["factor"]) else math.nan
    return {
        "i": {"aura": f_aura, "aura_pre": f_aura_pre,
              "lift": {"factor": lift_i["factor"], "lo": lift_i["lo"], "hi": lift_i["hi"],
                       "p": lift_i["p"]}},
        "ii": {"aura": f_aura, "aura_pre_vs_pre": f_on_pre,
               "lift": {"factor": lift_ii, "lo": float(lo2), "hi": float(hi2), "p": math.nan}},
        "pre_vs_base": f_pre,
        "n": int(b.size),
    }


# --------------------------------------------------------------------------------------------------
# method against control at equal perplexity cost


def _rates(x, name: str) -> np.ndarray:
    arr = np.asarray(x, float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-prompt rates, got shape {arr.shape}")
    if np.isnan(arr).any() or (arr < 0).any() or (arr > 1).any():
        raise ValueError(f"{name} must hold per-prompt rates in [0, 1] (a toxic indicator, or its mean over "
                         "control seeds)")
    return arr


def at_equal_cost(base, method, control, method_cost: float, control_cost: float,
                  idx: np.ndarray | None = None, n_boot: int = 2000, seed: int = 0,
                  ci: float = 0.95) -> dict:
    """The method against its random control at the perplexity cost of the cheaper of the two.

    ``base``, ``method``, ``control``: [n_prompts] per-prompt toxic rates on the same prompts (0/1
    indicators, or for the control their mean over seeds); ``method_cost``, ``control_cost``: relative
    perplexity increases against the plain model (0.25 = +25%).

    - ``relation`` (measured, no model): "method dominates" when the method's reduction factor is at
      least the control's at no more cost; "control dominates" the other way round; "trade-off" when
      the one that reduces more also costs more (then equal damage is not equal cost, and only
      the interpolation below compares them).
    - ``ratio`` [``lo``, ``hi``] (**interpolated**, not measured): method factor / control factor at the
      cheaper cost ``at_cost``. The costlier arm's log factor is scaled by log1p(at_cost) /
      log1p(its cost), i.e. log factor is assumed proportional to log perplexity along the arm's
      strength from the plain model (factor 1, cost 0). Only interpolation toward the plain model,
      never extrapolation; NaN when either cost is <= 0 (a free arm gives nothing to scale by) or a
      factor is not finite. The interval is a paired percentile bootstrap over prompts with the costs
      held fixed. Ratio > 1: the localized units reduce more than random ones at equal cost.
    """
    b, m, c = _rates(base, "base"), _rates(method, "method"), _rates(control, "control")
    if not b.size == m.size == c.size:
        raise ValueError(f"base, method and control must score the same prompts, got {b.size}, {m.size}, "
                         f"{c.size}")
    for name, cost in (("method_cost", method_cost), ("control_cost", control_cost)):
        if not (isinstance(cost, (int, float)) and math.isfinite(cost) and cost > -1):
            raise ValueError(f"{name} must be a finite relative perplexity change > -1, got {cost!r}")
    fm, fc = float(_ratio(b.mean(), m.mean())), float(_ratio(b.mean(), c.mean()))
    if fm >= fc and method_cost <= control_cost:
        relation = "method dominates"
    elif fc >= fm and control_cost <= method_cost:
        relation = "control dominates"
    else:
        relation = "trade-off"
    at_cost = min(method_cost, control_cost)
    out = {"relation": relation, "method_factor": fm, "control_factor": fc, "at_cost": float(at_cost),
           "ratio": math.nan, "lo": math.nan, "hi": math.nan}
    if at_cost <= 0 or not (math.isfinite(fm) and math.isfinite(fc) and fm > 0 and fc > 0):
        return out
    wm = math.log1p(at_cost) / math.log1p(method_cost)
    wc = math.log1p(at_cost) / math.log1p(control_cost)
    idx = paired_bootstrap_indices(b.size, n_boot, seed) if idx is None else idx
    rb, rm, rc = b[idx].mean(1), m[idx].mean(1), c[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = wm * np.log(_ratio(rb, rm)) - wc * np.log(_ratio(rb, rc))
    lo, hi = bootstrap_ci(np.exp(log_ratio), ci)
    out.update(ratio=float(math.exp(wm * math.log(fm) - wc * math.log(fc))), lo=float(lo), hi=float(hi))
    return out


# --------------------------------------------------------------------------------------------------
# the verdict rule


def verdict(effect_ci: Sequence[float], p_adjusted: float, mde: float, claimed: float,
            effect: float | None = None, alpha: float = 0.05, null: float = 1.0) -> str:
    """One rule for a claimed effect (e.g. a reduction factor ``claimed`` = 2.2, null = 1):

    - "reproduces" only if ``p_adjusted`` < ``alpha`` and the measured ``effect`` (default: the CI
      midpoint) lies on the claimed side of ``null``;
    - "does not reproduce" only if the study was powered for the claim (|claimed - null| >=
      |mde - null|, i.e. the claimed effect is at least the minimum detectable one) and the CI
      ``(lo, hi)`` excludes ``claimed``;
    - "inconclusive (underpowered)" otherwise (including a CI that excludes the claim in a study
      too small to have been expected to detect it).
    """
    lo, hi = (float(v) for v in effect_ci)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"effect_ci must be (lo, hi) with lo <= hi, got {effect_ci!r}")
    if claimed == null:
        raise ValueError("claimed must differ from null (a claim of no effect is not tested here)")
    if effect is None:
        effect = hi if math.isinf(hi) and not math.isinf(lo) else 0.5 * (lo + hi)
    side = 1.0 if claimed > null else -1.0
    p = float(p_adjusted)
    if not math.isnan(p) and p < alpha and side * (effect - null) > 0:
        return "reproduces"
    powered = not math.isnan(mde) and abs(claimed - null) >= abs(mde - null) and \
        side * (mde - null) > 0
    if powered and not (lo <= claimed <= hi):
        return "does not reproduce"
    return "inconclusive (underpowered)"
