"""Reliability of the batch runner (issue 12): a run is done only when every file of it is there and
intact, two batches on one folder execute each run once, and a typo'd notebook parameter is refused.
The runs execute the stand-in notebook tests/data/fake_evaluate.ipynb through real papermill kernels."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import nbformat
import pytest
import yaml

from detox_utils import _io, batch, results
from detox_utils.__main__ import main

FAKE_NB = Path(__file__).parent / "data" / "fake_evaluate.ipynb"


@pytest.fixture
def profiles(tmp_path):
    path = tmp_path / "profiles.yaml"
    # the stand-in notebook writes 2 sample rows: 2 prompts x 1 sample
    path.write_text(yaml.safe_dump({
        "two": {"models": ["m"], "benchmarks": ["rtp-challenging"],
                "settings": {"n_prompts": 2, "n_samples": 1},
                "methods": [{"method": "none"}, {"method": "damp", "k": 1}]},
    }))
    return path


def _run(profiles, out):
    return {s["config_hash"]: s["status"]
            for s in batch.run_batch("two", out, profiles_path=profiles, notebook=FAKE_NB, progress=False)}


def test_a_run_with_a_missing_or_damaged_file_is_run_again(profiles, tmp_path):
    out = tmp_path / "out"
    first = _run(profiles, out)
    assert set(first.values()) == {"ok"}
    a, b = sorted(first)
    for h in first:  # the runner recorded the samples' sha256 in each result
        rec = results.read_result(out / f"{h}.json")["provenance"]["files"]["samples"]
        assert rec["sha256"] == _io.sha256_file(out / f"{h}.samples.csv.gz")
    assert set(_run(profiles, out).values()) == {"skipped"}

    (out / f"{a}.samples.csv.gz").unlink()
    samples_b = out / f"{b}.samples.csv.gz"
    os.truncate(samples_b, samples_b.stat().st_size - 5)
    plan = {r.config.config_hash: r.done for r in batch.plan(batch.get_profile("two", profiles), out)}
    assert plan == {a: False, b: False}
    assert _run(profiles, out) == {a: "ok", b: "ok"}

    (out / "notebooks" / f"{a}.ipynb").unlink()
    (out / "notebooks" / f"{b}.ipynb").write_text("{not json")
    assert _run(profiles, out) == {a: "ok", b: "ok"}
    assert set(_run(profiles, out).values()) == {"skipped"}


def test_an_older_result_without_a_hash_is_accepted_by_its_row_count(profiles, tmp_path):
    out = tmp_path / "out"
    first = _run(profiles, out)
    a, b = sorted(first)
    for h in first:  # as results written before the hash was recorded
        path = out / f"{h}.json"
        record = json.loads(path.read_text())
        del record["provenance"]["files"]
        path.write_text(json.dumps(record))
    results.write_samples(out / f"{b}.samples.csv.gz", results.load_samples(out, b).head(1))
    assert _run(profiles, out) == {a: "skipped", b: "ok"}


def test_two_batches_on_one_folder_run_each_run_once(profiles, tmp_path, monkeypatch):
    out = tmp_path / "out"
    executed = []
    real = batch._run_locked

    def counted(cfg, *args, **kwargs):
        executed.append(cfg.config_hash)
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(batch, "_run_locked", counted)
    summaries: list[dict] = []
    go = threading.Barrier(2)

    def one_batch():
        go.wait()
        summaries.append(_run(profiles, out))

    threads = [threading.Thread(target=one_batch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(summaries) == 2
    assert sorted(executed) == sorted(set(executed)) and len(executed) == 2, executed
    for h in executed:  # run by one batch, skipped by the other
        assert sorted(s[h] for s in summaries) == ["ok", "skipped"]
    assert not list(out.rglob(".*.tmp*"))


def test_stale_temporaries_are_removed_only_when_their_run_is_not_running(tmp_path):
    out = tmp_path / "out"
    (out / "notebooks").mkdir(parents=True)
    running = out / "notebooks" / ".aaaa.ipynb.x1.tmp.ipynb"
    stale = out / ".bbbb.samples.csv.gz.x2.tmp.gz"
    running.write_text("{}")
    stale.write_text("x")
    with _io.file_lock(out / ".locks" / "aaaa"):  # another batch is executing run aaaa
        batch._remove_stale_temporaries(out)
    assert running.exists() and not stale.exists()
    batch._remove_stale_temporaries(out)
    assert not running.exists()


# ------------------------------------------------------------------ unknown notebook parameters


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('model = "x"\nn_prompts = 50\nresult_dir = "."')
    params.metadata["tags"] = ["parameters"]
    check = nbformat.v4.new_code_cell(
        "from detox_utils.config import check_injected_parameters\n"
        "check_injected_parameters(globals())\nprint('checked', n_prompts)")
    nb.cells = [params, check]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_notebook_refuses_a_typod_papermill_parameter(tmp_path):
    import papermill as pm

    nb = _notebook(tmp_path / "nb.ipynb")
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown parameter\(s\) \['n_promts'\]"):
        pm.execute_notebook(str(nb), str(tmp_path / "bad.ipynb"), parameters={"n_promts": 1},
                            progress_bar=False, kernel_name="python3")
    pm.execute_notebook(str(nb), str(tmp_path / "good.ipynb"), parameters={"n_prompts": 1},
                        progress_bar=False, kernel_name="python3")
    assert "checked 1" in (tmp_path / "good.ipynb").read_text()


def test_run_command_executes_with_known_parameters(tmp_path, capsys):
    nb = _notebook(tmp_path / "nb.ipynb")
    assert main(["run", str(nb), str(tmp_path / "out.ipynb"), "-p", "n_prompts", "3"]) == 0
    assert "checked 3" in (tmp_path / "out.ipynb").read_text()
    assert main(["run", str(nb), str(tmp_path / "out2.ipynb"), "-p", "n_promts", "3"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter(s) ['n_promts']" in err and "did you mean 'n_prompts'" in err
