"""detox_utils.interactive on synthetic run tables: one trace per method and panel, the off-scale point
drawn at the axis edge and marked, the HTML fragment without plotly.js, and the CSV round trip."""
from __future__ import annotations

import pandas as pd
import pytest

from detox_utils import interactive

RUNS = [  # model, method, label, preprompt, ppl, tox_prob
    ("m1", "none", "No intervention", False, 100.0, 0.6),
    ("m1", "none", "No intervention + pre-prompt", True, 100.0, 0.7),
    ("m1", "det0", "Det0 k=300", False, 110.0, 0.5),
    ("m1", "det0", "Det0 k=3000", False, 190.0, 0.3),
    ("m1", "meow2x", "Meow2X s=0.0", False, 4200.0, 0.2),
    ("m1", "meow2x", "Meow2X s=0.5", False, 104.0, 0.55),
    ("m2", "none", "No intervention", False, 40.0, 0.7),
    ("m2", "det0", "Det0 k=300", False, 41.0, 0.6),
]


def runs_table(evaluators=("a", "max")) -> pd.DataFrame:
    rows = []
    for bench in ("b1", "b2"):
        for model, method, label, pre, ppl, tox in RUNS:
            for i, ev in enumerate(evaluators):
                p = tox - 0.1 * i
                rows.append({"model": model, "benchmark": bench, "method": method, "label": label,
                             "preprompt": pre, "ppl": ppl, "evaluator": ev, "n_prompts": 25,
                             "n_samples": 4, "tox_prob": p, "tox_prob_lo": p - 0.1,
                             "tox_prob_hi": p + 0.1, "emt": p, "emt_lo": p - 0.1, "emt_hi": p + 0.1})
    return pd.DataFrame(rows)


def method_traces(fig):
    return [t for t in fig.data if t.legendgroup != "pareto"]


def test_tradeoff_has_one_trace_per_method_and_panel_and_one_legend_entry_each():
    fig = interactive.tradeoff_figure(runs_table())
    traces = method_traces(fig)
    per_panel = {}
    for t in traces:
        per_panel.setdefault((t.xaxis, t.yaxis), []).append(t.legendgroup)
    assert len(per_panel) == 4  # 2 benchmarks x 2 models
    assert sorted(per_panel[("x", "y")]) == ["det0", "meow2x", "none"]
    assert all(len(names) == len(set(names)) for names in per_panel.values())
    assert sorted(t.legendgroup for t in traces if t.showlegend) == ["det0", "meow2x", "none"]
    names = {t.legendgroup: t.name for t in traces if t.showlegend}
    assert names["det0"] == "Det0: ● k=300 ◆ k=3000"  # the legend keys each marker to its setting
    assert names["none"] == "No intervention: ● default ○ pre-prompt"


def test_tradeoff_settings_of_a_method_have_their_own_marker_and_label():
    table = runs_table()
    fig = interactive.tradeoff_figure(table[table.method != "meow2x"], x_limit=150)  # nothing crowded
    det0 = next(t for t in fig.data if t.legendgroup == "det0" and t.xaxis == "x")
    assert list(det0.text) == ["k=300", "k=3000"]
    assert len(set(det0.marker.symbol)) == 2
    base = next(t for t in fig.data if t.legendgroup == "none" and t.xaxis == "x")
    assert "pre-prompt" in list(base.text) and any(s.endswith("-open") for s in base.marker.symbol)


def test_tradeoff_clips_the_outlier_at_the_axis_edge_and_marks_it():
    fig = interactive.tradeoff_figure(runs_table(), x_limit=120, ppl_rule=0.25)
    meow = next(t for t in fig.data if t.legendgroup == "meow2x" and t.xaxis == "x")
    xs, texts, symbols = list(meow.x), list(meow.text), list(meow.marker.symbol)
    i = xs.index(max(xs))
    assert xs[i] == 120 and symbols[i] == "triangle-right"
    assert "+4,100%" in texts[i] and "off scale" in meow.hovertext[i]
    assert fig.layout.xaxis.range[1] < 130  # the axis stops near the limit, not at +4,100%
    assert symbols[0] != "triangle-right"  # the legend shows an unclipped marker


def test_tradeoff_leaves_out_labels_of_crowded_points():
    table = runs_table()
    table.loc[table.label == "Det0 k=300", ["ppl", "tox_prob"]] = [101.0, 0.6]  # on the baseline
    det0 = next(t for t in interactive.tradeoff_figure(table).data
                if t.legendgroup == "det0" and t.xaxis == "x")
    assert list(det0.text) == ["", "k=3000"] and "Det0 k=300" in det0.hovertext[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "auroc"}, "metric must be one of"),
    ({"evaluator": "perspective"}, "evaluator 'perspective' is not in the table"),
    ({"x_limit": 0}, "x_limit"),
])
def test_tradeoff_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        interactive.tradeoff_figure(runs_table(), **kwargs)


def test_tradeoff_needs_the_baseline_and_the_columns():
    table = runs_table()
    with pytest.raises(ValueError, match="no un-intervened run"):
        interactive.tradeoff_figure(table[table.method != "none"])
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['ppl'\]"):
        interactive.tradeoff_figure(table.drop(columns="ppl"))


def test_evaluator_figure_has_one_trace_per_evaluator_and_panel():
    fig = interactive.evaluator_figure(runs_table(evaluators=("a", "b", "max")))
    assert len(fig.data) == 3 * 4
    assert sorted(t.name for t in fig.data if t.showlegend) == ["a", "b", "max over evaluators"]
    first = fig.data[0]
    assert list(first.y)[0] == "No intervention" and len(first.y) == 6  # every label of the grid


def test_figure_html_has_no_plotly_js_and_describes_the_figure():
    fig = interactive.evaluator_figure(runs_table())
    out = interactive.figure_html(fig, "fig-x", 'Dots & "bars"')
    assert 'id="fig-x"' in out and "plotly-graph-div" in out
    assert 'aria-label="Dots &amp; &quot;bars&quot;"' in out
    assert len(out) < 200_000  # the 4.8 MB bundle is served once by the book, not embedded
    with pytest.raises(ValueError, match="alt must describe"):
        interactive.figure_html(fig, "fig-x", " ")
    with pytest.raises(ValueError, match="name must be"):
        interactive.figure_html(fig, "Fig X", "alt")


def test_write_plotly_js_writes_the_bundle_once(tmp_path):
    path = interactive.write_plotly_js(tmp_path)
    assert path.name == interactive.PLOTLY_JS and path.stat().st_size > 1_000_000
    mtime = path.stat().st_mtime_ns
    assert interactive.write_plotly_js(tmp_path).stat().st_mtime_ns == mtime


def test_csv_link_round_trips_and_links_the_file(tmp_path):
    table = pd.DataFrame({"method": ["AURA", "Det0 k=300"], "ratio": [1.25, 0.5],
                          "note": ['a, "quoted"', "ü"]})
    link = interactive.csv_link(table, "reductions", folder=tmp_path, href_prefix="../t/")
    back = pd.read_csv(tmp_path / "reductions.csv")
    pd.testing.assert_frame_equal(back, table)
    assert 'href="../t/reductions.csv"' in link and "2 rows × 3 columns" in link
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match="name must be"):
        interactive.csv_link(table, "../evil", folder=tmp_path)
    with pytest.raises(TypeError, match="DataFrame"):
        interactive.csv_link(table.to_dict(), "x", folder=tmp_path)


def test_static_tradeoff_has_the_same_clipped_points_at_page_width():
    import matplotlib

    matplotlib.use("Agg")
    points = interactive.tradeoff_points(runs_table(), x_limit=120)
    assert points.loc[points.clipped, "x"].eq(120).all() and points.clipped.sum() == 2  # b1 and b2
    fig = interactive.tradeoff_static(runs_table(), x_limit=120, ppl_rule=0.25)
    assert len(fig.axes) == 4 and fig.axes[0].get_xlim()[1] < 130
    assert fig.get_size_inches()[0] * fig.dpi <= 700  # the book's text column is ~690 px
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("+4,100%" in t for t in texts)


def test_static_evaluator_figure_has_every_run_and_evaluator_at_page_width():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = runs_table()
    fig = interactive.evaluator_static(table)
    assert fig.get_size_inches()[0] * fig.dpi <= 700
    assert len(fig.axes) == table.model.nunique() * table.benchmark.nunique()
    ax = fig.axes[0]
    n_points = sum(len(line.get_xdata()) for line in ax.lines if line.get_marker() in ("o", "D"))
    first = table[(table.model == sorted(table.model.unique())[0]) & (table.benchmark == sorted(table.benchmark.unique())[0])]
    assert n_points == len(first)  # one dot per run and evaluator, the max included
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[-1] == "max over evaluators" and len(legend) == table.evaluator.nunique()
    with pytest.raises(ValueError):
        interactive.evaluator_static(table.drop(columns="label"))
    plt.close(fig)
