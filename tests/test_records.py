"""One reader of every result record (`results.read_record`): the kind is written, checked, and for
committed records without one, told by the reader or the file's place."""
from __future__ import annotations

import json
import shutil

import pytest

from detox_utils import report, results
from detox_utils._io import REPO_ROOT

RESULTS = REPO_ROOT / "results"


def _grid_run(folder, name="0123456789abcdef"):
    return results.write_result(folder / f"{name}.json", config={"model": "m"}, config_hash=name,
                                metrics={}, provenance={})


def test_grid_runs_are_written_with_their_kind(tmp_path):
    path = _grid_run(tmp_path)
    assert json.loads(path.read_text())["kind"] == "grid-run"
    assert results.read_record(path)["kind"] == "grid-run" == results.read_result(path)["kind"]
    with pytest.raises(ValueError, match="is a 'grid-run' record, not 'localization'"):
        results.read_record(path, "localization")


def test_committed_records_without_kind_keep_reading(tmp_path):
    # a committed grid run as it was written before `kind` existed (the first grid until 2026-12-03)
    record = json.loads(next((RESULTS / "default").glob("*.json")).read_text())
    record.pop("kind", None)
    run = tmp_path / "default" / f"{record['config_hash']}.json"
    run.parent.mkdir()
    run.write_text(json.dumps(record))
    assert results.read_result(run)["kind"] == "grid-run"
    assert results.read_record(run)["config_hash"] == run.stem
    validation = RESULTS / "evaluators" / "validation.json"
    assert results.read_record(validation)["kind"] == "evaluator-validation"
    assert report.read_validation()["evaluators"]
    assert {r["kind"] for r in report.load_localization()} == {"localization"}


def test_a_record_without_kind_is_told_by_its_place(tmp_path):
    legacy = {"evaluators": {"a": {}}, "threshold": 0.5}
    (tmp_path / "evaluators").mkdir()
    (tmp_path / "evaluators" / "summary.json").write_text(json.dumps(legacy))
    assert results.read_record(tmp_path / "evaluators" / "summary.json")["kind"] == "evaluator-validation"
    (tmp_path / "notes.json").write_text(json.dumps(legacy))
    assert results.infer_kind(tmp_path / "notes.json") is None
    with pytest.raises(ValueError, match="has kind None; allowed: grid-run, localization"):
        results.read_record(tmp_path / "notes.json")
    # asked for a kind, a record without one is taken to be of it (how committed files read)
    assert report.read_validation(tmp_path / "notes.json")["kind"] == "evaluator-validation"


def test_read_record_refuses_bad_files(tmp_path):
    (tmp_path / "0123456789abcdef.json").write_text("[1]")
    with pytest.raises(ValueError, match="holds a JSON list, not a result object; delete it"):
        results.read_record(tmp_path / "0123456789abcdef.json")
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ValueError, match="x.json is unreadable"):
        results.read_record(tmp_path / "x.json", "explorer")
    (tmp_path / "y.json").write_text(json.dumps({"kind": "table"}))
    with pytest.raises(ValueError, match="has kind 'table'"):
        results.read_record(tmp_path / "y.json")
    with pytest.raises(ValueError, match="kind 'run' is not allowed"):
        results.read_record(tmp_path / "y.json", "run")


def test_localization_and_explorer_readers_check_the_kind(tmp_path):
    src = next((RESULTS / "localization").glob("*__auroc-max.json"))
    shutil.copy(src, tmp_path / src.name)
    assert report.read_localization(tmp_path / src.name)["kind"] == "localization"
    (tmp_path / "m__auroc-max.json").write_text(json.dumps({"kind": "explorer"}))
    with pytest.raises(ValueError, match="is an? 'explorer' record, not 'localization'"):
        report.load_localization(tmp_path)


def test_provenance_names_the_cpu_and_torch_threads():
    import torch

    from detox_utils import results

    cpu = results.provenance()["cpu"]
    assert isinstance(cpu["model"], str)
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["threads"] == torch.get_num_threads()
