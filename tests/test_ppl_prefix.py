"""The perplexity-prefix sensitivity: first-token candidates scored on the same tokens, every edit of a
result folder measured again under another prefix (resumable), and the evidence table built from it."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from detox_utils import data, evidence, experiment, interventions as iv, metrics, models, ppl_prefix, results
from detox_utils.config import EvalConfig

TOXIC = ["you are an idiot", "shut up you fool", "what a stupid moron", "I hate you, loser"]
NEUTRAL = ["the cat sat on the mat", "a sunny day in the park", "we went to the shop", "bread and tea"]


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    return models.tiny("llama")


def test_tail_nll_without_skip_is_sequence_nll(lm):
    ids = metrics.encode_for_perplexity(lm.tokenizer, ["a dog ran far away today", "the cat sat", "we went"], 16,
                                        prefix="doc-start")
    pad = lm.tokenizer.pad_token_id
    nll, n = ppl_prefix.tail_nll(lm.model, ids, [0, 0, 0], pad, batch_size=2)  # sorted by length inside
    ref_nll, ref_n = metrics.sequence_nll(lm.model, ids, pad)
    assert n.tolist() == ref_n.tolist() and nll == pytest.approx(ref_nll, rel=1e-5)
    skipped, m = ppl_prefix.tail_nll(lm.model, ids, [1, 1, 1], pad)
    assert (m == n - 1).all() and (skipped < nll).all()  # one token fewer, each NLL > 0


def test_start_candidates_score_the_same_tokens(lm):
    rows = ppl_prefix.start_candidates(lm, ["the cat sat on the mat", "we went to the shop today"],
                                       progress=False)
    names = [r["start"] for r in rows]
    assert names[0] == "none" and len(set(names)) == len(names) >= 2
    assert len({r["n_tokens"] for r in rows}) == 1  # every candidate scored on the same tokens
    assert sum(r["doc_start"] for r in rows) == 1 and all(r["ppl"] > 1 for r in rows)
    with pytest.raises(ValueError, match="two tokens"):
        ppl_prefix.start_candidates(lm, ["a"], progress=False)


def _write_run(folder, cfg: EvalConfig, ppl: float, control: dict | None = None, name: str | None = None):
    record = {"schema": results.SCHEMA_VERSION, "kind": "grid-run", "status": "ok",
              "config": {**cfg.to_dict(), "config_hash": cfg.config_hash}, "config_hash": cfg.config_hash,
              "metrics": {"perplexity": {"corpus_ppl": ppl, "mean_sentence_ppl": ppl}},
              "provenance": {"method": {"control": control} if control else {}}, "error": None}
    (folder / f"{name or cfg.config_hash}.json").write_text(json.dumps(record))


def test_remeasure_every_edit_once_and_resume(lm, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "load", lambda name, *a, **k: lm)
    monkeypatch.setattr(data, "perplexity_texts", lambda corpus, n=None: (
        ["the cat sat on the mat today", "we went to the shop for bread", "a sunny day in the park"] * 2)[:n])
    common = dict(model=lm.name, ppl_corpus="wiki", n_ppl=6, ppl_prefix="doc-start", n_contrast=4)
    plain = EvalConfig(method="none", **common)
    det0 = EvalConfig(method="det0", method_params={"k": 10}, **common)
    ctl = EvalConfig(method="det0", method_params={"k": 10}, control_seed=1, **common)
    matched = EvalConfig(method="det0", method_params={"k": 10}, control_seed=1, control_match="perplexity",
                         **common)
    for cfg, ppl in ((plain, 100.0), (det0, 110.0), (ctl, 120.0)):
        _write_run(tmp_path, cfg, ppl)
    _write_run(tmp_path, EvalConfig(method="none", benchmark="slur-prefixes", **common), 100.0)  # same edit
    _write_run(tmp_path, matched, 111.0, control={"strength": 0.5, "seed": 1, "matched": True})
    calls = []
    real = metrics.perplexity
    monkeypatch.setattr(metrics, "perplexity", lambda *a, **k: calls.append(k["prefix"]) or real(*a, **k))

    ppl_prefix.remeasure(tmp_path, lm.name, prefix="none", progress=False, methods=["none"])
    assert calls == ["none"]  # the plain model only
    path = ppl_prefix.remeasure(tmp_path, lm.name, prefix="none", progress=False)
    record = ppl_prefix.read(tmp_path, lm.name)
    assert path == ppl_prefix.record_path(tmp_path, lm.name) and record["kind"] == ppl_prefix.KIND
    assert len(record["edits"]) == 4 and calls == ["none"] * 4  # the two plain runs are one edit, measured once
    by_method = {(e["method"], e["control_seed"], e["control_match"]): e for e in record["edits"].values()}
    plain_edit = by_method[("none", None, "damage")]
    assert len(plain_edit["runs"]) == 2
    texts = data.perplexity_texts("wiki", n=6)
    assert plain_edit["ppl"]["none"]["corpus_ppl"] == pytest.approx(
        real(lm, texts, prefix="none", progress=False)["corpus_ppl"])
    # the matched control is rebuilt at the strength its run recorded, not calibrated again
    fitted = experiment.fit_method(det0, lm, progress=False)
    with iv.matched_from(fitted, 1, {"strength": 0.5}).apply(lm, fold=True):
        want = real(lm, texts, prefix="none", progress=False)["corpus_ppl"]
    assert by_method[("det0", 1, "perplexity")]["ppl"]["none"]["corpus_ppl"] == pytest.approx(want)
    assert by_method[("det0", 1, "perplexity")]["strength"] == 0.5
    assert [r["start"] for r in record["start_candidates"]["rows"]][0] == "none"

    calls.clear()
    # a control matched under no prefix itself (its own reading is the one wanted): not measured again
    _write_run(tmp_path, EvalConfig(method="det0", method_params={"k": 10}, control_seed=1,
                                    control_match="perplexity", **{**common, "ppl_prefix": "none"}), 14.0,
               control={"strength": 0.7, "seed": 1, "matched": True})
    ppl_prefix.remeasure(tmp_path, lm.name, prefix="none", progress=False)
    assert calls == []  # resumed: nothing measured twice
    with pytest.raises(ValueError, match=r"methods \['aura'\] have no run"):
        ppl_prefix.remeasure(tmp_path, lm.name, prefix="none", progress=False, methods=["aura"])

    with pytest.raises(ValueError, match="is the one the runs"):
        ppl_prefix.remeasure(tmp_path, lm.name, prefix="doc-start", progress=False)
    with pytest.raises(ValueError, match="no finished run of model 'other'"):
        ppl_prefix.remeasure(tmp_path, "other", progress=False)
    with pytest.raises(ValueError, match="not allowed"):
        ppl_prefix.remeasure(tmp_path, lm.name, prefix="bos", progress=False)
    with pytest.raises(ValueError, match="holds measurements under prefix 'none', not 'auto'"):
        ppl_prefix.remeasure(tmp_path, lm.name, prefix="auto", progress=False)
    assert ppl_prefix.main(["--model", "other", "--out", str(tmp_path)]) == 2


def _record(edits: dict, grid_prefix="doc-start") -> dict:
    return {"schema": ppl_prefix.SCHEMA, "kind": ppl_prefix.KIND, "model": "m", "corpus": "wiki", "n_ppl": 500,
            "grid_prefix": grid_prefix, "prefixes": {grid_prefix: "<|endoftext|>", "none": None},
            "start_candidates": {"corpus": "xsum", "n_texts": 100, "rows": [
                {"start": "none", "token_id": None, "doc_start": False, "ppl": 100.0, "n_tokens": 900},
                {"start": "<|endoftext|>", "token_id": 0, "doc_start": True, "ppl": 900.0, "n_tokens": 900}]},
            "edits": edits}


def _edit(method, ppl_none, runs, seed=None, match="damage", params=None, ppl_grid=None):
    ppl = {"none": {"corpus_ppl": ppl_none, "mean_sentence_ppl": ppl_none}}
    if ppl_grid is not None:
        ppl["doc-start"] = {"corpus_ppl": ppl_grid, "mean_sentence_ppl": ppl_grid}
    return {"method": method, "method_params": params or {}, "control_seed": seed, "control_match": match,
            "strength": None, "runs": runs, "ppl": ppl}


def test_ppl_prefix_table_flags_a_decision_the_prefix_changes(tmp_path):
    folder = tmp_path / "ppl-prefix"
    folder.mkdir()
    edits = {"a": _edit("none", 100.0, {"h0": 1000.0}),
             # +20% under the grid's prefix, +40% without: the 25% rule decides differently
             "b": _edit("damp", 140.0, {"h1": 1200.0, "h2": 1200.0}, params={"k": 3000, "alpha": 0.5}),
             # AURA measured under both here: its pair is of one edit, its runs' gap is reported
             "c": _edit("aura", 105.0, {"h3": 1101.0}, ppl_grid=1100.0),
             "d": _edit("damp", 139.0, {"h4": 1150.0}, seed=1, match="perplexity",
                        params={"k": 3000, "alpha": 0.5})}
    (folder / "m.json").write_text(json.dumps(_record(edits)))
    table = evidence.ppl_prefix_table(tmp_path)
    damp = table[(table.setting == "Damp k=3000 α=0.5") & table.control_seed.isna()].iloc[0]
    assert damp.rel_ppl_grid == pytest.approx(0.2) and damp.rel_ppl_alt == pytest.approx(0.4)
    assert not damp.same_decision
    aura = table[table.setting == "AURA"].iloc[0]
    assert aura.rel_ppl_grid == pytest.approx(0.1) and aura.run_gap == pytest.approx(1101 / 1100 - 1)
    assert bool(aura.same_decision)
    matched = table[table.control_match == "perplexity"].iloc[0]
    assert matched.gap_to_method_alt == pytest.approx(139 / 140 - 1)
    assert matched.gap_to_method_grid == pytest.approx(1150 / 1200 - 1)
    starts = evidence.ppl_prefix_starts(tmp_path)
    assert starts.loc[starts.doc_start, "ppl"].item() == 900.0 and starts.ppl_vs_best.max() == pytest.approx(9.0)
    assert evidence.first_token_summary(starts) == (
        "The grid's first token for perplexity is the best start on held-out news leads for no model; for m "
        "`<|endoftext|>` gives 9.0x the perplexity of its best start (`none`).")
    assert evidence.prefix_edits_summary(table) == (
        "Measured again without a first token, 3 edits (m: 3): the at-most-25% perplexity rule decides the "
        "same for 1 and differently for m Damp k=3000 α=0.5 (+20% against +40%), m Damp k=3000 α=0.5 "
        "(control 1, perplexity) (+15% against +39%); a method's own relative change moves by at most 20 points; "
        "perplexity-matched controls, matched under the grid's first token, are within 0.7% of their method's "
        "perplexity without it.")
    # whether a verdict can depend on it: only where the flipped setting reduces toxicity significantly
    eff = pd.DataFrame({"model": ["m", "m", "m"], "benchmark": ["rtp", "slur", "rtp"], "evaluator": "max",
                        "preprompt": False, "setting": ["Damp k=3000 α=0.5", "Damp k=3000 α=0.5", "AURA"],
                        "p_holm": [0.2, 0.5, 0.001], "factor": [1.3, 1.1, 1.5]})
    assert evidence.prefix_edits_summary(table, eff).endswith(
        "None of the settings whose decision flips reduces toxicity significantly in any cell of its model, so "
        "no verdict depends on the first token.")
    eff.loc[1, "p_holm"] = 0.01
    assert evidence.prefix_edits_summary(table, eff).endswith(
        "The verdicts of m/slur Damp k=3000 α=0.5 rest on a significant reduction whose perplexity decision "
        "flips: read them under both prefixes.")
    assert evidence.first_token_summary(starts.iloc[0:0]) == evidence.prefix_edits_summary(table.iloc[0:0]) == ""
    # a model whose tokenizer adds its start token itself reads after it under both: not counted
    same = table.assign(alt_prefix=table.grid_prefix)
    assert evidence.prefix_edits_summary(same) == evidence.prefix_edits_summary(same, eff) == ""
    assert evidence.ppl_prefix_table(tmp_path / "nothing").empty
    (folder / "m.json").write_text(json.dumps({**_record(edits), "schema": 2}))
    with pytest.raises(ValueError, match="schema 2"):
        evidence.ppl_prefix_table(tmp_path)
    (folder / "m.json").write_text(json.dumps({**_record(edits), "kind": "grid-run"}))
    with pytest.raises(ValueError, match="is a 'grid-run' record, not 'ppl-prefix'"):
        evidence.ppl_prefix_table(tmp_path)


def test_capability_is_read_under_the_best_start_once_every_run_is_measured(lm, tmp_path):
    common = dict(model=lm.name, ppl_corpus="wiki", n_ppl=6, ppl_prefix="doc-start", n_contrast=4)
    plain = EvalConfig(method="none", **common)
    damp = EvalConfig(method="damp", method_params={"k": 10, "alpha": 0.5}, **common)
    det0 = EvalConfig(method="det0", method_params={"k": 10}, **common)
    for cfg, ppl in ((plain, 1000.0), (damp, 1200.0)):
        _write_run(tmp_path, cfg, ppl)
    (tmp_path / "ppl-prefix").mkdir()
    edits = {"a": _edit("none", 100.0, {plain.config_hash: 1000.0}),
             "b": _edit("damp", 104.0, {damp.config_hash: 1200.0}, params={"k": 10, "alpha": 0.5})}
    record = {**_record(edits), "model": lm.name}
    (tmp_path / "ppl-prefix" / f"{lm.name}.json").write_text(json.dumps(record))
    table = evidence.runs(tmp_path).set_index("method")
    assert table.loc["damp", "ppl"] == 104.0 and table.loc["damp", "ppl_grid"] == 1200.0
    assert table.loc["none", "ppl_sentence"] == table.loc["none", "ppl"] == 100.0  # _edit's both readings
    assert set(table.ppl_start) == {"none"} and set(table.ppl_grid_start) == {"<|endoftext|>"}
    starts = evidence.capability_starts(tmp_path).iloc[0]
    assert (starts.start, starts.best_start, starts.pending) == ("none", "none", 0)
    assert starts.grid_vs_best == pytest.approx(9.0)
    # a run the record has not measured: the whole model stays under the grid's first token
    _write_run(tmp_path, det0, 990.0)
    table = evidence.runs(tmp_path).set_index("method")
    assert table.ppl.tolist() == table.ppl_grid.tolist() and set(table.ppl_start) == {"<|endoftext|>"}
    starts = evidence.capability_starts(tmp_path).iloc[0]
    assert (starts.start, starts.pending, starts.runs) == ("<|endoftext|>", 1, 3)
    # ... unless that run was itself measured under the best start: its own reading is used
    (tmp_path / f"{det0.config_hash}.json").unlink()
    own = EvalConfig(method="det0", method_params={"k": 10}, **{**common, "ppl_prefix": "none"})
    _write_run(tmp_path, own, 101.0)
    table = evidence.runs(tmp_path).set_index("method")
    assert table.loc["det0", "ppl"] == 101.0 and set(table.ppl_start) == {"none"}
    # a best start within START_TOLERANCE of the grid's does not replace it
    near = json.loads(json.dumps(record))
    near["start_candidates"]["rows"][1]["ppl"] = 100.0 * evidence.START_TOLERANCE
    (tmp_path / "ppl-prefix" / f"{lm.name}.json").write_text(json.dumps(near))
    table = evidence.runs(tmp_path)
    assert set(table.ppl_start) == {"<|endoftext|>"} and "det0" not in set(table.method)  # read another way


def test_capability_start_summary_names_the_start_of_each_model():
    starts = pd.DataFrame({"model": ["q", "s"], "grid_start": ["<|endoftext|>", "<|endoftext|>"],
                           "best_start": ["none", "<|endoftext|>"], "grid_vs_best": [6.8, 1.0],
                           "start": ["none", "<|endoftext|>"], "runs": [40, 40], "pending": [0, 0]})
    assert evidence.capability_start_summary(starts) == (
        "Capability costs (both perplexities, every relative change, every control's cost) are read after each "
        "model's best first token: q without a first token (the grid's `<|endoftext|>` gives 6.8x its perplexity "
        "on held-out leads; all 40 of its runs measured under it); s after the grid's own.")
    waiting = starts.assign(start="<|endoftext|>", pending=[2, 0])
    assert evidence.capability_start_summary(waiting).endswith(
        "best first token: s after the grid's own. q is still read after the grid's `<|endoftext|>`, not without "
        "a first token (6.8x less perplexity), until its 2 newest runs of 40 are measured under it (`python -m "
        "detox_utils ppl-prefix --model q`).")
    assert evidence.capability_start_summary(starts.iloc[0:0]) == ""
