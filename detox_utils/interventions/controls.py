"""Random-unit controls at equal damage: a fitted method's factors on units drawn at random
(`permuted_alphas`), or its rank-one edits in a random direction of the same norm
(`random_direction_edits`); `random_control` picks the one that fits the method."""
from __future__ import annotations

import dataclasses

import torch

from .._io import stable_hash
from .base import Method, NoIntervention
from .editing import Alphas, Edits
from .methods import METHODS
from .trne import Trne

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
