"""Interactive figures and downloadable tables for the book's results pages.

Pure functions, a table in and a figure out: `tradeoff_figure` (toxicity against the perplexity
change, one trace per method and panel, settings told apart by marker and label, points beyond the
axis limit drawn at its edge and marked) and `evaluator_figure` (each run's toxicity under every
evaluator) take `report.runs()`; `figure_html` turns a figure into a page's HTML fragment.

plotly.js is served by the book itself, never from a CDN: the fragments do not carry it, and
``book/_ext/detox_book.py`` adds ``_static/`` + `PLOTLY_JS` to the pages that hold a plotly figure and
writes the bundle of the installed plotly package there (`write_plotly_js`).

`tradeoff_static` draws the trade-off's points with matplotlib at the text column's width, for print
and for readers without JavaScript (a page gives its figure the class ``detox-static``).

`csv_link` writes a table as CSV (atomically) under ``book/_static/tables/`` and returns the HTML of a
download link to it, for a page to render below the table.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import registry
from ._io import REPO_ROOT, atomic_write

TABLES_DIR = REPO_ROOT / "book" / "_static" / "tables"
TABLES_HREF = "../_static/tables/"  # the pages live in book/, the static files in _static/
METRICS = {"tox_prob": "toxicity probability", "emt": "expected maximum toxicity",
           "frac_toxic": "fraction of toxic continuations"}
FONT = {"size": 12}
SMALL = 10  # the smallest text of a figure, in px (labels of points)
SYMBOLS = ("circle", "diamond", "square", "triangle-up", "star", "hexagon")
GLYPHS = {"circle": "●", "diamond": "◆", "square": "■", "triangle-up": "▲", "star": "★",
          "hexagon": "⬢", "circle-open": "○", "diamond-open": "◇", "square-open": "□", "triangle-right": "▶"}
CROWD = 0.06  # a point's label is left out when another point is this close (share of each axis)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def plotly_js_name() -> str:
    """``plotly-<plotly.js version>.min.js``: the bundle's file name under the book's ``_static``."""
    from plotly.offline import get_plotlyjs_version

    return f"plotly-{get_plotlyjs_version()}.min.js"


PLOTLY_JS = plotly_js_name()


def write_plotly_js(folder: str | Path) -> Path:
    """Write the installed plotly package's plotly.js bundle to ``folder / PLOTLY_JS`` (atomically,
    only when it is missing or differs) and return its path."""
    from plotly.offline import get_plotlyjs

    path = Path(folder) / PLOTLY_JS
    bundle = get_plotlyjs()
    if not path.is_file() or path.read_text(encoding="utf-8") != bundle:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, bundle)
    return path


def _require(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{what} needs a pandas DataFrame (report.runs()), got {type(table).__name__}")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what}: the table lacks column(s) {missing}; it needs {list(columns)} "
                         "(the columns of report.runs())")
    if table.empty:
        raise ValueError(f"{what}: the table has no rows")


def _check_metric(metric: str, table: pd.DataFrame, with_ci: bool) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    _require(table, [metric, *([f"{metric}_lo", f"{metric}_hi"] if with_ci else [])], "the figure")


def method_order(methods: Sequence[str]) -> list[str]:
    """The methods present, in the registry's order (unknown names last, alphabetically)."""
    known = [m for m in registry.METHODS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def method_name(method: str) -> str:
    spec = registry.METHODS.get(method)
    return spec.label if spec else method


def setting_text(method: str, label: str) -> str:
    """The part of a run's label that names its setting: ``k=300``, ``pre-prompt``, or ``""``."""
    text = label.removeprefix(method_name(method)).strip()
    return text.replace("+ pre-prompt", "pre-prompt").strip()


def clip(values: Sequence[float], limit: float) -> tuple[np.ndarray, np.ndarray]:
    """``(values with everything above limit set to limit, mask of the clipped ones)``."""
    v = np.asarray(values, dtype=float)
    over = v > limit
    return np.where(over, limit, v), over


def _panels(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    return sorted(table.benchmark.unique()), sorted(table.model.unique())


def _ppl_change(sub: pd.DataFrame) -> pd.Series:
    """Perplexity change in % against the same model's un-intervened run without pre-prompt."""
    base = sub[(sub.method == "none") & (~sub.preprompt.astype(bool))]
    if base.empty:
        raise ValueError("the table has no un-intervened run (method 'none' without pre-prompt) of "
                         f"{sub.model.iloc[0]} / {sub.benchmark.iloc[0]}: the perplexity change needs it")
    return 100 * (sub.ppl / float(base.ppl.iloc[0]) - 1)


def tradeoff_points(table: pd.DataFrame, metric: str = "tox_prob", evaluator: str = "max",
                    x_limit: float = 120.0) -> pd.DataFrame:
    """The points of the trade-off figures: ``table``'s runs under ``evaluator`` with ``dppl`` (the
    perplexity change in % of the same model's un-intervened run), ``x`` (``dppl`` clipped at
    ``x_limit``), ``clipped``, ``setting`` (the label's setting, with the real change for clipped
    points), ``symbol`` (a plotly marker name: one per setting of a method, ``-open`` with pre-prompt,
    ``triangle-right`` when clipped) and ``front`` (on the panel's Pareto front)."""
    from .report import pareto_front

    _require(table, ["model", "benchmark", "method", "label", "preprompt", "ppl", "evaluator",
                     "n_prompts", "n_samples"], "the trade-off figure")
    _check_metric(metric, table, with_ci=True)
    if evaluator not in set(table.evaluator):
        raise ValueError(f"evaluator {evaluator!r} is not in the table; it has "
                         f"{sorted(set(table.evaluator))}")
    if not x_limit > 0:
        raise ValueError(f"x_limit is the axis limit in % perplexity change and must be > 0, "
                         f"got {x_limit}")
    frames = []
    for _, g in table[table.evaluator == evaluator].groupby(["model", "benchmark"]):
        g = g.copy()
        g["dppl"] = _ppl_change(g)
        g["x"], g["clipped"] = clip(g.dppl, x_limit)
        g["front"] = pareto_front(g, "dppl", metric).to_numpy()
        frames.append(g)
    points = pd.concat(frames)
    points["preprompt"] = points.preprompt.astype(bool)
    symbols = {}
    for method, g in points[~points.preprompt].groupby("method"):
        symbols.update({(method, lab): SYMBOLS[i % len(SYMBOLS)]
                        for i, lab in enumerate(sorted(g.label.unique()))})
    base = [symbols.get((r.method, r.label), "circle") for r in points.itertuples()]
    points["symbol"] = ["triangle-right" if r.clipped else b + ("-open" if r.preprompt else "")
                        for b, r in zip(base, points.itertuples())]
    short = _short_settings(points)
    points["setting"] = [(short[r.label] + (f" → {r.dppl:+,.0f}%" if r.clipped else "")).strip()
                         for r in points.itertuples()]
    points["labelled"] = _uncrowded(points, metric, x_limit)
    # the legend shows a trace's first marker: an unclipped one
    return points.sort_values(["benchmark", "model", "clipped", "preprompt", "label"])


def _short_settings(points: pd.DataFrame) -> dict[str, str]:
    """Each label's setting without the parameters all settings of its method share
    (``Damp k=3000 α=0.5`` -> ``α=0.5`` when every Damp run has k=3000)."""
    short = {}
    for method, g in points.groupby("method"):
        settings = {lab: setting_text(method, lab) for lab in g.label.unique()}
        plain = [set(settings[lab].split()) for lab in g[~g.preprompt].label.unique()]
        common = set.intersection(*plain) if len(plain) > 1 else set()
        short.update({lab: " ".join(w for w in text.split() if w not in common)
                      for lab, text in settings.items()})
    return short


def _uncrowded(points: pd.DataFrame, metric: str, x_limit: float) -> pd.Series:
    """True where a point's label fits: it is off scale, or no other point of its panel lies within
    `CROWD` of each axis' span (the legend's key and the hover name every setting anyway)."""
    span = x_limit - min(-5.0, float(points.x.min()))
    keep = pd.Series(False, index=points.index)
    for _, g in points.groupby(["model", "benchmark"]):
        x, y = g.x.to_numpy() / span, g[metric].to_numpy()
        near = (np.abs(x[:, None] - x[None]) < CROWD) & (np.abs(y[:, None] - y[None]) < CROWD)
        keep[g.index] = (near.sum(axis=1) == 1) | g.clipped.to_numpy()
    return keep & (points.setting != "")


def legend_name(points: pd.DataFrame, method: str) -> str:
    """``Det0: ● k=300 ◆ k=3000``: the method and a key from marker to setting."""
    g = points[points.method == method].sort_values("clipped").drop_duplicates("label")
    key = [f"{GLYPHS.get(r.symbol, '')} {setting_text(method, r.label) or 'default'}"
           for r in g.sort_values(["preprompt", "label"]).itertuples()]
    return f"{method_name(method)}: {' '.join(key)}" if len(key) > 1 else method_name(method)


def _metric_label(metric: str, evaluator: str) -> str:
    return METRICS[metric] + (" (max over evaluators)" if evaluator == "max" else f" ({evaluator})")


def _panel_title(g: pd.DataFrame, model: str, bench: str, sep: str) -> str:
    return (f"{model} / {bench}{sep}n = {int(g.n_prompts.max())} prompts × {int(g.n_samples.max())}"
            if len(g) else f"{model} / {bench}{sep}(no runs)")


def tradeoff_figure(table: pd.DataFrame, metric: str = "tox_prob", evaluator: str = "max",
                    x_limit: float = 120.0, ppl_rule: float | None = None):
    """Toxicity (``metric`` under ``evaluator``, with its 95% CI) against the change in perplexity
    (% of the un-intervened model's), one panel per benchmark (rows) and model (columns).

    One scatter trace per method and panel (one legend entry per method, keying its markers to its
    settings); the settings of a method have their own marker, and a text label where it fits;
    pre-prompted runs an open marker. Points beyond
    ``x_limit`` % are drawn at the axis edge as a right-pointing triangle labelled with their real
    change (`tradeoff_points`). The Pareto front (runs no other run beats on both axes) is a dashed
    step line; ``ppl_rule`` (a fraction, e.g. 0.25) draws the perplexity budget as a dotted line.
    """
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    points = tradeoff_points(table, metric, evaluator, x_limit)
    benches, models = _panels(points)
    methods = method_order(points.method.unique())
    colours = dict(zip(methods, PALETTE))
    titles = [_panel_title(points[(points.model == m) & (points.benchmark == b)], m, b, "<br>")
              for b in benches for m in models]
    fig = make_subplots(rows=len(benches), cols=len(models), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=titles, horizontal_spacing=0.05, vertical_spacing=0.12)
    shown = set()
    for r, bench in enumerate(benches, start=1):
        for c, model in enumerate(models, start=1):
            g = points[(points.model == model) & (points.benchmark == bench)]
            if g.empty:
                continue
            for method in methods:
                _add_method(fig, go, g[g.method == method], legend_name(points, method), metric,
                            colours[method], r, c, method not in shown)
                shown.add(method)
            front = g[g.front].sort_values("x")
            fig.add_trace(go.Scatter(x=front.x, y=front[metric], mode="lines", line_shape="hv",
                                     line={"color": "grey", "dash": "dash", "width": 1},
                                     name="Pareto front", legendgroup="pareto",
                                     showlegend="pareto" not in shown, hoverinfo="skip"), row=r, col=c)
            shown.add("pareto")
    fig.update_xaxes(range=[min(-5.0, float(points.x.min()) - 5), x_limit * 1.04], ticksuffix="%",
                     zeroline=True, zerolinecolor="#bbb", tickfont={"size": 11})
    for c in range(1, len(models) + 1):
        fig.update_xaxes(title_text="perplexity change", row=len(benches), col=c)
    for r in range(1, len(benches) + 1):
        fig.update_yaxes(title_text=METRICS[metric], row=r, col=1)
    fig.update_yaxes(range=[0, 1.08], tickfont={"size": 11})  # every metric is a share in [0, 1]
    fig.update_annotations(font_size=11)
    if ppl_rule is not None:
        fig.add_vline(x=100 * ppl_rule, line={"color": "#555", "dash": "dot", "width": 1})
        fig.add_annotation(x=100 * ppl_rule, y=1.04, xref="x", yref="y", showarrow=False,
                           text=f"+{100 * ppl_rule:.0f}% rule", font={"size": SMALL},
                           xanchor="left")
    label = _metric_label(metric, evaluator)
    fig.update_layout(font=FONT, height=330 * len(benches) + 140, margin={"l": 60, "r": 20, "t": 60,
                      "b": 40}, legend={"orientation": "h", "y": -0.12, "x": 0, "font": {"size": 11}},
                      template="plotly_white", hoverlabel={"font_size": 11},
                      title={"text": f"{label} against perplexity change", "font": {"size": 13},
                             "x": 0, "y": 0.995})
    return fig


def _add_method(fig, go, g: pd.DataFrame, name: str, metric: str, colour: str, row: int, col: int,
                legend: bool) -> None:
    """One trace: every run of ``method`` in one panel."""
    if g.empty:
        return
    hover = [f"{html.escape(r.label)}<br>perplexity {r.ppl:,.1f} ({r.dppl:+,.1f}%)"
             f"{' — off scale' if r.clipped else ''}<br>{METRICS[metric]} {getattr(r, metric):.2f} "
             f"[{getattr(r, metric + '_lo'):.2f}, {getattr(r, metric + '_hi'):.2f}]"
             for r in g.itertuples()]
    y = g[metric].to_numpy()
    fig.add_trace(go.Scatter(
        x=g.x, y=y, mode="markers+text", hovertext=hover,
        text=[t if shown else "" for t, shown in zip(g.setting, g.labelled)], hoverinfo="text",
        textposition=["middle left" if c else "top right" for c in g.clipped],
        textfont={"size": SMALL, "color": colour},
        marker={"color": colour, "size": 9, "symbol": list(g.symbol),
                "line": {"color": colour, "width": 1.5}},
        error_y={"type": "data", "symmetric": False, "array": g[f"{metric}_hi"].to_numpy() - y,
                 "arrayminus": y - g[f"{metric}_lo"].to_numpy(), "thickness": 1, "width": 2,
                 "color": colour},
        name=name, legendgroup=g.method.iloc[0], showlegend=legend), row=row, col=col)


_MPL_MARKERS = {"circle": "o", "diamond": "D", "square": "s", "triangle-up": "^", "star": "*",
                "hexagon": "h", "triangle-right": ">"}


def tradeoff_static(table: pd.DataFrame, metric: str = "tox_prob", evaluator: str = "max",
                    x_limit: float = 120.0, ppl_rule: float | None = None):
    """The same points as `tradeoff_figure` as a matplotlib figure sized for the book's ~690 px text
    column (for print and for readers without JavaScript)."""
    import matplotlib.pyplot as plt

    points = tradeoff_points(table, metric, evaluator, x_limit)
    benches, models = _panels(points)
    colours = dict(zip(method_order(points.method.unique()), PALETTE))
    fig, axes = plt.subplots(len(benches), len(models), figsize=(6.3, 2.6 * len(benches) + 0.9),
                             sharex=True, sharey=True, squeeze=False, dpi=110)
    for (r, bench), (c, model) in ((rb, cm) for rb in enumerate(benches) for cm in enumerate(models)):
        ax, g = axes[r, c], points[(points.model == model) & (points.benchmark == bench)]
        ax.set_title(_panel_title(g, model, bench, "\n"), fontsize=8)
        for p in g.itertuples():
            shape = p.symbol.removesuffix("-open")
            y, lo, hi = getattr(p, metric), getattr(p, f"{metric}_lo"), getattr(p, f"{metric}_hi")
            colour = colours[p.method]
            ax.errorbar(p.x, y, yerr=[[y - lo], [hi - y]], fmt=_MPL_MARKERS[shape], ms=5,
                        color=colour, mfc="white" if p.symbol.endswith("-open") else colour,
                        elinewidth=0.7, capsize=1.5)
            if p.labelled:
                ax.annotate(p.setting, (p.x, y), xytext=(-3, 4) if p.clipped else (2, 4),
                            textcoords="offset points", fontsize=6.5, color=colour,
                            ha="right" if p.clipped else "left")
        front = g[g.front].sort_values("x")
        ax.step(front.x, front[metric], where="post", color="grey", lw=0.8, ls="--")
        if ppl_rule is not None:
            ax.axvline(100 * ppl_rule, color="#555", lw=0.8, ls=":")
        ax.set_xlim(min(-5.0, float(points.x.min()) - 5), x_limit * 1.04)
        ax.set_ylim(0, 1.05)
        ax.tick_params(labelsize=7.5)
        if r == len(benches) - 1:
            ax.set_xlabel("perplexity change (%)", fontsize=8)
        if c == 0:
            ax.set_ylabel(METRICS[metric], fontsize=8)
    handles = [plt.Line2D([], [], color=col, marker="o", ls="") for col in colours.values()]
    handles += [plt.Line2D([], [], color="grey", ls="--", lw=0.8)]
    names = [*(legend_name(points, m) for m in colours), "Pareto front"]
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    return fig


def evaluator_figure(table: pd.DataFrame, metric: str = "tox_prob"):
    """Each run's ``metric`` under every evaluator (coloured dots, one trace per evaluator and panel)
    and the max over evaluators (black open diamond), one row per run, one panel per benchmark
    (rows) and model (columns). Clicking a legend entry hides that evaluator."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    _require(table, ["model", "benchmark", "method", "label", "preprompt", "evaluator", "n_prompts",
                     "n_samples"], "evaluator_figure")
    _check_metric(metric, table, with_ci=False)
    benches, models = _panels(table)
    evaluators = sorted(set(table.evaluator) - {"max"}) + (["max"] if "max" in set(table.evaluator)
                                                           else [])
    order = {m: i for i, m in enumerate(method_order(table.method.unique()))}
    labels = (table.drop_duplicates("label").assign(o=lambda t: t.method.map(order))
              .sort_values(["o", "preprompt", "label"]).label.tolist())
    n = table.groupby(["model", "benchmark"]).n_prompts.max()
    titles = [f"{m} / {b}<br>n = {int(n.get((m, b), 0))} prompts" for b in benches for m in models]
    fig = make_subplots(rows=len(benches), cols=len(models), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=titles, horizontal_spacing=0.04, vertical_spacing=0.1)
    for r, bench in enumerate(benches, start=1):
        for c, model in enumerate(models, start=1):
            g = table[(table.model == model) & (table.benchmark == bench)]
            for i, name in enumerate(evaluators):
                e = g[g.evaluator == name].set_index("label").reindex(labels)
                is_max = name == "max"
                fig.add_trace(go.Scatter(
                    x=e[metric], y=labels, mode="markers", name="max over evaluators" if is_max
                    else name, legendgroup=name, showlegend=(r, c) == (1, 1),
                    marker={"size": 11 if is_max else 8, "color": "black" if is_max else PALETTE[i],
                            "symbol": "diamond-open" if is_max else "circle",
                            "line": {"width": 2 if is_max else 0}},
                    hovertemplate=f"{html.escape(name)}<br>%{{y}}: %{{x:.2f}}<extra></extra>"),
                    row=r, col=c)
    fig.update_yaxes(autorange="reversed", tickfont={"size": 11}, categoryorder="array",
                     categoryarray=labels)
    fig.update_xaxes(range=[-0.03, 1.03], tickfont={"size": 11}, gridcolor="#e5e5e5")
    for c in range(1, len(models) + 1):
        fig.update_xaxes(title_text=METRICS[metric], row=len(benches), col=c)
    fig.update_annotations(font_size=11)
    fig.update_layout(font=FONT, height=(24 * len(labels) + 90) * len(benches) + 120,
                      margin={"l": 10, "r": 20, "t": 50, "b": 40}, template="plotly_white",
                      legend={"orientation": "h", "y": -0.08, "x": 0, "font": {"size": 11}},
                      hoverlabel={"font_size": 11})
    return fig


def evaluator_static(table: pd.DataFrame, metric: str = "tox_prob"):
    """The same dots as `evaluator_figure` as a matplotlib figure sized for the book's ~690 px text
    column (for print and for readers without JavaScript): one panel per model (rows) and benchmark
    (columns), one line per run, a dot per evaluator and an open diamond for the max."""
    import matplotlib.pyplot as plt

    _require(table, ["model", "benchmark", "method", "label", "preprompt", "evaluator", "n_prompts",
                     "n_samples"], "evaluator_static")
    _check_metric(metric, table, with_ci=False)
    benches, models = _panels(table)
    evaluators = sorted(set(table.evaluator) - {"max"})
    order = {m: i for i, m in enumerate(method_order(table.method.unique()))}
    labels = (table.drop_duplicates("label").assign(o=lambda t: t.method.map(order))
              .sort_values(["o", "preprompt", "label"]).label.tolist())
    y = {label: i for i, label in enumerate(labels)}
    n = table.groupby(["model", "benchmark"]).n_prompts.max()
    fig, axes = plt.subplots(len(models), len(benches), sharex=True, sharey=True, squeeze=False, dpi=110,
                             figsize=(6.3, (0.15 * len(labels) + 0.7) * len(models) + 0.6))
    for (r, model), (c, bench) in ((rm, cb) for rm in enumerate(models) for cb in enumerate(benches)):
        ax, g = axes[r, c], table[(table.model == model) & (table.benchmark == bench)]
        ax.set_title(f"{model} / {bench}\nn = {int(n.get((model, bench), 0))} prompts", fontsize=7.5)
        for i, name in enumerate(evaluators + ["max"]):
            e = g[g.evaluator == name]
            is_max = name == "max"
            ax.plot(e[metric], e.label.map(y), "D" if is_max else "o", ms=5 if is_max else 3.5,
                    mfc="none" if is_max else PALETTE[i], color="black" if is_max else PALETTE[i],
                    mew=1.0 if is_max else 0, alpha=1.0 if is_max else 0.85, ls="")
        ax.set_xlim(-0.03, 1.03)
        ax.grid(axis="x", color="#e5e5e5", lw=0.6)
        ax.tick_params(labelsize=7)
        if r == len(models) - 1:
            ax.set_xlabel(METRICS[metric], fontsize=7.5)
    axes[0, 0].set_yticks(range(len(labels)), labels)
    axes[0, 0].invert_yaxis()
    handles = [plt.Line2D([], [], color=PALETTE[i], marker="o", ls="", ms=4) for i in range(len(evaluators))]
    handles.append(plt.Line2D([], [], color="black", marker="D", mfc="none", ls="", ms=5))
    fig.legend(handles, [*evaluators, "max over evaluators"], loc="lower center", ncol=3, fontsize=7,
               frameon=False)
    fig.tight_layout(rect=(0, 0.35 / fig.get_size_inches()[1], 1, 1))
    return fig


def figure_html(fig, name: str, alt: str) -> str:
    """The HTML fragment of a plotly figure for a book page: the figure in a ``div`` with id
    ``name`` (without plotly.js, which the book serves from ``_static``), described by ``alt`` for
    screen readers."""
    _check_name(name)
    if not alt.strip():
        raise ValueError("alt must describe the figure in words (for screen readers), got an empty text")
    body = fig.to_html(full_html=False, include_plotlyjs=False, div_id=name,
                       config={"responsive": True, "displaylogo": False})
    # the class on <html> hides the static versions of the figures on screen when JavaScript runs
    # (book/_static/detox.css); in print and without JavaScript they are shown instead
    return ('<script>document.documentElement.classList.add("detox-js")</script>'
            f'<div class="detox-plotly" role="img" aria-label="{html.escape(alt)}">{body}</div>')


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be lower-case letters, digits, '-' or '_' (a file name and "
                         f"HTML id), got {name!r}")


def csv_link(frame: pd.DataFrame, name: str, folder: str | Path = TABLES_DIR,
             href_prefix: str = TABLES_HREF) -> str:
    """Write ``frame`` (without its index; reset it first to keep it) as ``folder/<name>.csv``
    atomically, and return the HTML of a link to download it (``href_prefix`` + file name)."""
    _check_name(name)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"csv_link needs a pandas DataFrame, got {type(frame).__name__}")
    path = Path(folder) / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, frame.to_csv(index=False))
    href = html.escape(href_prefix + path.name)
    return (f'<p class="detox-download"><a href="{href}" download="{path.name}">Download this table as '
            f"CSV</a> ({len(frame)} rows × {frame.shape[1]} columns).</p>")
