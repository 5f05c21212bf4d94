"""Tables and figures for the book, computed from committed result files; and the book build.

Every number the book states comes from a function here applied to files under ``results/``:
``results/default/*.json`` (+ ``*.samples.csv.gz``) from the batch grid,
``results/localization/*.json`` from the localization notebook, ``results/evaluators/validation.json``
from the evaluator validation. ``python -m detox_utils.report build`` builds the book strictly.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from . import registry, results
from ._io import REPO_ROOT

log = logging.getLogger(__name__)
from . import _progress  # noqa: F401,E402 - filters tqdm's IProgress warning out of the book pages

RESULTS = REPO_ROOT / "results"
METRICS = ("emt", "tox_prob", "frac_toxic")
METRIC_LABELS = {
    "emt": "Expected maximum toxicity",
    "tox_prob": "Toxicity probability (P(≥1 of k toxic))",
    "frac_toxic": "Fraction of toxic continuations",
}
METHOD_ORDER = tuple(registry.METHODS)


def method_label(method: str, params: dict, preprompt: bool) -> str:
    """A short human label, e.g. ``Damp k=3000 α=0.5`` or ``AURA + pre-prompt`` (`registry.method_label`)."""
    return registry.method_label(method, params, preprompt)


def runs(folder: str | Path = RESULTS / "default") -> pd.DataFrame:
    """One row per run and evaluator (incl. ``max``): config, toxicity metrics with CIs, perplexity."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        record = results.read_result(path)
        if record["status"] != "ok":
            continue
        cfg, met = record["config"], record["metrics"]
        base = {
            "config_hash": record["config_hash"], "model": cfg["model"],
            "benchmark": cfg["benchmark"], "method": cfg["method"],
            "params": json.dumps(cfg["method_params"], sort_keys=True),
            "preprompt": cfg["preprompt"],
            "label": method_label(cfg["method"], cfg["method_params"], cfg["preprompt"]),
            "n_prompts": cfg["n_prompts"], "n_samples": cfg["n_samples"],
            "ppl": met["perplexity"]["corpus_ppl"],
            "ppl_sentence": met["perplexity"]["mean_sentence_ppl"],
            "seconds": sum(record["provenance"].get("timings", {}).values()),
        }
        for evaluator, values in met["toxicity"].items():
            if evaluator == "agreement":
                continue
            rows.append({**base, "evaluator": evaluator,
                         **{k: v for k, v in values.items() if isinstance(v, (int, float))}})
    if not rows:
        raise FileNotFoundError(f"no ok results in {folder}; run `make results` first")
    return pd.DataFrame(rows)


def with_reduction(df: pd.DataFrame) -> pd.DataFrame:
    """Add each run's toxicity relative to the un-intervened model (same model, benchmark,
    evaluator, pre-prompt off): ``reduction_<metric>`` = baseline / method (2.0 = halved) and the
    perplexity change ``dppl``."""
    base = df[(df.method == "none") & (~df.preprompt)].set_index(
        ["model", "benchmark", "evaluator"])
    out = df.copy()
    key = list(zip(out.model, out.benchmark, out.evaluator))
    for metric in METRICS:
        b = base[metric].reindex(key).to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"reduction_{metric}"] = np.where(out[metric] > 0, b / out[metric].to_numpy(),
                                                  np.nan)
    out["dppl"] = out["ppl"].to_numpy() - base["ppl"].reindex(key).to_numpy()
    return out


def pareto_front(points: pd.DataFrame, x: str = "ppl", y: str = "tox_prob") -> pd.Series:
    """Boolean mask of the runs no other run beats on both ``x`` and ``y`` (lower is better)."""
    xs, ys = points[x].to_numpy(), points[y].to_numpy()
    dominated = np.array([
        np.any((xs <= xi) & (ys <= yi) & ((xs < xi) | (ys < yi))) for xi, yi in zip(xs, ys)
    ])
    return pd.Series(~dominated, index=points.index)


def samples(folder: str | Path = RESULTS / "default",
            hashes: Iterable[str] | None = None) -> pd.DataFrame:
    """All scored continuations of a folder's runs, with the run's model/method/benchmark."""
    table = runs(folder).drop_duplicates("config_hash")
    if hashes is not None:
        table = table[table.config_hash.isin(list(hashes))]
    frames = []
    for row in table.itertuples():
        s = results.load_samples(folder, row.config_hash)
        s.insert(0, "config_hash", row.config_hash)
        for col in ("model", "benchmark", "method", "label", "preprompt"):
            s[col] = getattr(row, col)
        frames.append(s)
    return pd.concat(frames, ignore_index=True)


def evaluator_columns(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix("score.") for c in frame.columns
            if c.startswith("score.") and c != "score.max"]


SITE_LABELS = {"pre": "pre (gate / c_fc output)", "up": "up (GLU up_proj output)",
               "post": "post (MLP neurons)", "out": "out (MLP output)"}


def read_localization(path: str | Path) -> dict:
    """One localization record (a file written by `experiment.write_localization`)."""
    return json.loads(Path(path).read_text())


def load_localization(folder: str | Path = RESULTS / "localization") -> list[dict]:
    """The localization records of the book's settings (written by notebooks/localize.ipynb with its
    defaults), sorted by file name; results of other settings (``...__<hash>.json``) are left out."""
    paths = sorted(p for p in Path(folder).glob("*.json") if p.stem.count("__") == 1)
    if not paths:
        raise FileNotFoundError(f"no localization results in {folder}; run notebooks/localize.ipynb")
    return [json.loads(p.read_text()) for p in paths]


def _score_label(record: dict) -> str:
    cfg = record["config"]
    if cfg["reduce"] == "frac_above":
        return f"share of units with {cfg['score']} > {cfg['threshold']}"
    return f"{cfg['reduce']} of unit {cfg['score']}"


def plot_layer_scores(record: dict, ax=None):
    """Per-layer score of each site with its bootstrap CI band."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    for site, summ in record["summary"].items():
        ls = summ["layer_score"]
        x = np.arange(summ["n_layers"])
        ax.plot(x, ls["point"], marker="o", ms=3, label=SITE_LABELS.get(site, site))
        ax.fill_between(x, ls["lo"], ls["hi"], alpha=0.2)
    ci = int(100 * next(iter(record["summary"].values()))["layer_score"]["ci"])
    _integer_layers(ax)
    ax.set_xlabel("layer (0 = first)")
    ax.set_ylabel(_score_label(record))
    ax.set_title(f"{record['model']}: {record['n_toxic']} toxic vs {record['n_neutral']} neutral "
                 f"texts, {ci}% bootstrap CI", fontsize=10)
    ax.legend(fontsize=8)
    return ax


def plot_layer_heatmap(record: dict, ax=None):
    """Sites x layers heatmap of the per-layer score."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = pd.DataFrame({SITE_LABELS.get(site, site): summ["layer_score"]["point"]
                          for site, summ in record["summary"].items()}).T
    ax = ax or plt.subplots(figsize=(9, 0.6 + 0.45 * len(table)))[1]
    sns.heatmap(table, ax=ax, cmap="rocket_r", cbar_kws={"label": _score_label(record)})
    ax.set_xlabel("layer")
    ax.set_title(f"{record['model']}: where toxicity-selective units sit", fontsize=10)
    return ax


def plot_unit_distribution(record: dict, site: str, ax=None):
    """Per-layer distribution of the unit scores at one site (median, 25-75% and 5-95% bands)."""
    import matplotlib.pyplot as plt

    summ = record["summary"][site]
    q = {float(k): np.asarray(v) for k, v in summ["quantiles"].items()}
    x = np.arange(summ["n_layers"])
    ax = ax or plt.subplots(figsize=(7, 3.4))[1]
    ax.fill_between(x, q[0.05], q[0.95], alpha=0.2, label="5-95%")
    ax.fill_between(x, q[0.25], q[0.75], alpha=0.4, label="25-75%")
    ax.plot(x, q[0.5], color="k", lw=1, label="median")
    if record["config"]["score"] == "auroc":
        ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance (0.5)")
    _integer_layers(ax)
    ax.set_xlabel("layer (0 = first)")
    ax.set_ylabel(f"unit {record['config']['score']} (toxic vs neutral)")
    ax.set_title(f"{record['model']} / {SITE_LABELS.get(site, site)}: {summ['n_units']} units per "
                 f"layer, {record['n_toxic']} toxic vs {record['n_neutral']} neutral texts", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


def _integer_layers(ax) -> None:
    """Layers are whole numbers: no 2.5 ticks on a layer axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def early_test_table(records: list[dict]) -> pd.DataFrame:
    """One row per model and site: the early-layer test's statistics."""
    rows = []
    for rec in records:
        for site, summ in rec["summary"].items():
            t = summ["early_test"]
            rows.append({"model": rec["model"], "site": site, "layers": t["n_layers"],
                         "early layers": f"0-{t['early_layers'][-1]}",
                         "early mean": t["early_mean"], "rest mean": t["rest_mean"],
                         "p (permutation)": t["p_permutation"],
                         "Spearman rho (layer, score)": t["spearman_rho"],
                         "p (Spearman)": t["p_spearman"], "verdict": t.get("verdict", "")})
    return pd.DataFrame(rows)


def _score_grid(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame.pivot(index="prompt_id", columns="sample_id", values=column).to_numpy(float)


def reductions(folder: str | Path = RESULTS / "default", n_boot: int = 1000,
               evaluators: Iterable[str] | None = None) -> pd.DataFrame:
    """Paired-bootstrap toxicity reduction of every run against the un-intervened model (same model,
    benchmark, prompts and samples, no pre-prompt), per evaluator and for the max over evaluators.

    One row per run and evaluator with ``metrics.toxicity_reduction``'s columns (``tox_prob_ratio``
    with ``_lo``/``_hi``, ``emt_diff``, ...), plus ``dppl`` (perplexity change)."""
    from . import metrics

    table = runs(folder)
    per_run = table.drop_duplicates("config_hash").set_index("config_hash")
    base = per_run[(per_run.method == "none") & (~per_run.preprompt)]
    rows = []
    for (model, bench), group in per_run.groupby(["model", "benchmark"]):
        base_hash = base[(base.model == model) & (base.benchmark == bench)].index
        if len(base_hash) != 1:
            continue
        base_samples = results.load_samples(folder, base_hash[0])
        names = list(evaluators) if evaluators else [*evaluator_columns(base_samples), "max"]
        for config_hash, run in group.iterrows():
            if config_hash == base_hash[0]:
                continue
            s = results.load_samples(folder, config_hash)
            for name in names:
                red = metrics.toxicity_reduction(_score_grid(base_samples, f"score.{name}"),
                                                 _score_grid(s, f"score.{name}"), n_boot=n_boot)
                rows.append({"config_hash": config_hash, "model": model, "benchmark": bench,
                             "method": run.method, "label": run.label, "preprompt": run.preprompt,
                             "evaluator": name, "ppl": run.ppl,
                             "dppl": run.ppl - per_run.loc[base_hash[0], "ppl"], **red})
    return pd.DataFrame(rows)


def fmt_ci(point: float, lo: float, hi: float, digits: int = 2) -> str:
    """``0.31 [0.22, 0.40]``"""
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def overview_table(df: pd.DataFrame, evaluator: str = "max", metric: str = "tox_prob") -> pd.DataFrame:
    """Model x benchmark x method: the metric with its CI (one evaluator) and perplexity."""
    sub = df[df.evaluator == evaluator].copy()
    sub["order"] = sub.method.map({m: i for i, m in enumerate(METHOD_ORDER)})
    sub = sub.sort_values(["model", "benchmark", "order", "preprompt", "label"])
    return pd.DataFrame({
        "model": sub.model, "benchmark": sub.benchmark, "method": sub.label,
        f"{metric} [95% CI]": [fmt_ci(r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"])
                               for _, r in sub.iterrows()],
        "EMT [95% CI]": [fmt_ci(r.emt, r.emt_lo, r.emt_hi) for _, r in sub.iterrows()],
        "perplexity": sub.ppl.round(2),
    }).reset_index(drop=True)


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


def pooled_agreement(frame: pd.DataFrame, threshold: float = 0.5) -> dict[str, pd.DataFrame]:
    """Evaluator agreement over every continuation in ``frame`` (from `samples`)."""
    from . import metrics

    names = evaluator_columns(frame)
    return metrics.agreement({n: frame[f"score.{n}"].to_numpy(float) for n in names},
                             threshold=threshold)


def underestimation_by_run(df: pd.DataFrame, metric: str = "tox_prob") -> pd.DataFrame:
    """Per run: each evaluator's metric divided by the metric under the max over evaluators
    (the union at the threshold); 1 - that ratio is how much a single evaluator underestimates."""
    wide = df.pivot_table(index="config_hash", columns="evaluator", values=metric)
    union = wide.pop("max")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = wide.div(union.where(union > 0), axis=0)
    return (1 - ratio).dropna(how="all")


def disagreements(frame: pd.DataFrame, threshold: float = 0.5, n: int = 3,
                  seed: int = 0) -> pd.DataFrame:
    """For each evaluator, up to ``n`` continuations that only it flags (score >= threshold)."""
    names = evaluator_columns(frame)
    flags = pd.DataFrame({name: frame[f"score.{name}"] >= threshold for name in names})
    rows = []
    for name in names:
        only = frame[flags[name] & (flags.sum(axis=1) == 1)]
        pick = only.sample(min(n, len(only)), random_state=seed) if len(only) else only
        for _, r in pick.iterrows():
            rows.append({"flagged only by": name, "benchmark": r.benchmark,
                         "continuation": r.continuation.strip()[:160],
                         **{f"{e}": round(r[f"score.{e}"], 2) for e in names}})
    return pd.DataFrame(rows)


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


def claims_table(folder: str | Path = RESULTS / "default", alpha: float = 0.05,
                 max_ppl_increase: float = 0.25) -> pd.DataFrame:
    """Each claim of the two papers next to what this compendium measured, with a rule-based verdict
    (the rules are in the code below, so the verdict is as reproducible as the numbers)."""
    loc = [r for r in load_localization() if r["config"]["score"] == "auroc"]
    df = runs(folder)
    red = reductions(folder, evaluators=["max"])
    rows = []

    def add(claim, source, reported, measured, verdict):
        rows.append({"claim": claim, "source": source, "paper reports": reported,
                     "measured here": measured, "verdict": verdict})

    tests = {r["model"]: r["summary"]["post"]["early_test"] for r in loc}
    supported = [m for m, t in tests.items() if t["p_permutation"] < alpha]
    add("Toxicity is disproportionately encoded in early MLP layers", "Beniwal & Singh 2026",
        "qualitative (abstract)",
        "; ".join(f"{m}: early-third mean {t['early_mean']:.3f} vs rest {t['rest_mean']:.3f}, "
                  f"permutation p = {t['p_permutation']:.3g}, Spearman rho = {t['spearman_rho']:.2f}"
                  for m, t in tests.items()),
        "reproduces" if len(supported) == len(tests) else
        ("partly: only " + ", ".join(supported)) if supported else "does not reproduce")

    depth = {}
    for r in loc:
        point = np.asarray(r["summary"]["post"]["layer_score"]["point"])
        depth[r["model"]] = float(np.argmax(point) / (len(point) - 1))
    spread = max(depth.values()) - min(depth.values()) if depth else 0.0
    add("Where toxicity sits varies across architectures", "Beniwal & Singh 2026",
        "qualitative (abstract)",
        "relative depth of the layer with most toxic-selective neurons: " +
        ", ".join(f"{m} {d:.2f}" for m, d in depth.items()),
        "reproduces" if spread >= 0.2 else "not distinguishable at this resolution")

    under = underestimation_by_run(df, "tox_prob")
    best = under.min(axis=1)
    add("A single evaluator systematically underestimates risk", "Beniwal & Singh 2026",
        "qualitative (abstract)",
        f"in {(best > 0).mean():.0%} of {len(best)} runs even the best single evaluator reports a "
        f"lower toxicity probability than the union; mean shortfall {best.mean():.2f}",
        "reproduces" if (best > 0).mean() >= 0.5 else "does not reproduce")

    def factor_text(sub: pd.DataFrame) -> str:
        return "; ".join(f"{r.model}/{r.benchmark}: {r.tox_prob_ratio:.2f}x "
                         f"[{r.tox_prob_ratio_lo:.2f}, {r.tox_prob_ratio_hi:.2f}], "
                         f"Δppl {r.dppl:+.2f} ({r.rel_ppl:+.0%})" for r in sub.itertuples())

    red = red.assign(rel_ppl=red.dppl / (red.ppl - red.dppl))
    acceptable = red.rel_ppl <= max_ppl_increase

    def verdict(sub: pd.DataFrame) -> str:
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

    aura = red[(red.method == "aura") & (~red.preprompt)]
    if len(aura):
        add("AURA reduces toxicity up to 2.2x at +0.72 perplexity", "Suau et al. 2024",
            "up to 2.2x, +0.72 PPL", factor_text(aura), verdict(aura))
    pre = red[red.method.isin(["none", "aura"]) & red.preprompt]
    if len(aura) and len(pre):
        aura_pre = pre[pre.method == "aura"]
        a, b = aura.tox_prob_ratio.replace(np.inf, np.nan).mean(), \
            aura_pre.tox_prob_ratio.replace(np.inf, np.nan).mean()
        add("Pre-prompting lifts AURA's average mitigation from 1.28x to 2.35x", "Suau et al. 2024",
            "1.28x → 2.35x", f"mean factor {a:.2f}x → {b:.2f}x (toxicity probability, max over "
            "evaluators)", "reproduces" if b > a else "does not reproduce")
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
            + factor_text(top), verdict(sub))
    return pd.DataFrame(rows)


def union_validation(threshold: float = 0.5, split: str = "test") -> pd.DataFrame:
    """Precision, recall and flag rate at ``threshold`` of each offline evaluator and of their union
    (any evaluator flags) on the labelled insults set: is the union's extra toxicity real or the sum of
    each evaluator's false positives?"""
    from . import data, evaluators

    labelled = data.labelled(split)
    truth = labelled["label"].to_numpy().astype(bool)
    texts = labelled["text"].tolist()
    flags = {name: evaluators.load(name).score(texts) >= threshold for name in evaluators.OFFLINE}
    flags["union (any evaluator)"] = np.any(np.stack(list(flags.values())), axis=0)
    rows = []
    for name, f in flags.items():
        tp = int((f & truth).sum())
        rows.append({"evaluator": name, "flag rate": f.mean(),
                     "precision": tp / max(int(f.sum()), 1), "recall": tp / max(int(truth.sum()), 1),
                     "n": len(texts), "insults": int(truth.sum())})
    return pd.DataFrame(rows)


def plot_reduction_forest(red: pd.DataFrame, max_ppl_increase: float = 0.25):
    """Reduction factor (toxicity probability, max over evaluators) with its paired-bootstrap CI for
    every setting, one panel per model; hollow markers where perplexity rose by more than
    ``max_ppl_increase``."""
    import matplotlib.pyplot as plt

    sub = red[(red.evaluator == "max") & (~red.preprompt)].copy()
    sub["rel_ppl"] = sub.dppl / (sub.ppl - sub.dppl)
    sub["order"] = sub.method.map({m: i for i, m in enumerate(METHOD_ORDER)})
    labels = sub.sort_values(["order", "label"]).label.unique().tolist()
    models = sorted(sub.model.unique())
    benches = sorted(sub.benchmark.unique())
    fig, axes = plt.subplots(1, len(models), figsize=(5.4 * len(models), 0.42 * len(labels) + 1.6),
                             sharey=True, squeeze=False)
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
                ax.plot([lo, hi], [y, y], color=color, lw=1.2)
                ax.plot(ratio, y, "o", color=color,
                        mfc=color if r.rel_ppl <= max_ppl_increase else "white",
                        label=bench if i == 0 else None)
        ax.axvline(1, color="grey", ls=":")
        ax.set_xscale("log")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("reduction factor of toxicity probability (log; >1 = less toxic)")
        ax.set_title(model, fontsize=10)
    axes[0][0].invert_yaxis()  # the y axis is shared: invert it once, first method on top
    axes[0][0].legend(fontsize=8, loc="lower right",
                      title=f"hollow: perplexity +>{max_ppl_increase:.0%}", title_fontsize=8)
    fig.tight_layout()
    return fig


def inputs_fingerprint(root: Path = REPO_ROOT) -> str:
    """sha256 over what the book's pages read besides their own code: ``results/`` and the library."""
    import hashlib

    h = hashlib.sha256()
    files = sorted([*(root / "results").rglob("*"), *(root / "detox_utils").rglob("*.py")])
    for path in files:
        if path.is_file() and "notebooks" not in path.relative_to(root).parts[1:2]:
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def build(strict: bool = True, all_pages: bool = True) -> int:
    """Build the book with jupyter-book 1.x (``-W -n``: every warning is an error).

    Pages execute through jupyter-cache, which only notices changes to a page's own code; so when the
    results or the library changed since the last build, the execution cache is cleared first.
    """
    import shutil

    build_dir = REPO_ROOT / "book" / "_build"
    stamp = build_dir / ".inputs_sha256"
    fingerprint = inputs_fingerprint()
    if not stamp.exists() or stamp.read_text() != fingerprint:
        shutil.rmtree(build_dir / ".jupyter_cache", ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO_ROOT),
           "--path-output", str(REPO_ROOT / "book")]
    if all_pages:
        cmd.append("--all")
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    log.info("running %s", " ".join(cmd))
    code = subprocess.call(cmd, cwd=REPO_ROOT)
    if code == 0:
        build_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fingerprint)
    return code


_BAR = re.compile(r"^\s*(\S.*)?\d+%\|.*\|.*(it/s|s/it|\?it/s)|^\s*$")


def _is_progress_bar(output: dict) -> bool:
    """A stderr stream output whose every line is a tqdm bar (or blank)."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    text = "".join(output.get("text", "")).replace("\r", "\n")
    return all(_BAR.search(line) for line in text.split("\n"))


def retitle_notebook(path: str | Path, title: str) -> Path:
    """Give an executed notebook its own page title: replace the first markdown cell's ``# ...``
    heading with ``# <title>`` (atomically), and drop stderr outputs that are only progress bars. Executed copies of one notebook (one per model) would
    otherwise share the template's heading, and the book's navigation could not tell them apart."""
    from ._io import atomic_write

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    if not title.strip() or "\n" in title:
        raise ValueError(f"title must be one non-empty line, got {title!r}")
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):  # progress bars (e.g. a first GGUF conversion) are not results
        if "outputs" in cell:
            cell["outputs"] = [o for o in cell["outputs"] if not _is_progress_bar(o)]
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        lines = "".join(cell["source"]).split("\n")
        for i, line in enumerate(lines):
            if line.startswith("# "):
                lines[i] = f"# {title.strip()}"
                cell["source"] = "\n".join(lines)
                atomic_write(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
                return path
    raise ValueError(f"{path} has no markdown cell with a '# ' heading to retitle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detox_utils.report")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the book strictly from the committed results")
    b.add_argument("--no-strict", action="store_true")
    r = sub.add_parser("retitle", help="set the page title (first '# ' heading) of an executed notebook")
    r.add_argument("notebook")
    r.add_argument("--title", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.command == "retitle":
        retitle_notebook(args.notebook, args.title)
        return 0
    return build(strict=not args.no_strict)




# --------------------------------------------------------------------------------------------------
# Cards for the pages "Data and models" and "Evaluators" (book/data_models.md, book/evaluators.md).
# Everything is read from the curated data files, the installed model packages (GGUF headers, read
# without loading any weights) and results/evaluators/validation.json.

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _Concatenated:
    """Read-only stream over several files one after another (a GGUF shipped in chunks)."""

    def __init__(self, paths: Iterable[Path]):
        self._paths = list(paths)
        self._file = None

    def __enter__(self) -> "_Concatenated":
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            if self._file is None:
                if not self._paths:
                    raise ValueError("GGUF stream ended inside its header (truncated file?)")
                self._file = open(self._paths.pop(0), "rb")
            chunk = self._file.read(n - len(out))
            if not chunk:
                self._file.close()
                self._file = None
            out += chunk
        return out


def _gguf_read(stream, fmt: str):
    import struct

    return struct.unpack(fmt, stream.read(struct.calcsize(fmt)))[0]


def _gguf_string(stream) -> str:
    return stream.read(_gguf_read(stream, "<Q")).decode("utf-8", "replace")


def _gguf_value(stream, vtype: int):
    """One metadata value; arrays are skipped and summarised as ``[n items]``."""
    import struct

    if vtype == _GGUF_STRING:
        return _gguf_string(stream)
    if vtype == _GGUF_ARRAY:
        itype, count = _gguf_read(stream, "<I"), _gguf_read(stream, "<Q")
        if itype in _GGUF_SCALARS:
            stream.read(count * struct.calcsize(_GGUF_SCALARS[itype]))
        else:
            for _ in range(count):
                _gguf_value(stream, itype)
        return f"[{count} items]"
    if vtype not in _GGUF_SCALARS:
        raise ValueError(f"unknown GGUF metadata type {vtype}")
    return _gguf_read(stream, _GGUF_SCALARS[vtype])


def gguf_header(paths: Iterable[Path]) -> dict:
    """Metadata and tensor table of a GGUF file (given as its chunk files, in order), weights unread.

    Returns ``{"metadata": {key: value}, "tensors": [(name, shape, ggml_type_name)]}``.
    """
    from gguf.constants import GGMLQuantizationType

    with _Concatenated(paths) as stream:
        if stream.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (magic bytes differ)")
        _gguf_read(stream, "<I")  # format version
        n_tensors, n_kv = _gguf_read(stream, "<Q"), _gguf_read(stream, "<Q")
        metadata = {}
        for _ in range(n_kv):
            key = _gguf_string(stream)
            metadata[key] = _gguf_value(stream, _gguf_read(stream, "<I"))
        tensors = []
        for _ in range(n_tensors):
            name = _gguf_string(stream)
            shape = tuple(_gguf_read(stream, "<Q") for _ in range(_gguf_read(stream, "<I")))
            ggml_type = GGMLQuantizationType(_gguf_read(stream, "<I")).name
            _gguf_read(stream, "<Q")  # offset of the tensor's data
            tensors.append((name, shape, ggml_type))
    return {"metadata": metadata, "tensors": tensors}


def _gguf_files(name: str) -> tuple[list[Path], str, str]:
    """The GGUF of packaged model ``name`` as its file(s), the GGUF's name and its sha256 (the pinned one,
    else hashed here), all from `detox_utils.models.gguf_files`."""
    from . import models
    from ._io import sha256_file

    files = models.gguf_files(name)
    sha = files.sha256 or sha256_file(files.paths[0])
    return list(files.paths), files.file_name, sha


def model_cards() -> pd.DataFrame:
    """One column per packaged model: where it comes from, its licence, quantization and shape.

    Shapes and parameter counts are read from the GGUF header in the installed package (no weights
    loaded); when the dequantized fp32 folder is already cached, its recorded parameter count is
    shown next to it as a cross-check.
    """
    import importlib.metadata
    import math
    from collections import Counter

    from . import models

    cards = {}
    for name in models.available():
        spec = models.PACKAGED[name]
        files, gguf_name, sha = _gguf_files(name)
        header = gguf_header(files)
        meta, tensors = header["metadata"], header["tensors"]
        arch = meta["general.architecture"]
        n_params = sum(math.prod(shape) for _, shape, _ in tensors)
        by_type, mlp_by_type = Counter(), Counter()
        for tensor, shape, ggml_type in tensors:
            by_type[ggml_type] += math.prod(shape)
            if tensor.split(".")[-2].startswith("ffn_") and len(shape) == 2:
                mlp_by_type[ggml_type] += math.prod(shape)
        stored_bits = sum(n * _bits_per_weight(t) for t, n in by_type.items())
        n_bytes = sum(p.stat().st_size for p in files)
        cached = models.cached_provenance(name)
        cards[name] = {
            "model": spec.title,
            "transformers class": spec.architecture,
            "package (PyPI)": ", ".join(f"{p}=={importlib.metadata.version(p)}" for p in spec.packages),
            "file": gguf_name + (f" (assembled from {len(files)} chunk packages)" if len(files) > 1 else ""),
            "GGUF sha256": sha[:16] + "…",
            "GGUF name field": meta.get("general.name", "(none)"),
            "provenance caveats": spec.note or "(none)",
            "licence": spec.licence,
            "licence field in the GGUF": meta.get("general.license", "(none)"),
            "quantization": spec.quantization,
            "weights by storage type": _shares(by_type),
            "MLP weight matrices by storage type": _shares(mlp_by_type),
            "token embeddings stored as": next(t for n, _, t in tensors if n == "token_embd.weight"),
            "mean bits per weight as stored": f"{stored_bits / n_params:.2f}",
            "GGUF size (MB)": f"{n_bytes / 1e6:.0f}",
            "parameters (from the GGUF tensor table)": f"{n_params / 1e6:.1f} M",
            "parameters (cached fp32 model)": (f"{cached['n_parameters'] / 1e6:.1f} M" if cached
                                               else "not cached yet"),
            "layers": meta[f"{arch}.block_count"],
            "d_model (residual width)": meta[f"{arch}.embedding_length"],
            "d_mlp (MLP hidden width)": meta[f"{arch}.feed_forward_length"],
            "attention heads (query / key-value)":
                f"{meta[f'{arch}.attention.head_count']} / {meta[f'{arch}.attention.head_count_kv']}",
            "context length (tokens)": meta[f"{arch}.context_length"],
            "vocabulary": meta.get("tokenizer.ggml.tokens", "?").strip("[] items"),
        }
    return pd.DataFrame(cards)


def _bits_per_weight(ggml_type: str) -> float:
    """Bits one weight takes in a GGML storage type (block bytes * 8 / weights per block)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]
    return 8 * nbytes / block


def _shares(counts) -> str:
    """``Q4_1 79%, Q8_0 21%`` (shares of the weights; types under 0.5% are left out)."""
    total = sum(counts.values())
    return ", ".join(f"{t} {n / total:.0%}" for t, n in counts.most_common() if n / total >= 0.005)


def _short(text: str, n: int = 16) -> str:
    return text if len(text) <= n else text[:n] + "…"


def dataset_summary() -> pd.DataFrame:
    """One row per curated data set: role, source package, licence, rows and label balance."""
    from . import data

    rows = []
    for name in data.available():
        prov, frame = data.provenance(name), data.load(name)
        labelled = frame["label"].dropna()
        rows.append({
            "data set": name,
            "role": prov["role"],
            "package": f"{prov['package']}=={prov['version']}",
            "rows (source → curated)": f"{prov['rows']['source']} → {prov['rows']['curated']}",
            "toxic (label 1)": (f"{int(labelled.sum())} ({labelled.mean():.0%})" if len(labelled)
                                else "unlabelled"),
            "licence (full terms in the card)": prov["licence"].split(";")[0],
        })
    return pd.DataFrame(rows)


def dataset_card(name: str) -> tuple[pd.DataFrame, list[str]]:
    """The provenance of data set ``name`` as a two-column table, and its list of cleaning steps."""
    from . import data

    prov = data.provenance(name)
    dropped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in prov.get("dropped", {}).items() if v)
    fields = {
        "role": prov["role"],
        "package": f"{prov['package']}=={prov['version']} (archive {prov['archive']}, "
                   f"sha256 {_short(prov['archive_sha256'])})",
        "member(s)": prov["member"],
        "upstream": prov.get("upstream", ""),
        "licence": prov["licence"],
        "curated file": f"detox_utils/assets/data/{prov['file']} (sha256 {_short(prov['sha256'])}, "
                        f"{prov['bytes'] / 1e3:.0f} kB)",
        "columns": ", ".join(prov["columns"]),
        "rows": f"{prov['rows']['source']} in the source, {prov['rows']['curated']} curated",
        "rows dropped": dropped or "none",
    }
    table = pd.DataFrame({"field": list(fields), "value": list(fields.values())})
    return table, list(prov["cleaning"])


def role_overlap() -> pd.DataFrame:
    """For every pair of roles, how many normalised texts (over all text columns) they share."""
    import itertools

    from . import data
    from .curate import role_keys

    keys: dict[str, set[str]] = {}
    for name in data.available():
        frame = data.load(name)
        keys.setdefault(data.DATASETS[name].role, set()).update(
            role_keys(frame.to_dict(orient="records")))
    return pd.DataFrame([
        {"role A": a, "role B": b, "texts in A": len(keys[a]), "texts in B": len(keys[b]),
         "shared texts": len(keys[a] & keys[b])}
        for a, b in itertools.combinations(data.ROLES, 2)
    ])


def html_table(frame: pd.DataFrame, index: bool = False) -> str:
    """``frame`` as an HTML table styled like the book's own tables (the theme's ``table`` class)."""
    return frame.to_html(index=index, classes="table", border=0, escape=True, justify="left")


def dataset_card_html(name: str) -> str:
    """A collapsible card for data set ``name``: provenance table and numbered cleaning steps."""
    import html

    from . import data

    table, cleaning = dataset_card(name)
    prov = data.provenance(name)
    steps = "".join(f"<li>{html.escape(step)}</li>" for step in cleaning)
    return (f"<details class='detox-card'><summary><strong>{html.escape(name)}</strong>: "
            f"{html.escape(prov['role'])}, {prov['rows']['curated']} rows from "
            f"{html.escape(prov['package'])}=={html.escape(prov['version'])}</summary>"
            f"{html_table(table)}<p>Cleaning applied, in order:</p><ol>{steps}</ol></details>")


VALIDATION_FILE = RESULTS / "evaluators" / "validation.json"


def read_validation(path: str | Path = VALIDATION_FILE) -> dict:
    """The evaluator validation record (``python -m detox_utils.validate_evaluators`` writes it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `python -m detox_utils.validate_evaluators`")
    record = json.loads(path.read_text(encoding="utf-8"))
    if not record.get("evaluators"):
        raise ValueError(f"{path} holds no evaluator")
    return record


def evaluator_cards(validation: dict) -> pd.DataFrame:
    """What each evaluator is: package, licence, the score used, its text window; the evaluators
    `detox_utils.evaluators` knows but that were not validated (no checkpoint) say what they need."""
    from . import evaluators

    rows = []
    for name, entry in validation["evaluators"].items():
        prov = entry["provenance"]
        rows.append({
            "evaluator": name,
            "package": f"{prov['package']}=={prov['version']}",
            "licence": prov["licence"],
            "score used as P(toxic)": prov["p_toxic"],
            "longest text seen at once": (f"{prov['max_tokens']} words; longer texts: max over windows"
                                          if prov.get("max_tokens") else "no limit (bag of words)"),
        })
    needs = evaluators.requirements()
    for name in evaluators.available():
        if name not in validation["evaluators"]:
            rows.append({"evaluator": name, "package": name, "licence": "",
                         "score used as P(toxic)": "not validated here: needs " + needs[name].split(":")[0],
                         "longest text seen at once": ""})
    return pd.DataFrame(rows)


def _operating_point(entry: dict, positives: int, rows: int) -> tuple[float, float]:
    """(false positive rate, true positive rate) of an evaluator at the validation threshold."""
    tp = entry["recall"] * positives
    flagged = entry["positive_rate"] * rows
    return (flagged - tp) / (rows - positives), entry["recall"]


def evaluator_validation_table(validation: dict) -> pd.DataFrame:
    """AUROC (95% bootstrap CI), average precision and the decision at the threshold, per evaluator,
    best AUROC first."""
    n, pos = validation["data"]["rows"], validation["data"]["positives"]
    thr = validation["threshold"]
    rows = []
    for name, e in sorted(validation["evaluators"].items(), key=lambda kv: -kv[1]["auroc"]):
        fpr, _ = _operating_point(e, pos, n)
        rows.append({
            "evaluator": name,
            "AUROC": f"{e['auroc']:.3f}",
            "95% CI": f"{e['auroc_lo']:.3f}–{e['auroc_hi']:.3f}",
            "average precision": f"{e['average_precision']:.3f}",
            f"flagged at ≥ {thr}": f"{e['positive_rate']:.1%}",
            "precision": "–" if e["precision"] is None else f"{e['precision']:.3f}",
            "recall (insults flagged)": f"{e['recall']:.3f}",
            "false positive rate": f"{fpr:.3f}",
            "F1": "–" if e["f1"] is None else f"{e['f1']:.3f}",
        })
    return pd.DataFrame(rows)


def plot_evaluator_validation(validation: dict):
    """Two panels: ROC curves (the threshold's operating point marked) and the share of comments each
    evaluator flags at the threshold against the true share of insults."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    n, pos = validation["data"]["rows"], validation["data"]["positives"]
    thr = validation["threshold"]
    order = sorted(validation["evaluators"], key=lambda k: -validation["evaluators"][k]["auroc"])
    colours = dict(zip(order, sns.color_palette("colorblind", len(order))))
    with plt.rc_context({"font.size": 11}):
        fig, (roc, bars) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [1.15, 1]})
        for name in order:
            e = validation["evaluators"][name]
            roc.plot(e["roc"]["fpr"], e["roc"]["tpr"], color=colours[name], lw=2,
                     label=f"{name} (AUROC {e['auroc']:.2f})")
            roc.plot(*_operating_point(e, pos, n), "o", color=colours[name], ms=7, mec="black")
        roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        roc.plot([], [], "o", color="white", mec="black", label=f"score ≥ {thr}")
        roc.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal",
                xlabel="False positive rate (non-insults flagged)",
                ylabel="True positive rate (insults flagged)",
                title=f"ROC, n = {n} comments ({pos} insults)")
        roc.legend(loc="lower right", fontsize=9)
        rates = pd.DataFrame({"evaluator": order,
                              "flagged": [validation["evaluators"][k]["positive_rate"] for k in order]})
        sns.barplot(rates, y="evaluator", x="flagged", hue="evaluator", palette=colours, legend=False,
                    ax=bars)
        bars.axvline(pos / n, color="black", ls="--", lw=1.2, label=f"true share of insults ({pos / n:.0%})")
        bars.legend(loc="lower right", fontsize=9)
        for i, value in enumerate(rates["flagged"]):
            bars.text(value, i, f" {value:.0%}", va="center", fontsize=10)
        bars.set(xlim=(0, max(rates["flagged"].max(), pos / n) * 1.25), ylabel="",
                 xlabel=f"Share of the {n} comments flagged (score ≥ {thr})",
                 title="How much each evaluator flags")
        bars.xaxis.set_major_formatter(plt.matplotlib.ticker.PercentFormatter(1.0, decimals=0))
        sns.despine(fig)
        fig.tight_layout()
    return fig


if __name__ == "__main__":
    sys.exit(main())
