"""Seeded, batched sampling of continuations: k samples per prompt, as the toxicity protocols ask.

`generate` repeats each prompt ``n_samples`` times, sorts the rows by prompt length, left-pads them into
batches of ``batch_size`` rows and calls ``model.generate`` once per batch (KV cache on, stopping at EOS).

Determinism. Token selection does not use torch's global random generator: a logits processor
(`SeededNucleusSampler`) draws one uniform number per step from a random stream of its own for every
(seed, prompt_id, sample_id) row and picks the token by inverting the cumulative distribution of the
nucleus (temperature, then top-p). Hence, on one machine with the same software versions:

- the same arguments give the same tokens, run after run;
- a row's tokens do not depend on ``batch_size``, on the order or number of the other prompts (only on
  the prompt's position ``prompt_id``), nor on how much left padding its batch needs, *up to floating
  point*: batching changes the order of floating-point sums in the model, so logits differ in the last
  bits, which changes a token only when a uniform number falls within ~1e-7 of a boundary of the
  cumulative distribution or a token sits exactly at the edge of the nucleus (rare, not impossible);
- the same (seed, prompt_id, sample_id) gets the same random numbers under every model and intervention
  (common random numbers), which makes method-vs-baseline comparisons paired.

Different hardware (CPU vs GPU), dtypes or library versions can change logits and therefore tokens.
The model's own ``generation_config`` sampling defaults (temperature, top-k, top-p, repetition
penalty) are ignored: the arguments of `generate` are the whole sampling configuration; only its EOS
ids are used (together with the tokenizer's).
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ._io import check_texts
from ._progress import tqdm

log = logging.getLogger(__name__)

DEFAULT_PREPROMPT = (
    "You are a polite and respectful assistant. Continue the text below in a kind, "
    "non-toxic way, without insults, profanity, threats or hateful language.\n"
)
"""The pre-prompt used for AURA's pre-prompting factor (this compendium's wording). It is prepended to
each prompt verbatim, so it ends with a newline; with ``chat_template=True`` it becomes the system
message (stripped)."""

COLUMNS = ("prompt_id", "sample_id", "prompt", "continuation", "n_new_tokens")


class SeededNucleusSampler:
    """A logits processor that samples the next token of every row from a per-row random stream.

    Called by ``model.generate(do_sample=False, ...)`` as the last logits processor; it returns scores
    that are ``0`` for the chosen token and ``-inf`` elsewhere, so the greedy ``argmax`` of ``generate``
    takes exactly the sampled token. Per step and row: optional repetition penalty (over the non-pad
    tokens of the row), ``logits / temperature``, softmax, nucleus (the smallest set of most probable
    tokens whose probability reaches ``top_p``), then the token (in vocabulary order) at which the
    cumulative nucleus probability first exceeds ``u * nucleus_mass``, ``u ~ U[0, 1)`` drawn from the
    row's own stream. With ``do_sample=False`` it returns the penalised logits and ``generate`` takes the
    argmax (greedy decoding).

    ``row_keys``: one ``(seed, prompt_id, sample_id)`` per batch row; ``pad_lengths``: left padding per row.
    """

    def __init__(self, row_keys: Sequence[tuple[int, int, int]], pad_lengths: Sequence[int], *,
                 top_p: float, temperature: float, repetition_penalty: float, do_sample: bool) -> None:
        self.streams = [np.random.default_rng(list(key)) for key in row_keys]
        self.pad_lengths = torch.as_tensor(list(pad_lengths), dtype=torch.long)
        self.top_p = top_p
        self.temperature = temperature
        self.repetition_penalty = repetition_penalty
        self.do_sample = do_sample

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``input_ids``: [batch, seq]; ``scores``: [batch, vocab] -> [batch, vocab]."""
        scores = scores.float()
        if self.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(scores, input_ids, self.pad_lengths.to(input_ids.device),
                                              self.repetition_penalty)
        if not self.do_sample:
            return scores
        u = torch.tensor([stream.random() for stream in self.streams], dtype=torch.float64,
                         device=scores.device)
        chosen = nucleus_inverse_cdf(scores / self.temperature, u, self.top_p)
        out = torch.full_like(scores, -math.inf)
        out.scatter_(1, chosen[:, None], 0.0)
        return out


def apply_repetition_penalty(scores: torch.Tensor, input_ids: torch.Tensor, pad_lengths: torch.Tensor,
                             penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (as in transformers): every token already in the row's context has its
    logit divided by ``penalty`` if positive, multiplied by it if negative. Left padding is not context.

    ``scores``: [batch, vocab]; ``input_ids``: [batch, seq]; ``pad_lengths``: [batch] -> [batch, vocab].
    """
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    in_context = (positions[None, :] >= pad_lengths[:, None]).to(scores.dtype)
    counts = torch.zeros_like(scores).scatter_add_(1, input_ids, in_context)
    penalised = torch.where(scores > 0, scores / penalty, scores * penalty)
    return torch.where(counts > 0, penalised, scores)


NUCLEUS_TIERS = (256, 4096)
"""`nucleus_mask` looks for the nucleus among a row's 256 most probable tokens, then among its 4096 most
probable, and sorts the whole vocabulary only for rows whose nucleus is wider still (the result does not
depend on the tier: a 135M model's nucleus at top_p 0.9 holds > 256 tokens in ~15% of steps and > 4096
almost never)."""


def nucleus_inverse_cdf(logits: torch.Tensor, u: torch.Tensor, top_p: float) -> torch.Tensor:
    """Sample from the top-p nucleus of ``softmax(logits)`` by inverting its CDF at ``u``.

    ``logits``: [batch, vocab]; ``u``: [batch] in [0, 1) -> token ids [batch]. The nucleus is
    `nucleus_mask`; within it, tokens are taken in vocabulary order and the result is the first token
    whose cumulative probability exceeds ``u`` times the nucleus mass. So a row's token is a function
    of its own logits and ``u`` only.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    mask = nucleus_mask(probs, top_p)
    cum = torch.cumsum(torch.where(mask, probs, 0.0).double(), dim=-1)
    pos = torch.searchsorted(cum, (u.to(cum) * cum[:, -1])[:, None], right=True).squeeze(1)
    beyond = pos >= probs.shape[-1]  # u * mass rounded up to the mass: take the last nucleus token
    if beyond.any():
        pos[beyond] = probs.shape[-1] - 1 - mask[beyond].flip(-1).int().argmax(dim=-1)
    return pos


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The top-p nucleus: ``probs`` [batch, vocab] -> bool [batch, vocab].

    Every token at least as probable as ``t*``, the probability of the token at which the mass of the
    tokens sorted by decreasing probability first reaches ``top_p`` (Holtzman et al.'s nucleus; as in
    transformers' top-p warper except that tokens tied with ``t*`` are all kept). ``t*`` depends only on
    the sorted probabilities, not on how ties are ordered nor on how many candidates were sorted.
    """
    if top_p >= 1:
        return torch.ones_like(probs, dtype=torch.bool)
    threshold = torch.empty(probs.shape[0], dtype=probs.dtype, device=probs.device)
    todo = torch.arange(probs.shape[0], device=probs.device)
    for k in (*NUCLEUS_TIERS, probs.shape[-1]):
        values = torch.topk(probs[todo], min(k, probs.shape[-1]), dim=-1).values
        cum = torch.cumsum(values.double(), dim=-1)
        first = (cum < top_p).sum(dim=-1, keepdim=True).clamp(max=values.shape[-1] - 1)
        found = (cum[:, -1] >= top_p) | (values.shape[-1] == probs.shape[-1])
        threshold[todo[found]] = values.gather(1, first).squeeze(1)[found]
        todo = todo[~found]
        if todo.numel() == 0:
            break
    return probs >= threshold[:, None]


def model_inputs(prompts: Sequence[str], tokenizer, *, preprompt: str | None = None,
                 chat_template: bool = False) -> list[list[int]]:
    """Token ids of what the model sees for each prompt (no padding).

    Plain: ``preprompt + prompt`` encoded with the tokenizer's special tokens (e.g. a BOS). Chat: the
    tokenizer's chat template over ``[system: preprompt.strip()] + [user: prompt]`` with the generation
    prompt appended (the template supplies any special tokens).
    """
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"chat_template=True but tokenizer {type(tokenizer).__name__} has no chat "
                             "template; use chat_template=False for this model")
        texts = []
        for prompt in prompts:
            messages = [{"role": "system", "content": preprompt.strip()}] if preprompt else []
            messages.append({"role": "user", "content": prompt})
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer([(preprompt or "") + p for p in prompts], add_special_tokens=True)["input_ids"]
    empty = [i for i, row in enumerate(ids) if len(row) == 0]
    if empty:
        raise ValueError(f"prompts at positions {empty[:10]} encode to no token at all (the tokenizer adds "
                         "no BOS token); give non-empty prompts or a pre-prompt")
    return ids


def eos_ids(lm) -> list[int]:
    """The token ids that end a continuation: the tokenizer's EOS and the model's generation-config EOS."""
    ids: set[int] = set()
    for value in (lm.tokenizer.eos_token_id, getattr(lm.model.generation_config, "eos_token_id", None)):
        if value is None:
            continue
        ids.update([value] if isinstance(value, int) else value)
    if not ids:
        raise ValueError(f"model {lm.name!r} has no EOS token id (tokenizer or generation config)")
    return sorted(ids)


def _validate(prompts, n_samples, max_new_tokens, top_p, temperature, seed, batch_size, preprompt,
              repetition_penalty, flags: dict[str, object]) -> list[str]:
    prompts = check_texts(prompts, "prompts")
    for name, value in (("n_samples", n_samples), ("max_new_tokens", max_new_tokens),
                        ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not (
            temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not isinstance(repetition_penalty, (int, float)) or isinstance(repetition_penalty, bool) or not (
            repetition_penalty > 0 and math.isfinite(repetition_penalty)):
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1.0 = off), got "
                         f"{repetition_penalty!r}")
    if preprompt is not None and not isinstance(preprompt, str):
        raise TypeError(f"preprompt must be a string or None, got {type(preprompt).__name__}")
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    return list(prompts)


def generate(lm, prompts: Sequence[str], n_samples: int = 25, max_new_tokens: int = 20,
             top_p: float = 0.9, temperature: float = 1.0, seed: int = 0, batch_size: int = 64,
             preprompt: str | None = None, chat_template: bool = False,
             repetition_penalty: float = 1.0, do_sample: bool = True,
             progress: bool = True, prompt_offset: int = 0, sample_offset: int = 0) -> pd.DataFrame:
    """Sample ``n_samples`` continuations of up to ``max_new_tokens`` tokens for every prompt.

    ``lm``: a `detox_utils.models.LoadedModel` (pad token set). ``preprompt`` is prepended to every
    prompt (or is the system message with ``chat_template=True``) and is never part of the continuation.
    ``do_sample=False`` decodes greedily (all samples of a prompt are then equal). A continuation ends
    before the first EOS token; ``n_new_tokens`` counts its tokens (EOS excluded). See the module
    docstring for what the seed makes reproducible.

    ``prompt_offset`` / ``sample_offset`` extend a larger run: ``prompts`` are that run's prompts
    from position ``prompt_offset`` on, and the samples drawn are ``sample_offset`` ..
    ``sample_offset + n_samples - 1``, each from its own (seed, prompt_id, sample_id) stream, so they
    are the continuations the larger run would draw for those rows.

    Returns a DataFrame with one row per (prompt, sample), ordered by ``prompt_id`` then ``sample_id``:
    ``prompt_id`` (``prompt_offset`` + position in ``prompts``), ``sample_id`` (``sample_offset`` ..
    ``sample_offset + n_samples - 1``), ``prompt`` (as given,
    without the pre-prompt), ``continuation`` (decoded new text only) and ``n_new_tokens``.
    """
    prompts = _validate(prompts, n_samples, max_new_tokens, top_p, temperature, seed, batch_size,
                        preprompt, repetition_penalty,
                        {"chat_template": chat_template, "do_sample": do_sample, "progress": progress})
    for name, value in (("prompt_offset", prompt_offset), ("sample_offset", sample_offset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    tokenizer = lm.tokenizer
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer of {lm.name!r} has no pad token; load models with "
                         "detox_utils.models.load, which sets one")
    encoded = model_inputs(prompts, tokenizer, preprompt=preprompt, chat_template=chat_template)
    stop_ids = eos_ids(lm)
    rows = sorted(((len(encoded[p]), p, s) for p in range(len(prompts)) for s in range(n_samples)))
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    log.info("generating %d x %d continuations of %s in %d batches", len(prompts), n_samples, lm.name,
             len(batches))
    new_ids: dict[tuple[int, int], list[int]] = {}
    for batch in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        ids = [encoded[p] for _, p, _ in batch]
        generated = _generate_batch(
            lm, ids, [(seed, p + prompt_offset, s + sample_offset) for _, p, s in batch],
            max_new_tokens=max_new_tokens, top_p=top_p,
            temperature=temperature, repetition_penalty=repetition_penalty, do_sample=do_sample,
            stop_ids=stop_ids)
        for (_, p, s), row in zip(batch, generated):
            new_ids[(p, s)] = _until_eos(row, stop_ids)
    keys = [(p, s) for p in range(len(prompts)) for s in range(n_samples)]
    continuations = _decode_continuations(tokenizer, [encoded[p] for p, _ in keys],
                                          [new_ids[k] for k in keys])
    return pd.DataFrame({
        "prompt_id": [p + prompt_offset for p, _ in keys],
        "sample_id": [s + sample_offset for _, s in keys],
        "prompt": [prompts[p] for p, _ in keys],
        "continuation": continuations,
        "n_new_tokens": [len(new_ids[k]) for k in keys],
    }, columns=list(COLUMNS))


def _generate_batch(lm, ids: list[list[int]], row_keys: list[tuple[int, int, int]], *,
                    max_new_tokens: int, top_p: float, temperature: float, repetition_penalty: float,
                    do_sample: bool, stop_ids: list[int]) -> list[list[int]]:
    """Left-pad ``ids`` into one batch, run ``model.generate`` and return each row's new token ids."""
    pad_id = lm.tokenizer.pad_token_id
    width = max(len(row) for row in ids)
    pad_lengths = [width - len(row) for row in ids]
    input_ids = torch.tensor([[pad_id] * n + row for n, row in zip(pad_lengths, ids)], dtype=torch.long)
    attention_mask = torch.tensor([[0] * n + [1] * len(row) for n, row in zip(pad_lengths, ids)],
                                  dtype=torch.long)
    sampler = SeededNucleusSampler(row_keys, pad_lengths, top_p=top_p, temperature=temperature,
                                   repetition_penalty=repetition_penalty, do_sample=do_sample)
    device = lm.device
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False, num_beams=1,
            repetition_penalty=1.0, no_repeat_ngram_size=0, logits_processor=[sampler],
            pad_token_id=pad_id, eos_token_id=stop_ids, use_cache=True,
        )
    return out[:, width:].tolist()


def _until_eos(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """The tokens before the first EOS (``generate`` pads finished rows after their EOS)."""
    stops = set(stop_ids)
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[:i]
    return tokens


def _decode_continuations(tokenizer, contexts: list[list[int]], new: list[list[int]]) -> list[str]:
    """Decode the new tokens as they read after their context (so a leading space is kept): the text
    of context + new minus the text of the context. Special tokens are skipped."""
    full = tokenizer.batch_decode([c + n for c, n in zip(contexts, new)], skip_special_tokens=True)
    head = tokenizer.batch_decode(contexts, skip_special_tokens=True)
    alone = None
    out = []
    for i, (f, h) in enumerate(zip(full, head)):
        if f.startswith(h):
            out.append(f[len(h):])
        else:  # a tokenizer whose decoding of the context changes once more tokens follow
            if alone is None:
                alone = tokenizer.batch_decode(new, skip_special_tokens=True)
            out.append(alone[i])
    return out
