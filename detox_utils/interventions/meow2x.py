"""Meow2X (this compendium's reconstruction, see book/methods.md): rank layers by the activation
difference toxic - neutral of their MLP neurons and scale the most toxic-active neurons of the top
layers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..archs import ARCHS
from .base import _check_int, _check_number, _Scaling, _top
from .editing import _as_float_tensor

def meow2x_layer_scores(diff: torch.Tensor, k: int) -> torch.Tensor:
    """Meow2X layer score (this compendium's reconstruction): the mean of the ``k`` largest positive parts
    of the neuron differences in each layer, ``S_l = (1/k) sum_{i in top-k(d_l)} max(d_{l,i}, 0)``.

    ``diff: [n_layers, units]`` (mean toxic minus mean neutral response) -> ``[n_layers]``. ``S_l`` is
    the mean shift carried by exactly the neurons Meow2X would scale in layer ``l``.
    """
    diff = _as_float_tensor(diff, "diff")
    if diff.ndim != 2:
        raise ValueError(f"diff must be [n_layers, units], got shape {tuple(diff.shape)}")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= diff.shape[1]:
        raise ValueError(f"k must be an integer in [1, {diff.shape[1]}] (units per layer), got {k!r}")
    return diff.clamp(min=0).topk(k, dim=1).values.mean(dim=1)


@dataclass(frozen=True, eq=False)
class Meow2X(_Scaling):
    """Meow2X (this compendium's reconstruction, see book/methods.md): in the ``n_layers`` layers with
    the highest `meow2x_layer_scores`, the (at most) ``k_neurons`` MLP neurons (``post`` site) with the
    largest positive mean-activation difference toxic - neutral are multiplied by ``scale``. The neurons
    are the input units of the output projection, so the scaling folds into its weight columns."""

    name: ClassVar[str] = "meow2x"
    _capture: ClassVar[str] = "input"
    layer_scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**super()._tensors(), "layer_scores": self.layer_scores}

    @classmethod
    def _from_saved(cls, common, tensors, meta):
        alphas = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("alphas/")}
        return cls(**common, alphas=alphas, layer_scores=tensors["layer_scores"])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layer_scores": [float(s) for s in self.layer_scores]}

    @classmethod
    def _fit(cls, lm, toxic, neutral, params, provenance, record):
        """Mean-pooled ``post`` responses, their mean difference toxic - neutral, then `from_stats`."""
        from .. import activations, localization

        resp_t = activations.record(lm, toxic, sites=("post",), pooling="mean", **record)["post"]
        resp_n = activations.record(lm, neutral, sites=("post",), pooling="mean", **record)["post"]
        provenance.update(site="post", pooling="mean")
        return cls.from_stats(localization.mean_diff(resp_t, resp_n), model_name=lm.name,
                              family=lm.arch.family, **params, provenance=provenance)

    @classmethod
    def from_stats(cls, diff: torch.Tensor, *, model_name: str, family: str, n_layers: int,
                   k_neurons: int, scale: float, provenance: Mapping[str, Any] | None = None) -> "Meow2X":
        """``diff: [n_layers_model, d_mlp]``: mean toxic minus mean neutral (mean-pooled) ``post``
        response of each neuron."""
        diff = _as_float_tensor(diff, "diff").detach().float().cpu()
        if diff.ndim != 2:
            raise ValueError(f"diff must be [n_layers, d_mlp], got shape {tuple(diff.shape)}")
        if torch.isnan(diff).any():
            raise ValueError("diff contains NaN")
        _check_int(n_layers, "n_layers", 1, diff.shape[0])
        _check_int(k_neurons, "k_neurons", 1, diff.shape[1])
        _check_number(scale, "scale", lambda s: 0 <= s < float("inf"), "a finite number >= 0")
        scores = meow2x_layer_scores(diff, k_neurons)
        arch = ARCHS[family]
        alphas = {}
        for layer in _top(scores, n_layers):
            top = _top(diff[layer], k_neurons)
            top = [i for i in top if diff[layer, i] > 0]  # only neurons more active on toxic text
            alpha = torch.ones(diff.shape[1])
            alpha[top] = float(scale)
            alphas[arch.module_name(layer, "post")] = alpha
        return cls(model_name=model_name, family=family,
                   params={"n_layers": n_layers, "k_neurons": k_neurons, "scale": scale},
                   provenance=provenance or {}, alphas=alphas, layer_scores=scores)
