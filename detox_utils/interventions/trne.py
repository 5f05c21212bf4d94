"""TRNE (this compendium's reconstruction, see book/methods.md): choose layers by a contrastive gradient
score and edit each one's MLP output projection with a closed-form, norm-bounded rank-one update
(`rank_one_update`, ROME's closed form; `bound_norm`; `trne_edit`)."""
from __future__ import annotations

import contextlib
import logging
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from .._io import stable_hash
from ..archs import ARCHS, arch_for
from .base import Method, _check_int, _check_number, _site_of, _top
from .editing import _as_float_tensor, _check_vector, _linear_module, edit_weights, weight_matrix

log = logging.getLogger(__name__)
def rank_one_update(
    W: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C_inv: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ROME closed form (Meng et al. 2022, eq. 2) that makes ``W' k = v`` with the smallest change
    in the ``C``-norm: ``W' = W + (v - W k) (C^-1 k)^T / ((C^-1 k)^T k)``.

    ``W: [d_out, d_in]`` (math layout, ``y = W x``; see `weight_matrix`), ``k: [d_in]``, ``v: [d_out]``,
    ``C_inv: [d_in, d_in]`` symmetric positive definite (None: the identity) -> ``(u [d_out], w [d_in])``
    with ``W' - W = outer(u, w)``.
    """
    if W.ndim != 2 or k.shape != (W.shape[1],) or v.shape != (W.shape[0],):
        raise ValueError(
            f"expected W [d_out, d_in], k [d_in], v [d_out]; got W {tuple(W.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if C_inv is not None and C_inv.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"C_inv must be [{W.shape[1]}, {W.shape[1]}], got {tuple(C_inv.shape)}")
    c = k if C_inv is None else C_inv @ k
    denom = c @ k
    if not torch.isfinite(denom) or denom <= 0:
        raise ValueError(
            f"(C^-1 k)^T k = {float(denom)} must be > 0: k must be non-zero and C_inv positive definite"
        )
    return v - W @ k, c / denom


def bound_norm(u: torch.Tensor, w: torch.Tensor, max_fro: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink a rank-one edit ``outer(u, w)`` so that its Frobenius norm ``||u|| ||w||`` is at most
    ``max_fro`` (unchanged when it already is). ``u: [d_out]``, ``w: [d_in]`` -> the same shapes."""
    if not isinstance(max_fro, (int, float)) or not max_fro >= 0:
        raise ValueError(f"max_fro must be a number >= 0, got {max_fro!r}")
    norm = float(torch.linalg.vector_norm(u) * torch.linalg.vector_norm(w))
    if norm <= max_fro:
        return u, w
    return u * (max_fro / norm), w


def trne_edit(W: torch.Tensor, toxic_key: torch.Tensor, neutral_key: torch.Tensor, C: torch.Tensor,
              ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TRNE's unbounded rank-one edit (this compendium's reconstruction): `rank_one_update` with
    ``k* = toxic_key``, ``v* = W neutral_key`` and ``C_ridge = C + ridge (tr C / d) I``.

    ``W: [d_out, d]``, ``toxic_key, neutral_key: [d]``, ``C: [d, d]`` -> ``(u [d_out], w [d])``.
    """
    d = C.shape[0]
    C_ridge = C + ridge * (torch.trace(C) / d) * torch.eye(d, dtype=C.dtype, device=C.device)
    return rank_one_update(W, toxic_key, W @ neutral_key, torch.linalg.inv(C_ridge))


@dataclass(frozen=True, eq=False)
class Trne(Method):
    """TRNE (this compendium's reconstruction, see book/methods.md): in each of the ``n_layers`` layers
    with the highest contrastive gradient score, a closed-form rank-one edit of the MLP output projection
    maps the mean toxic key to the value of the mean neutral key (`trne_edit`), shrunk so that
    ``||delta||_F <= rho ||W||_F`` (`bound_norm`). No gradient is ever applied."""

    name: ClassVar[str] = "trne"
    edits: Mapping[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    layer_scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    edit_stats: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        arch = ARCHS[self.family]
        for name, (u, w) in self.edits.items():
            _site_of(arch, name, "output")
            _check_vector(u, name, "u")
            _check_vector(w, name, "w")
        object.__setattr__(self, "edits", types.MappingProxyType(dict(self.edits)))

    def _apply(self, model: torch.nn.Module, fold: bool) -> contextlib.AbstractContextManager:
        return edit_weights(model, self.edits, fold=fold)

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"layer_scores": self.layer_scores}
        for n, (u, w) in self.edits.items():
            out[f"u/{n}"], out[f"w/{n}"] = u, w
        return out

    def _meta(self) -> dict[str, Any]:
        return {"edit_stats": {n: dict(s) for n, s in self.edit_stats.items()}}

    @classmethod
    def _from_saved(cls, common, tensors, meta):
        names = [k[2:] for k in tensors if k.startswith("u/")]
        return cls(**common, edits={n: (tensors[f"u/{n}"], tensors[f"w/{n}"]) for n in names},
                   layer_scores=tensors["layer_scores"], edit_stats=meta["edit_stats"])

    def describe(self) -> dict[str, Any]:
        arch = ARCHS[self.family]
        return {
            **super().describe(),
            "layers": sorted(_site_of(arch, n, "output")[0] for n in self.edits),
            "n_modules_touched": len(self.edits),
            "n_units_touched": None,  # a rank-one edit touches whole matrices, not units
            "modules": list(self.edits),
            "edit_stats": {n: dict(s) for n, s in self.edit_stats.items()},
            "layer_scores": [float(s) for s in self.layer_scores],
        }

    @classmethod
    def _fit(cls, lm, toxic, neutral, params, provenance, record):
        """Contrastive gradient scores per layer (`_gradient_scores`), then the token mean of the ``post``
        keys (toxic and neutral) and their neutral second moment in the chosen layers, then `from_stats`."""
        from .. import activations

        scores = _gradient_scores(lm, toxic, neutral, progress=record["progress"])
        layers = _top(scores, params["n_layers"])
        toxic_mean, neutral_mean = torch.zeros(2, lm.n_layers, lm.d_mlp, dtype=torch.float64)
        toxic_mean[layers] = activations.moments(lm, toxic, "post", layers=layers, **record)[0]
        neutral_mean[layers], second = activations.moments(lm, neutral, "post", layers=layers, **record)
        provenance.update(site="post", gradient_site="out")
        return cls.from_stats(lm.model, model_name=lm.name, layer_scores=scores, toxic_mean=toxic_mean,
                              neutral_mean=neutral_mean, neutral_second_moment=dict(zip(layers, second)),
                              **params, provenance=provenance)

    @classmethod
    def from_stats(
        cls, model: torch.nn.Module, *, model_name: str, layer_scores: torch.Tensor,
        toxic_mean: torch.Tensor, neutral_mean: torch.Tensor,
        neutral_second_moment: torch.Tensor | Mapping[int, torch.Tensor],
        n_layers: int, rho: float, ridge: float, provenance: Mapping[str, Any] | None = None,
    ) -> "Trne":
        """Build the edits from statistics of the keys (the ``post`` site, the output projection's input).

        ``layer_scores: [L]`` (contrastive gradient scores), ``toxic_mean, neutral_mean: [L, d_mlp]``
        (token means of the keys; only the chosen layers' rows are read), ``neutral_second_moment``:
        ``[L, d_mlp, d_mlp]`` or ``{layer: [d_mlp, d_mlp]}`` with at least the chosen layers
        (``E[k k^T]`` over neutral tokens). ``model`` supplies the weights ``W`` of the output projections.
        """
        arch = arch_for(model)
        scores = _check_vector(layer_scores, "trne", "layer_scores").detach().float().cpu()
        toxic_mean = _as_float_tensor(toxic_mean, "toxic_mean").detach().double().cpu()
        neutral_mean = _as_float_tensor(neutral_mean, "neutral_mean").detach().double().cpu()
        if toxic_mean.shape != neutral_mean.shape or toxic_mean.ndim != 2 or len(toxic_mean) != len(scores):
            raise ValueError(
                f"expected layer_scores [L], toxic_mean and neutral_mean [L, d_mlp]; got "
                f"{tuple(scores.shape)}, {tuple(toxic_mean.shape)}, {tuple(neutral_mean.shape)}"
            )
        _check_int(n_layers, "n_layers", 1, len(scores))
        _check_number(rho, "rho", lambda r: 0 < r < float("inf"), "a finite number > 0")
        _check_number(ridge, "ridge", lambda r: 0 <= r < float("inf"), "a finite number >= 0")
        if isinstance(neutral_second_moment, torch.Tensor):
            neutral_second_moment = dict(enumerate(neutral_second_moment))
        edits, stats = {}, {}
        for layer in _top(scores, n_layers):
            if layer not in neutral_second_moment:
                raise ValueError(f"neutral_second_moment has no entry for the chosen layer {layer}")
            name = arch.module_name(layer, "out")
            W = weight_matrix(_linear_module(model, name)).detach().double().cpu()
            C = _as_float_tensor(neutral_second_moment[layer], "neutral_second_moment").detach().double().cpu()
            if C.shape != (W.shape[1], W.shape[1]) or toxic_mean.shape[1] != W.shape[1]:
                raise ValueError(
                    f"layer {layer}: the output projection has {W.shape[1]} inputs, but toxic_mean has "
                    f"{toxic_mean.shape[1]} columns and neutral_second_moment is {tuple(C.shape)}"
                )
            u, w = trne_edit(W, toxic_mean[layer], neutral_mean[layer], C, ridge)
            weight_fro = float(torch.linalg.matrix_norm(W))
            unbounded = float(torch.linalg.vector_norm(u) * torch.linalg.vector_norm(w))
            u, w = bound_norm(u, w, rho * weight_fro)
            edits[name] = (u.float(), w.float())
            stats[name] = {"delta_fro": min(unbounded, rho * weight_fro), "unbounded_delta_fro": unbounded,
                           "weight_fro": weight_fro}
            log.info("trne: layer %d, ||delta||_F %.4g (unbounded %.4g, ||W||_F %.4g)",
                     layer, stats[name]["delta_fro"], unbounded, weight_fro)
        return cls(model_name=model_name, family=arch.family,
                   params={"n_layers": n_layers, "rho": rho, "ridge": ridge},
                   provenance=provenance or {}, edits=edits, layer_scores=scores, edit_stats=stats)


def _gradient_scores(lm: Any, toxic: list[str], neutral: list[str], progress: bool) -> torch.Tensor:
    """`localization.contrastive_gradient_scores` at the ``out`` site, cached on disk by model weights
    and texts (TRNE variants that differ only in ``rho`` or ``ridge`` share one gradient pass)."""
    from .. import activations, localization
    from .._io import cache_dir, compute_once_file

    key = stable_hash({"weights": activations.weight_fingerprint(lm.model), "model": lm.name,
                       "texts": [toxic, neutral], "site": "out", "version": 1})
    path = cache_dir("gradient_scores") / f"{lm.name.replace('/', '--')}-{key}.pt"

    def compute() -> torch.Tensor:
        return torch.as_tensor(localization.contrastive_gradient_scores(
            lm, toxic, neutral, site="out", progress=progress)).float()

    # concurrent TRNE runs (batch --jobs N) compute the gradients once
    return compute_once_file(path, compute, kind="gradient_scores",
                             load=lambda p: torch.load(p, weights_only=True), save=torch.save)
