"""Tests for detox_utils.generation on tiny random models (no download)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

from detox_utils import generation

PROMPTS = ["The quick brown fox", "Hello", "Researchers measured how often a language model", "I hate"]


def _generate(lm, prompts=PROMPTS, **kw):
    kw = {"n_samples": 3, "max_new_tokens": 6, "progress": False, **kw}
    return generation.generate(lm, prompts, **kw)


def _greedy_reference(lm, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy decoding one token at a time, full forward pass each step, no padding, no cache."""
    ids = lm.tokenizer(prompt)["input_ids"]
    stops = set(generation.eos_ids(lm))
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = lm.model(torch.tensor([ids + new])).logits[0, -1]
            token = int(logits.argmax())
            if token in stops:
                break
            new.append(token)
    return new


def _decode_after(lm, prompt: str, new: list[int]) -> str:
    ctx = lm.tokenizer(prompt)["input_ids"]
    full = lm.tokenizer.decode(ctx + new, skip_special_tokens=True)
    head = lm.tokenizer.decode(ctx, skip_special_tokens=True)
    return full[len(head):]


def test_output_schema_and_order(tiny_gpt2):
    df = _generate(tiny_gpt2, n_samples=4, max_new_tokens=5, batch_size=3)
    assert list(df.columns) == list(generation.COLUMNS)
    assert len(df) == len(PROMPTS) * 4
    assert df["prompt_id"].tolist() == [p for p in range(len(PROMPTS)) for _ in range(4)]
    assert df["sample_id"].tolist() == list(range(4)) * len(PROMPTS)
    assert df["prompt"].tolist() == [p for p in PROMPTS for _ in range(4)]
    assert df["n_new_tokens"].between(0, 5).all()
    assert df["continuation"].map(type).eq(str).all()


def test_same_seed_same_tokens_different_seed_differs(tiny_llama):
    a = _generate(tiny_llama, seed=3)
    b = _generate(tiny_llama, seed=3)
    c = _generate(tiny_llama, seed=4)
    assert a.equals(b)
    assert (a["continuation"] != c["continuation"]).mean() > 0.5


def test_samples_of_a_prompt_differ(tiny_gpt2):
    df = _generate(tiny_gpt2, n_samples=5, max_new_tokens=8)
    assert (df.groupby("prompt_id")["continuation"].nunique() > 1).all()


def test_tokens_do_not_depend_on_batch_size_or_other_prompts(tiny_llama):
    reference = _generate(tiny_llama, batch_size=64)
    assert _generate(tiny_llama, batch_size=5).equals(reference)
    # the last prompt among other prompts, at the same position, gets the same samples
    alone = _generate(tiny_llama, prompts=["x", "x", "x", PROMPTS[3]], batch_size=4)
    assert alone.query("prompt_id == 3")["continuation"].tolist() == \
        reference.query("prompt_id == 3")["continuation"].tolist()


def test_an_extension_draws_what_the_larger_run_draws(tiny_llama):
    """More prompts (prompt_offset) or more samples (sample_offset) give exactly the rows a single larger
    run would have, with its ids: the grid can be extended instead of rerun."""
    whole = _generate(tiny_llama, n_samples=5)
    cols = ["prompt_id", "sample_id", "continuation", "n_new_tokens"]
    more_prompts = _generate(tiny_llama, prompts=PROMPTS[2:], n_samples=5, prompt_offset=2)
    assert more_prompts[cols].reset_index(drop=True).equals(
        whole[whole.prompt_id >= 2][cols].reset_index(drop=True))
    more_samples = _generate(tiny_llama, n_samples=2, sample_offset=3)
    assert more_samples[cols].reset_index(drop=True).equals(
        whole[whole.sample_id >= 3][cols].reset_index(drop=True))
    with pytest.raises(ValueError, match="sample_offset must be an int >= 0"):
        _generate(tiny_llama, sample_offset=-1)


def test_batched_greedy_equals_unbatched_reference(tiny_any):
    """Left padding + KV cache in a batch give the tokens of a one-prompt, no-cache greedy loop."""
    df = _generate(tiny_any, n_samples=2, max_new_tokens=7, do_sample=False, batch_size=8)
    for prompt_id, prompt in enumerate(PROMPTS):
        expected = _decode_after(tiny_any, prompt, _greedy_reference(tiny_any, prompt, 7))
        got = df.query("prompt_id == @prompt_id")
        assert got["continuation"].tolist() == [expected, expected], tiny_any.name


def test_nucleus_with_tiny_top_p_is_greedy(tiny_gpt2):
    sampled = _generate(tiny_gpt2, top_p=1e-9, seed=7)
    greedy = _generate(tiny_gpt2, do_sample=False)
    assert sampled.equals(greedy)


def test_preprompt_is_context_but_not_continuation(tiny_gpt2):
    pre = "Be kind.\n"
    with_pre = _generate(tiny_gpt2, preprompt=pre, do_sample=False, n_samples=1)
    inline = _generate(tiny_gpt2, prompts=[pre + p for p in PROMPTS], do_sample=False, n_samples=1)
    plain = _generate(tiny_gpt2, do_sample=False, n_samples=1)
    assert with_pre["prompt"].tolist() == PROMPTS
    assert with_pre["continuation"].tolist() == inline["continuation"].tolist()
    assert with_pre["continuation"].tolist() != plain["continuation"].tolist()
    assert not any(pre.strip() in c for c in with_pre["continuation"])


def test_default_preprompt_is_prepended_verbatim(tiny_gpt2):
    ids = generation.model_inputs(["Hi"], tiny_gpt2.tokenizer, preprompt=generation.DEFAULT_PREPROMPT)
    assert tiny_gpt2.tokenizer.decode(ids[0]) == generation.DEFAULT_PREPROMPT + "Hi"


def test_chat_template(tiny_gpt2):
    with pytest.raises(ValueError, match="no chat template"):
        _generate(tiny_gpt2, chat_template=True)
    tok = tiny_gpt2.tokenizer
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    chat = _generate(tiny_gpt2, chat_template=True, preprompt="Be kind.", do_sample=False, n_samples=1)
    rendered = [f"system: Be kind.\nuser: {p}\nassistant:" for p in PROMPTS]
    plain = _generate(tiny_gpt2, prompts=rendered, do_sample=False, n_samples=1)
    assert chat["prompt"].tolist() == PROMPTS
    assert chat["continuation"].tolist() == plain["continuation"].tolist()


def test_stops_at_eos(tiny_llama):
    new = _greedy_reference(tiny_llama, PROMPTS[0], 6)
    stop = new[3]
    cut = new.index(stop)
    tiny_llama.model.generation_config.eos_token_id = [tiny_llama.tokenizer.eos_token_id, stop]
    df = _generate(tiny_llama, prompts=PROMPTS[:1], n_samples=2, do_sample=False)
    assert df["n_new_tokens"].tolist() == [cut, cut]
    assert df["continuation"].tolist() == [_decode_after(tiny_llama, PROMPTS[0], new[:cut])] * 2


def test_repetition_penalty_changes_output_and_is_seeded(tiny_gpt2):
    a = _generate(tiny_gpt2, repetition_penalty=3.0, do_sample=False)
    b = _generate(tiny_gpt2, repetition_penalty=3.0, do_sample=False)
    assert a.equals(b)
    assert not a.equals(_generate(tiny_gpt2, do_sample=False))


def test_repetition_penalty_matches_transformers_and_skips_padding():
    scores = torch.tensor([[2.0, -2.0, 1.0, 0.5], [2.0, -2.0, 1.0, 0.5]])
    input_ids = torch.tensor([[0, 1, 1], [3, 0, 1]])
    ours = generation.apply_repetition_penalty(scores, input_ids, torch.tensor([0, 1]), 2.0)
    theirs = RepetitionPenaltyLogitsProcessor(2.0)(input_ids[:1], scores[:1].clone())
    torch.testing.assert_close(ours[0], theirs[0])
    # row 2: token 3 sits in the left padding, so it is not penalised
    torch.testing.assert_close(ours[1], torch.tensor([1.0, -4.0, 1.0, 0.5]))


def test_nucleus_inverse_cdf_reproduces_the_nucleus_distribution():
    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 2
    top_p = 0.8
    n = 20000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # a uniform grid: frequencies = probabilities
    tokens = generation.nucleus_inverse_cdf(logits.expand(n, -1), u, top_p)
    freq = torch.bincount(tokens, minlength=50).double() / n
    kept = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))[0]
    expected = torch.where(kept, torch.softmax(logits, -1)[0].double(), torch.zeros(()).double())
    expected /= expected.sum()
    assert torch.equal(freq > 0, kept)
    assert (freq - expected).abs().max() <= 2 / n


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_nucleus_tiers_agree_with_a_full_sort_and_transformers(monkeypatch, top_p):
    """Rows whose nucleus fits in the first top-k tier (peaked) and rows that need a wider one (flat)
    get transformers' top-p set, and the same tokens as when every row sorts the whole vocabulary."""
    torch.manual_seed(0)
    vocab, n = 2000, 200
    logits = torch.cat([torch.randn(n // 2, vocab) * 6, torch.randn(n - n // 2, vocab) * 0.1])
    u = torch.rand(n, dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    expected = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))
    mask = generation.nucleus_mask(probs, top_p)
    tokens = generation.nucleus_inverse_cdf(logits, u, top_p)
    assert torch.equal(mask, expected)
    assert mask[n // 2:].sum(-1).min() > generation.NUCLEUS_TIERS[0]  # the flat rows took a wider tier
    monkeypatch.setattr(generation, "NUCLEUS_TIERS", ())  # sort the whole vocabulary for every row
    assert torch.equal(generation.nucleus_mask(probs, top_p), expected)
    assert torch.equal(generation.nucleus_inverse_cdf(logits, u, top_p), tokens)


def test_nucleus_inverse_cdf_extremes_stay_in_the_nucleus():
    logits = torch.tensor([[5.0, 0.0, 4.0, -10.0, -10.0]] * 3)  # nucleus at 0.9: tokens 0 and 2
    u = torch.tensor([0.0, 0.5, float(np.nextafter(1.0, 0.0))], dtype=torch.float64)
    assert generation.nucleus_inverse_cdf(logits, u, 0.9).tolist() == [0, 0, 2]


def test_sampler_uses_its_own_streams_not_the_global_rng(tiny_gpt2):
    torch.manual_seed(1)
    a = _generate(tiny_gpt2)
    torch.manual_seed(2)
    assert _generate(tiny_gpt2).equals(a)


@pytest.mark.parametrize("kw, match", [
    ({"n_samples": 0}, "n_samples"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"batch_size": 0}, "batch_size"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": 0.0}, "temperature"),
    ({"seed": -1}, "seed"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"prompts": []}, "empty"),
])
def test_bad_arguments_are_refused(tiny_gpt2, kw, match):
    with pytest.raises(ValueError, match=match):
        _generate(tiny_gpt2, **kw)


@pytest.mark.parametrize("prompts", ["a single string", ["ok", 3]])
def test_bad_prompt_types_are_refused(tiny_gpt2, prompts):
    with pytest.raises(TypeError, match="prompts"):
        _generate(tiny_gpt2, prompts=prompts)


@pytest.mark.parametrize("kw", [{"preprompt": 3}, {"do_sample": "yes"}, {"chat_template": 1}])
def test_bad_option_types_are_refused(tiny_gpt2, kw):
    with pytest.raises(TypeError, match=next(iter(kw))):
        _generate(tiny_gpt2, **kw)


def test_empty_prompt_without_bos_is_refused(tiny_gpt2):
    with pytest.raises(ValueError, match="no token"):
        _generate(tiny_gpt2, prompts=["fine", ""])



@pytest.mark.slow
@pytest.mark.realcache
def test_packaged_chat_model_with_template_and_preprompt():
    from detox_utils import models

    lm = models.load("smollm2-135m")
    kw = {"n_samples": 2, "max_new_tokens": 8, "preprompt": generation.DEFAULT_PREPROMPT,
          "chat_template": True, "progress": False}
    df = generation.generate(lm, ["Tell me about Paris.", "What is 2 + 2?"], **kw)
    assert df.equals(generation.generate(lm, ["Tell me about Paris.", "What is 2 + 2?"], **kw))
    assert (df["n_new_tokens"] > 0).all() and (df["continuation"].str.strip() != "").all()
    assert not df["continuation"].str.contains("polite and respectful|<\\|im_start\\|>").any()
