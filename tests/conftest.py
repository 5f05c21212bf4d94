"""Shared fixtures: tiny, randomly initialised models of each architecture family, built locally from a
transformers config (no download), and a hermetic cache directory."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from detox_utils import models  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine oversubscribed
# OpenMP threads make each small forward pass tens of times slower.
torch.set_num_threads(1)

FAMILIES = models.TINY_FAMILIES


@pytest.fixture(params=FAMILIES)
def tiny_any(request):
    """A tiny LoadedModel of every family in turn."""
    return models.tiny(request.param)


@pytest.fixture
def tiny_gpt2():
    return models.tiny("gpt2")


@pytest.fixture
def tiny_llama():
    return models.tiny("llama")


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path, monkeypatch):
    """Every test gets its own DETOX_CACHE_DIR unless it asks for the real one (marker `realcache`)."""
    if request.node.get_closest_marker("realcache"):
        return
    monkeypatch.setenv("DETOX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The book built strictly once per session into a temporary folder (tests/_book.py), shared by
    tests/test_book.py and tests/test_browser.py: (html folder, build log)."""
    from _book import build_book

    return build_book(tmp_path_factory.mktemp("book"))


@pytest.fixture
def fake_dequantize(monkeypatch):
    """The (slow) GGUF dequantization replaced by a tiny llama (same weights every call); the list
    of the GGUF paths it was called with."""
    from detox_utils import packaged

    calls = []

    def fake(gguf_path):
        calls.append(gguf_path)
        tiny = models.tiny("llama")
        return tiny.model, tiny.tokenizer

    monkeypatch.setattr(packaged, "_dequantize", fake)
    return calls


def paris(lm) -> tuple[str, dict[str, float]]:
    """A packaged model's greedy 20-token continuation of "The capital of France is", and the
    log-probability of its next token for five capitals (" Paris", " London", ...)."""
    tok = lm.tokenizer
    batch = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = lm.model.generate(**batch, max_new_tokens=20, do_sample=False)
        next_logp = lm.model(**batch).logits[0, -1].log_softmax(-1)
    text = tok.decode(out[0, batch.input_ids.shape[1]:], skip_special_tokens=True)
    cities = {c: next_logp[tok(c, add_special_tokens=False).input_ids[0]].item()
              for c in (" Paris", " London", " Berlin", " Rome", " Madrid")}
    return text, cities
