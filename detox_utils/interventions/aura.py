"""AURA and its baselines Det0 and Damp: multiply MLP output units by factors computed from each unit's
AUROC (toxic vs neutral); they differ only in how the factors are computed (`aura_alpha`,
`top_k_mask`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from .base import _check_number, _Scaling
from .editing import Alphas, _as_float_tensor, _check_vector

# tokens of each contrast text whose responses are max-pooled for the unit AUROCs
AUROC_MAX_LENGTH = 128

def aura_alpha(auroc: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """AURA's dampening factor (Suau et al. 2024): ``alpha = 1 - 2 (AUROC - 0.5)`` where
    ``AUROC > threshold`` (strictly), else 1.

    ``auroc: [*units]`` in [0, 1] -> ``alpha: [*units]`` in [0, 1]. ``threshold`` = 0.5 is the paper's
    rule (``1 - Gini``); a higher threshold leaves weak experts untouched (the threshold sweep).
    """
    auroc = _as_float_tensor(auroc, "auroc")
    if torch.isnan(auroc).any() or (auroc < 0).any() or (auroc > 1).any():
        raise ValueError("auroc must hold values in [0, 1] without NaN")
    if not isinstance(threshold, (int, float)) or not 0.5 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0.5, 1), got {threshold!r}")
    return torch.where(auroc > threshold, 1 - 2 * (auroc - 0.5), torch.ones_like(auroc))


def top_k_mask(scores: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """The ``k`` highest-scoring units across all modules: ``{name: scores [units]} -> {name: bool [units]}``.

    Ties are broken by position (modules in mapping order, then unit index), so the choice is
    deterministic.
    """
    if not scores:
        raise ValueError("scores is empty: give at least one module's unit scores")
    flat = torch.cat([_as_float_tensor(s, f"scores[{n!r}]").reshape(-1) for n, s in scores.items()])
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= flat.numel():
        raise ValueError(f"k must be an integer in [1, {flat.numel()}] (the number of units), got {k!r}")
    if torch.isnan(flat).any():
        raise ValueError("scores contain NaN")
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, descending=True, stable=True)[:k]] = True
    masks, start = {}, 0
    for name, s in scores.items():
        masks[name] = chosen[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return masks


@dataclass(frozen=True, eq=False)
class _ByAuroc(_Scaling):
    """The fit recipe of AURA, Det0 and Damp: responses max-pooled over the first `AUROC_MAX_LENGTH`
    tokens at every MLP linear output (``lm.arch.linear_sites()``), the AUROC of each unit, then the
    class's ``from_stats``."""

    @classmethod
    def _fit(cls, lm, toxic, neutral, params, provenance, record):
        from .. import activations, localization

        sites = lm.arch.linear_sites()
        rec = {"sites": sites, "pooling": "max", "max_length": AUROC_MAX_LENGTH, **record}
        resp_t, resp_n = activations.record(lm, toxic, **rec), activations.record(lm, neutral, **rec)
        aurocs = {}
        for site in sites:
            scores = localization.auroc(resp_t[site], resp_n[site])  # [n_layers, units]
            aurocs.update({lm.arch.module_name(layer, site): s for layer, s in enumerate(scores)})
        provenance.update(sites=list(sites), pooling="max", max_length=AUROC_MAX_LENGTH)
        return cls.from_stats(aurocs, model_name=lm.name, family=lm.arch.family, **params,
                              provenance=provenance)


def _unit_scores(aurocs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if not isinstance(aurocs, Mapping) or not aurocs:
        raise ValueError("aurocs must be a non-empty mapping of module name to AUROC [out_units]")
    out = {}
    for name, a in aurocs.items():
        out[name] = _check_vector(a, name, "aurocs").detach().cpu()
    return out


@dataclass(frozen=True, eq=False)
class Aura(_ByAuroc):
    """AURA (Suau et al., ICML 2024): every MLP linear output unit ``m`` is multiplied by
    ``alpha_m = 1 - 2 (AUROC_m - 0.5)`` where ``AUROC_m > auroc_threshold``, else 1."""

    name: ClassVar[str] = "aura"

    @classmethod
    def from_stats(cls, aurocs: Alphas, *, model_name: str, family: str, auroc_threshold: float,
                   provenance: Mapping[str, Any] | None = None) -> "Aura":
        """``aurocs``: ``{module name: AUROC [out_units]}`` (toxic vs neutral, max-pooled responses)."""
        _check_number(auroc_threshold, "auroc_threshold", lambda t: 0.5 <= t < 1, "a number in [0.5, 1)")
        alphas = {n: aura_alpha(a, auroc_threshold).float() for n, a in _unit_scores(aurocs).items()}
        return cls(model_name=model_name, family=family, params={"auroc_threshold": auroc_threshold},
                   provenance=provenance or {}, alphas=alphas)


@dataclass(frozen=True, eq=False)
class Det0(_ByAuroc):
    """Det0 (AURA's baseline): the top-``k`` units by AUROC, across all MLP linear modules and layers,
    are set to zero."""

    name: ClassVar[str] = "det0"

    @classmethod
    def from_stats(cls, aurocs: Alphas, *, model_name: str, family: str, k: int,
                   provenance: Mapping[str, Any] | None = None) -> "Det0":
        masks = top_k_mask(_unit_scores(aurocs), k)
        alphas = {n: torch.where(m, 0.0, 1.0) for n, m in masks.items()}
        return cls(model_name=model_name, family=family, params={"k": k},
                   provenance=provenance or {}, alphas=alphas)


@dataclass(frozen=True, eq=False)
class Damp(_ByAuroc):
    """Damp (AURA's baseline): the top-``k`` units by AUROC are multiplied by a fixed ``alpha``."""

    name: ClassVar[str] = "damp"

    @classmethod
    def from_stats(cls, aurocs: Alphas, *, model_name: str, family: str, k: int, alpha: float,
                   provenance: Mapping[str, Any] | None = None) -> "Damp":
        _check_number(alpha, "alpha", lambda a: 0 <= a < float("inf"), "a finite number >= 0")
        masks = top_k_mask(_unit_scores(aurocs), k)
        alphas = {n: torch.where(m, float(alpha), 1.0) for n, m in masks.items()}
        return cls(model_name=model_name, family=family, params={"k": k, "alpha": alpha},
                   provenance=provenance or {}, alphas=alphas)
