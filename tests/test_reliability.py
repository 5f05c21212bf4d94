"""Reliability (issue 12): caches verified on read, complete results only, bad input refused early and
clearly. Every corruption is made on the private cache each test gets (conftest) with tiny models."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import pickle
import re
import subprocess
from pathlib import Path

import pytest
import torch

from detox_utils import _io, activations, config, models, packaged, results
from detox_utils.__main__ import main
from detox_utils.config import ConfigError, EvalConfig, LocalizeConfig

REPO = Path(__file__).resolve().parent.parent
CLEAR_MODELS = "python -m detox_utils cache --clear models"


# ------------------------------------------------------------------ the dequantized model folder
# (`fake_dequantize`, the tiny stand-in for the GGUF conversion, is in conftest.py)


def _folder() -> Path:
    return _io.cache_dir("models") / "smollm2-135m"


def _damage(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_conversion_records_the_sha256_of_every_file(fake_dequantize):
    lm = models.load("smollm2-135m")
    files = lm.provenance["files"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(files)
    for name, rec in files.items():
        assert rec == {"sha256": _io.sha256_file(_folder() / name), "bytes": (_folder() / name).stat().st_size}
    assert models.load("smollm2-135m").provenance["cache_hit"]


@pytest.mark.parametrize("damage", ["random", "zeros", "truncate"])
def test_damaged_weights_are_refused_naming_the_file(fake_dequantize, damage):
    models.load("smollm2-135m")
    weights = _folder() / "model.safetensors"
    size = weights.stat().st_size
    if damage == "random":
        _damage(weights, size // 2, os.urandom(4096))
    elif damage == "zeros":
        _damage(weights, size // 3, bytes(min(65536, size // 3)))
    else:
        os.truncate(weights, 100)  # inside the safetensors header
    with pytest.raises(_io.CacheIntegrityError) as err:
        models.load("smollm2-135m")
    assert str(weights) in str(err.value) and CLEAR_MODELS in str(err.value)
    assert len(fake_dequantize) == 1  # refused, not silently reconverted


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json"])
def test_damaged_tokenizer_or_config_is_refused_naming_the_file(fake_dequantize, name):
    models.load("smollm2-135m")
    _damage(_folder() / name, 0, b"\x00garbage")
    with pytest.raises(_io.CacheIntegrityError, match=name):
        models.load("smollm2-135m")


def test_unreadable_provenance_names_the_file(fake_dequantize):
    models.load("smollm2-135m")
    (_folder() / "detox_provenance.json").write_bytes(os.urandom(64))
    with pytest.raises(_io.CacheIntegrityError, match="detox_provenance.json"):
        models.load("smollm2-135m")


def test_unrecorded_weight_file_is_refused(fake_dequantize):
    models.load("smollm2-135m")
    (_folder() / "model-00002-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(_io.CacheIntegrityError, match="model-00002"):
        models.load("smollm2-135m")


def _strip_checksums() -> None:
    """Make the cached folder look like one written before checksums were recorded."""
    meta = _folder() / "detox_provenance.json"
    prov = json.loads(meta.read_text())
    del prov["files"]
    meta.write_text(json.dumps(prov))


def test_old_cache_without_checksums_is_reverified_not_reconverted(fake_dequantize):
    models.load("smollm2-135m")
    mtime = (_folder() / "model.safetensors").stat().st_mtime_ns
    _strip_checksums()
    lm = models.load("smollm2-135m")
    assert lm.provenance["cache_hit"] and "files" in lm.provenance
    assert (_folder() / "model.safetensors").stat().st_mtime_ns == mtime  # the weights were kept
    assert len(fake_dequantize) == 2  # dequantized once more, to compare with
    assert models.load("smollm2-135m").provenance["files"] == lm.provenance["files"]
    assert len(fake_dequantize) == 2  # from now on checked by sha256 only


def test_old_cache_with_damaged_weights_is_refused(fake_dequantize):
    models.load("smollm2-135m")
    weights = _folder() / "model.safetensors"
    _damage(weights, weights.stat().st_size - 8192, os.urandom(4096))
    _strip_checksums()
    with pytest.raises(_io.CacheIntegrityError) as err:
        models.load("smollm2-135m")
    assert str(weights) in str(err.value) and "differs from the dequantized GGUF" in str(err.value)


def test_leftovers_of_a_killed_conversion_are_removed(fake_dequantize, capsys):
    root = _io.cache_dir("models")
    for name in (".smollm2-135m.k1ll3d.tmp", ".gguf.smollm2-135m.abc123", ".gguf.old4ever"):
        (root / name).mkdir()
        (root / name / "model.safetensors").write_bytes(b"x" * 4096)
    busy = root / ".gemma3-270m.inprog.tmp"  # a conversion in progress elsewhere: its lock is held
    busy.mkdir()
    with _io.file_lock(root / "gemma3-270m"):
        assert main(["cache"]) == 0
        assert busy.exists()  # in progress: kept (and the unnamed legacy folder too: can't tell whose)
        assert (root / ".gguf.old4ever").exists()
    out = capsys.readouterr().out
    assert "removed 2 temporary folder(s)" in out
    assert not (root / ".smollm2-135m.k1ll3d.tmp").exists() and not (root / ".gguf.smollm2-135m.abc123").exists()
    assert main(["cache"]) == 0
    assert not busy.exists() and not (root / ".gguf.old4ever").exists()
    assert re.search(r"^models\s+0 entries\s+0\.0 MiB$", capsys.readouterr().out, re.M)


def test_leftovers_are_removed_before_a_conversion(fake_dequantize):
    root = _io.cache_dir("models")
    (root / ".smollm2-135m.k1ll3d.tmp").mkdir()
    models.load("smollm2-135m")
    assert [p.name for p in root.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_model_name_is_refused(name):
    with pytest.raises(ValueError, match="model name is empty"):
        models.load(name)


# ------------------------------------------------------------------ activation chunks


TEXTS = ["you stupid idiot", "the weather is fine", "shut up, moron", "a walk in the park"]


def _chunk(lm) -> Path:
    (folder,) = [p for p in _io.cache_dir("activations").iterdir() if p.is_dir()]
    return folder / "chunk_00000.pt"


@pytest.mark.parametrize("damage", ["random", "zeros", "one-row", "no-checksum", "truncate"])
def test_damaged_activation_chunk_is_recorded_again(tiny_llama, damage, caplog):
    fresh = activations.record(tiny_llama, TEXTS, sites="out", progress=False)["out"]
    chunk = _chunk(tiny_llama)
    sidecar = chunk.parent / f".{chunk.name}.sha256"
    assert sidecar.is_file()
    if damage == "random":
        _damage(chunk, chunk.stat().st_size // 2, os.urandom(256))
    elif damage == "zeros":
        _damage(chunk, 64, bytes(chunk.stat().st_size - 128))
    elif damage == "one-row":  # a valid tensor of the wrong shape, with a matching checksum
        torch.save(fresh[:1].clone(), chunk)
        _io.write_checksum(chunk)
    elif damage == "no-checksum":  # a chunk written by older code
        sidecar.unlink()
    else:
        os.truncate(chunk, chunk.stat().st_size // 2)
    with caplog.at_level(logging.INFO, logger="detox_utils.activations"):
        again = activations.record(tiny_llama, TEXTS, sites="out", progress=False)["out"]
    assert torch.equal(again, fresh)
    assert str(chunk) in caplog.text
    if damage != "no-checksum":
        assert "python -m detox_utils cache --clear activations" in caplog.text
    # rewritten with a checksum: read from the cache, silently, the next time
    assert _io.verify_checksum(chunk, "activations")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="detox_utils.activations"):
        assert torch.equal(activations.record(tiny_llama, TEXTS, sites="out", progress=False)["out"], fresh)
    assert str(chunk) not in caplog.text


def test_checksum_helpers_for_other_caches(tmp_path):
    path = tmp_path / "fit.pt"
    path.write_bytes(b"abc" * 100)
    assert not _io.verify_checksum(path, "interventions")  # no record: recompute it
    _io.write_checksum(path)
    assert _io.verify_checksum(path, "interventions")
    _damage(path, 10, b"X")
    with pytest.raises(_io.CacheIntegrityError, match="cache --clear interventions"):
        _io.verify_checksum(path, "interventions")


# ------------------------------------------------------------------ the config


def test_method_params_are_read_only_and_keep_the_hash():
    plain = {"k": 7, "alpha": 0.25}
    cfg = EvalConfig(method="damp", method_params=plain)
    before = cfg.config_hash
    with pytest.raises(TypeError, match="read-only"):
        cfg.method_params["k"] = 9
    for mutate in (lambda d: d.update(k=9), lambda d: d.pop("k"), lambda d: d.clear(),
                   lambda d: d.setdefault("x", 1), lambda d: d.__delitem__("k")):
        with pytest.raises(TypeError):
            mutate(cfg.method_params)
    assert cfg.config_hash == before and cfg.method_params == plain
    plain["k"] = 99  # the caller's dict is not the config's
    assert cfg.method_params["k"] == 7 and cfg.config_hash == before
    assert type(cfg.to_dict()["method_params"]) is dict
    for copied in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg),
                   dataclasses.replace(cfg, n_prompts=cfg.n_prompts)):
        assert copied.config_hash == before and copied.method_params == cfg.method_params
    assert EvalConfig.from_params(cfg.to_dict()).config_hash == before


def test_unknown_evaluator_is_refused_in_the_config():
    with pytest.raises(ConfigError, match=r"'evaluators'.*unknown: \['tox-blok'\]"):
        EvalConfig(evaluators=("tox-block", "tox-blok"))
    with pytest.raises(ConfigError, match="at most once"):
        EvalConfig(evaluators=("hatesonar", "hatesonar"))
    with pytest.raises(ConfigError, match="evaluators"):
        EvalConfig(evaluators="hatesonar")  # a bare string is not a list of names
    assert EvalConfig.from_params({"evaluators": "hatesonar,tox-block"}).evaluators == ("hatesonar", "tox-block")


def test_config_evaluator_names_match_the_evaluators_module():
    from detox_utils import evaluators

    assert list(config.EVALUATORS) == evaluators.available()


@pytest.mark.parametrize("score,threshold", [("auroc", 5.0), ("auroc", 1.0), ("average_precision", -0.1),
                                             ("cohens_d", float("nan")), ("mean_diff", float("inf")),
                                             ("auroc", True)])
def test_localize_threshold_outside_the_score_range_is_refused(score, threshold):
    with pytest.raises(ConfigError, match="'threshold'"):
        LocalizeConfig(score=score, threshold=threshold)


def test_localize_threshold_in_range_is_accepted():
    assert LocalizeConfig(threshold=0.6).threshold == 0.6
    assert LocalizeConfig(score="cohens_d", threshold=5.0).threshold == 5.0


def test_result_dir_that_is_a_file_or_not_writable_is_refused(tmp_path, monkeypatch):
    file = tmp_path / "afile"
    file.write_text("x")
    with pytest.raises(ConfigError, match="'result_dir'.*is a file"):
        config.check_result_dir(file)
    with pytest.raises(ConfigError, match="inside"):
        config.check_result_dir(file / "sub", create=False)
    with pytest.raises(ConfigError, match="cannot be created"):
        config.check_result_dir(file / "sub")
    made = config.check_result_dir(tmp_path / "new" / "deeper")
    assert made.is_dir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)  # as a read-only folder does (root ignores chmod)
    with pytest.raises(ConfigError, match="cannot be written.*Permission denied"):
        config.check_result_dir(made)


def test_injected_parameters_are_checked():
    history = ["", 'model = "x"\nn_prompts = 50\n', "# Parameters\nn_promts = 1\nmodel = \"y\"\n",
               "import logging"]
    assert config.injected_parameters({"In": history}) == ["n_promts", "model"]
    with pytest.raises(ConfigError, match=r"\['n_promts'\].*did you mean 'n_prompts'"):
        config.check_injected_parameters({"In": history})
    history[2] = "# Parameters\nn_prompts = 1\nresult_dir = '/tmp'\nprogress = False\ndevice = 'cpu'\n"
    config.check_injected_parameters({"In": history})
    config.check_injected_parameters({})  # outside IPython: nothing to check
    config.check_injected_parameters({"In": ["# Parameters\nthreshold = 0.7\n"]}, LocalizeConfig)


# ------------------------------------------------------------------ result files


def _write_run(folder: Path, rows: int, samples_first: bool = True, n_prompts: int = 2, n_samples: int = 3):
    import pandas as pd

    cfg = EvalConfig(n_prompts=n_prompts, n_samples=n_samples)
    path = folder / f"{cfg.config_hash}.json"
    samples = pd.DataFrame({"prompt_id": range(rows), "continuation": ["a"] * rows})

    def write_result():
        results.write_result(path, config=cfg.to_dict(), config_hash=cfg.config_hash,
                             metrics={"toxicity": {}}, provenance=results.provenance())

    if samples_first:
        results.write_samples(results.samples_path(path), samples)
        write_result()
    else:  # a result written before its samples: no hash recorded (like every older result)
        write_result()
        results.write_samples(results.samples_path(path), samples)
    return path


def test_result_records_the_sha256_of_its_samples(tmp_path):
    path = _write_run(tmp_path, rows=6)
    samples = results.samples_path(path)
    rec = results.read_result(path)["provenance"]["files"]["samples"]
    assert rec == {"name": samples.name, "sha256": _io.sha256_file(samples), "bytes": samples.stat().st_size}
    assert results.incomplete_reason(path) is None
    _damage(samples, samples.stat().st_size // 2, b"\xff\xfe")
    assert "differs from the sha256" in results.incomplete_reason(path)
    os.truncate(samples, 10)
    assert "bytes" in results.incomplete_reason(path)
    samples.unlink()
    assert "missing" in results.incomplete_reason(path)


def test_result_without_a_hash_is_checked_by_rows(tmp_path):
    path = _write_run(tmp_path, rows=6, samples_first=False)
    assert "files" not in results.read_result(path)["provenance"]
    assert results.incomplete_reason(path) is None  # 2 prompts x 3 samples
    path = _write_run(tmp_path / "other", rows=5, samples_first=False)
    assert "5 rows, expected n_prompts * n_samples = 6" in results.incomplete_reason(path)
    os.truncate(results.samples_path(path), 20)
    assert "unreadable" in results.incomplete_reason(path)
    assert results.record_samples(path) is True  # the batch runner adds the hash after a run
    assert "files" in results.read_result(path)["provenance"]
    assert results.record_samples(path) is False
    results.write_samples(results.samples_path(path), __import__("pandas").DataFrame({"a": range(6)}))
    assert results.record_samples(path) is False  # a record is kept unless replace=True
    assert results.record_samples(path, replace=True) is True and results.incomplete_reason(path) is None


@pytest.mark.parametrize("content,match", [
    (b"[1, 2]", "holds a JSON list"),
    (b'{"schema": 1, "config": {}, "config_hash": "x", "metrics": {}, "provenance": {}}', "lacks 'status'"),
    (b'{"schema": 1, "status": "ok", "config": [], "config_hash": "x", "metrics": {}, "provenance": {}}',
     "has a list as 'config'"),
    (b"\x89\xfe\x00random bytes\xff", "unreadable"),
])
def test_damaged_result_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "0123456789abcdef.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        results.read_result(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------ the command line: no tracebacks


def _cli(capsys, argv) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def _profile(tmp_path, text: str) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,match", [
    ("p:\n  models: [m\n  benchmarks: x\n", "is not valid YAML at line"),
    ("p:\n  models: [m]\n  benchmarks: [rtp-challenging]\n  methods: [method]\n", "must be a mapping"),
    ("p:\n  models: [m]\n  benchmarks: [rtp-challenging]\n  methods: [{method: none}]\n  settings: [1, 2]\n",
     "'settings' must be a mapping"),
    ("p:\n  models: smollm2-135m\n  benchmarks: [rtp-challenging]\n  methods: [{method: none}]\n",
     "'models' must be a non-empty list"),
    ("p:\n  models: [m]\n  benchmarks: [rtp-challenging]\n  methods: [{method: none}]\n  setting: {}\n",
     "unknown key"),
    ("p:\n  models: [m]\n  benchmarks: [rtp-challenging]\n"
     "  methods: [{method: none}]\n  settings: {evaluators: [tox-blok]}\n", "unknown: \\['tox-blok'\\]"),
    ("p:\n  models: [m]\n  benchmarks: [rtp-challenging]\n  methods: [{method: damp, k: -5}]\n",
     "method_params.k"),
])
def test_bad_profiles_give_one_line_and_exit_2(tmp_path, capsys, text, match):
    profiles = _profile(tmp_path, text)
    code, err = _cli(capsys, ["batch", "--profile", "p", "--out", str(tmp_path / "o"), "--dry-run",
                              "--profiles", str(profiles)])
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert re.search(match, err), err
    if "YAML" in match:
        assert str(profiles) in err


GOOD = "p:\n  models: [m]\n  benchmarks: [rtp-challenging]\n  methods: [{method: none}]\n"


def test_out_that_is_a_file_or_read_only_gives_one_line(tmp_path, capsys, monkeypatch):
    profiles = _profile(tmp_path, GOOD)
    file = tmp_path / "out.txt"
    file.write_text("x")
    for dry in ([], ["--dry-run"]):
        code, err = _cli(capsys, ["batch", "--profile", "p", "--out", str(file), "--profiles", str(profiles),
                                  *dry])
        assert code == 2 and len(err.splitlines()) == 1 and "'--out'" in err and "is a file" in err

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    code, err = _cli(capsys, ["batch", "--profile", "p", "--out", str(tmp_path), "--profiles", str(profiles)])
    assert code == 2 and len(err.splitlines()) == 1 and "cannot be written" in err


@pytest.mark.parametrize("content,match", [
    (b"[1, 2]", "holds a JSON list"),
    (b'{"schema": 1, "config": {}, "config_hash": "x", "metrics": {}, "provenance": {}}', "lacks 'status'"),
    (os.urandom(256), "unreadable"),
])
def test_verify_on_damaged_results_gives_one_line(tmp_path, capsys, content, match):
    bad = tmp_path / "0123456789abcdef.json"
    bad.write_bytes(content)
    code, err = _cli(capsys, ["verify", "--out", str(tmp_path), "--device", "cpu"])
    assert code == 2 and len(err.splitlines()) == 1 and str(bad) in err and match in err


def test_run_refuses_unknown_notebook_parameters(tmp_path, capsys):
    nb = REPO / "notebooks" / "evaluate.ipynb"
    code, err = _cli(capsys, ["run", str(nb), str(tmp_path / "out.ipynb"), "-p", "n_promts", "1"])
    assert code == 2 and len(err.splitlines()) == 1
    assert "['n_promts']" in err and "did you mean 'n_prompts'" in err and "allowed: model" in err
    assert not (tmp_path / "out.ipynb").exists()
    code, err = _cli(capsys, ["run", str(tmp_path / "nope.ipynb"), "x.ipynb"])
    assert code == 2 and "does not exist" in err


# ------------------------------------------------------------------ evaluators and the Makefile


def test_hatesonar_scores_a_lone_surrogate():
    from detox_utils import evaluators

    sonar = evaluators.load("hatesonar")
    scores = sonar.score(["\ud800", "you idiot \ud800", "you idiot ?"])
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    assert scores[1] == scores[2]


def test_make_without_python311_says_what_to_do(tmp_path):
    proc = subprocess.run(["make", "-C", str(REPO), "venv", f"VENV={tmp_path}/venv",
                           "PYTHON=python3.99-missing"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Python 3.11 is needed" in proc.stderr and "PYTHON=" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_a_continuation_with_a_bare_carriage_return_keeps_its_row(tmp_path):
    """A sampled continuation can hold a bare \\r (a committed Gemma control run has two). It stays one
    row: new files quote every text, and files written before that (\\r unquoted) read right too."""
    import gzip

    import pandas as pd

    frame = pd.DataFrame({"prompt_id": [0, 0, 1], "sample_id": [0, 1, 0],
                          "continuation": [" \rDGLs I was able \r\rcriteria", "plain", "two\nlines"],
                          "score.max": [0.22, 0.01, 0.5]})
    new = results.write_samples(tmp_path / "new" / "0123456789abcdef.samples.csv.gz", frame)
    old = tmp_path / "old" / "0123456789abcdef.samples.csv.gz"
    old.parent.mkdir()
    with gzip.open(old, "wt", newline="") as f:  # the way samples were written until 2026-12-03
        f.write(frame.to_csv(index=False))
    assert b'"two\nlines"' in gzip.decompress(old.read_bytes()) and b'"\r' not in gzip.decompress(old.read_bytes())
    for path in (new, old):
        back = results.load_samples(path.parent, "0123456789abcdef")
        assert back.continuation.tolist() == frame.continuation.tolist() and len(back) == 3
        assert back["score.max"].tolist() == [0.22, 0.01, 0.5]
