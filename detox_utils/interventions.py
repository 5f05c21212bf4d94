"""Interventions: AURA, Det0, Damp, Meow2X and TRNE behind one context-manager interface.

What this module holds, top to bottom:

* the formulas, as pure tensor functions with their own tests: `aura_alpha` (AURA's dampening factor),
  `top_k_mask` (Det0/Damp's unit selection), `meow2x_layer_scores`, `rank_one_update` and `bound_norm`
  (the ROME-style closed-form rank-one edit and its Frobenius-norm bound);
* the weight-layout helpers, the only place that knows GPT-2's ``Conv1D`` stores ``[in, out]``:
  `weight_matrix` and `rank_one_delta`;
* three context managers that touch a model, each with two realisations, a hook (``fold=False``) and an
  in-place weight edit (``fold=True``), both restored in ``finally`` (weights bit-exact, no hook left):
  `scale_units` (multiply the output units of a linear module), `scale_inputs` (multiply its input units)
  and `edit_weights` (add rank-one edits ``W += u w^T``);
* the methods, frozen dataclasses sharing one interface (``.name``, ``.params``, ``.apply(lm, fold)``,
  ``.save(path)``, ``.describe()``), the `METHODS` table, `fit` (record statistics on toxic and neutral
  text, then build a method from them) and `load`.

Every method has a ``from_stats`` constructor that takes precomputed statistics, so it can be built and
tested without recording anything. The equations, and which parts are this compendium's reconstruction
(Meow2X and TRNE: only the paper's abstract is public), are in ``book/methods.md``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import pickle
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch

from . import __version__
from ._io import atomic_path, stable_hash
from .archs import ARCHS, ArchSpec, arch_for, weight_out_dim
from .config import METHOD_PARAMS

log = logging.getLogger(__name__)

FORMAT = "detox_utils.interventions"
FORMAT_VERSION = 1

Alphas = Mapping[str, torch.Tensor]
Edits = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------------
# formulas


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


# --------------------------------------------------------------------------------------------------
# weight layout


def weight_matrix(module: torch.nn.Module) -> torch.Tensor:
    """``module.weight`` as a ``[d_out, d_in]`` view (``y = W x + b``), for nn.Linear and GPT-2 Conv1D."""
    return module.weight.movedim(weight_out_dim(module), 0)


def rank_one_delta(module: torch.nn.Module, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``outer(u, w)`` laid out like ``module.weight`` (``[out, in]`` Linear, ``[in, out]`` Conv1D)."""
    return torch.outer(u, w).movedim(0, weight_out_dim(module))


def _in_units(module: torch.nn.Module) -> int:
    return module.weight.shape[1 - weight_out_dim(module)]


def _out_units(module: torch.nn.Module) -> int:
    return module.weight.shape[weight_out_dim(module)]


# --------------------------------------------------------------------------------------------------
# scoped hooks and weight edits


def _as_float_tensor(x: Any, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{what} must be a tensor (or array-like of numbers): {e}") from None
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.bool)):
        raise TypeError(f"{what} must hold real numbers, got dtype {x.dtype}")
    return x.float() if not x.is_floating_point() else x


def _linear_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The nn.Linear / Conv1D called ``name`` in ``model``, or a clear error."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module (for a LoadedModel pass lm.model), got {type(model).__name__}"
        )
    if not isinstance(name, str):
        raise TypeError(f"module names must be strings, got {name!r}")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        linear = [n for n, m in model.named_modules() if _is_linear(m)]
        close = difflib.get_close_matches(name, linear, n=3)
        raise ValueError(
            f"model has no module {name!r}; "
            + (f"did you mean {close}? " if close else "")
            + f"valid linear modules include {linear[:4]} ({len(linear)} in all)"
        ) from None
    if not _is_linear(module):
        raise TypeError(f"module {name!r} is a {type(module).__name__}; only nn.Linear and Conv1D can be scaled")
    return module


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def _check_vector(vec: Any, name: str, what: str, expected: int | None = None) -> torch.Tensor:
    """``vec`` as a finite 1-D float tensor (of ``expected`` entries, when given), or a clear error."""
    vec = _as_float_tensor(vec, f"{what} for {name!r}")
    if vec.ndim != 1:
        raise ValueError(f"{what} for {name!r} must be 1-D [{expected or 'units'}], got shape {tuple(vec.shape)}")
    if expected is not None and vec.numel() != expected:
        raise ValueError(f"{what} for {name!r} has {vec.numel()} entries; expected {expected}")
    if not torch.isfinite(vec).all():
        raise ValueError(f"{what} for {name!r} contains NaN or infinite values")
    return vec


def _validated(
    model: torch.nn.Module, vectors: Mapping[str, Any], size: Callable[[torch.nn.Module], int], what: str
) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """Resolve every module and check every vector before anything is touched."""
    if not isinstance(vectors, Mapping):
        raise TypeError(f"{what} must be a mapping of module name to 1-D tensor, got {type(vectors).__name__}")
    out = []
    for name, vec in vectors.items():
        module = _linear_module(model, name)
        vec = _check_vector(vec, name, what, size(module))
        out.append((module, vec.to(device=module.weight.device, dtype=module.weight.dtype)))
    return out


@contextlib.contextmanager
def _hooks(registrations: Sequence[Callable[[], torch.utils.hooks.RemovableHandle]]) -> Iterator[None]:
    """Register hooks on entry; remove every one registered so far in ``finally``."""
    handles = []
    try:
        for register in registrations:
            handles.append(register())
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _patched(
    patches: Sequence[tuple[torch.Tensor, int, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]
) -> Iterator[None]:
    """For each ``(param, dim, index, fn)``: replace the slices ``param.index_select(dim, index)`` by
    ``fn(slices)`` in place; in ``finally`` copy the saved slices back (bit-exact), last patch first."""
    saved = []
    try:
        with torch.no_grad():
            for param, dim, index, fn in patches:
                original = param.index_select(dim, index)
                saved.append((param, dim, index, original))
                param.index_copy_(dim, index, fn(original).to(param.dtype))
        yield
    finally:
        with torch.no_grad():
            for param, dim, index, original in reversed(saved):
                param.index_copy_(dim, index, original)


def _along(vec: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    """``vec`` shaped to broadcast along axis ``dim`` of an ``ndim``-D tensor."""
    shape = [1] * ndim
    shape[dim] = -1
    return vec.view(shape)


def _scale_patches(module: torch.nn.Module, alpha: torch.Tensor, dim: int, bias: bool) -> list:
    index = torch.nonzero(alpha != 1).flatten().to(module.weight.device)
    patches = [(module.weight, dim, index, lambda rows: rows * _along(alpha[index], dim, 2))]
    if bias and module.bias is not None:
        patches.append((module.bias, 0, index, lambda rows: rows * alpha[index]))
    return patches


@contextlib.contextmanager
def scale_units(model: torch.nn.Module, alphas: Alphas, fold: bool = False) -> Iterator[None]:
    """Multiply the output units of linear modules by ``alpha`` inside the ``with`` block.

    ``alphas``: ``{module name (as in model.named_modules()): alpha [out_units]}`` for nn.Linear or GPT-2
    Conv1D modules. ``fold=False``: a forward hook returns ``output * alpha``. ``fold=True``: the weight rows
    (Linear; Conv1D: columns) and bias entries with ``alpha != 1`` are scaled in place. On exit, also after
    an exception, the weights are bit-exact what they were and no hook remains.
    """
    checked = _validated(model, alphas, _out_units, "alphas")
    if fold:
        patches = [p for m, a in checked for p in _scale_patches(m, a, weight_out_dim(m), bias=True)]
        with _patched(patches):
            yield
    else:
        registrations = [
            (lambda m=m, a=a: m.register_forward_hook(lambda _mod, _args, out: out * a)) for m, a in checked
        ]
        with _hooks(registrations):
            yield


@contextlib.contextmanager
def scale_inputs(model: torch.nn.Module, alphas: Alphas, fold: bool = False) -> Iterator[None]:
    """Multiply the input units of linear modules by ``alpha`` inside the ``with`` block.

    Used for the ``post`` site (the MLP neurons, i.e. the input of the output projection).
    ``alphas``: ``{module name: alpha [in_units]}``. ``fold=False``: a forward pre-hook scales the input.
    ``fold=True``: the weight columns (Linear; Conv1D: rows) with ``alpha != 1`` are scaled in place; the
    bias is untouched. Same guarantees as `scale_units`.
    """
    checked = _validated(model, alphas, _in_units, "alphas")
    if fold:
        patches = [p for m, a in checked for p in _scale_patches(m, a, 1 - weight_out_dim(m), bias=False)]
        with _patched(patches):
            yield
    else:
        registrations = [
            (lambda m=m, a=a: m.register_forward_pre_hook(lambda _mod, args: (args[0] * a, *args[1:])))
            for m, a in checked
        ]
        with _hooks(registrations):
            yield


@contextlib.contextmanager
def edit_weights(model: torch.nn.Module, edits: Edits, fold: bool = True) -> Iterator[None]:
    """Add rank-one edits ``W <- W + outer(u, w)`` (math layout, ``y = W x``) inside the ``with`` block.

    ``edits``: ``{module name: (u [out_units], w [in_units])}``. ``fold=True``: the weights are edited in
    place. ``fold=False``: a forward hook adds ``(x . w) u`` to the output (the same map, unfolded). On
    exit, also after an exception, the weights are bit-exact what they were and no hook remains.
    """
    if not isinstance(edits, Mapping):
        raise TypeError(f"edits must be a mapping of module name to (u, w), got {type(edits).__name__}")
    for name, pair in edits.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"edits[{name!r}] must be a pair (u, w), got {type(pair).__name__}")
    us = _validated(model, {n: p[0] for n, p in edits.items()}, _out_units, "u")
    ws = _validated(model, {n: p[1] for n, p in edits.items()}, _in_units, "w")
    if fold:
        patches = [
            (m.weight, 0, torch.arange(m.weight.shape[0], device=m.weight.device),
             lambda W, m=m, u=u, w=w: W + rank_one_delta(m, u, w))
            for (m, u), (_, w) in zip(us, ws)
        ]
        with _patched(patches):
            yield
    else:
        registrations = [
            (lambda m=m, u=u, w=w: m.register_forward_hook(
                lambda _mod, args, out: out + (args[0] @ w).unsqueeze(-1) * u))
            for (m, u), (_, w) in zip(us, ws)
        ]
        with _hooks(registrations):
            yield


# --------------------------------------------------------------------------------------------------
# methods


def _check_int(value: Any, name: str, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"parameter {name!r} must be an integer in [{lo}, {hi}], got {value!r}")


def _check_number(value: Any, name: str, ok: Callable[[float], bool], allowed: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(float(value)):
        raise ValueError(f"parameter {name!r} must be {allowed}, got {value!r}")


def _site_of(arch: ArchSpec, module_name: str, capture: str) -> tuple[int, str]:
    """``(layer, site)`` of a module name of ``arch`` seen from ``capture`` ("output" or "input")."""
    match = re.fullmatch(re.escape(arch.blocks) + r"\.(\d+)\.(.+)", module_name)
    if match:
        for site, spec in arch.sites.items():
            if spec.module == match.group(2) and spec.capture == capture:
                return int(match.group(1)), site
    raise ValueError(f"{module_name!r} is not an MLP {capture} site of family {arch.family!r}")


@dataclass(frozen=True, eq=False)
class Method:
    """What every intervention has: the model it was fitted on, its free parameters, how it was fitted.

    ``apply(lm, fold=False)`` is a context manager: inside it, ``lm`` is intervened (a hook, or with
    ``fold=True`` the same intervention folded into the weights); on exit ``lm`` is bit-exact as before.
    """

    model_name: str
    family: str
    params: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)

    name: ClassVar[str]

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"model_name must be a non-empty string, got {self.model_name!r}")
        if self.family not in ARCHS:
            raise ValueError(f"family {self.family!r} is not in the architecture table: {sorted(ARCHS)}")
        expected = set(METHOD_PARAMS[self.name])
        if set(self.params) != expected:
            raise ValueError(
                f"{self.name} needs exactly the parameters {sorted(expected)}, got {sorted(self.params)}"
            )
        object.__setattr__(self, "params", types.MappingProxyType(dict(self.params)))
        object.__setattr__(self, "provenance", types.MappingProxyType(dict(self.provenance)))

    @contextlib.contextmanager
    def apply(self, lm: Any, fold: bool = False) -> Iterator[Any]:
        """Intervene on ``lm`` (a `detox_utils.models.LoadedModel`) inside the ``with`` block; yields ``lm``."""
        self._check_model(lm)
        with self._apply(lm.model, fold):
            yield lm

    def _check_model(self, lm: Any) -> None:
        if not (hasattr(lm, "model") and hasattr(lm, "name")):
            raise TypeError(f"expected a LoadedModel (detox_utils.models), got {type(lm).__name__}")
        if lm.name != self.model_name or lm.arch.family != self.family:
            raise ValueError(
                f"this {self.name} intervention was fitted on {self.model_name!r} ({self.family}); "
                f"it cannot be applied to {lm.name!r} ({lm.arch.family})"
            )

    def _apply(self, model: torch.nn.Module, fold: bool) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def _meta(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: method, model, parameters, and what is touched where (and, for a
        `random_control`, which control it is)."""
        out = {"method": self.name, "model": self.model_name, "family": self.family,
               "params": dict(self.params)}
        if "control" in self.provenance:
            out["control"] = dict(self.provenance["control"])
        return out

    def save(self, path: str | Path) -> Path:
        """Write the method to ``path`` atomically (``torch.save`` of tensors plus JSON-able metadata)."""
        meta = {
            "format": FORMAT, "version": FORMAT_VERSION, "method": self.name,
            "model_name": self.model_name, "family": self.family, "params": dict(self.params),
            "provenance": dict(self.provenance), "meta": self._meta(),
        }
        json.dumps(meta, allow_nan=False)  # refuse metadata that would not survive as JSON
        tensors = {k: v.detach().cpu().clone() for k, v in self._tensors().items()}
        with atomic_path(path) as tmp:
            torch.save({**meta, "tensors": tensors}, tmp)
        return Path(path)

    @classmethod
    def _from_saved(cls, common: dict[str, Any], tensors: dict[str, torch.Tensor], meta: dict) -> "Method":
        return cls(**common)


@dataclass(frozen=True, eq=False)
class NoIntervention(Method):
    """The baseline: the model as it is."""

    name: ClassVar[str] = "none"

    @classmethod
    def from_stats(cls, *, model_name: str, family: str) -> "NoIntervention":
        return cls(model_name=model_name, family=family)

    def _apply(self, model: torch.nn.Module, fold: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "n_units_touched": 0, "layers": []}


@dataclass(frozen=True, eq=False)
class _Scaling(Method):
    """Multiply units of MLP linear modules by ``alpha``: their outputs (AURA, Det0, Damp: only how the
    alphas are computed differs) or, with ``_capture = "input"``, their inputs (Meow2X)."""

    alphas: Mapping[str, torch.Tensor] = field(default_factory=dict)
    _capture: ClassVar[str] = "output"

    def __post_init__(self) -> None:
        super().__post_init__()
        arch = ARCHS[self.family]
        for name, alpha in self.alphas.items():
            _site_of(arch, name, self._capture)
            _check_vector(alpha, name, "alphas")
        object.__setattr__(self, "alphas", types.MappingProxyType(dict(self.alphas)))

    def _apply(self, model: torch.nn.Module, fold: bool) -> contextlib.AbstractContextManager:
        scale = scale_units if self._capture == "output" else scale_inputs
        return scale(model, self.alphas, fold=fold)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"alphas/{n}": a for n, a in self.alphas.items()}

    @classmethod
    def _from_saved(cls, common, tensors, meta):
        alphas = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("alphas/")}
        return cls(**common, alphas=alphas)

    def describe(self) -> dict[str, Any]:
        arch = ARCHS[self.family]
        by_site: dict[str, int] = {}
        by_layer: dict[int, int] = {}
        for n, a in self.alphas.items():
            layer, site = _site_of(arch, n, self._capture)
            by_site[site] = by_site.get(site, 0) + int((a != 1).sum())
            by_layer[layer] = by_layer.get(layer, 0) + int((a != 1).sum())
        touched = torch.cat([a[a != 1] for a in self.alphas.values()]) if self.alphas else torch.empty(0)
        return {
            **super().describe(),
            "layers": sorted(layer for layer, c in by_layer.items() if c),
            "n_modules_touched": sum(1 for a in self.alphas.values() if (a != 1).any()),
            "n_units_touched": touched.numel(),
            "n_units_total": sum(a.numel() for a in self.alphas.values()),
            "units_by_layer": {str(k): v for k, v in sorted(by_layer.items())},
            "units_by_site": by_site,
            "alpha_min": float(touched.min()) if touched.numel() else 1.0,
            "alpha_mean_touched": float(touched.mean()) if touched.numel() else 1.0,
        }


def _unit_scores(aurocs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if not isinstance(aurocs, Mapping) or not aurocs:
        raise ValueError("aurocs must be a non-empty mapping of module name to AUROC [out_units]")
    out = {}
    for name, a in aurocs.items():
        out[name] = _check_vector(a, name, "aurocs").detach().cpu()
    return out


@dataclass(frozen=True, eq=False)
class Aura(_Scaling):
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
class Det0(_Scaling):
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
class Damp(_Scaling):
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


def _top(scores: torch.Tensor, n: int) -> list[int]:
    """Indices of the ``n`` largest entries of a 1-D tensor, ties broken by position."""
    return torch.argsort(scores, descending=True, stable=True)[:n].tolist()


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


METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (NoIntervention, Aura, Det0, Damp, Meow2X, Trne)}


# --------------------------------------------------------------------------------------------------
# random-unit controls


def _generator(seed: int, *salt: str) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and a string salt (e.g. a module name), stable across runs."""
    return torch.Generator().manual_seed(int(stable_hash([seed, *salt]), 16) % (2**63))


def permuted_alphas(alphas: Alphas, seed: int) -> dict[str, torch.Tensor]:
    """Each module's factors moved onto units drawn at random within that module.

    ``{name: alpha [units]} -> {name: alpha[perm] [units]}``, one seeded permutation per module: the same
    number of touched units per module (so per site and layer) and the same multiset of factors, on units
    chosen without regard to toxicity. The control the AURA paper's limitations call for.
    """
    return {name: a[torch.randperm(a.numel(), generator=_generator(seed, name))]
            for name, a in alphas.items()}


def random_direction_edits(edits: Edits, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Rank-one edits ``outer(u', w')`` with ``u', w'`` uniform on spheres of radii ``||u||, ||w||``:
    the same modules and the same Frobenius norm ``||u|| ||w||`` as ``edits``, in a random direction.
    ``{name: (u [d_out], w [d_in])}`` -> the same shapes."""
    out = {}
    for name, (u, w) in edits.items():
        gen = _generator(seed, name)
        ru = torch.randn(u.numel(), generator=gen, dtype=torch.float64)
        rw = torch.randn(w.numel(), generator=gen, dtype=torch.float64)
        ru = ru * (torch.linalg.vector_norm(u.double()) / torch.linalg.vector_norm(ru))
        rw = rw * (torch.linalg.vector_norm(w.double()) / torch.linalg.vector_norm(rw))
        out[name] = (ru.to(u.dtype), rw.to(w.dtype))
    return out


def random_control(method: Method, seed: int) -> Method:
    """The random-unit control of a fitted method, at equal damage.

    AURA, Det0, Damp, Meow2X: the same factors on as many units per module, drawn at random
    (`permuted_alphas`). TRNE: rank-one edits of the same Frobenius norm at the same layers in a random
    direction (`random_direction_edits`). The result is the same class with ``provenance["control"]`` set;
    its ``describe()`` says so.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"control seed must be an integer >= 0, got {seed!r}")
    if isinstance(method, NoIntervention) or not isinstance(method, Method):
        raise ValueError(f"a random control needs a fitted intervention (one of "
                         f"{[m for m in METHODS if m != 'none']}), got {getattr(method, 'name', method)!r}")
    if "control" in method.provenance:
        raise ValueError("this method is already a random control; derive controls from the fitted method")
    prov = {**method.provenance, "control": {"seed": seed, "kind": _CONTROL_KIND[method.name]}}
    if isinstance(method, Trne):
        return dataclasses.replace(method, edits=random_direction_edits(method.edits, seed), provenance=prov)
    return dataclasses.replace(method, alphas=permuted_alphas(method.alphas, seed), provenance=prov)


_CONTROL_KIND = {
    "aura": "random units, same factors per module", "det0": "random units, same count per module",
    "damp": "random units, same count per module", "meow2x": "random neurons, same count per layer",
    "trne": "random direction, same layers and Frobenius norm",
}


# --------------------------------------------------------------------------------------------------
# fit and load


def _check_texts(texts: Any, what: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"{what} must be a non-empty list of strings")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{what} must hold only strings")
    return list(texts)


def fit(method: str, lm: Any, toxic_texts: Sequence[str], neutral_texts: Sequence[str], *,
        batch_size: int = 16, progress: bool = True, **params: Any) -> Method:
    """Fit ``method`` (a name in `METHODS`) on ``lm`` (a LoadedModel) from toxic and neutral texts.

    ``params`` are the method's free parameters (defaults: `detox_utils.config.METHOD_PARAMS`). What
    each records (via `detox_utils.activations` and `detox_utils.localization`):

    * aura, det0, damp: responses max-pooled over the first 128 tokens at every MLP linear output
      (``lm.arch.linear_sites()``), AUROC of each unit;
    * meow2x: mean-pooled ``post`` responses, their mean difference toxic - neutral;
    * trne: contrastive gradient scores per layer, then the token mean of the ``post`` keys (toxic and
      neutral) and their neutral second moment in the chosen layers.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {list(METHODS)}")
    unknown = sorted(set(params) - set(METHOD_PARAMS[method]))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for {method!r}; allowed: {sorted(METHOD_PARAMS[method])}")
    params = {**METHOD_PARAMS[method], **params}
    toxic = _check_texts(toxic_texts, "toxic_texts")
    neutral = _check_texts(neutral_texts, "neutral_texts")
    from . import activations, localization

    prov = {"n_toxic": len(toxic), "n_neutral": len(neutral), "texts_hash": stable_hash([toxic, neutral]),
            "detox_utils": __version__}
    rec = {"batch_size": batch_size, "progress": progress}
    if method == "none":
        return NoIntervention(model_name=lm.name, family=lm.arch.family, provenance=prov)
    if method == "meow2x":
        resp_t = activations.record(lm, toxic, sites=("post",), pooling="mean", **rec)["post"]
        resp_n = activations.record(lm, neutral, sites=("post",), pooling="mean", **rec)["post"]
        prov.update(site="post", pooling="mean")
        return Meow2X.from_stats(localization.mean_diff(resp_t, resp_n), model_name=lm.name,
                                 family=lm.arch.family, **params, provenance=prov)
    if method == "trne":
        scores = _gradient_scores(lm, toxic, neutral, progress=progress)
        layers = _top(scores, params["n_layers"])
        toxic_mean, neutral_mean = torch.zeros(2, lm.n_layers, lm.d_mlp, dtype=torch.float64)
        toxic_mean[layers] = activations.moments(lm, toxic, "post", layers=layers, **rec)[0]
        neutral_mean[layers], second = activations.moments(lm, neutral, "post", layers=layers, **rec)
        prov.update(site="post", gradient_site="out")
        return Trne.from_stats(lm.model, model_name=lm.name, layer_scores=scores, toxic_mean=toxic_mean,
                               neutral_mean=neutral_mean, neutral_second_moment=dict(zip(layers, second)),
                               **params, provenance=prov)
    sites = lm.arch.linear_sites()
    resp_t = activations.record(lm, toxic, sites=sites, pooling="max", max_length=128, **rec)
    resp_n = activations.record(lm, neutral, sites=sites, pooling="max", max_length=128, **rec)
    aurocs = {}
    for site in sites:
        scores = localization.auroc(resp_t[site], resp_n[site])  # [n_layers, units]
        aurocs.update({lm.arch.module_name(layer, site): s for layer, s in enumerate(scores)})
    prov.update(sites=list(sites), pooling="max", max_length=128)
    return METHODS[method].from_stats(aurocs, model_name=lm.name, family=lm.arch.family, **params,
                                      provenance=prov)


def _gradient_scores(lm: Any, toxic: list[str], neutral: list[str], progress: bool) -> torch.Tensor:
    """`localization.contrastive_gradient_scores` at the ``out`` site, cached on disk by model weights
    and texts (TRNE variants that differ only in ``rho`` or ``ridge`` share one gradient pass)."""
    from . import activations, localization
    from ._io import atomic_path, cache_dir, file_lock, verify_checksum, write_checksum

    key = stable_hash({"weights": activations.weight_fingerprint(lm.model), "model": lm.name,
                       "texts": [toxic, neutral], "site": "out", "version": 1})
    path = cache_dir("gradient_scores") / f"{lm.name.replace('/', '--')}-{key}.pt"

    def trusted() -> bool:  # no checksum record (older code): recompute; a mismatch raises
        return path.exists() and verify_checksum(path, "gradient_scores")

    if trusted():
        return torch.load(path, weights_only=True)
    with file_lock(path):  # concurrent TRNE runs (batch --jobs N) compute the gradients once
        if trusted():
            return torch.load(path, weights_only=True)
        scores = torch.as_tensor(localization.contrastive_gradient_scores(
            lm, toxic, neutral, site="out", progress=progress)).float()
        with atomic_path(path) as tmp:
            torch.save(scores, tmp)
        write_checksum(path)
    return scores


def load(path: str | Path, lm: Any | None = None) -> Method:
    """Read a method written by ``Method.save``; with ``lm`` (a LoadedModel), also check that it was
    fitted on that model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no intervention file at {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not an intervention file written by Method.save ({e})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not an intervention file written by Method.save (no {FORMAT!r} header)")
    if blob.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {blob.get('version')!r}; this code reads {FORMAT_VERSION}")
    if blob.get("method") not in METHODS:
        raise ValueError(f"{path} holds unknown method {blob.get('method')!r}; known: {list(METHODS)}")
    common = {k: blob[k] for k in ("model_name", "family", "params", "provenance")}
    method = METHODS[blob["method"]]._from_saved(common, blob["tensors"], blob["meta"])
    if lm is not None:
        method._check_model(lm)
    return method
