"""What every method shares: `Method` (the model it was fitted on, its parameters, ``apply``,
``save``, ``describe``), the baseline `NoIntervention`, `_Scaling` (methods that multiply units by
factors) and the parameter checks."""
from __future__ import annotations

import contextlib
import json
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping

import torch

from .._io import atomic_path
from ..archs import ARCHS, ArchSpec
from ..config import METHOD_PARAMS
from .editing import _check_vector, scale_inputs, scale_units

FORMAT = "detox_utils.interventions"
FORMAT_VERSION = 1


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


def _top(scores: torch.Tensor, n: int) -> list[int]:
    """Indices of the ``n`` largest entries of a 1-D tensor, ties broken by position."""
    return torch.argsort(scores, descending=True, stable=True)[:n].tolist()


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

    @classmethod
    def _fit(cls, lm: Any, toxic: list[str], neutral: list[str], params: Mapping[str, Any],
             provenance: dict[str, Any], record: Mapping[str, Any]) -> "Method":
        """This method's fit recipe (see `fit`): record what it needs on ``toxic`` and ``neutral`` text
        (``record``: ``batch_size`` and ``progress`` for `detox_utils.activations`), add how to
        ``provenance`` and build the method from the statistics with ``params``."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class NoIntervention(Method):
    """The baseline: the model as it is."""

    name: ClassVar[str] = "none"

    @classmethod
    def from_stats(cls, *, model_name: str, family: str) -> "NoIntervention":
        return cls(model_name=model_name, family=family)

    @classmethod
    def _fit(cls, lm, toxic, neutral, params, provenance, record):
        return cls(model_name=lm.name, family=lm.arch.family, provenance=provenance)

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
