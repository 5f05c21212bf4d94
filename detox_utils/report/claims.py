"""The page "Claims side by side (first grid)" (book/claims.md): each claim of the two papers with
what the first grid measured and a rule-based verdict, and the forest plot of reduction factors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .common import METHOD_ORDER, grid_folder, plain_log_ticks, reductions, runs
from .cross_evaluator import underestimation_by_run
from .localization import load_localization


# --------------------------------------------------------------------------------------------------
# the first grid's verdict rules, one function each (tests/test_claim_rules.py)


# the verdict of a rule given no evidence at all (no result of the kind it reads)
NOT_TESTED = "not tested: no results"


def early_layers_rule(tests: dict[str, dict], alpha: float = 0.05) -> str:
    """"reproduces" when every model's early-third permutation test (``{model: {p_permutation, ...}}``)
    has p < ``alpha``, "partly: only ..." when some do, else "does not reproduce"; "not tested" without
    any model's test."""
    if not tests:
        return NOT_TESTED
    supported = [m for m, t in tests.items() if t["p_permutation"] < alpha]
    if len(supported) == len(tests):
        return "reproduces"
    return ("partly: only " + ", ".join(supported)) if supported else "does not reproduce"


def peak_depths(loc: list[dict], site: str = "post") -> dict[str, float]:
    """Per model, the relative depth argmax / (L - 1) of the layer with the highest score (the first
    of tied layers)."""
    depth = {}
    for r in loc:
        point = np.asarray(r["summary"][site]["layer_score"]["point"])
        depth[r["model"]] = float(np.argmax(point) / (len(point) - 1))
    return depth


def depth_spread_rule(depth: dict[str, float], min_spread: float = 0.2) -> str:
    """"reproduces" when the models' peak depths (`peak_depths`) span at least ``min_spread``; "not
    tested" with fewer than two models (a spread needs two)."""
    if len(depth) < 2:
        return NOT_TESTED
    spread = max(depth.values()) - min(depth.values())
    return "reproduces" if spread >= min_spread else "not distinguishable at this resolution"


def underestimation_rule(best: pd.Series) -> str:
    """``best``: per run, the smallest shortfall of a single evaluator against the union
    (`underestimation_by_run`'s row minimum); "reproduces" when it is > 0 in at least half the runs;
    "not tested" without runs."""
    if not len(best):
        return NOT_TESTED
    return "reproduces" if (best > 0).mean() >= 0.5 else "does not reproduce"


def reduction_rule(sub: pd.DataFrame, max_ppl_increase: float = 0.25) -> str:
    """A reduction claim over the rows ``sub`` (`reductions` with ``rel_ppl``): it reproduces in a
    model/benchmark pair with a setting whose CI lower bound of the reduction factor is > 1 at a
    relative perplexity increase <= ``max_ppl_increase``; "not tested" without rows."""
    if not len(sub):
        return NOT_TESTED
    significant = sub.tox_prob_ratio_lo > 1
    good = sub[significant & (sub.rel_ppl <= max_ppl_increase)]
    cells = sub.groupby(["model", "benchmark"]).ngroups
    if len(good):
        hits = good.groupby(["model", "benchmark"]).ngroups
        return (f"reproduces in {hits} of {cells} model/benchmark pairs (no correction for "
                "multiple comparisons)")
    if significant.any():
        return f"only at a perplexity cost above {max_ppl_increase:.0%}"
    return "no significant reduction at this sample size"


def preprompt_rule(aura_factor: float, aura_pre_factor: float) -> str:
    """"reproduces" when AURA's mean reduction factor is higher with the pre-prompt than without."""
    return "reproduces" if aura_pre_factor > aura_factor else "does not reproduce"


def claims_table(folder: str | Path | None = None, alpha: float = 0.05,
                 max_ppl_increase: float = 0.25) -> pd.DataFrame:
    """Each claim of the two papers next to what this compendium measured in ``folder`` (default
    `grid_folder`), with a rule-based verdict (the rules are in the code below, so the verdict is as
    reproducible as the numbers)."""
    folder = grid_folder() if folder is None else folder
    loc = [r for r in load_localization() if r["config"]["score"] == "auroc"]
    df = runs(folder)
    red = reductions(folder, evaluators=["max"])
    rows = []

    def add(claim, source, reported, measured, verdict):
        rows.append({"claim": claim, "source": source, "paper reports": reported,
                     "measured here": measured, "verdict": verdict})

    tests = {r["model"]: r["summary"]["post"]["early_test"] for r in loc}
    add("Toxicity is disproportionately encoded in early MLP layers", "Beniwal & Singh 2026",
        "qualitative (abstract)",
        "; ".join(f"{m}: early-third mean {t['early_mean']:.3f} vs rest {t['rest_mean']:.3f}, "
                  f"permutation p = {t['p_permutation']:.3g}, Spearman rho = {t['spearman_rho']:.2f}"
                  for m, t in tests.items()),
        early_layers_rule(tests, alpha))

    depth = peak_depths(loc)
    add("Where toxicity sits varies across architectures", "Beniwal & Singh 2026",
        "qualitative (abstract)",
        "relative depth of the layer with most toxic-selective neurons: " +
        ", ".join(f"{m} {d:.2f}" for m, d in depth.items()),
        depth_spread_rule(depth))

    under = underestimation_by_run(df, "tox_prob")
    best = under.min(axis=1)
    add("A single evaluator systematically underestimates risk", "Beniwal & Singh 2026",
        "qualitative (abstract)",
        f"in {(best > 0).mean():.0%} of {len(best)} runs even the best single evaluator reports a "
        f"lower toxicity probability than the union; mean shortfall {best.mean():.2f}",
        underestimation_rule(best))

    def factor_text(sub: pd.DataFrame) -> str:
        return "; ".join(f"{r.model}/{r.benchmark}: {r.tox_prob_ratio:.2f}x "
                         f"[{r.tox_prob_ratio_lo:.2f}, {r.tox_prob_ratio_hi:.2f}], "
                         f"Δppl {r.dppl:+.2f} ({r.rel_ppl:+.0%})" for r in sub.itertuples())

    red = red.assign(rel_ppl=red.dppl / (red.ppl - red.dppl))
    acceptable = red.rel_ppl <= max_ppl_increase

    aura = red[(red.method == "aura") & (~red.preprompt)]
    if len(aura):
        add("AURA reduces toxicity up to 2.2x at +0.72 perplexity", "Suau et al. 2024",
            "up to 2.2x, +0.72 PPL", factor_text(aura), reduction_rule(aura, max_ppl_increase))
    pre = red[red.method.isin(["none", "aura"]) & red.preprompt]
    if len(aura) and len(pre):
        aura_pre = pre[pre.method == "aura"]
        a, b = aura.tox_prob_ratio.replace(np.inf, np.nan).mean(), \
            aura_pre.tox_prob_ratio.replace(np.inf, np.nan).mean()
        add("Pre-prompting lifts AURA's average mitigation from 1.28x to 2.35x", "Suau et al. 2024",
            "1.28x → 2.35x", f"mean factor {a:.2f}x → {b:.2f}x (toxicity probability, max over "
            "evaluators)", preprompt_rule(a, b))
    for method, name in (("meow2x", "Meow2X"), ("trne", "TRNE")):
        sub = red[(red.method == method) & (~red.preprompt)]
        if not len(sub):
            continue
        pool = sub[acceptable.loc[sub.index]] if acceptable.loc[sub.index].any() else sub
        top = pool.sort_values("tox_prob_ratio", ascending=False).groupby(
            ["model", "benchmark"]).head(1)
        add(f"{name} reduces toxicity without retraining", "Beniwal & Singh 2026",
            "qualitative (abstract)",
            f"strongest setting with perplexity +{max_ppl_increase:.0%} or less, per model/benchmark: "
            + factor_text(top), reduction_rule(sub, max_ppl_increase))
    return pd.DataFrame(rows)


def plot_reduction_forest(red: pd.DataFrame, max_ppl_increase: float = 0.25):
    """Reduction factor (toxicity probability, max over evaluators) with its paired-bootstrap CI for
    every setting, one panel per model; hollow markers where perplexity rose by more than
    ``max_ppl_increase``. Drawn at the book's page width (6.3 in at 110 dpi; no type under 7 pt)."""
    import matplotlib.pyplot as plt

    sub = red[(red.evaluator == "max") & (~red.preprompt)].copy()
    sub["rel_ppl"] = sub.dppl / (sub.ppl - sub.dppl)
    sub["order"] = sub.method.map({m: i for i, m in enumerate(METHOD_ORDER)})
    labels = sub.sort_values(["order", "label"]).label.unique().tolist()
    models = sorted(sub.model.unique())
    benches = sorted(sub.benchmark.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(6.3, 0.3 * len(labels) + 1.3), dpi=110,
                             sharey=True, sharex=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        for j, bench in enumerate(benches):
            g = sub[(sub.model == model) & (sub.benchmark == bench)].set_index("label")
            for i, label in enumerate(labels):
                if label not in g.index:
                    continue
                r = g.loc[label]
                y = i + (j - (len(benches) - 1) / 2) * 0.25
                ratio = min(r.tox_prob_ratio, 20.0)
                lo, hi = min(r.tox_prob_ratio_lo, 20.0), min(r.tox_prob_ratio_hi, 20.0)
                color = f"C{j}"
                ax.plot([lo, hi], [y, y], color=color, lw=1)
                ax.plot(ratio, y, "o", color=color, ms=4,
                        mfc=color if r.rel_ppl <= max_ppl_increase else "white",
                        label=bench if i == 0 else None)
        ax.axvline(1, color="grey", ls=":")
        ax.set_xscale("log")
        ax.set_yticks(range(len(labels)), labels)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("toxicity-probability factor\n(log; > 1 is less toxic)", fontsize=7.5)
        ax.set_title(model, fontsize=8)
    plain_log_ticks(axes[0][0], [0.25, 0.5, 1, 2, 4, 8, 20])
    axes[0][0].invert_yaxis()  # the y axis is shared: invert it once, first method on top
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=len(benches) + 1, frameon=False,
               title=f"hollow: perplexity up by more than {max_ppl_increase:.0%}", title_fontsize=7)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig
