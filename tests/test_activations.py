"""Recording pooled MLP responses: batched and padded results equal unbatched runs, early stopping, the
disk cache (hits, resumption, invalidation), hook hygiene, token-level moments."""
from __future__ import annotations

import pytest
import torch

from detox_utils import activations as A
from detox_utils import models

TEXTS = [
    "You are a worthless moron and everyone knows it.",
    "Hi",
    "The council said the new bridge will open to traffic next spring, after years of delays.",
    "Thank you so much!",
    "Shut up, idiot.",
]


def _raw_activations(lm, text: str) -> dict[tuple[str, int], torch.Tensor]:
    """``{(site, layer): [tokens, units]}`` for one unpadded text, from one forward pass with plain torch
    hooks (not `trace`)."""
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    seen, handles = {}, []

    def keep(key, tensor):
        seen[key] = tensor.detach()[0]

    try:
        for site in lm.arch.sites:
            for layer in range(lm.n_layers):
                module = lm.model.get_submodule(lm.arch.module_name(layer, site))
                key = (site, layer)
                if lm.arch.capture(site) == "output":
                    handles.append(module.register_forward_hook(lambda m, a, out, key=key: keep(key, out)))
                else:
                    handles.append(module.register_forward_pre_hook(lambda m, a, key=key: keep(key, a[0])))
        with torch.no_grad():
            lm.model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _reference(raw: list[dict], site: str, pooling: str, skip_first: int = 0) -> torch.Tensor:
    """``[n_texts, n_layers, units]`` pooled with plain tensor ops from `_raw_activations` of each text."""
    ops = {"max": lambda h: h.amax(0), "mean": lambda h: h.mean(0), "last": lambda h: h[-1]}
    n_layers = 1 + max(layer for _, layer in raw[0])
    return torch.stack([
        torch.stack([ops[pooling](r[(site, l)][skip_first:]) for l in range(n_layers)]) for r in raw
    ])


# --------------------------------------------------------------------------------------------------
# pool


@pytest.mark.parametrize("layout", ["left", "right", "gaps", "same"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_reads_only_masked_tokens(layout, dtype):
    h = torch.randn(3, 5, 4).to(dtype)
    rows = {"left": [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]],
            "right": [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]],
            "gaps": [[1, 0, 1, 1, 1], [0, 1, 0, 1, 0], [0, 1, 1, 1, 1]],  # not one run: the masked path
            "same": [[0, 1, 1, 1, 0]] * 3}  # the same run in every row: one view of the batch
    mask = torch.tensor(rows[layout], dtype=torch.bool)
    h[~mask] = float("nan")  # padding garbage must never leak
    kept = [h[i][mask[i]].float() for i in range(3)]
    assert torch.equal(A.pool(h, mask, "max"), torch.stack([r.amax(0) for r in kept]))
    torch.testing.assert_close(A.pool(h, mask, "mean"), torch.stack([r.mean(0) for r in kept]))
    assert torch.equal(A.pool(h, mask, "last"), torch.stack([r[-1] for r in kept]))
    assert A.pool(h, mask, "max").dtype == torch.float32


def test_pool_rejects_bad_input():
    with pytest.raises(ValueError, match="pooling must be one of"):
        A.pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "median")
    with pytest.raises(ValueError, match="expected hidden"):
        A.pool(torch.zeros(2, 3), torch.ones(2, 3), "max")


# --------------------------------------------------------------------------------------------------
# record: values


@pytest.mark.parametrize("side", ["left", "right"])
def test_record_matches_unbatched_runs(tiny_any, side):
    lm = tiny_any
    lm.tokenizer.padding_side = side
    sites = tuple(lm.arch.sites)
    raw = [_raw_activations(lm, t) for t in TEXTS]
    for pooling in ("max", "mean", "last"):
        got = A.record(lm, TEXTS, sites=sites, pooling=pooling, batch_size=3, cache=False, progress=False)
        assert set(got) == set(sites)
        for site in sites:
            ref = _reference(raw, site, pooling)
            assert got[site].dtype == torch.float32 and got[site].device.type == "cpu"
            assert got[site].shape == ref.shape
            torch.testing.assert_close(got[site], ref, rtol=1e-5, atol=1e-5, msg=f"{site} {pooling} {side}")


def test_record_skips_added_special_tokens(tiny_llama):
    from tokenizers import processors

    lm = tiny_llama
    bos = lm.tokenizer.bos_token_id
    lm.tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos)]
    )
    assert lm.tokenizer("Hi")["input_ids"][0] == bos
    skipped = A.record(lm, TEXTS, pooling="mean", batch_size=2, cache=False, progress=False)["post"]
    kept = A.record(lm, TEXTS, pooling="mean", batch_size=2, cache=False, progress=False, skip_special=False)["post"]
    raw = [_raw_activations(lm, t) for t in TEXTS]
    torch.testing.assert_close(skipped, _reference(raw, "post", "mean", skip_first=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kept, _reference(raw, "post", "mean"), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="fewer than 1 token"):
        A.record(lm, ["fine", ""], cache=False, progress=False)


def test_record_stops_after_last_needed_layer(tiny_gpt2):
    lm = tiny_gpt2
    full = A.record(lm, TEXTS, sites=("pre", "out"), cache=False, progress=False)
    last_block = lm.model.get_submodule(lm.arch.block_path(lm.n_layers - 1))
    calls = []
    handle = last_block.register_forward_hook(lambda *args: calls.append(1))
    try:
        early = A.record(lm, TEXTS, sites=("pre", "out"), layers=torch.tensor([1, 0]), cache=False, progress=False)
    finally:
        handle.remove()
    assert calls == []  # the last block never ran
    for site in ("pre", "out"):
        assert torch.equal(early[site], full[site][:, [1, 0]])


def test_record_validates_arguments(tiny_gpt2):
    lm = tiny_gpt2
    with pytest.raises(ValueError, match="site 'up' does not exist"):
        A.record(lm, TEXTS, sites=("up",), cache=False, progress=False)
    with pytest.raises(ValueError, match="pooling must be one of"):
        A.record(lm, TEXTS, pooling="sum", cache=False, progress=False)
    with pytest.raises(ValueError, match="layers must be"):
        A.record(lm, TEXTS, layers=[lm.n_layers], cache=False, progress=False)
    with pytest.raises(ValueError, match="duplicate layers"):
        A.record(lm, TEXTS, layers=[0, 0], cache=False, progress=False)
    with pytest.raises(ValueError, match="layers must be"):
        A.record(lm, TEXTS, layers=[0.5], cache=False, progress=False)
    with pytest.raises(TypeError, match="sequence of str"):
        A.record(lm, "one text", cache=False, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        A.record(lm, TEXTS, batch_size=0, cache=False, progress=False)
    assert set(A.record(lm, TEXTS, sites="out", cache=False, progress=False)) == {"out"}


# --------------------------------------------------------------------------------------------------
# record: cache


class _Interrupted(Exception):
    pass


def _counting_forward(monkeypatch, fail_after: int | None = None) -> list:
    """Count (and optionally interrupt) record's forward passes."""
    calls = []
    real = A._run_stopped

    def run(model, batch, device):
        if fail_after is not None and len(calls) == fail_after:
            raise _Interrupted
        calls.append(len(batch.index))
        real(model, batch, device)

    monkeypatch.setattr(A, "_run_stopped", run)
    return calls


def test_cache_hit_is_identical_and_runs_nothing(tiny_llama, monkeypatch):
    lm = tiny_llama
    first = A.record(lm, TEXTS, sites=("post", "out"), progress=False)
    calls = _counting_forward(monkeypatch)
    again = A.record(lm, TEXTS, sites=("post", "out"), progress=False)
    assert calls == []
    for site in first:
        assert torch.equal(first[site], again[site])
    # one cached site is reused; only the missing one is computed
    mixed = A.record(lm, TEXTS, sites=("post", "pre"), progress=False)
    assert sum(calls) == len(TEXTS)
    assert torch.equal(mixed["post"], first["post"])


def test_cache_resumes_after_interruption(tiny_llama, monkeypatch):
    lm = tiny_llama
    monkeypatch.setattr(A, "CHUNK_TEXTS", 2)  # chunks of 2 texts, batches of 1: 5 batches in 3 chunks
    expected = A.record(lm, TEXTS, batch_size=1, cache=False, progress=False)["post"]
    real_run = A._run_stopped
    _counting_forward(monkeypatch, fail_after=3)  # dies inside the second chunk
    with pytest.raises(_Interrupted):
        A.record(lm, TEXTS, batch_size=1, progress=False)
    assert not A.has_hooks(lm.model)
    monkeypatch.setattr(A, "_run_stopped", real_run)
    calls = _counting_forward(monkeypatch)
    resumed = A.record(lm, TEXTS, batch_size=1, progress=False)["post"]
    assert sum(calls) == len(TEXTS) - 2  # the first chunk came from disk
    assert torch.equal(resumed, expected)


def test_cache_key_tracks_weights_pooling_and_hooks(tiny_gpt2, monkeypatch):
    lm = tiny_gpt2
    base = A.record(lm, TEXTS, progress=False)["post"]
    assert not torch.equal(A.record(lm, TEXTS, pooling="mean", progress=False)["post"], base)
    weight = lm.model.get_submodule(lm.arch.module_name(0, "pre")).weight
    with torch.no_grad():
        weight.mul_(2.0)  # an in-place edit, as a folded intervention makes
    edited = A.record(lm, TEXTS, progress=False)["post"]
    assert torch.equal(edited, A.record(lm, TEXTS, cache=False, progress=False)["post"])
    assert not torch.equal(edited[:, 0], base[:, 0])
    with torch.no_grad():
        weight.div_(2.0)
    assert torch.equal(A.record(lm, TEXTS, progress=False)["post"], base)
    # a model carrying a hook (an intervention at inference) must not be served from the cache
    module = lm.model.get_submodule(lm.arch.module_name(0, "pre"))
    handle = module.register_forward_hook(lambda m, args, out: out * 0)
    try:
        hooked = A.record(lm, TEXTS, progress=False)["post"]
    finally:
        handle.remove()
    assert not torch.equal(hooked[:, 0], base[:, 0])


# --------------------------------------------------------------------------------------------------
# trace


def test_trace_retains_and_removes_hooks(tiny_gpt2):
    lm = tiny_gpt2
    name = lm.arch.module_name(1, "out")
    ids = lm.tokenizer("Hi there", return_tensors="pt")["input_ids"]
    with torch.no_grad(), A.trace(lm.model, outputs=[name], inputs=[name]) as tr:
        lm.model(ids)
    assert tr.outputs[name].shape[-1] == lm.d_model and tr.inputs[name].shape[-1] == lm.d_mlp
    assert not A.has_hooks(lm.model)


def test_trace_removes_hooks_after_an_exception(tiny_llama):
    lm = tiny_llama
    ids = lm.tokenizer("Hi there", return_tensors="pt")["input_ids"]

    def boom(name, kind, tensor):
        raise _Interrupted

    with pytest.raises(_Interrupted), A.trace(lm.model, outputs=[lm.arch.module_name(0, "pre")], fn=boom):
        lm.model(ids)
    assert not A.has_hooks(lm.model)
    with pytest.raises(ValueError, match="no module named"):
        with A.trace(lm.model, outputs=["model.layers.99.mlp"]):
            pass


def test_trace_stop_ends_the_forward_pass(tiny_llama):
    lm = tiny_llama
    ids = lm.tokenizer("Hi there", return_tensors="pt")["input_ids"]
    reached = []
    last = lm.model.get_submodule(lm.arch.block_path(lm.n_layers - 1))
    handle = last.register_forward_hook(lambda *args: reached.append(1))
    try:
        with torch.no_grad(), A.trace(lm.model, outputs=[lm.arch.module_name(0, "out")], stop=True) as tr:
            lm.model(ids)
            reached.append("after the forward")  # never runs: the forward raised inside the block
    finally:
        handle.remove()
    assert reached == [] and lm.arch.module_name(0, "out") in tr.outputs
    assert not A.has_hooks(lm.model)


# --------------------------------------------------------------------------------------------------
# moments


def test_moments_match_direct_computation(tiny_any):
    lm = tiny_any
    layers = [0, lm.n_layers - 1]
    mean, second = A.moments(lm, TEXTS, "post", layers=layers, batch_size=2, progress=False)
    assert mean.shape == (2, lm.d_mlp) and second.shape == (2, lm.d_mlp, lm.d_mlp)
    raw = [_raw_activations(lm, t) for t in TEXTS]
    for column, layer in enumerate(layers):
        x = torch.cat([r[("post", layer)] for r in raw]).double()
        torch.testing.assert_close(mean[column], x.mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(second[column], x.T @ x / len(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# a real model with a BOS-adding tokenizer


@pytest.mark.slow
@pytest.mark.realcache
def test_record_on_a_packaged_model():
    lm = models.load("smollm2-135m")
    texts = TEXTS[:3]
    got = A.record(lm, texts, sites=("post",), pooling="max", layers=[0, 5], batch_size=3, cache=False,
                   progress=False)["post"]
    adds_bos = lm.tokenizer("Hi")["input_ids"][0] == lm.tokenizer.bos_token_id
    for i, text in enumerate(texts):
        raw = _raw_activations(lm, text)
        for column, layer in enumerate([0, 5]):
            ref = raw[("post", layer)][int(adds_bos):].amax(0)
            torch.testing.assert_close(got[i, column], ref, rtol=1e-4, atol=1e-4)
