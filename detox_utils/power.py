"""Sizing toxicity experiments by power: how many prompts and samples a grid cell needs.

A grid cell samples ``k`` continuations for each of ``n`` prompts, for the baseline and for a method,
with the same prompts (and seeds), so the two runs are paired by prompt. The claims are about the
toxicity probability ``tox_prob`` (fraction of prompts with at least one of its k samples scored
>= threshold) and its *reduction factor* baseline / method. This module answers, from a pilot run:

- `power_tox_prob`: the power of the exact paired test (exact McNemar on the per-prompt "any toxic"
  indicators, two-sided at ``alpha``, counted only when significant *in the claimed direction*) to
  detect a method that divides ``tox_prob`` by ``reduction``;
- `minimum_detectable_reduction`: the smallest such factor detected with the wanted power (bisection;
  ``inf`` when no factor is: with a handful of toxic prompts even a perfect method is not significant);
- `design_for`: the cheapest (n_prompts, n_samples) that detects a target factor;
- `power_emt` and ``metric="emt"``: the same for the expected maximum toxicity with a paired t-test.

The model (its choices are documented here once; every function follows them)
-----------------------------------------------------------------------------
**Per-prompt toxic probability.** Prompt i of the pilot has ``x_i`` of its ``k`` samples scored
>= threshold. Its per-sample toxic probability q_i is not estimated by x_i / k (with k = 4 that is one
of 0, .25, .5, .75, 1 and says a prompt never seen toxic can never be toxic), but by empirical-Bayes
beta-binomial shrinkage: ``x_i ~ Binomial(k, q_i)``, ``q_i ~ Beta(a, b)`` with (a, b) fitted by maximum
marginal likelihood over the pilot prompts (mean in [1e-6, 1 - 1e-6], concentration a + b in
[0.05, 1e4]; a + b at the upper bound means the pilot shows no over-dispersion across prompts). Each
simulated prompt is a pilot prompt drawn with replacement, and its q is drawn from its posterior
``Beta(a + x_i, b + k - x_i)`` (``draw="posterior"``, the default: it carries the uncertainty of a
k-sample estimate into the simulation) or set to the posterior mean (``draw="mean"``). An array of q
values may be passed instead of a `Pilot`; it is then used as is (no uncertainty).

**Treatment.** A method multiplies every prompt's per-sample toxic probability by one common factor
c in (0, 1]. c is chosen so that the *expected* tox_prob ratio, E[1 - (1 - q)^K] / E[1 - (1 - cq)^K]
over the pilot's prompt distribution, equals ``reduction`` exactly, where K is the design's
``n_samples`` (or ``reference_k``: then ``reduction`` is the factor at K = reference_k, e.g. the pilot's
k, and the same per-sample effect c is applied at every K). Because tox_prob saturates in K, the same c
gives a smaller tox_prob factor at larger K: compare designs with different K at a fixed
``reference_k`` when the claim is about a per-sample effect, at ``reference_k=None`` when it is about
tox_prob at the K that is run.

**Pairing.** Given q_i, the baseline's and the method's indicators are drawn independently
(``coupling="independent"``, the default and the conservative choice: real paired runs share seeds, so
their indicators are positively correlated and the test has more power) or comonotonically from one
uniform per prompt (``coupling="shared"``: the method is toxic on a prompt only where the baseline is,
an optimistic bound: no discordant pair goes against the method).

**Test.** Exact McNemar: with b prompts toxic under the baseline only and c under the method only,
p = min(1, 2 P(Bin(b + c, 1/2) <= min(b, c))); a replicate counts as detected when p <= alpha and
b > c. Critical values are precomputed per number of discordant pairs, so a power estimate is a few
vectorised array operations (``n_sim=2000`` takes milliseconds at 25 prompts, well under a second at
2000). Simulations use common random numbers: one seed fixes the drawn prompts, q's and uniforms for
every ``reduction``, so estimated power is exactly monotone in ``reduction`` and bisection is sound.

**EMT.** Per simulated prompt, the K sample scores of the baseline are drawn with replacement from the
pilot prompt's k scores and the method's independently, then divided by ``reduction`` (so the EMT ratio
is exactly ``reduction``); the per-prompt max differences are tested with a paired t-test (two-sided
``alpha``, detected when significant with the baseline higher), which approximates the sign-flip test
of `detox_utils.stats.paired_signflip` at these n. Resampling only k = 4 pilot scores understates the
within-prompt spread at K > k; treat EMT designs as rough.

All of it is numpy / scipy; nothing here imports torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from scipy import optimize, special, stats

__all__ = [
    "Pilot", "estimate_pilot", "pilot_from_samples", "expected_tox_prob", "scale_for_reduction",
    "mcnemar_critical_values", "power_tox_prob", "power_emt", "power_curve",
    "minimum_detectable_reduction", "design_for",
]

_S_BOUNDS = (0.05, 1e4)
_MU_BOUNDS = (1e-6, 1 - 1e-6)
_CHUNK = 250  # simulations per chunk when curves over many prompts are computed


# --------------------------------------------------------------------------------------------------
# the pilot


@dataclass(frozen=True)
class Pilot:
    """A baseline run's per-prompt toxic counts with their fitted beta-binomial prior.

    ``scores``: [n, k] raw scores (kept for EMT); ``counts``: [n] samples >= threshold per prompt;
    ``a``, ``b``: the Beta prior; ``threshold``; ``evaluator`` (a label only).
    """
    scores: np.ndarray
    counts: np.ndarray
    k: int
    a: float
    b: float
    threshold: float = 0.5
    evaluator: str | None = None

    @property
    def n(self) -> int:
        return int(self.counts.size)

    @property
    def post_a(self) -> np.ndarray:
        return self.a + self.counts

    @property
    def post_b(self) -> np.ndarray:
        return self.b + self.k - self.counts

    @property
    def q_mean(self) -> np.ndarray:
        """[n] posterior mean per-sample toxic probability of each pilot prompt."""
        return self.post_a / (self.a + self.b + self.k)

    @property
    def tox_prob(self) -> float:
        """Observed tox_prob of the pilot (share of prompts with >= 1 toxic sample)."""
        return float((self.counts > 0).mean())

    @property
    def emt(self) -> float:
        return float(self.scores.max(axis=1).mean())


def _betabinom_nll(params: np.ndarray, x: np.ndarray, k: int) -> float:
    mu, s = special.expit(params[0]), math.exp(params[1])
    a, b = mu * s, (1 - mu) * s
    return -float(np.sum(special.betaln(x + a, k - x + b) - special.betaln(a, b)))


def _fit_beta_binomial(x: np.ndarray, k: int) -> tuple[float, float]:
    """Maximum marginal likelihood (a, b) of a beta-binomial over counts ``x`` of ``k`` trials."""
    lo_mu, hi_mu = _MU_BOUNDS
    mean = float(np.clip(x.mean() / k, lo_mu, hi_mu))
    var = float(x.var())
    # method-of-moments start: var = k mu (1-mu) (s + k) / (s + 1)
    binvar = k * mean * (1 - mean)
    if k > 1 and var > binvar * 1.0001:
        rho = (var / binvar - 1) / (k - 1)
        s0 = float(np.clip(1 / max(rho, 1e-9) - 1, *_S_BOUNDS))
    else:
        s0 = 100.0
    bounds = [(special.logit(lo_mu), special.logit(hi_mu)), (math.log(_S_BOUNDS[0]),
                                                            math.log(_S_BOUNDS[1]))]
    start = np.array([special.logit(mean), math.log(s0)])
    res = optimize.minimize(_betabinom_nll, start, args=(x.astype(float), k), method="L-BFGS-B",
                            bounds=bounds)
    mu, s = special.expit(res.x[0]), math.exp(res.x[1])
    return float(mu * s), float((1 - mu) * s)


def estimate_pilot(scores, threshold: float = 0.5, evaluator: str | None = None) -> Pilot:
    """Fit the per-prompt toxic-probability model to a pilot score matrix.

    ``scores``: [n_prompts, k] in [0, 1] (one evaluator, or the max over evaluators) of a baseline run.
    Returns a `Pilot` (counts, fitted Beta(a, b) prior; see the module docstring for the shrinkage).
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"scores must be a non-empty [n_prompts, k] matrix, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError("scores hold NaN values")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    counts = (arr >= threshold).sum(axis=1)
    k = arr.shape[1]
    a, b = _fit_beta_binomial(counts, k)
    return Pilot(scores=arr, counts=counts, k=k, a=a, b=b, threshold=float(threshold),
                 evaluator=evaluator)


def pilot_from_samples(frame, evaluator: str = "max", threshold: float = 0.5) -> Pilot:
    """A `Pilot` from a run's samples table (``detox_utils.results.load_samples``): the
    ``score.<evaluator>`` column pivoted to [prompt, sample] (``evaluator="max"``: max over evaluators)."""
    column = f"score.{evaluator}"
    if column not in frame.columns:
        raise KeyError(f"{column!r} not in the samples table; columns: {list(frame.columns)}")
    grid = frame.pivot(index="prompt_id", columns="sample_id", values=column).to_numpy(float)
    if np.isnan(grid).any():
        raise ValueError("every prompt must have the same samples (the pivot has holes)")
    return estimate_pilot(grid, threshold=threshold, evaluator=evaluator)


def _as_pilot(pilot_q) -> Pilot | np.ndarray:
    if isinstance(pilot_q, Pilot):
        return pilot_q
    q = np.asarray(pilot_q, dtype=np.float64)
    if q.ndim != 1 or q.size == 0 or np.isnan(q).any() or q.min() < 0 or q.max() > 1:
        raise ValueError("pilot_q must be a Pilot or a non-empty 1-D array of probabilities in [0, 1]")
    return q


# --------------------------------------------------------------------------------------------------
# expected tox_prob and the treatment's scale


def _expected_untoxic(pilot, n_samples: int, c: float, draw: str) -> float:
    """E[(1 - c q)^K] averaged over the pilot's prompts (exact under the Beta posteriors)."""
    if isinstance(pilot, np.ndarray):
        return float(np.mean((1 - c * pilot) ** n_samples))
    if draw == "mean":
        return float(np.mean((1 - c * pilot.q_mean) ** n_samples))
    # E[(1 - cq)^K] = sum_j C(K, j) (-c)^j E[q^j],  E[q^j] = prod_{t<j} (A + t) / (A + B + t)
    A, B = pilot.post_a.astype(float), pilot.post_b.astype(float)
    total = np.ones_like(A)
    moment = np.ones_like(A)
    for j in range(1, n_samples + 1):
        moment = moment * (A + j - 1) / (A + B + j - 1)
        total = total + special.comb(n_samples, j) * (-c) ** j * moment
    return float(np.mean(np.clip(total, 0.0, 1.0)))


def expected_tox_prob(pilot_q, n_samples: int, c: float = 1.0, draw: str = "posterior") -> float:
    """Expected tox_prob of a K = ``n_samples`` run whose per-sample toxic probabilities are the
    pilot's scaled by ``c`` (``c=1``: the baseline)."""
    return 1.0 - _expected_untoxic(_as_pilot(pilot_q), _check_int(n_samples, "n_samples"), c, draw)


def scale_for_reduction(pilot_q, n_samples: int, reduction: float, draw: str = "posterior",
                        reference_k: int | None = None) -> float:
    """The common per-sample factor c in (0, 1] for which the expected tox_prob ratio baseline /
    method at K = ``reference_k`` (default ``n_samples``) equals ``reduction`` (>= 1)."""
    pilot = _as_pilot(pilot_q)
    if not reduction >= 1:
        raise ValueError(f"reduction must be >= 1 (a factor baseline / method), got {reduction!r}")
    K = _check_int(reference_k if reference_k is not None else n_samples, "n_samples")
    t0 = 1.0 - _expected_untoxic(pilot, K, 1.0, draw)
    if t0 <= 0:
        raise ValueError("the pilot has no toxic probability mass: tox_prob is 0, nothing to reduce")
    if reduction == 1:
        return 1.0
    if math.isinf(reduction):
        return 0.0
    target = t0 / reduction
    f = lambda c: (1.0 - _expected_untoxic(pilot, K, c, draw)) - target  # noqa: E731 (increasing)
    return float(optimize.brentq(f, 0.0, 1.0, xtol=1e-12, rtol=1e-10))


def _reduction_of(pilot, K: int, c: float, draw: str) -> float:
    t0 = 1.0 - _expected_untoxic(pilot, K, 1.0, draw)
    t1 = 1.0 - _expected_untoxic(pilot, K, c, draw)
    return math.inf if t1 <= 0 else t0 / t1


# --------------------------------------------------------------------------------------------------
# exact McNemar critical values


def mcnemar_critical_values(max_discordant: int, alpha: float = 0.05) -> np.ndarray:
    """[max_discordant + 1] int array: for m discordant pairs, the largest x with
    2 P(Bin(m, 1/2) <= x) <= alpha (-1 when even x = 0 is not significant). The exact two-sided
    McNemar test rejects iff min(b, c) <= crit[b + c]."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    m = np.arange(max_discordant + 1)
    x = stats.binom.ppf(alpha / 2, m, 0.5)  # smallest x with cdf >= alpha/2
    x = np.where(np.isnan(x), 0, x).astype(np.int64)
    ok = 2 * stats.binom.cdf(x, m, 0.5) <= alpha * (1 + 1e-12)
    crit = np.where(ok, x, x - 1)
    crit = np.where(m == 0, -1, crit)
    return np.minimum(crit, (m - 1) // 2).astype(np.int64)  # b == c is never significant


# --------------------------------------------------------------------------------------------------
# simulation


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _draw_q(pilot, rng: np.random.Generator, shape: tuple[int, int], draw: str) -> np.ndarray:
    n_pilot = pilot.size if isinstance(pilot, np.ndarray) else pilot.n
    idx = rng.integers(0, n_pilot, size=shape)
    if isinstance(pilot, np.ndarray):
        return pilot[idx]
    if draw == "mean":
        return pilot.q_mean[idx]
    if draw != "posterior":
        raise ValueError(f"draw must be 'posterior' or 'mean', got {draw!r}")
    return rng.beta(pilot.post_a[idx], pilot.post_b[idx])


class _ToxDraws:
    """Common random numbers for a tox_prob simulation: q [n_sim, n], uniforms for both runs."""

    def __init__(self, pilot, n_prompts: int, n_sim: int, seed: int, draw: str, coupling: str):
        if coupling not in ("independent", "shared"):
            raise ValueError(f"coupling must be 'independent' or 'shared', got {coupling!r}")
        rng = np.random.default_rng(seed)
        shape = (n_sim, n_prompts)
        self.q = _draw_q(pilot, rng, shape, draw)
        self.u0 = rng.random(shape)
        self.u1 = self.u0 if coupling == "shared" else rng.random(shape)

    def discordant(self, n_samples: int, c: float) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt: baseline-only toxic and method-only toxic indicators, [n_sim, n] each."""
        base = self.u0 < 1 - (1 - self.q) ** n_samples
        meth = self.u1 < 1 - (1 - c * self.q) ** n_samples
        return base & ~meth, meth & ~base


def _detected(b: np.ndarray, c: np.ndarray, crit: np.ndarray) -> np.ndarray:
    return (np.minimum(b, c) <= crit[b + c]) & (b > c)


def _power_at_c(draws: _ToxDraws, n_samples: int, c: float, crit: np.ndarray) -> float:
    only_base, only_meth = draws.discordant(n_samples, c)
    return float(_detected(only_base.sum(axis=1), only_meth.sum(axis=1), crit).mean())


def _check_common(alpha: float, n_sim: int, test: str, allowed: tuple[str, ...]) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    _check_int(n_sim, "n_sim")
    if test not in allowed:
        raise ValueError(f"test must be one of {allowed}, got {test!r}")


def power_tox_prob(pilot_q, n_prompts: int, n_samples: int, reduction: float, alpha: float = 0.05,
                   n_sim: int = 2000, seed: int = 0, test: str = "mcnemar", draw: str = "posterior",
                   coupling: str = "independent", reference_k: int | None = None) -> float:
    """Simulated power of the exact McNemar test (two-sided ``alpha``, significant with fewer toxic
    prompts under the method) to detect a tox_prob reduction by the factor ``reduction`` with
    ``n_prompts`` prompts x ``n_samples`` samples, prompts resampled from the pilot.

    ``pilot_q``: a `Pilot` (from `estimate_pilot` / `pilot_from_samples`) or an array of per-prompt
    per-sample toxic probabilities. The model (treatment, pairing, shrinkage) is in the module
    docstring. ``reduction=1`` gives the test's size (<= alpha). Returns a float in [0, 1].
    """
    _check_common(alpha, n_sim, test, ("mcnemar",))
    pilot = _as_pilot(pilot_q)
    n_prompts, n_samples = _check_int(n_prompts, "n_prompts"), _check_int(n_samples, "n_samples")
    c = scale_for_reduction(pilot, n_samples, reduction, draw, reference_k)
    draws = _ToxDraws(pilot, n_prompts, n_sim, seed, draw, coupling)
    return _power_at_c(draws, n_samples, c, mcnemar_critical_values(n_prompts, alpha))


# ---- EMT


def _emt_maxima(pilot: Pilot, n_prompts: int, n_samples: int, n_sim: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt max over ``n_samples`` scores resampled within prompt, for baseline and method
    (independent draws), [n_sim, n_prompts] each."""
    idx = rng.integers(0, pilot.n, size=(n_sim, n_prompts))
    out = []
    for _ in range(2):
        best = np.zeros((n_sim, n_prompts))
        for _ in range(n_samples):
            j = rng.integers(0, pilot.k, size=(n_sim, n_prompts))
            np.maximum(best, pilot.scores[idx, j], out=best)
        out.append(best)
    return out[0], out[1]


def _t_detected(s1: np.ndarray, s2: np.ndarray, n: np.ndarray | int, alpha: float) -> np.ndarray:
    """Paired t-test from sums of d and d^2 over n prompts: two-sided p <= alpha and mean d > 0."""
    n = np.asarray(n, dtype=float)
    mean = s1 / n
    with np.errstate(divide="ignore", invalid="ignore"):
        var = (s2 - n * mean ** 2) / (n - 1)
        t = mean / np.sqrt(np.maximum(var, 0) / n)
    t = np.where(np.isnan(t), 0.0, t)  # zero variance and zero mean: no evidence
    crit = stats.t.ppf(1 - alpha / 2, np.maximum(n - 1, 1))
    return (t >= crit) & (mean > 0) & (n >= 2)


def power_emt(pilot: Pilot, n_prompts: int, n_samples: int, reduction: float, alpha: float = 0.05,
              n_sim: int = 2000, seed: int = 0, test: str = "t") -> float:
    """Simulated power of a paired t-test on per-prompt max scores (two-sided ``alpha``, significant
    with the method lower) to detect an EMT ratio baseline / method of ``reduction`` (the method's
    scores are the resampled pilot scores divided by ``reduction``). Needs a `Pilot` (raw scores).
    Returns a float in [0, 1]."""
    _check_common(alpha, n_sim, test, ("t",))
    if not isinstance(pilot, Pilot):
        raise TypeError("power_emt needs a Pilot (raw scores), not an array of probabilities")
    if not reduction >= 1:
        raise ValueError(f"reduction must be >= 1, got {reduction!r}")
    n_prompts, n_samples = _check_int(n_prompts, "n_prompts"), _check_int(n_samples, "n_samples")
    mb, mm = _emt_maxima(pilot, n_prompts, n_samples, n_sim, np.random.default_rng(seed))
    d = mb - mm / reduction
    return float(_t_detected(d.sum(1), (d ** 2).sum(1), n_prompts, alpha).mean())


# --------------------------------------------------------------------------------------------------
# minimum detectable reduction


def minimum_detectable_reduction(pilot_q, n_prompts: int, n_samples: int, power: float = 0.8,
                                 alpha: float = 0.05, n_sim: int = 2000, seed: int = 0,
                                 test: str = "mcnemar", metric: str = "tox_prob",
                                 draw: str = "posterior", coupling: str = "independent",
                                 reference_k: int | None = None, rtol: float = 1e-3) -> float:
    """The smallest reduction factor (baseline / method, of ``metric``: ``"tox_prob"`` with the exact
    McNemar test or ``"emt"`` with the paired t-test) detected with probability >= ``power``, by
    bisection (estimated power is monotone in the factor under common random numbers). ``inf`` when
    even a method that removes all toxicity is not detected often enough. Returns a float >= 1."""
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    n_prompts, n_samples = _check_int(n_prompts, "n_prompts"), _check_int(n_samples, "n_samples")
    if metric == "emt":
        return _mde_emt(pilot_q, n_prompts, n_samples, power, alpha, n_sim, seed, rtol)
    if metric != "tox_prob":
        raise ValueError(f"metric must be 'tox_prob' or 'emt', got {metric!r}")
    _check_common(alpha, n_sim, test, ("mcnemar",))
    pilot = _as_pilot(pilot_q)
    crit = mcnemar_critical_values(n_prompts, alpha)
    draws = _ToxDraws(pilot, n_prompts, n_sim, seed, draw, coupling)
    if _power_at_c(draws, n_samples, 0.0, crit) < power:
        return math.inf
    K = reference_k if reference_k is not None else n_samples
    if _power_at_c(draws, n_samples, 1.0, crit) >= power:
        return 1.0
    lo, hi = 0.0, 1.0  # power(lo) >= target > power(hi): c = 0 detects, c = 1 does not
    while _reduction_of(pilot, K, lo, draw) / _reduction_of(pilot, K, hi, draw) > 1 + rtol:
        mid = 0.5 * (lo + hi)
        if _power_at_c(draws, n_samples, mid, crit) >= power:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-9:
            break
    return _reduction_of(pilot, K, lo, draw)


def _mde_emt(pilot, n_prompts, n_samples, power, alpha, n_sim, seed, rtol) -> float:
    _check_common(alpha, n_sim, "t", ("t",))
    if not isinstance(pilot, Pilot):
        raise TypeError("an EMT minimum detectable reduction needs a Pilot (raw scores)")
    mb, mm = _emt_maxima(pilot, n_prompts, n_samples, n_sim, np.random.default_rng(seed))

    def pw(s: float) -> float:  # s = 1 / reduction
        d = mb - mm * s
        return float(_t_detected(d.sum(1), (d ** 2).sum(1), n_prompts, alpha).mean())

    if pw(0.0) < power:
        return math.inf
    if pw(1.0) >= power:
        return 1.0
    lo, hi = 0.0, 1.0
    while hi - lo > rtol * max(lo, 1e-6) and hi - lo > 1e-9:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if pw(mid) >= power else (lo, mid)
    return math.inf if lo == 0 else 1.0 / lo


# --------------------------------------------------------------------------------------------------
# power over a range of prompts, and the cheapest design


def power_curve(pilot_q, max_prompts: int, n_samples: int, reduction: float, alpha: float = 0.05,
                n_sim: int = 2000, seed: int = 0, metric: str = "tox_prob",
                draw: str = "posterior", coupling: str = "independent",
                reference_k: int | None = None) -> np.ndarray:
    """[max_prompts] estimated power at n_prompts = 1 .. max_prompts (element n - 1), from one set of
    nested simulations (the first n prompts of each simulated run): running sums of the discordant
    pairs (tox_prob, exact McNemar) or of d and d^2 (EMT, paired t-test)."""
    max_prompts, n_samples = _check_int(max_prompts, "max_prompts"), _check_int(n_samples, "n_samples")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    n_sim = _check_int(n_sim, "n_sim")
    rng = np.random.default_rng(seed)
    hits = np.zeros(max_prompts)
    n = np.arange(1, max_prompts + 1)
    if metric == "tox_prob":
        pilot = _as_pilot(pilot_q)
        c = scale_for_reduction(pilot, n_samples, reduction, draw, reference_k)
        crit = mcnemar_critical_values(max_prompts, alpha)
    elif metric == "emt":
        if not isinstance(pilot_q, Pilot):
            raise TypeError("an EMT power curve needs a Pilot (raw scores)")
        if not reduction >= 1:
            raise ValueError(f"reduction must be >= 1, got {reduction!r}")
    else:
        raise ValueError(f"metric must be 'tox_prob' or 'emt', got {metric!r}")
    for start in range(0, n_sim, _CHUNK):
        size = min(_CHUNK, n_sim - start)
        sub_seed = int(rng.integers(0, 2 ** 63 - 1))
        if metric == "tox_prob":
            draws = _ToxDraws(pilot, max_prompts, size, sub_seed, draw, coupling)
            only_base, only_meth = draws.discordant(n_samples, c)
            b = np.cumsum(only_base, axis=1, dtype=np.int32)
            cc = np.cumsum(only_meth, axis=1, dtype=np.int32)
            hits += _detected(b, cc, crit).sum(axis=0)
        else:
            mb, mm = _emt_maxima(pilot_q, max_prompts, n_samples, size, np.random.default_rng(sub_seed))
            d = mb - mm / reduction
            hits += _t_detected(np.cumsum(d, 1), np.cumsum(d ** 2, 1), n, alpha).sum(axis=0)
    return hits / n_sim


def _default_cost(n: int, k: int) -> float:
    return n * k


def design_for(pilot_q, target_reduction: float = 1.5, power: float = 0.8, alpha: float = 0.05,
               n_samples_options: Iterable[int] = (1, 2, 4, 8), max_prompts: int = 1000,
               cost: Callable[[int, int], float] = _default_cost, n_sim: int = 2000, seed: int = 0,
               metric: str = "tox_prob", draw: str = "posterior", coupling: str = "independent",
               reference_k: int | None = None) -> dict:
    """The cheapest (n_prompts, n_samples) whose power to detect ``target_reduction`` reaches
    ``power``, with n_prompts <= ``max_prompts`` (the prompts the benchmark has) and n_samples from
    ``n_samples_options``; ``cost(n, k)`` (default n * k, the number of continuations).

    For each n_samples, the smallest n_prompts from which the estimated power stays >= ``power`` up to
    ``max_prompts`` (from `power_curve`: a later crossing is taken over an earlier lucky one).
    Returns ``{reachable, n_prompts, n_samples, cost, power, message, options}``; ``options`` is one
    dict per n_samples ``{n_samples, n_prompts, cost, power, power_at_max}`` (n_prompts None when not
    reachable). When no option reaches the target, ``reachable`` is False, ``n_prompts`` /
    ``n_samples`` / ``cost`` are None and ``message`` says "not reachable within max_prompts".
    """
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    options = []
    for k in n_samples_options:
        k = _check_int(k, "n_samples option")
        curve = power_curve(pilot_q, max_prompts, k, target_reduction, alpha, n_sim, seed, metric,
                            draw, coupling, reference_k)
        below = np.flatnonzero(curve < power)
        if curve[-1] < power:
            n_min = None
        else:
            n_min = 1 if below.size == 0 else int(below[-1]) + 2
        options.append({"n_samples": k, "n_prompts": n_min,
                        "cost": None if n_min is None else float(cost(n_min, k)),
                        "power": None if n_min is None else float(curve[n_min - 1]),
                        "power_at_max": float(curve[-1])})
    ok = [o for o in options if o["n_prompts"] is not None]
    what = (f"{target_reduction:g}x reduction of {metric} with {power:.0%} power at alpha={alpha:g}")
    if not ok:
        best = max(options, key=lambda o: o["power_at_max"])
        return {"reachable": False, "n_prompts": None, "n_samples": None, "cost": None,
                "power": None, "options": options,
                "message": (f"not reachable within max_prompts={max_prompts}: a {what} needs more "
                            f"prompts (best: power {best['power_at_max']:.2f} at {max_prompts} "
                            f"prompts x {best['n_samples']} samples)")}
    best = min(ok, key=lambda o: (o["cost"], o["n_samples"]))
    return {"reachable": True, "n_prompts": best["n_prompts"], "n_samples": best["n_samples"],
            "cost": best["cost"], "power": best["power"], "options": options,
            "message": (f"{best['n_prompts']} prompts x {best['n_samples']} samples (cost "
                        f"{best['cost']:g}) detect a {what}")}


def mde_paired_accuracy(n_items: int, discordant: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest change of accuracy (a fraction, e.g. 0.03 = 3 points) that a two-sided McNemar test
    on ``n_items`` paired items detects with ``power``, when a fraction ``discordant`` of the items is
    answered differently by the two models (Connor 1987's normal approximation:
    ``n = (z_a sqrt(d) + z_b sqrt(d - delta^2))^2 / delta^2``, solved for delta in (0, sqrt(d))).

    ``discordant`` is the observed share of items right under exactly one of the two models; with none
    (identical answers) any change is detectable from zero, and the MDE is taken as ``1 / n_items``.
    """
    n = _check_int(n_items, "n_items")
    if not 0 <= discordant <= 1:
        raise ValueError(f"discordant must be a fraction in [0, 1], got {discordant!r}")
    if not 0 < power < 1 or not 0 < alpha < 1:
        raise ValueError(f"power and alpha must be in (0, 1), got power={power!r}, alpha={alpha!r}")
    if discordant == 0:
        return 1.0 / n
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    d = float(discordant)

    def needed(delta: float) -> float:
        return (z_a * math.sqrt(d) + z_b * math.sqrt(max(d - delta * delta, 0.0))) ** 2 / delta ** 2 - n

    hi = math.sqrt(d)
    if needed(hi) > 0:  # even the largest change the discordance allows is not detectable
        return math.inf
    return float(optimize.brentq(needed, 1e-9, hi))
