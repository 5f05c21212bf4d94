"""The page "Interventions" (book/interventions.md): toxicity against perplexity with the Pareto front,
the metric under each evaluator, and continuations before and after an intervention."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import results
from .common import METHOD_ORDER, METRIC_LABELS, runs
def pareto_front(points: pd.DataFrame, x: str = "ppl", y: str = "tox_prob") -> pd.Series:
    """Boolean mask of the runs no other run beats on both ``x`` and ``y`` (lower is better)."""
    xs, ys = points[x].to_numpy(), points[y].to_numpy()
    dominated = np.array([
        np.any((xs <= xi) & (ys <= yi) & ((xs < xi) | (ys < yi))) for xi, yi in zip(xs, ys)
    ])
    return pd.Series(~dominated, index=points.index)


def plot_tradeoff(df: pd.DataFrame, evaluator: str = "max", metric: str = "tox_prob"):
    """Toxicity (with CI) against perplexity, one panel per model and benchmark; the Pareto front
    (no run is both less toxic and lower in perplexity) is drawn as a step line."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sub = df[df.evaluator == evaluator]
    keys = sorted(sub.groupby(["model", "benchmark"]).groups)
    ncols = min(2, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, 4.2 * nrows), squeeze=False)
    methods = [m for m in METHOD_ORDER if m in set(sub.method)]
    palette = dict(zip(methods, sns.color_palette("tab10", len(methods))))
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, (model, bench) in zip(axes.flat, keys):
        g = sub[(sub.model == model) & (sub.benchmark == bench)]
        for _, r in g.iterrows():
            ax.errorbar(r.ppl, r[metric], yerr=[[r[metric] - r[f"{metric}_lo"]],
                                                [r[f"{metric}_hi"] - r[metric]]],
                        fmt="s" if r.preprompt else "o", color=palette[r.method], ms=6, capsize=2,
                        alpha=0.9)
        front = g[pareto_front(g, "ppl", metric)].sort_values("ppl")
        ax.step(front.ppl, front[metric], where="post", color="grey", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_title(f"{model} / {bench}\n{int(g.n_prompts.iloc[0])} prompts x "
                     f"{int(g.n_samples.iloc[0])} samples", fontsize=10)
        ax.set_xlabel("perplexity on neutral news (log scale)")
        ax.set_ylabel(METRIC_LABELS[metric] + f"\n({evaluator} over evaluators)"
                      if evaluator == "max" else METRIC_LABELS[metric] + f" ({evaluator})")
    handles = [plt.Line2D([], [], color=palette[m], marker="o", ls="") for m in methods]
    handles += [plt.Line2D([], [], color="k", marker="s", ls=""),
                plt.Line2D([], [], color="grey", ls="--")]
    fig.legend(handles, [*methods, "with pre-prompt", "Pareto front"], loc="lower center",
               ncol=(len(methods) + 2) // 2 + (len(methods) % 2), fontsize=9)
    fig.tight_layout(rect=(0, 0.08 / nrows, 1, 1))
    return fig


def plot_per_evaluator(df: pd.DataFrame, metric: str = "tox_prob"):
    """Per method: the metric under each evaluator and the max, one panel per model."""
    import seaborn as sns

    sub = df[~df.preprompt].copy()
    sub["order"] = sub.method.map({m: i for i, m in enumerate(METHOD_ORDER)})
    sub = sub.sort_values(["order", "label"])
    grid = sns.catplot(data=sub, kind="bar", x="label", y=metric, hue="evaluator", col="model",
                       row="benchmark", height=3.6, aspect=1.8, errorbar=None, legend_out=True)
    grid.set_axis_labels("", METRIC_LABELS[metric])
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=40, labelsize=8)
        for lbl in ax.get_xticklabels():
            lbl.set_horizontalalignment("right")
    return grid.figure


def before_after(folder: str | Path, model: str, benchmark: str, method_label: str,
                 n: int = 4) -> pd.DataFrame:
    """The prompts whose un-intervened continuations scored highest (max over evaluators), with one
    continuation before and after the intervention (same sample index, same seed)."""
    table = runs(folder).drop_duplicates("config_hash")
    sel = table[(table.model == model) & (table.benchmark == benchmark)]
    base = sel[(sel.method == "none") & (~sel.preprompt)].config_hash.iloc[0]
    other = sel[sel.label == method_label].config_hash.iloc[0]
    b, a = results.load_samples(folder, base), results.load_samples(folder, other)
    top = b.sort_values("score.max", ascending=False).drop_duplicates("prompt_id").head(n)
    merged = top.merge(a, on=["prompt_id", "sample_id"], suffixes=(" before", " after"))
    return pd.DataFrame({
        "prompt": merged["prompt before"].str.slice(0, 90),
        "before": merged["continuation before"].str.strip(),
        "max score before": merged["score.max before"].round(2),
        f"after ({method_label})": merged["continuation after"].str.strip(),
        "max score after": merged["score.max after"].round(2),
    })
