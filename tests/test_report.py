"""The report package: every ``report.<name>`` the book pages, notebooks and tests use exists, and the
grid folder the pages read is one setting (``$DETOX_RESULTS``)."""
from __future__ import annotations

import importlib.util
import re

import pandas as pd
import pytest

from detox_utils import report
from detox_utils._io import REPO_ROOT

USED = re.compile(r"\breport\.([A-Za-z_]\w*)")


def test_every_name_the_pages_notebooks_and_tests_use_is_exported():
    sources = [*(REPO_ROOT / "book").glob("*.md"), *(REPO_ROOT / "notebooks").glob("*.ipynb"),
               *(REPO_ROOT / "tests").glob("test_*.py")]
    used = {name for path in sources for name in USED.findall(path.read_text(encoding="utf-8"))}
    assert {"runs", "html_table", "load_localization", "model_cards"} <= used
    # a submodule (``report.findings``) counts too, whether or not an earlier test has imported it
    assert sorted(name for name in used if not hasattr(report, name)
                  and importlib.util.find_spec(f"detox_utils.report.{name}") is None) == []


def test_grid_folder_is_results_default_unless_the_variable_is_set(tmp_path):
    assert report.grid_folder({}) == report.DEFAULT_GRID == REPO_ROOT / "results" / "default"
    assert report.grid_folder({report.RESULTS_ENV: ""}) == report.DEFAULT_GRID
    assert report.grid_folder({report.RESULTS_ENV: str(tmp_path)}) == tmp_path
    assert report.grid_folder({report.RESULTS_ENV: "results/localization"}) == \
        REPO_ROOT / "results" / "localization"


def test_grid_folder_names_the_variable_when_the_folder_is_missing(tmp_path):
    with pytest.raises(NotADirectoryError, match=r"\$DETOX_RESULTS='.*nowhere' is not a folder"):
        report.grid_folder({report.RESULTS_ENV: str(tmp_path / "nowhere")})


def test_runs_read_the_folder_the_variable_names(monkeypatch, tmp_path):
    monkeypatch.setenv(report.RESULTS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"no ok results in {tmp_path}"):
        report.runs()


def test_build_refuses_a_missing_results_folder_before_running_jupyter_book(tmp_path):
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        report.build.build(results=tmp_path / "nowhere")


def test_the_fingerprint_depends_on_the_grid_folder(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "detox_utils").mkdir()
    assert report.inputs_fingerprint(tmp_path, grid=tmp_path / "a") != \
        report.inputs_fingerprint(tmp_path, grid=tmp_path / "b")


def test_the_one_cli_runs_the_maintainer_tools(tmp_path, capsys):
    import importlib
    import json

    from detox_utils.__main__ import TOOLS, main

    assert all(callable(importlib.import_module(module).main) for module, _ in TOOLS.values())
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source": ["# Template\n", "text"]}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert main(["book", "retitle", str(path), "--title", "Executed: m"]) == 0
    assert json.loads(path.read_text())["cells"][0]["source"] == "# Executed: m\ntext"
    with pytest.raises(SystemExit) as exit_info:
        main(["curate", "--help"])
    assert exit_info.value.code == 0 and "--archives" in capsys.readouterr().out


def test_layer_heatmaps_share_one_colour_scale():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import QuadMesh

    records = [r for r in report.load_localization() if r["config"]["score"] == "auroc"]
    fig = report.plot_layer_heatmaps(records)
    meshes = [c for ax in fig.axes if ax.get_title() for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == len(records) >= 2
    top = max(max(s["layer_score"]["point"]) for r in records for s in r["summary"].values())
    assert {m.get_clim() for m in meshes} == {(0.0, top)}
    plt.close(fig)


def test_empty_effects_plot_says_so():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from detox_utils import evidence

    fig = evidence.plot_effects(pd.DataFrame())
    assert "no intervention run yet" in [t.get_text() for ax in fig.axes for t in ax.texts]
    plt.close(fig)


def test_html_table_escapes_text_and_breaks_lines():
    frame = pd.DataFrame({"claim": ["a <b>"], "measured": ["m1: 1.2x\nm2: 0.9x"], "n": [3]})
    out = report.html_table(frame)
    assert "a &lt;b&gt;" in out and "<b>" not in out
    assert "m1: 1.2x<br>m2: 0.9x" in out and "<td>3</td>" in out
