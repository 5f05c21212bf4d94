"""The batch runner: profile expansion, dry runs, idempotence, failure recording, Dask scale-out.

The runs execute a small stand-in notebook (tests/data/fake_evaluate.ipynb) through real papermill
kernels, so what is tested is the runner, not the models; `test_smoke_profile` in test_notebooks.py
runs the real evaluation notebook."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from detox_utils import batch, results
from detox_utils.__main__ import main
from detox_utils.config import ConfigError, EvalConfig, resolve_device

FAKE_NB = Path(__file__).parent / "data" / "fake_evaluate.ipynb"


@pytest.fixture
def profiles(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump({
        "tiny": {"models": ["m"], "benchmarks": ["rtp-challenging"],
                 "settings": {"n_prompts": 2},
                 "methods": [{"method": "none"}, {"method": "damp", "k": [1, 2]},
                             {"method": "det0", "k": 1}]},
    }))
    return path


def test_packaged_profiles_expand():
    for name in ("smoke", "default", "paper"):
        configs = batch.expand(batch.get_profile(name))
        assert configs and len({c.config_hash for c in configs}) == len(configs)
    methods = {c.method for c in batch.expand(batch.get_profile("default"))}
    assert methods == {"none", "aura", "det0", "damp", "meow2x", "trne"}


def test_unknown_profile_lists_profiles(capsys):
    with pytest.raises(ValueError, match="profiles: default, paper, powered, powered-extend-rtp, "
                                         "powered-extend-slur, powered-extend-slur-qwen, "
                                         "powered-ppl-controls-rtp, powered-ppl-controls-rtp-qwen-none, "
                                         "powered-ppl-controls-slur, powered-ppl-controls-slur-qwen-none, smoke, "
                                         "smoke-extend"):
        batch.get_profile("nope")
    assert main(["batch", "--profile", "nope", "--out", "x", "--dry-run"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_dry_run_prints_one_line_per_run(profiles, tmp_path, capsys):
    assert main(["batch", "--profile", "tiny", "--out", str(tmp_path / "o"), "--dry-run",
                 "--profiles", str(profiles)]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("planned")]
    assert len(lines) == 4
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_run_resume_and_failure(profiles, tmp_path):
    out = tmp_path / "out"
    first = batch.run_batch("tiny", out, profiles_path=profiles, notebook=FAKE_NB, progress=False)
    status = {s["label"].split(" | ")[2]: s["status"] for s in first}
    assert status == {"none()": "ok", "damp(alpha=0.5,k=1)": "ok", "damp(alpha=0.5,k=2)": "ok",
                      "det0(k=1)": "failed"}
    failed = [s for s in first if s["status"] == "failed"][0]
    record = results.read_result(out / f"{failed['config_hash']}.json")
    assert record["status"] == "failed" and "deliberate failure" in record["error"]
    assert (out / "notebooks" / f"{failed['config_hash']}.failed.ipynb").exists()
    # a rerun skips the finished runs and retries only the failed one
    second = batch.run_batch("tiny", out, profiles_path=profiles, notebook=FAKE_NB,
                             progress=False)
    assert sorted(s["status"] for s in second) == ["failed", "skipped", "skipped", "skipped"]
    ok = results.load_results(out)
    assert len(ok) == 3 and set(ok["metrics.toxicity.max.emt"]) == {0.1}
    assert not list(out.rglob(".*.tmp*")), "no temporary files left behind"


def test_interrupted_result_is_rerun(profiles, tmp_path):
    out = tmp_path / "out"
    runs = batch.plan(batch.get_profile("tiny", profiles), out)
    out.mkdir()
    runs[0].result_path.write_text("{half-writ")  # what a crash without atomic writes leaves
    assert not batch.plan(batch.get_profile("tiny", profiles), out)[0].done
    (out / "notebooks").mkdir()
    stale = out / "notebooks" / ".abc.ipynb.x1.tmp.ipynb"  # a killed run's temporary notebook
    stale.write_text("{}")
    batch.run_batch("tiny", out, profiles_path=profiles, notebook=FAKE_NB, progress=False)
    assert not stale.exists()


def test_dask_cluster_on_loopback(profiles, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        summaries = batch.run_batch("tiny", tmp_path / "out", profiles_path=profiles,
                                    notebook=FAKE_NB, scheduler=cluster.scheduler_address,
                                    progress=False)
    assert sorted(s["status"] for s in summaries) == ["failed", "ok", "ok", "ok"]


def test_config_validation_names_parameter():
    with pytest.raises(ConfigError, match="'method' = 'bogus'.*aura"):
        EvalConfig(method="bogus")
    with pytest.raises(ConfigError, match="'n_prompts' = 0.*integer >= 1"):
        EvalConfig(n_prompts=0)
    with pytest.raises(ConfigError, match="unknown: \\['kk'\\]"):
        EvalConfig(method="det0", method_params={"kk": 3})
    with pytest.raises(ConfigError, match="unknown parameter\\(s\\) \\['bogus'\\]"):
        EvalConfig.from_params({"bogus": 1})
    with pytest.raises(ConfigError, match="top_p"):
        EvalConfig(top_p=1.5)


def test_config_hash_stable_and_defaults_filled():
    a = EvalConfig(method="damp", method_params={"k": 10})
    b = EvalConfig.from_params(json.loads(json.dumps(a.to_dict())))
    assert a == b and a.config_hash == b.config_hash
    assert a.method_params == {"k": 10, "alpha": 0.5}
    assert EvalConfig(seed=1).config_hash != EvalConfig(seed=2).config_hash


def test_relative_out_folder(profiles, tmp_path, monkeypatch):
    """The notebook runs in notebooks/; a relative --out must still receive the results."""
    monkeypatch.chdir(tmp_path)
    summaries = batch.run_batch("tiny", "rel/out", profiles_path=profiles, notebook=FAKE_NB,
                                progress=False)
    assert sum(s["status"] == "ok" for s in summaries) == 3
    assert len(list((tmp_path / "rel" / "out").glob("*.json"))) == 4


def test_dtype_and_device_parameters():
    with pytest.raises(ConfigError, match="'dtype' = 'fp8'.*float32, bfloat16, float16"):
        EvalConfig(dtype="fp8")
    # dtype joined the schema after the default grid was published: at its default it leaves the
    # hash unchanged (a published result is still found), any other value makes a different run
    base = EvalConfig()
    legacy = {k: v for k, v in base.to_dict().items() if k != "dtype"}
    assert EvalConfig.from_params(legacy).config_hash == base.config_hash
    assert EvalConfig(dtype="bfloat16").config_hash != base.config_hash
    assert EvalConfig(dtype="bfloat16").fit_key() != base.fit_key()
    import torch

    assert EvalConfig(dtype="bfloat16").torch_dtype is torch.bfloat16
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="'device' = 'gpu'.*auto, cpu, cuda"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="0 CUDA device"):
            resolve_device("cuda")


def test_published_results_keep_their_hash():
    """Every committed result of the default grid is found again under its config hash."""
    folder = Path(__file__).resolve().parent.parent / "results" / "default"
    records = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    assert records
    for r in records:
        assert EvalConfig.from_params(r["config"]).config_hash == r["config_hash"]


def test_bad_device_refused_by_cli(profiles, tmp_path, capsys):
    code = main(["batch", "--profile", "tiny", "--profiles", str(profiles), "--out", str(tmp_path),
                 "--device", "tpu"])
    assert code == 2
    assert "'device' = 'tpu'" in capsys.readouterr().err


def test_run_settings_in_method_entries_and_methods_first_order():
    profile = {"models": ["m1", "m2"], "benchmarks": ["rtp-challenging"], "order": "methods",
               "settings": {"n_prompts": 2},
               "methods": [{"method": "none"}, {"method": "aura", "control_seed": [1, 2]}]}
    configs = batch.expand(profile)
    assert [(c.model, c.method, c.control_seed) for c in configs] == [
        ("m1", "none", None), ("m2", "none", None),
        ("m1", "aura", 1), ("m1", "aura", 2), ("m2", "aura", 1), ("m2", "aura", 2)]
    assert all("control_seed" not in c.method_params for c in configs)
    with pytest.raises(ValueError, match="order"):
        batch.expand({**profile, "order": "random"})
    with pytest.raises(ValueError, match="non-empty list"):
        batch.expand({**profile, "models": "smollm2-135m"})
    with pytest.raises(ValueError, match="must be a mapping"):
        batch.expand({**profile, "methods": ["aura"]})


def test_dry_run_estimates_from_finished_runs_of_the_same_model_and_method(tmp_path):
    profile = {"models": ["m1", "m2"], "benchmarks": ["rtp-challenging", "slur-prefixes"],
               "settings": {"n_prompts": 2},
               "methods": [{"method": "none"}, {"method": "aura"}, {"method": "aura", "control_seed": 1}]}
    runs = batch.plan(profile, tmp_path)
    for r, seconds in ((runs[0], 100.0), (runs[1], 300.0)):  # m1 none (rtp), m1 aura (rtp)
        results.write_result(r.result_path, config=r.config.to_dict(), config_hash=r.config.config_hash,
                             metrics={}, provenance={"timings": {"generate": seconds - 10, "fit": 10.0}})
    runs = [batch.PlannedRun(r.config, r.result_path, r.result_path.exists()) for r in runs]
    est = batch.estimate_seconds(runs)
    by = {(r.config.model, r.config.benchmark, r.config.method, r.config.control_seed): est.get(r.config.config_hash)
          for r in runs}
    assert by[("m1", "slur-prefixes", "none", None)] == 100.0
    assert by[("m1", "slur-prefixes", "aura", None)] == 300.0
    assert by[("m1", "rtp-challenging", "aura", 1)] == 200.0  # no control measured: the model's median
    assert by[("m2", "rtp-challenging", "none", None)] is None  # nothing measured for m2


def test_dry_run_charges_the_capability_step_once_per_edit(tmp_path):
    # capability (perplexity, zero-shot) is cached per edited weights: the benchmark does not matter
    profile = {"models": ["m1"], "benchmarks": ["rtp-challenging", "slur-prefixes"],
               "settings": {"n_prompts": 2},
               "methods": [{"method": "aura"}, {"method": "damp", "alpha": 0.5}]}
    runs = batch.plan(profile, tmp_path)
    first = next(r for r in runs if r.config.method == "aura" and r.config.benchmark == "rtp-challenging")
    results.write_result(first.result_path, config=first.config.to_dict(), config_hash=first.config.config_hash,
                         metrics={}, provenance={"timings": {"generate": 100.0, "capability": 500.0}})
    runs = [batch.PlannedRun(r.config, r.result_path, r.result_path.exists()) for r in runs]
    est = batch.estimate_seconds(runs)
    by = {(r.config.method, r.config.benchmark): est.get(r.config.config_hash) for r in runs}
    assert by[("aura", "slur-prefixes")] == 100.0  # its capability record is already paid for
    damp = sorted(v for (m, _), v in by.items() if m == "damp")
    assert damp == [100.0, 600.0]  # the first damp run pays the step, the second reads it


def test_threads_shared_between_local_jobs(profiles, tmp_path, monkeypatch):
    """With --jobs N each kernel gets cores // N torch threads (recorded as a papermill parameter);
    one job keeps torch's default; bad values are refused before anything runs."""
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 8)
    assert batch.default_threads(1) == 0 and batch.default_threads(2) == 4
    assert batch.default_threads(3) == 2 and batch.default_threads(16) == 1
    assert batch.default_threads(4, scheduler="tcp://127.0.0.1:1") == 0
    monkeypatch.undo()
    out = tmp_path / "out"
    # runs in threads never move the process's working directory (papermill's cwd= would chdir into
    # notebooks/, and concurrent runs then restore each other's directory); its file IO re-enters the
    # same directory, which is harmless
    here, chdirs = os.getcwd(), []
    real_chdir = os.chdir
    monkeypatch.setattr(os, "chdir", lambda path: chdirs.append(path) or real_chdir(path))
    batch.run_batch("tiny", out, profiles_path=profiles, notebook=FAKE_NB, progress=False, jobs=2,
                    threads=1)
    assert set(map(str, chdirs)) <= {here} and os.getcwd() == here
    params = [json.loads(p.read_text())["metadata"]["papermill"]["parameters"]
              for p in (out / "notebooks").glob("*.ipynb")]
    assert params and all(p.get("threads") == 1 for p in params)
    with pytest.raises(ConfigError, match="'threads' = -1 is not allowed; allowed: an integer >= 0"):
        batch.run_batch("tiny", out, profiles_path=profiles, notebook=FAKE_NB, threads=-1)


def test_set_threads_checks_its_value():
    import torch

    from detox_utils.config import set_threads

    before = torch.get_num_threads()
    assert set_threads(0) == before
    with pytest.raises(ConfigError, match="'threads' = 'two'.*integer >= 0"):
        set_threads("two")
    with pytest.raises(ConfigError, match="'threads' = True"):
        set_threads(True)
    try:
        assert set_threads(1) == 1
    finally:
        torch.set_num_threads(before)


def test_dry_run_estimates_an_extension_from_the_run_it_extends(tmp_path):
    base = {"models": ["m1"], "benchmarks": ["rtp-challenging"], "settings": {"n_prompts": 100, "n_samples": 2},
            "methods": [{"method": "aura", "n_zeroshot": 200}, {"method": "aura", "control_seed": 1}]}
    timings = {"load_model": 5.0, "fit": 10.0, "generate": 200.0, "score": 20.0, "capability": 300.0}
    for r in batch.plan(base, tmp_path):
        t = dict(timings) if r.config.control_seed is None else {**timings, "capability": 40.0}
        results.write_result(r.result_path, config=r.config.to_dict(), config_hash=r.config.config_hash,
                             metrics={}, provenance={"timings": t})
    extend = {**base, "settings": {"n_prompts": 100, "n_samples": 6, "sample_start": 2},
              "methods": [{"method": "aura"}, {"method": "damp"}]}
    runs = batch.plan(extend, tmp_path)
    assert all(r.config.is_extension and not r.done for r in runs)
    est = batch.estimate_seconds(runs)
    aura = next(r for r in runs if r.config.method == "aura")
    # load + fit as they were, perplexity only (the zero-shot-free run's 40 s), generation + scoring x 3
    assert est[aura.config.config_hash] == pytest.approx(5 + 10 + 40 + 3 * 220)
    assert next(r for r in runs if r.config.method == "damp").config.config_hash not in est  # nothing it extends
    # a perplexity-matched control: its equal-damage twin (600 of its 100 x 2 prompts: x 3), plus the
    # calibration's perplexity evaluations at the twin's cost
    matched = {**base, "settings": {"n_prompts": 300, "n_samples": 2, "control_match": "perplexity"},
               "methods": [{"method": "aura", "control_seed": 1}, {"method": "aura", "control_seed": 2}]}
    runs = batch.plan(matched, tmp_path)
    est = batch.estimate_seconds(runs)
    seed1 = next(r for r in runs if r.config.control_seed == 1)
    assert est[seed1.config.config_hash] == pytest.approx(5 + 10 + 40 + 3 * 220 + batch.MATCH_EVALUATIONS * 40)
    assert len(est) == 1  # seed 2 has no equal-damage twin
    # matched under another first token: its twin measured under the grid's stands in for it
    other = {**matched, "settings": {**matched["settings"], "ppl_prefix": "none"}}
    runs = batch.plan(other, tmp_path)
    est = batch.estimate_seconds(runs)
    seed1 = next(r for r in runs if r.config.control_seed == 1)
    assert est[seed1.config.config_hash] == pytest.approx(5 + 10 + 40 + 3 * 220 + batch.MATCH_EVALUATIONS * 40)
