"""The page "Neuron explorer" (book/explorer.md): searchable tables of each model's most
toxicity-selective MLP units, where they sit by layer next to a random draw, and the numbers the page
states, all read from ``results/explorer/<model>.json`` (`detox_utils.explorer`)."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from .. import results
from .common import RESULTS

EARLY_SHARE = 1 / 3  # the "early layers" of the localization claim: the first third
_VISIBLE = {" ": "␣", "\n": "⏎", "\t": "⇥"}


def load_explorer(folder: str | Path = RESULTS / "explorer") -> list[dict]:
    """The explorer records of the book's settings (``<model>.json``), smallest model first (by
    number of layers); records of other settings (``<model>__<hash>.json``) are left out."""
    paths = sorted(p for p in Path(folder).glob("*.json") if "__" not in p.stem)
    if not paths:
        raise FileNotFoundError(f"no explorer results in {folder}; run python -m detox_utils explore --model M")
    return sorted((results.read_record(p, "explorer") for p in paths), key=lambda r: (r["n_layers"], r["model"]))


def visible(token: str) -> str:
    """A token with its spaces, newlines and tabs shown (␣, ⏎, ⇥), so that " the" and "the" differ."""
    return "".join(_VISIBLE.get(c, c) for c in token) or "∅"


def _relative_depth(layers, n_layers: int) -> np.ndarray:
    return np.asarray(layers, dtype=float) / max(1, n_layers - 1)


def summary(record: dict) -> dict:
    """The numbers the page states for one model: AUROC of the top and the random units, their depth,
    their share in the first third of the layers, the sites of the top units, how many of their
    top-activating texts are insults, and how many promoted tokens are more frequent in insults."""
    top, rnd, n_layers = record["units"], record["random"], record["n_layers"]
    n_early = max(1, round(EARLY_SHARE * n_layers))
    texts = [t for u in top for t in u["top_texts"]]
    promoted = [p for u in top if u["write"] for p in u["write"]["promoted"]]
    seen = [p for p in promoted if p["in_toxic"] + p["in_neutral"] > 0]
    sites = pd.Series([u["site"] for u in top]).value_counts()
    from scipy import stats

    early_top = sum(u["layer"] < n_early for u in top)
    return {
        "early_expected": len(top) * n_early / n_layers,  # every layer has as many units per site
        "p_early": float(stats.binomtest(early_top, len(top), n_early / n_layers).pvalue),
        "neurons_distinct": len({(u["layer"], u["unit"]) for u in top if u["site"] != "out"}),
        "model": record["model"], "n_layers": n_layers, "k": len(top),
        "auroc_top_max": max(u["auroc"] for u in top), "auroc_top_min": min(u["auroc"] for u in top),
        "auroc_random_median": float(np.median([u["auroc"] for u in rnd])),
        "depth_top_median": float(np.median(_relative_depth([u["layer"] for u in top], n_layers))),
        "depth_random_median": float(np.median(_relative_depth([u["layer"] for u in rnd], n_layers))),
        "early_top": sum(u["layer"] < n_early for u in top),
        "early_random": sum(u["layer"] < n_early for u in rnd), "n_early": n_early,
        "sites": ", ".join(f"{n} {site}" for site, n in sites.items()),
        "texts": len(texts), "texts_toxic": sum(t["label"] == "toxic" for t in texts),
        "neurons": sum(u["write"] is not None for u in top),
        "promoted": len(promoted), "promoted_seen": len(seen),
        "promoted_more_toxic": sum(p["in_toxic"] > p["in_neutral"] for p in seen),
        "n_contrast": record["n_toxic"],
    }


def summary_table(records: list[dict]) -> pd.DataFrame:
    """One column per model, one row per `summary` number, labelled for a reader (models as columns,
    so that the table fits the page's width)."""
    rows = []
    for s in map(summary, records):
        rows.append({
            "model": s["model"],
            f"AUROC of the top {s['k']}": f"{s['auroc_top_min']:.3f}–{s['auroc_top_max']:.3f}",
            f"median AUROC, {s['k']} random units": f"{s['auroc_random_median']:.3f}",
            "median relative depth, top / random": f"{s['depth_top_median']:.2f} / {s['depth_random_median']:.2f}",
            "contrast texts per class": s["n_contrast"],
            "in the first third of layers: top / uniform / random": (
                f"{s['early_top']} / {s['early_expected']:.1f} / {s['early_random']} (p = {s['p_early']:.2g})"),
            "sites of the top units": s["sites"],
            "top-activating texts that are insults": f"{s['texts_toxic']} of {s['texts']}",
            "promoted tokens more frequent in insults": (
                f"{s['promoted_more_toxic']} of {s['promoted_seen']} seen in the texts"
                if s["neurons"] else "no neuron among the top units"),
        })
    wide = pd.DataFrame(rows).set_index("model").T
    wide.columns.name = None
    return wide.rename_axis("").reset_index()


def _context_html(t: dict) -> str:
    label = "insult" if t["label"] == "toxic" else "non-insult"
    return (f'<li><span class="detox-label detox-{html.escape(t["label"])}">{label}</span> '
            f'<span class="detox-peak">{t["peak"]:.2f}</span> '
            f'…{html.escape(t["before"])}<mark>{html.escape(t["token"])}</mark>{html.escape(t["after"])}…</li>')


def _tokens_html(entries: list[dict]) -> str:
    return " ".join(f"<code>{html.escape(visible(e['token']))}</code>" for e in entries)


def units_table_html(record: dict, table_id: str) -> str:
    """The top units of ``record`` as an HTML table with a filter box (plain JavaScript, no library):
    typing keeps the rows whose text contains what was typed (a site, a layer, a token, a word). The
    table has class ``detox-quoted``: its texts and tokens are data (a code model's vocabulary holds
    names like ``OutOfRangeException``), which the book test's error scan skips."""
    rows = []
    for u in record["units"]:
        write = u["write"]
        promoted = (_tokens_html(write["promoted"]) if write else
                    '<span class="detox-na">a residual-stream coordinate, not a neuron</span>')
        rows.append(
            f'<tr><td>{u["rank"]}</td><td><code>{html.escape(u["site"])}</code> L{u["layer"]}'
            f' #{u["unit"]}</td><td>{u["auroc"]:.3f}</td>'
            f'<td><ul class="detox-contexts">{"".join(map(_context_html, u["top_texts"]))}</ul></td>'
            f'<td>{promoted}</td></tr>')
    tid = html.escape(table_id)
    script = (f"const q=this.value.toLowerCase();"
              f"for(const r of document.getElementById('{tid}').tBodies[0].rows)"
              "{r.hidden=!r.textContent.toLowerCase().includes(q);}")
    return (
        f'<div class="detox-explorer"><label>Filter the {len(rows)} units of {html.escape(record["model"])}: '
        f'<input type="search" placeholder="a site, layer (L7), token or word" '
        f'oninput="{html.escape(script)}"></label>'
        f'<table id="{tid}" class="table detox-units detox-quoted"><caption>{html.escape(record["model"])}: the '
        f'{len(rows)} units with the highest AUROC</caption><colgroup><col style="width:3em">'
        '<col style="width:7.5em"><col style="width:5.2em"><col><col style="width:24%"></colgroup>'
        '<thead><tr><th>#</th><th>unit (site, layer, index)</th><th>AUROC</th>'
        '<th>contrast texts that activate it most: label, peak response, the peak token marked</th>'
        '<th>tokens its output weights promote (logit lens)</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table></div>')


def plot_layers(records: list[dict]):
    """Per model, how many of the top units and of the random draw sit in each layer (bars side by
    side, the first third of the layers shaded). Returns the figure."""
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(records), 1, figsize=(8, 2.5 * len(records)), squeeze=False, sharey=True)
    for ax, rec in zip(axes[:, 0], records):
        n_layers, counts = rec["n_layers"], rec["layer_counts"]
        x = np.arange(n_layers)
        k = len(rec["units"])
        ax.axvspan(-0.5, max(1, round(EARLY_SHARE * n_layers)) - 0.5, color="0.92", zorder=0)
        ax.bar(x - 0.2, counts["top"], width=0.4, color="#c0392b", label=f"top {k} units by AUROC")
        ax.bar(x + 0.2, counts["random"], width=0.4, color="#7f8c8d", label=f"{k} random units")
        ax.set_xlim(-0.7, n_layers - 0.3)
        ax.set_xticks(x[::2] if n_layers > 16 else x)
        ax.set_ylabel("units")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{rec['model']} ({n_layers} layers)", fontsize=11)
        ax.tick_params(labelsize=10)
    axes[-1, 0].set_xlabel("layer (0 = first; shaded: the first third)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=10,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return fig


def interpretation(s: dict) -> str:
    """What one model's `summary` says, in words (every number from the record)."""
    k = s["k"]
    early = ("more than" if s["early_top"] > s["early_expected"] else
             "fewer than" if s["early_top"] < s["early_expected"] else "as many as")
    text = (f"In {s['model']} ({s['n_contrast']} texts per class) the {k} most selective units (AUROC "
            f"{s['auroc_top_min']:.2f} to {s['auroc_top_max']:.2f}, against a median of "
            f"{s['auroc_random_median']:.2f} for {k} random units; sites {s['sites']}; "
            f"{s['neurons_distinct']} distinct neurons, since a neuron's pre, up and post can all be among "
            f"them) sit at a median relative depth of {s['depth_top_median']:.2f}, the random draw at "
            f"{s['depth_random_median']:.2f}. {s['early_top']} of them are in the first third of the layers, "
            f"{early} the {s['early_expected']:.1f} a uniform spread would put there (two-sided binomial "
            f"p = {s['p_early']:.2g}; the random draw has {s['early_random']}). {s['texts_toxic']} of the "
            f"{s['texts']} texts that activate them most are insults.")
    if s["neurons"]:
        text += (f" Of the {s['promoted']} tokens promoted by the {s['neurons']} of them at a neuron site "
                 f"(logit lens), {s['promoted_seen']} occur in the contrast texts at all and "
                 f"{s['promoted_more_toxic']} of those are more frequent in the insults than in the "
                 "non-insults.")
    return text


STYLE = """<style>
.detox-explorer input { margin: .3em 0 .6em .4em; width: 22em; max-width: 100%; }
table.detox-units { table-layout: fixed; width: 100%; font-size: .85em; }
table.detox-units td, table.detox-units th { overflow-wrap: anywhere; vertical-align: top; }
ul.detox-contexts { margin: 0; padding-left: 1em; }
.detox-label { font-size: .8em; padding: 0 .3em; border-radius: 3px; white-space: nowrap; }
.detox-toxic { background: #fadbd8; } .detox-neutral { background: #d6eaf8; }
.detox-peak { color: #555; font-variant-numeric: tabular-nums; }
.detox-na { color: #666; font-style: italic; }
</style>"""
