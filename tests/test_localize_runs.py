"""``python -m detox_utils localize`` (`detox_utils.localize_runs`): the localization notebook on each
packaged model whose result is missing. Papermill is replaced by a stand-in that writes what the
notebook would, so what is tested is the runner: the models and their order, skipping, atomic
output with the page title, and the refusal of unknown names."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from detox_utils import localize_runs, packaged
from detox_utils.__main__ import main


def _fake_execute(calls):
    def execute(notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
        calls.append((parameters["model"], dict(parameters), Path(cwd)))
        cells = [{"cell_type": "markdown", "metadata": {}, "source": "# Localization\n\nText."}]
        output.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        result_dir = Path(parameters.get("result_dir", localize_runs.OUT))
        (result_dir / f"{parameters['model']}__auroc-max.json").write_text("{}")
    return execute


def test_every_packaged_model_is_run_in_the_registry_order_and_finished_ones_are_skipped(tmp_path):
    models = packaged.available()
    assert models == list(packaged.PACKAGED) == ["gemma3-270m", "qwen2.5-coder-0.5b", "smollm2-135m"]
    (tmp_path / "qwen2.5-coder-0.5b__auroc-max.json").write_text("{}")  # already done
    calls = []
    done = localize_runs.run_localizations(out=tmp_path, execute=_fake_execute(calls))
    assert done == [("gemma3-270m", "ok"), ("qwen2.5-coder-0.5b", "skipped"), ("smollm2-135m", "ok")]
    assert [c[0] for c in calls] == ["gemma3-270m", "smollm2-135m"]
    params, cwd = calls[0][1], calls[0][2]
    assert params == {"model": "gemma3-270m", "progress": False, "result_dir": str(tmp_path.resolve())}
    assert cwd == localize_runs.NOTEBOOK.parent
    nb = json.loads((tmp_path / "localize-smollm2-135m.ipynb").read_text())
    assert nb["cells"][0]["source"].startswith("# Localization notebook: smollm2-135m\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temporary file left behind
        "gemma3-270m__auroc-max.json", "localize-gemma3-270m.ipynb", "localize-smollm2-135m.ipynb",
        "qwen2.5-coder-0.5b__auroc-max.json", "smollm2-135m__auroc-max.json"]
    calls.clear()  # everything is there now: a no-op
    assert [s for _, s in localize_runs.run_localizations(out=tmp_path, execute=_fake_execute(calls))] \
        == ["skipped"] * 3 and not calls


def test_the_default_folder_passes_exactly_the_makefiles_parameters(tmp_path, monkeypatch):
    monkeypatch.setattr(localize_runs, "OUT", tmp_path)  # the notebook's own result_dir, here
    calls = []
    localize_runs.run_localizations(["smollm2-135m"], tmp_path, execute=_fake_execute(calls))
    assert calls[0][1] == {"model": "smollm2-135m", "progress": False}


def test_a_failed_run_leaves_no_notebook_under_its_name(tmp_path):
    def execute(notebook, output, parameters, cwd):
        output.write_text("{}")
        raise RuntimeError("kernel died")

    with pytest.raises(RuntimeError, match="kernel died"):
        localize_runs.run_localizations(["gemma3-270m"], tmp_path, execute=execute)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["failed-localize-gemma3-270m.ipynb"]


def test_a_run_that_writes_no_result_is_an_error(tmp_path):
    def execute(notebook, output, parameters, cwd):
        output.write_text(json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# x"}],
                                      "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))

    with pytest.raises(RuntimeError, match="without writing"):
        localize_runs.run_localizations(["gemma3-270m"], tmp_path, execute=execute)


def test_unknown_models_are_refused_naming_the_allowed_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match="allowed: gemma3-270m, qwen2.5-coder-0.5b, smollm2-135m"):
        localize_runs.check_models(["smollm2-135m", "gpt-5"])
    assert localize_runs.check_models(["smollm2-135m", "gemma3-270m", "smollm2-135m"]) == [
        "smollm2-135m", "gemma3-270m"]  # the given order, once each
    assert main(["localize", "--models", "gpt-5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown packaged model(s) ['gpt-5']") and "smollm2-135m" in err
    assert not list(tmp_path.iterdir())


def test_the_cli_skips_the_committed_results(capsys):
    assert main(["localize"]) == 0  # every packaged model's result is committed: nothing runs
    assert capsys.readouterr().out.split() == ["skipped", "gemma3-270m", "skipped", "qwen2.5-coder-0.5b",
                                                "skipped", "smollm2-135m"]
