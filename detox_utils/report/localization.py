"""The page "Localization" (book/localization.md) and notebooks/localize.ipynb: reading localization
records and plotting where the toxicity-selective units sit by layer and site."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import results
from .common import RESULTS
SITE_LABELS = {"pre": "pre (gate / c_fc output)", "up": "up (GLU up_proj output)",
               "post": "post (MLP neurons)", "out": "out (MLP output)"}


def read_localization(path: str | Path) -> dict:
    """One localization record (a file written by `experiment.write_localization`)."""
    return results.read_record(path, "localization")


def load_localization(folder: str | Path = RESULTS / "localization") -> list[dict]:
    """The localization records of the book's settings (written by notebooks/localize.ipynb with its
    defaults), sorted by file name; results of other settings (``...__<hash>.json``) are left out."""
    paths = sorted(p for p in Path(folder).glob("*.json") if p.stem.count("__") == 1)
    if not paths:
        raise FileNotFoundError(f"no localization results in {folder}; run notebooks/localize.ipynb")
    return [read_localization(p) for p in paths]


def notebook_links(folder: str | Path = RESULTS / "localization", root: str | Path = RESULTS.parent) -> str:
    """MyST links to the executed localization notebooks in ``folder`` (``localize-<model>.ipynb``, in
    the order of their names: that of ``_toc.yml``'s glob), e.g. ``{doc}`/results/localization/localize-a`
    and {doc}`/results/localization/localize-b```; document names are absolute from the book's source
    folder ``root``. For a ``{glue:md}`key:myst``` on the Localization page."""
    folder, root = Path(folder), Path(root)
    links = [f"{{doc}}`/{p.relative_to(root).with_suffix('').as_posix()}`"
             for p in sorted(folder.glob("localize-*.ipynb"))]
    if not links:
        raise FileNotFoundError(f"no executed localization notebook in {folder}; run python -m detox_utils "
                                "localize")
    return links[0] if len(links) == 1 else ", ".join(links[:-1]) + " and " + links[-1]


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


def _heatmap_table(record: dict) -> pd.DataFrame:
    """Sites x layers table of the per-layer score point estimates."""
    return pd.DataFrame({SITE_LABELS.get(site, site): summ["layer_score"]["point"]
                         for site, summ in record["summary"].items()}).T


def plot_layer_heatmap(record: dict, ax=None, vmin: float | None = None, vmax: float | None = None,
                       cbar: bool = True):
    """Sites x layers heatmap of the per-layer score; ``vmin``/``vmax`` fix the colour scale (to
    compare models on one scale, see `plot_layer_heatmaps`)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = _heatmap_table(record)
    ax = ax or plt.subplots(figsize=(9, 0.6 + 0.45 * len(table)))[1]
    sns.heatmap(table, ax=ax, cmap="rocket_r", vmin=vmin, vmax=vmax, cbar=cbar,
                cbar_kws={"label": _score_label(record)} if cbar else None)
    ax.set_xlabel("layer")
    _sparse_layer_ticks(ax, table.shape[1])
    ax.set_title(f"{record['model']}: where toxicity-selective units sit", fontsize=10)
    return ax


def plot_layer_heatmaps(records: list[dict]):
    """One heatmap per model (stacked), all on one colour scale (0 to the largest score of any
    model) with one colour bar beside them, so that a shade means the same share in every model."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    tables = [_heatmap_table(r) for r in records]
    vmax = max(float(np.nanmax(t.to_numpy(float))) for t in tables)
    heights = [0.45 * len(t) + 0.7 for t in tables]
    fig = plt.figure(figsize=(9, sum(heights) + 0.4))
    grid = fig.add_gridspec(len(records), 2, height_ratios=heights, width_ratios=[50, 1])
    cax = fig.add_subplot(grid[:, 1])
    for i, (rec, table) in enumerate(zip(records, tables)):
        ax = fig.add_subplot(grid[i, 0])
        sns.heatmap(table, ax=ax, cmap="rocket_r", vmin=0.0, vmax=vmax, cbar=i == 0,
                    cbar_ax=cax if i == 0 else None,
                    cbar_kws={"label": _score_label(rec)} if i == 0 else None)
        ax.set_xlabel("layer")
        _sparse_layer_ticks(ax, table.shape[1])
        ax.set_title(f"{rec['model']} ({table.shape[1]} layers)", fontsize=10)
    fig.tight_layout()
    return fig


def _sparse_layer_ticks(ax, n_layers: int, every: int = 2) -> None:
    """Label every ``every``-th layer of a heatmap (cell centres at i + 0.5), so that two-digit layer
    numbers do not run together."""
    ticks = list(range(0, n_layers, every))
    ax.set_xticks([t + 0.5 for t in ticks], [str(t) for t in ticks], rotation=0)


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
