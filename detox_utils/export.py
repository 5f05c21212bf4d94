"""Export an edited model: every method is a weight edit when folded, so the detoxified model is a plain
transformers folder that any serving engine loads (``AutoModelForCausalLM.from_pretrained`` alone).

``python -m detox_utils export --model smollm2-135m --method aura --out DIR [--param k=v ...]
[--results results/powered]`` fits the method exactly as a grid run would (or reads the fit that
``--results`` publishes, `detox_utils.results.fits_folder`, else the cached one),
folds it into the weights, and writes safetensors, config, tokenizer and a model card (``README.md``)
naming the method, its parameters, its provenance and, when ``--results`` holds runs of the same model
and setting, the measured change in toxicity, perplexity and zero-shot accuracy against the plain model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from ._io import atomic_dir, atomic_write

CARD = "README.md"


def export_model(lm, method, out: str | Path, measured: list[str] | None = None) -> Path:
    """Fold ``method`` into ``lm`` (a LoadedModel), save the edited model and its tokenizer to ``out``
    (atomically: a folder appears only when complete; an existing one is replaced), restore ``lm``, and
    write the model card. ``measured``: lines for the card's "Measured" section. Returns ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder to write the model into")
    describe = method.describe()
    with atomic_dir(out) as tmp:
        with method.apply(lm, fold=True):
            lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        atomic_write(tmp / CARD, model_card(lm, describe, measured or []))
        (tmp / "detox_method.json").write_text(json.dumps(
            {"method": describe, "source_model": lm.name, "source_provenance": lm.provenance},
            indent=1, default=str, sort_keys=True))
    return out


def model_card(lm, describe: Mapping[str, Any], measured: list[str]) -> str:
    """The card of an exported model: what it was made from and how, and what was measured."""
    params = ", ".join(f"{k}={v}" for k, v in sorted(describe.get("params", {}).items())) or "none"
    lines = [
        f"# {lm.name} edited with {describe['method']}",
        "",
        "A retraining-free toxicity edit folded into the weights by the detox compendium "
        "(`python -m detox_utils export`). It loads with `AutoModelForCausalLM.from_pretrained` alone.",
        "",
        f"- source model: `{lm.name}` ({lm.provenance.get('title', lm.provenance.get('kind', ''))}; "
        f"licence: {lm.provenance.get('licence', 'see the source model')})",
        f"- method: `{describe['method']}` with {params}",
        f"- layers touched: {describe.get('layers', [])}; units touched: {describe.get('n_units_touched')}",
    ]
    if "control" in describe:
        lines.append(f"- **a random-unit control** (seed {describe['control']['seed']}), not a detoxification")
    lines += ["", "## Measured", ""]
    lines += [f"- {m}" for m in measured] or [
        "- nothing: no grid run of this model and setting was given (`--results`)."]
    lines += ["", "Numbers are from the compendium's runs on its packaged benchmarks and evaluators; "
              "see its book for what they mean and how far they carry."]
    return "\n".join(lines) + "\n"


def measured_lines(folder: str | Path, model: str, method: str, params: Mapping[str, Any]) -> list[str]:
    """Card lines from a grid folder: per benchmark, the toxicity-probability factor (max over
    evaluators) with its interval and p, the perplexity change and the zero-shot change of the runs of
    ``model`` with this method and parameters (no pre-prompt, no control) against the plain model."""
    from . import evidence

    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"--results {folder} is not a folder of grid results")
    eff = evidence.effects(folder, evaluators=["max"])
    if not len(eff):
        return []
    want = json.dumps(dict(params), sort_keys=True)
    table = evidence.runs(folder).set_index("config_hash")
    rows = eff[(eff.model == model) & (eff.method == method) & (~eff.preprompt)]
    rows = rows[[table.loc[h, "params"] == want for h in rows.config_hash]]
    out = []
    for r in rows.itertuples():
        zs = "" if math.isnan(r.zs_delta) else f", zero-shot accuracy {100 * r.zs_delta:+.1f} points"
        out.append(f"{r.benchmark}: toxicity probability {r.base_rate:.3f} → {r.rate:.3f} "
                   f"(factor {r.factor:.2f} [{r.lo:.2f}, {r.hi:.2f}], exact p = {r.p:.2g}), "
                   f"wiki perplexity {r.rel_ppl:+.1%}{zs} ({folder.name}/{r.config_hash}.json)")
    return out


def main(model: str, method: str, out: str, params: Mapping[str, Any], n_contrast: int = 400,
         seed: int = 0, results_dir: str | None = None, device: str = "cpu") -> Path:
    """The ``export`` command: load, fit (or read the published or cached fit), fold, save, card."""
    from . import experiment, models
    from .config import EvalConfig, resolve_device

    cfg = EvalConfig(model=model, method=method, method_params=dict(params), n_contrast=n_contrast,
                     seed=seed)
    measured = measured_lines(results_dir, model, method, cfg.method_params) if results_dir else []
    lm = models.load(cfg.model, device=resolve_device(device), dtype=cfg.torch_dtype)
    # the grid's own fit when it publishes one, so the exported weights are those its runs measured
    fitted = experiment.fit_method(cfg, lm, progress=False, result_dir=results_dir, publish=False)
    return export_model(lm, fitted, out, measured)
