"""The neuron explorer: a model's most toxicity-selective MLP units, what activates them, what they write.

For one model, on the localization's contrast texts and with its settings (`config.LocalizeConfig`:
sites, max pooling, AUROC, ``max_length``, seed):

1. every unit at every site is scored by its AUROC for toxic versus neutral texts, exactly as the
   localization does (`activations.record`, then `localization.auroc`), and the ``k_units`` best are
   taken over all sites (`localization.top_units`);
2. for each of them, the ``k_texts`` contrast texts (toxic or neutral) with the highest pooled
   response, and in each the token where the response peaks (`top_texts`, `token_peaks`);
3. for units at a ``d_mlp`` site (``pre``, ``up``, ``post``: one MLP neuron), the tokens its output
   weights promote through the unembedding (`logit_lens`): the neuron's column ``w_out`` of the down
   projection, through the model's own final norm, times the unembedding ``W_U``. For an RMSNorm
   ``N(x) = g * x / rms(x)`` this is ``W_U (g * w_out) / rms(w_out)``, i.e. ``W_U (g * w_out)`` up to a
   positive factor per neuron (the same ranking of tokens); Gemma's ``(1 + g)`` scale comes from its own
   norm code. ``N(0)`` is subtracted, so a LayerNorm's bias (the same for every neuron) is left out.
   The approximation is the direct path only: the neuron's write is read as if it were the whole
   residual stream at the last layer (no later layer, no other component, no softcap).
   ``out`` units are coordinates of the residual stream, not neurons: they get no promoted tokens.
4. where the top units sit by layer, next to a seeded random draw of as many units from the same
   sites (`random_units`, `layer_counts`).

`explore` does all of it and returns one JSON-ready record; `write` stores it atomically as
``<result_dir>/<model>.json`` with config, git commit and the data's sha256 (``python -m detox_utils
explore --model M``).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from . import activations, data, localization, results
from ._io import REPO_ROOT, atomic_write_json, stable_hash
from .config import LocalizeConfig

log = logging.getLogger(__name__)

RESULT_DIR = REPO_ROOT / "results" / "explorer"
NEURON_SITES: tuple[str, ...] = ("pre", "up", "post")  # d_mlp sites: unit i is MLP neuron i
TEXT_CHARS = 400  # a text is stored up to this many characters
CONTEXT_TOKENS = (12, 4)  # tokens shown before and after the peak token


@dataclass(frozen=True)
class ExploreConfig:
    """What the explorer computes for one model. The recording and scoring settings are the
    localization's (`LocalizeConfig` defaults) unless changed here."""

    model: str = "smollm2-135m"
    n_contrast: int = 400  # texts per class (the localization's n_toxic = n_neutral)
    k_units: int = 50
    k_texts: int = 5
    k_tokens: int = 10
    seed: int = 0
    sites: tuple[str, ...] = LocalizeConfig.sites
    max_length: int = LocalizeConfig.max_length
    batch_size: int = LocalizeConfig.batch_size
    dtype: str = LocalizeConfig.dtype

    def __post_init__(self) -> None:
        sites = (self.sites,) if isinstance(self.sites, str) else tuple(self.sites)
        object.__setattr__(self, "sites", sites)
        for name, least in (("n_contrast", 2), ("k_units", 1), ("k_texts", 1), ("k_tokens", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        # the recording settings are checked by the localization's own config
        LocalizeConfig(model=self.model, sites=sites, n_toxic=self.n_contrast, n_neutral=self.n_contrast,
                       max_length=self.max_length, batch_size=self.batch_size, seed=self.seed,
                       dtype=self.dtype)

    @property
    def localize(self) -> LocalizeConfig:
        """The localization settings these units are scored with (pooling max, score AUROC)."""
        return LocalizeConfig(model=self.model, sites=self.sites, n_toxic=self.n_contrast,
                              n_neutral=self.n_contrast, max_length=self.max_length,
                              batch_size=self.batch_size, seed=self.seed, dtype=self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sites": list(self.sites)}

    @property
    def config_hash(self) -> str:
        return stable_hash(self.to_dict())


# --------------------------------------------------------------------------------------------------
# pure tensor functions


def top_texts(responses: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` texts with the largest response of each unit: ``responses [n_texts, n_units]`` ->
    ``(indices [n_units, k], values [n_units, k])``, largest first (ties: the lower text index)."""
    responses = torch.as_tensor(responses)
    if responses.dim() != 2:
        raise ValueError(f"responses must be [n_texts, n_units], got shape {tuple(responses.shape)}")
    if not 1 <= k <= responses.shape[0]:
        raise ValueError(f"k must be in [1, {responses.shape[0]}] (the number of texts), got {k}")
    order = torch.sort(responses.T.double(), dim=1, descending=True, stable=True)
    return order.indices[:, :k], order.values[:, :k]


def token_peaks(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each unit's response peaks in each text: ``hidden [b, t, k]`` token-level responses and
    ``mask [b, t]`` (True on the pooled tokens) -> ``(positions [b, k], values [b, k])``; the value is
    the max-pooled response (`activations.pool` with ``max``), the position a token where it is reached."""
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"expected hidden [b, t, k] and mask [b, t], got {tuple(hidden.shape)} and "
                         f"{tuple(mask.shape)}")
    if not mask.bool().any(dim=1).all():
        raise ValueError("every row of mask needs at least one True token")
    masked = hidden.float().masked_fill(~mask.bool()[..., None], float("-inf"))
    values, positions = masked.max(dim=1)
    return positions, values


def logit_lens(directions: torch.Tensor, unembed: torch.Tensor,
               norm: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits a write into the residual stream adds through the final norm and the unembedding:
    ``directions [n, d_model]``, ``unembed [V, d_model]`` (the LM head's weight ``W_U``) ->
    ``[n, V]`` float32, ``(norm(w) - norm(0)) @ W_U.T`` per direction ``w`` (without ``norm``:
    ``w @ W_U.T``). ``norm`` is the model's final norm module (applied row by row)."""
    if directions.dim() != 2 or unembed.dim() != 2 or directions.shape[1] != unembed.shape[1]:
        raise ValueError(f"expected directions [n, d_model] and unembed [V, d_model], got "
                         f"{tuple(directions.shape)} and {tuple(unembed.shape)}")
    x = directions.to(unembed.dtype)
    if norm is not None:
        with torch.no_grad():
            x = norm(x[:, None, :])[:, 0, :] - norm(torch.zeros_like(x[:1, None, :]))[:, 0, :]
    return (x @ unembed.T).float()


def neuron_directions(weight: torch.Tensor, neurons: torch.Tensor, layout: str) -> torch.Tensor:
    """The output weights of MLP neurons: the down projection's ``weight`` (``[d_model, d_mlp]`` for an
    ``nn.Linear``, ``[d_mlp, d_model]`` for a GPT-2 ``Conv1D``: ``layout`` ``linear`` / ``conv1d``)
    and neuron indices ``[n]`` -> ``[n, d_model]``, neuron i's column ``w_out[:, i]``."""
    if layout not in ("linear", "conv1d"):
        raise ValueError(f"layout must be 'linear' or 'conv1d', got {layout!r}")
    w = weight.detach()
    return (w[:, neurons].T if layout == "linear" else w[neurons, :]).clone()


def random_units(shapes: Mapping[str, tuple[int, int]], k: int, seed: int = 0) -> list[tuple[str, int, int]]:
    """``k`` distinct units drawn uniformly, without replacement, from every unit of the sites
    ``shapes`` (``{site: (n_layers, units)}``), deterministic in ``seed``: ``[(site, layer, unit)]``."""
    sizes = {site: int(l) * int(u) for site, (l, u) in shapes.items()}
    total = sum(sizes.values())
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}] (the number of units), got {k}")
    flat = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    out, start = [], 0
    for site, size in sizes.items():
        width = shapes[site][1]
        out += [(site, (int(i) - start) // width, (int(i) - start) % width)
                for i in flat if start <= i < start + size]
        start += size
    return out


def layer_counts(layers: Sequence[int], n_layers: int) -> list[int]:
    """How many of ``layers`` fall in each of ``n_layers`` layers -> ``[n_layers]``."""
    if any(not 0 <= layer < n_layers for layer in layers):
        raise ValueError(f"layers must lie in [0, {n_layers}), got {sorted(set(layers))}")
    return torch.bincount(torch.as_tensor(list(layers), dtype=torch.long), minlength=n_layers).tolist()


# --------------------------------------------------------------------------------------------------
# the model-level steps


def _token_level(lm, texts: list[str], units: Sequence[tuple[str, int, int]], max_length: int,
                 batch_size: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], list[torch.Tensor]]:
    """Token-level responses of ``units`` on ``texts``: ``(positions [n_texts, n_units], values
    [n_texts, n_units], input ids per text, pooled-token mask per text)``, from one forward pass per
    batch that stops after the last hooked module."""
    modules: dict[tuple[str, str], list[tuple[int, int]]] = {}  # (module, kind) -> [(column, unit)]
    for column, (site, layer, unit) in enumerate(units):
        key = (lm.arch.module_name(layer, site), lm.arch.capture(site))
        modules.setdefault(key, []).append((column, unit))
    positions = torch.zeros(len(texts), len(units), dtype=torch.long)
    values = torch.zeros(len(texts), len(units))
    ids: list[list[int]] = [[] for _ in texts]
    masks: list[torch.Tensor] = [torch.zeros(0, dtype=torch.bool) for _ in texts]
    current: dict = {}

    def fn(name: str, kind: str, tensor: torch.Tensor) -> None:
        cols, idx = zip(*modules[(name, kind)])
        batch = current["batch"]
        pos, val = token_peaks(tensor[..., list(idx)], batch.token_mask.to(tensor.device))
        positions[batch.index[:, None], torch.tensor(cols)] = pos.cpu()
        values[batch.index[:, None], torch.tensor(cols)] = val.cpu()

    outputs = [name for name, kind in modules if kind == "output"]
    inputs = [name for name, kind in modules if kind == "input"]
    with torch.inference_mode(), activations.trace(lm.model, outputs, inputs, fn=fn, stop=True):
        for batch in activations.batches(lm, texts, batch_size, max_length):
            current["batch"] = batch
            for row, i in enumerate(batch.index.tolist()):
                ids[i], masks[i] = batch.input_ids[row].tolist(), batch.token_mask[row]
            activations._run_stopped(lm.model, batch, lm.device)
    return positions, values, ids, masks


def _context(tokenizer, ids: list[int], mask: torch.Tensor, position: int) -> dict[str, str]:
    real = torch.nonzero(mask).flatten().tolist()
    first, last = real[0], real[-1]
    before, after = CONTEXT_TOKENS
    return {"before": tokenizer.decode(ids[max(first, position - before):position]),
            "token": tokenizer.decode([ids[position]]),
            "after": tokenizer.decode(ids[position + 1:min(last + 1, position + 1 + after)])}


def _promoted(lm, units: Sequence[tuple[str, int, int]], k: int) -> list[dict[str, Any] | None]:
    """Top and bottom ``k`` tokens of each neuron's write through the logit lens (None for ``out``)."""
    head = lm.model.get_output_embeddings().weight.detach()
    norm = lm.model.get_submodule(lm.arch.final_norm)
    found: list[dict[str, Any] | None] = [None] * len(units)
    rows = [i for i, (site, _, _) in enumerate(units) if site in NEURON_SITES]
    if not rows:
        return found
    dirs = torch.stack([neuron_directions(
        lm.model.get_submodule(lm.arch.output_projection(units[i][1])).weight,
        torch.tensor([units[i][2]]), lm.arch.weight_layout)[0] for i in rows])
    logits = logit_lens(dirs.to(head.device), head, norm).cpu()
    k = min(k, logits.shape[1])
    for i, row in zip(rows, logits):
        top, bottom = row.topk(k), row.topk(k, largest=False)
        found[i] = {
            "promoted": [{"token": lm.tokenizer.decode([int(t)]), "id": int(t), "logit": float(v)}
                         for v, t in zip(top.values, top.indices)],
            "suppressed": [{"token": lm.tokenizer.decode([int(t)]), "id": int(t), "logit": float(v)}
                           for v, t in zip(bottom.values, bottom.indices)],
            "logit_sd": float(row.std()),
        }
    return found


def _count_in_texts(lm, writes: list[dict[str, Any] | None], toxic: list[str], neutral: list[str],
                    max_length: int) -> None:
    """Add to every promoted and suppressed token how often it occurs in the toxic and the neutral
    contrast texts (tokenized as recorded), as ``in_toxic`` and ``in_neutral``."""
    from collections import Counter

    counts = {label: Counter(i for ids in lm.tokenizer(texts, truncation=True, max_length=max_length)
                             ["input_ids"] for i in ids)
              for label, texts in (("in_toxic", toxic), ("in_neutral", neutral))}
    for write in filter(None, writes):
        for entry in write["promoted"] + write["suppressed"]:
            entry.update({label: count[entry["id"]] for label, count in counts.items()})


def explore(cfg: ExploreConfig, lm, progress: bool = True) -> dict[str, Any]:
    """The explorer record of ``lm`` (a `models.LoadedModel`): top units with their texts, peak tokens
    and promoted tokens, the random draw, and layer counts of both. JSON-ready."""
    started = time.perf_counter()
    sites = tuple(s for s in cfg.sites if s in lm.arch.sites)
    toxic, neutral = data.contrast_texts(cfg.n_contrast, cfg.n_contrast, seed=cfg.seed)
    rec = dict(sites=sites, pooling="max", batch_size=cfg.batch_size, max_length=cfg.max_length,
               progress=progress)
    # toxic and neutral recorded separately, as the localization does, so they share its cache
    resp_t, resp_n = activations.record(lm, toxic, **rec), activations.record(lm, neutral, **rec)
    scores = {site: localization.auroc(resp_t[site], resp_n[site]) for site in sites}
    recorded = time.perf_counter()
    best = localization.top_units(scores, cfg.k_units)
    units = [(site, layer, unit) for site, layer, unit, _ in best]
    texts = toxic + neutral
    labels = ["toxic"] * len(toxic) + ["neutral"] * len(neutral)
    pooled = torch.stack([torch.cat([resp_t[s][:, l, u], resp_n[s][:, l, u]]) for s, l, u in units], dim=1)
    index, _ = top_texts(pooled, cfg.k_texts)  # [k_units, k_texts]
    chosen = sorted(set(index.flatten().tolist()))
    positions, values, ids, masks = _token_level(lm, [texts[i] for i in chosen], units, cfg.max_length,
                                                 cfg.batch_size)
    row_of = {t: r for r, t in enumerate(chosen)}
    writes = _promoted(lm, units, cfg.k_tokens)
    _count_in_texts(lm, writes, toxic, neutral, cfg.max_length)
    top = []
    for col, ((site, layer, unit, score), write) in enumerate(zip(best, writes)):
        tops = []
        for t in index[col].tolist():
            r = row_of[t]
            tops.append({"text_index": t, "label": labels[t], "text": texts[t][:TEXT_CHARS],
                         "pooled": float(pooled[t, col]), "peak": float(values[r, col]),
                         **_context(lm.tokenizer, ids[r], masks[r], int(positions[r, col]))})
        top.append({"rank": col + 1, "site": site, "layer": layer, "unit": unit, "auroc": score,
                    "mean_toxic": float(resp_t[site][:, layer, unit].mean()),
                    "mean_neutral": float(resp_n[site][:, layer, unit].mean()),
                    "top_texts": tops, "write": write})
    shapes = {site: tuple(scores[site].shape) for site in sites}
    drawn = random_units(shapes, cfg.k_units, seed=cfg.seed)
    random = [{"site": s, "layer": l, "unit": u, "auroc": float(scores[s][l, u])} for s, l, u in drawn]
    n_layers = lm.n_layers
    return {
        "units": top,
        "random": random,
        "layer_counts": {"top": layer_counts([u["layer"] for u in top], n_layers),
                         "random": layer_counts([u["layer"] for u in random], n_layers)},
        "n_layers": n_layers,
        "sites": {site: {"n_layers": shapes[site][0], "n_units": shapes[site][1]} for site in sites},
        "n_toxic": len(toxic), "n_neutral": len(neutral),
        "seconds": {"record_and_score": round(recorded - started, 1),
                    "total": round(time.perf_counter() - started, 1)},
    }


def write(cfg: ExploreConfig, result_dir: str | Path, lm, found: Mapping[str, Any]) -> Path:
    """``<result_dir>/<model>.json``: config, the explorer record and provenance (git commit, package
    versions, the model's and the contrast data's provenance with their sha256), written atomically.
    Settings other than the defaults get their config hash in the name, except the model, the dtype
    and ``n_contrast`` (fewer texts where CPU time is short; the record and the book say how many)."""
    kept = ("model", "dtype", "n_contrast")
    default = {k: v for k, v in ExploreConfig().to_dict().items() if k not in kept}
    mine = {k: v for k, v in cfg.to_dict().items() if k not in kept}
    stem = lm.name.replace("/", "--")
    name = f"{stem}.json" if mine == default else f"{stem}__{cfg.config_hash}.json"
    record = {"kind": "explorer", "config": cfg.to_dict(), "config_hash": cfg.config_hash,
              "localize_config": cfg.localize.to_dict(), "model": lm.name,
              "model_type": lm.model.config.model_type, **found,
              "logit_lens": "W_U (N(w_out) - N(0)) with N the model's final norm: for RMSNorm W_U (g * "
                            "w_out) / rms(w_out), the direct path of the neuron's write only",
              "provenance": results.provenance(model=lm.provenance, data=data.provenance("insults-train"))}
    return atomic_write_json(Path(result_dir) / name, results.jsonable(record))


def main(model: str, result_dir: str | Path = RESULT_DIR, n_contrast: int = 400, seed: int = 0,
         device: str = "cpu", progress: bool = True) -> Path:
    """Load ``model``, compute its explorer record and write it (the ``explore`` subcommand); a relative
    ``result_dir`` is inside the repository."""
    from . import models
    from .config import check_result_dir

    cfg = ExploreConfig(model=model, n_contrast=n_contrast, seed=seed)
    result_dir = Path(result_dir).expanduser()
    result_dir = check_result_dir(result_dir if result_dir.is_absolute() else REPO_ROOT / result_dir, "--out")
    lm = models.load(cfg.model, device=device, dtype=cfg.localize.torch_dtype)
    found = explore(cfg, lm, progress=progress)
    path = write(cfg, result_dir, lm, found)
    log.info("%s: %d units in %.0f s -> %s", lm.name, len(found["units"]), found["seconds"]["total"], path)
    return path
