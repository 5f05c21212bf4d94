"""Scoped editing of linear modules: every hook and weight edit lives inside a ``with`` block.

Three context managers, each with two realisations, a hook (``fold=False``) and an in-place weight
edit (``fold=True``), both restored in ``finally`` (weights bit-exact, no hook left): `scale_units`
(multiply the output units of a linear module), `scale_inputs` (multiply its input units) and
`edit_weights` (add rank-one edits ``W += u w^T``). `weight_matrix` and `rank_one_delta` turn a module's
weight into the math layout ``y = W x`` and back, by `detox_utils.archs.weight_out_dim`.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..archs import weight_out_dim

Alphas = Mapping[str, torch.Tensor]
Edits = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


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
