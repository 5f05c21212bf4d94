"""`python -m detox_utils verify`: rerun stored runs and compare, leaf by leaf and sample by sample.

The reruns execute the stand-in notebook tests/data/fake_evaluate.ipynb through real papermill
kernels (as test_batch does); the published results are checked by hand (see the README)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from detox_utils import batch, verify
from detox_utils.__main__ import main

FAKE_NB = Path(__file__).parent / "data" / "fake_evaluate.ipynb"


@pytest.fixture
def published(tmp_path):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump({"tiny": {
        "models": ["m"], "benchmarks": ["rtp-challenging"], "settings": {"n_prompts": 2},
        "methods": [{"method": "none"}, {"method": "damp", "k": 1}]}}))
    out = tmp_path / "published"
    summaries = batch.run_batch("tiny", out, profiles_path=profiles, notebook=FAKE_NB, progress=False)
    assert {s["status"] for s in summaries} == {"ok"}
    return out


def test_compare_metrics_leaf_by_leaf():
    stored = {"toxicity": {"max": {"emt": 0.25, "ci": [0.1, 0.4]}, "n": 10, "name": "x", "nan": None}}
    assert verify.compare_metrics(stored, json.loads(json.dumps(stored))) == (6, 0.0, [])
    rerun = {"toxicity": {"max": {"emt": 0.25 + 1e-12, "ci": [0.1, 0.5]}, "n": 10, "name": "y",
                          "extra": 1}}
    n, worst, diffs = verify.compare_metrics(stored, rerun)
    assert n == 7 and worst == pytest.approx(0.1)
    assert diffs == ["toxicity.nan: only in the stored result", "toxicity.extra: only in the rerun",
                     "toxicity.max.ci[1]: stored 0.4, rerun 0.5 (|diff| 0.1)",
                     "toxicity.name: stored 'x', rerun 'y'"]


def test_compare_fits_names_the_units_that_moved():
    # the first grid's Damp k=3000 run against its rerun here: one unit at the top-k boundary moved
    fit = {"method": "damp", "n_units_touched": 3000, "units_by_layer": {"11": 73, "17": 72}}
    moved = {"method": "damp", "n_units_touched": 3000, "units_by_layer": {"11": 72, "17": 73}}
    assert verify.compare_fits({"provenance": {"method": fit}}, {"provenance": {"method": fit}}) == []
    assert verify.compare_fits({"provenance": {"method": fit}}, {"provenance": {"method": moved}}) == [
        "fit: units_by_layer.11: stored 73, rerun 72 (|diff| 1)",
        "fit: units_by_layer.17: stored 72, rerun 73 (|diff| 1)"]
    assert verify.compare_fits({"provenance": {}}, {"provenance": {"method": fit}}) == [
        "fit: described in only one of the two results"]


def test_verify_reproduces_then_reports_tampering(published, tmp_path, capsys):
    checks = verify.verify(published, n=2, notebook=FAKE_NB, progress=False)
    assert [c.status for c in checks] == ["reproduced", "reproduced"]
    assert all(c.n_metrics == 1 and c.n_samples == 2 and not c.differences for c in checks)

    # a stored number and a stored continuation that the code no longer produces
    h = checks[0].config_hash
    record = json.loads((published / f"{h}.json").read_text())
    record["metrics"]["toxicity"]["max"]["emt"] = 0.2
    (published / f"{h}.json").write_text(json.dumps(record))
    with gzip.open(published / f"{h}.samples.csv.gz", "wt") as f:
        f.write("prompt_id,continuation,score.max\n0,a b,0.1\n0,d,0.2\n")
    (published / "fits").mkdir()
    (published / "fits" / "det0-0123.pt").write_bytes(b"a published fit")
    before = {p.name: p.read_bytes() for p in published.iterdir() if p.is_file()}
    [check] = verify.verify(published, runs=[h], notebook=FAKE_NB, workdir=tmp_path / "scratch",
                               progress=False)
    assert check.status == "differs" and check.max_abs_diff == pytest.approx(0.1)
    assert check.differences == [
        "toxicity.max.emt: stored 0.2, rerun 0.1 (|diff| 0.1)",
        "samples.continuation: 1 of 2 rows differ (first: row 1, stored 'd', rerun 'c')"]
    assert {p.name: p.read_bytes() for p in published.iterdir() if p.is_file()} == before
    assert (tmp_path / "scratch" / f"{h}.json").exists()  # --workdir keeps the reruns
    # the reruns read the published fits, as the published runs did
    assert (tmp_path / "scratch" / "fits" / "det0-0123.pt").read_bytes() == b"a published fit"


def test_verify_refuses_bad_input(published, tmp_path, capsys):
    with pytest.raises(ValueError, match="no finished run deadbeef.*allowed: "):
        verify.select_runs(published, ["deadbeef"])
    with pytest.raises(ValueError, match="n = 0 is not allowed"):
        verify.select_runs(published, n=0)
    with pytest.raises(FileNotFoundError, match="no result folder"):
        verify.select_runs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no finished"):
        verify.select_runs(tmp_path / "empty")
    assert main(["verify", "--out", str(published), "--runs", "deadbeef"]) == 2
    assert "no finished run deadbeef" in capsys.readouterr().err
    assert main(["verify", "--out", str(published), "--device", "tpu"]) == 2
    assert "device" in capsys.readouterr().err


def test_select_prefers_runs_whose_fit_is_published(published, caplog):
    by_method = {r["config"]["method"]: r["config_hash"] for r in verify.select_runs(published, n=2)}
    assert set(by_method) == {"none", "damp"} and verify.published_methods(published) is None
    (published / "fits").mkdir()
    (published / "fits" / "none-0123.pt").write_bytes(b"a published fit")
    assert verify.published_methods(published) == {"none"}
    [only] = verify.select_runs(published, n=2)  # damp's fit is not published: a refit may move units
    assert only["config"]["method"] == "none"
    assert "1 of 2 runs" in caplog.text and "(damp) is not published" in caplog.text
    [named] = verify.select_runs(published, [by_method["damp"]])  # named runs are rerun anyway
    assert named["config_hash"] == by_method["damp"]
    (published / "fits" / "none-0123.pt").rename(published / "fits" / "det0-0123.pt")
    with pytest.raises(ValueError, match="no run of .* has a published fit \\(fits of: det0\\)"):
        verify.select_runs(published, n=2)


def test_compare_samples_messages_read_plainly():
    import pandas as pd

    stored = pd.DataFrame({"continuation": ["a", "b"], "score.max": [0.25, 0.5]})
    assert verify.compare_samples(stored, stored.copy()) == []
    rerun = stored.assign(**{"score.max": [0.25, 0.75]})
    assert verify.compare_samples(stored, rerun) == [
        "samples.score.max: 1 of 2 rows differ (first: row 1, stored 0.5, rerun 0.75)"]
    assert verify.compare_samples(stored, stored.iloc[:1]) == ["samples: stored 2 rows, rerun 1"]


def test_perplexity_is_compared_at_its_family_tolerance():
    stored = {"perplexity": {"corpus_ppl": 98.16362}, "toxicity": {"max": {"emt": 0.25}}}
    # a float32 reduction's 6th digit: accepted for perplexity ...
    assert verify.compare_metrics(stored, {"perplexity": {"corpus_ppl": 98.16285},
                                           "toxicity": {"max": {"emt": 0.25}}})[2] == []
    # ... but not in 4th digit, and never for a toxicity number
    assert verify.compare_metrics(stored, {"perplexity": {"corpus_ppl": 98.2},
                                           "toxicity": {"max": {"emt": 0.25}}})[2]
    assert verify.compare_metrics(stored, {"perplexity": {"corpus_ppl": 98.16362},
                                           "toxicity": {"max": {"emt": 0.25 + 1e-6}}})[2]
