"""Random-unit controls at equal damage: a fitted method's factors on units drawn at random
(`permuted_alphas`), or its rank-one edits in a random direction of the same norm
(`random_direction_edits`); `random_control` picks the one that fits the method. A ``strength`` scales
a control (more or fewer random units, a larger or smaller norm), and `matched_control` finds the
strength at which the control costs what the method costs (its corpus perplexity)."""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable

import torch

from .._io import stable_hash
from .base import Method, NoIntervention
from .editing import Alphas, Edits
from .methods import METHODS
from .trne import Trne

log = logging.getLogger(__name__)

def _generator(seed: int, *salt: str) -> torch.Generator:
    """A CPU generator seeded by ``seed`` and a string salt (e.g. a module name), stable across runs."""
    return torch.Generator().manual_seed(int(stable_hash([seed, *salt]), 16) % (2**63))


def permuted_alphas(alphas: Alphas, seed: int, strength: float = 1.0) -> dict[str, torch.Tensor]:
    """Each module's factors moved onto units drawn at random within that module.

    ``{name: alpha [units]} -> {name: alpha[perm] [units]}``, one seeded permutation per module: the same
    number of touched units per module (so per site and layer) and the same multiset of factors, on units
    chosen without regard to toxicity. The control the AURA paper's limitations call for.

    ``strength`` != 1 scales the number of touched units to ``round(strength * n)`` in all, shared out
    over the modules in proportion to their touched units (largest remainders; at most all of a
    module's units): below 1 the first of a module's touched units (in unit order, a random subset)
    keep their factors; above 1 further untouched units, in a second seeded order, take the module's
    factors again in turn. The touched sets are nested in ``strength``, so the damage grows with it.
    """
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength > 0):
        raise ValueError(f"strength must be a finite number > 0, got {strength!r}")
    moved = {name: a[torch.randperm(a.numel(), generator=_generator(seed, name))] for name, a in alphas.items()}
    if strength == 1:
        return moved
    counts = {name: int((m != 1).sum()) for name, m in moved.items()}
    wants = _share(counts, strength, {name: m.numel() for name, m in moved.items()})
    out = {}
    for name, m in moved.items():
        touched = torch.nonzero(m != 1).flatten()
        n, want = touched.numel(), wants[name]
        scaled = torch.ones_like(m)
        keep = touched[:min(want, n)]
        scaled[keep] = m[keep]
        if want > n:
            free = torch.nonzero(m == 1).flatten()
            free = free[torch.randperm(free.numel(), generator=_generator(seed, name, "extra"))][:want - n]
            scaled[free] = m[touched][torch.arange(free.numel()) % n]
        out[name] = scaled
    return out


def _share(counts: dict[str, int], strength: float, caps: dict[str, int]) -> dict[str, int]:
    """``round(strength * sum(counts))`` units shared out over the modules in proportion to ``counts``
    (largest remainders, ties in module order), a module with no touched units getting none and none
    more than its ``caps``."""
    exact = {k: strength * n for k, n in counts.items()}
    share = {k: min(caps[k], int(math.floor(v))) for k, v in exact.items()}
    left = int(round(strength * sum(counts.values()))) - sum(share.values())
    for k in sorted(exact, key=lambda k: -(exact[k] - math.floor(exact[k]))):
        if left <= 0:
            break
        if counts[k] and share[k] < caps[k]:
            share[k] += 1
            left -= 1
    return share


def random_direction_edits(edits: Edits, seed: int, strength: float = 1.0
                           ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Rank-one edits ``outer(u', w')`` with ``u', w'`` uniform on spheres of radii ``||u||, ||w||``:
    the same modules and the same Frobenius norm ``||u|| ||w||`` as ``edits``, in a random direction
    (times ``strength``: the norm is ``strength ||u|| ||w||``, the direction the same).
    ``{name: (u [d_out], w [d_in])}`` -> the same shapes."""
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength > 0):
        raise ValueError(f"strength must be a finite number > 0, got {strength!r}")
    out = {}
    for name, (u, w) in edits.items():
        gen = _generator(seed, name)
        ru = torch.randn(u.numel(), generator=gen, dtype=torch.float64)
        rw = torch.randn(w.numel(), generator=gen, dtype=torch.float64)
        ru = ru * (strength * torch.linalg.vector_norm(u.double()) / torch.linalg.vector_norm(ru))
        rw = rw * (torch.linalg.vector_norm(w.double()) / torch.linalg.vector_norm(rw))
        out[name] = (ru.to(u.dtype), rw.to(w.dtype))
    return out


def random_control(method: Method, seed: int, strength: float = 1.0) -> Method:
    """The random-unit control of a fitted method, at equal damage (``strength`` 1).

    AURA, Det0, Damp, Meow2X: the same factors on as many units per module, drawn at random
    (`permuted_alphas`). TRNE: rank-one edits of the same Frobenius norm at the same layers in a random
    direction (`random_direction_edits`). The result is the same class with ``provenance["control"]`` set;
    its ``describe()`` says so. ``strength`` scales the control (units touched, or the edits' norm);
    `matched_control` chooses it.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"control seed must be an integer >= 0, got {seed!r}")
    if isinstance(method, NoIntervention) or not isinstance(method, Method):
        raise ValueError(f"a random control needs a fitted intervention (one of "
                         f"{[m for m in METHODS if m != 'none']}), got {getattr(method, 'name', method)!r}")
    if "control" in method.provenance:
        raise ValueError("this method is already a random control; derive controls from the fitted method")
    control = {"seed": seed, "kind": _CONTROL_KIND[method.name]}
    if strength != 1:
        control["strength"] = float(strength)
    prov = {**method.provenance, "control": control}
    if isinstance(method, Trne):
        return dataclasses.replace(method, edits=random_direction_edits(method.edits, seed, strength),
                                   provenance=prov)
    return dataclasses.replace(method, alphas=permuted_alphas(method.alphas, seed, strength), provenance=prov)


def matched_control(method: Method, seed: int, cost: Callable[[Method], float], rtol: float = 0.01,
                    max_steps: int = 12, max_strength: float = 64.0) -> tuple[Method, dict]:
    """The random control of ``method`` (seed ``seed``) scaled until its cost equals the method's.

    ``cost`` maps an intervention to a number that grows with its damage (corpus perplexity on a
    calibration corpus). The strength is found by bracketing from 1 (doubling or halving) and then
    regula falsi (Illinois) on log cost against log strength, until the control's cost is within ``rtol`` (relative) of the method's,
    or ``max_steps`` costs have been measured, or the bracket is narrower than 0.5% of the strength
    (a cost with a step in it), or doubling no longer changes the cost (every unit touched); the
    control returned is the closest measured. Returns
    ``(control, info)``: ``info`` has ``target`` (the method's cost), ``strength``, ``cost``, ``rel_gap``,
    ``steps`` and ``matched`` (the gap within ``rtol``; false when even ``max_strength`` or
    ``1 / max_strength`` does not reach it). The control's provenance records ``match``: the same."""
    target = float(cost(method))
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"the method's cost must be a positive finite number, got {target!r}")
    tried: dict[float, float] = {}

    def measure(s: float) -> float:
        if s not in tried:
            tried[s] = float(cost(random_control(method, seed, s)))
            log.info("control of %s (seed %d) at strength %.4g: cost %.6g (the method's %.6g)",
                     method.name, seed, s, tried[s], target)
        return tried[s]

    def gap(s: float) -> float:
        return tried[s] / target - 1.0

    lo = hi = None  # strengths known to cost less / at least the target
    cur, step = 1.0, (2.0 if measure(1.0) < target else 0.5)
    while True:  # bracket: double (or halve) until the cost crosses the target
        if gap(cur) < 0:
            lo = cur
        else:
            hi = cur
        nxt = cur * step
        if (lo is not None and hi is not None) or abs(gap(cur)) <= rtol or len(tried) >= max_steps \
                or not 1 / max_strength <= nxt <= max_strength:
            break
        prev, cur = cur, nxt
        if measure(cur) == tried[prev]:
            break  # saturated: every unit already touched (or none left), the cost no longer moves
    # inside the bracket: regula falsi on log cost against log strength (Illinois: the end that
    # stays twice in a row has its value halved), which a smooth cost meets in a few steps
    if lo is not None and hi is not None:
        a, b = math.log(lo), math.log(hi)
        fa, fb = math.log(tried[lo] / target), math.log(tried[hi] / target)  # fa < 0 <= fb
        last = 0
        # a cost with steps (a unit whose damping jumps the perplexity) can leave no strength within
        # rtol: stop when the bracket is narrower than 0.5% of the strength
        while len(tried) < max_steps and min(abs(gap(s)) for s in tried) > rtol and fb > fa \
                and b - a > math.log(1.005):
            x = a - fa * (b - a) / (fb - fa)
            if not a < x < b:
                x = 0.5 * (a + b)
            fx = math.log(measure(math.exp(x)) / target)
            if fx < 0:
                a, fa = x, fx
                if last == -1:
                    fb /= 2
                last = -1
            else:
                b, fb = x, fx
                if last == 1:
                    fa /= 2
                last = 1
    best = min(tried, key=lambda s: (abs(gap(s)), s))
    info = {"target": target, "strength": best, "cost": tried[best], "rel_gap": gap(best),
            "steps": len(tried), "matched": abs(gap(best)) <= rtol, "rtol": rtol}
    return matched_from(method, seed, info), info


def matched_from(method: Method, seed: int, info: dict) -> Method:
    """The control `matched_control` found, rebuilt from its ``info`` (e.g. read from a cache)."""
    control = random_control(method, seed, float(info["strength"]))
    return dataclasses.replace(control, provenance={
        **control.provenance, "control": {**control.provenance["control"], "match": "perplexity", **info}})


_CONTROL_KIND = {
    "aura": "random units, same factors per module", "det0": "random units, same count per module",
    "damp": "random units, same count per module", "meow2x": "random neurons, same count per layer",
    "trne": "random direction, same layers and Frobenius norm",
}
