"""The evidence analysis (detox_utils.evidence) on a synthetic powered grid whose answers are known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from detox_utils import evidence, ppl_prefix, results
from detox_utils.config import EvalConfig

N, K = 300, 2


def _write(folder, rng, *, method="none", params=None, preprompt=False, control_seed=None,
           p_toxic=0.4, ppl=20.0, correct=None, model="m", benchmark="rtp-challenging",
           n=N, k=K, prompt_start=0, sample_start=0, control_match="damage", ppl_prefix="auto"):
    cfg = EvalConfig(model=model, method=method, method_params=params or {}, benchmark=benchmark,
                     preprompt=preprompt, control_seed=control_seed, n_prompts=n, n_samples=k,
                     evaluators=("tox-block", "hatesonar"), prompt_start=prompt_start,
                     sample_start=sample_start, control_match=control_match, ppl_prefix=ppl_prefix)
    toxic = rng.random((n, k)) < p_toxic
    rows = []
    for i in range(n):
        for j in range(k):
            s1 = 0.9 if toxic[i, j] else 0.1
            rows.append({"prompt_id": prompt_start + i, "sample_id": sample_start + j, "prompt": "p",
                         "continuation": "c",
                         "n_new_tokens": 3, "score.tox-block": s1, "score.hatesonar": 0.2,
                         "score.max": max(s1, 0.2)})
    results.write_samples(folder / f"{cfg.config_hash}.samples.csv.gz", pd.DataFrame(rows))
    correct = correct if correct is not None else "1" * 150 + "0" * 50
    zeroshot = {} if cfg.is_extension else {
        "piqa": {"acc": correct.count("1") / len(correct), "acc_per_char": 0.5, "correct": correct,
                 "correct_per_char": correct}}
    metrics = {"perplexity": {"corpus_ppl": ppl, "mean_sentence_ppl": 2 * ppl},
               "zeroshot": zeroshot,
               "diversity": {"distinct_2": 0.9}, "toxicity": {}}
    results.write_result(folder / f"{cfg.config_hash}.json", config=cfg.to_dict(),
                         config_hash=cfg.config_hash, metrics=metrics,
                         provenance=results.provenance())
    return cfg.config_hash


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("powered")
    rng = np.random.default_rng(0)
    _write(folder, rng)  # baseline: 64% of prompts toxic (1 - 0.6^2)
    _write(folder, rng, method="aura", p_toxic=0.08, ppl=21.0)  # a strong, cheap reduction
    for seed in (1, 2):  # random units: no reduction
        _write(folder, rng, method="aura", control_seed=seed, p_toxic=0.4, ppl=20.5)
    _write(folder, rng, method="trne", params={"rho": 0.2}, p_toxic=0.4, ppl=20.1)  # no effect
    _write(folder, rng, method="det0", params={"k": 300}, p_toxic=0.05, ppl=40.0)  # breaks the model
    _write(folder, rng, method="damp", params={"k": 3000}, p_toxic=0.15, ppl=21.0)  # reduces...
    _write(folder, rng, method="damp", params={"k": 3000}, control_seed=1, p_toxic=0.15, ppl=21.0)  # ...as random
    _write(folder, rng, preprompt=True, p_toxic=0.4)
    _write(folder, rng, method="aura", preprompt=True, p_toxic=0.02, correct="1" * 100 + "0" * 100)
    return folder


def test_runs_table(grid):
    table = evidence.runs(grid)
    assert len(table) == 10
    assert set(table.setting) >= {"No intervention", "AURA", "TRNE ρ=0.2", "Det0 k=300", "Damp k=3000 α=0.5"}
    assert table.control_seed.notna().sum() == 3
    assert evidence.zeroshot_tasks(table) == ["piqa"]


def test_effects_against_the_plain_model_with_controls(grid):
    eff = evidence.effects(grid, evaluators=["max"], n_boot=500).set_index("setting")
    aura = eff[~eff.preprompt].loc["AURA"]
    assert aura.factor > 3 and aura.lo > 1 and aura.p < 1e-6 and aura.p_holm == aura.p  # one cell
    assert aura.n_controls == 2 and aura.beats_control and aura.control_factor < 1.3
    assert aura.rel_ppl == pytest.approx(0.05) and aura.rel_ppl_sentence == pytest.approx(0.05)
    assert aura.zs_delta == 0 and aura.zs_p == 1
    # equal damage is not equal cost: the controls cost +2.5%, AURA +5%; at +2.5% AURA still wins
    assert aura.vs_control_at_ppl == "trade-off" and aura.equal_ppl_at == pytest.approx(0.025)
    assert 1 < aura.equal_ppl_lo <= aura.equal_ppl_ratio <= aura.equal_ppl_hi
    trne = eff.loc["TRNE ρ=0.2"]
    assert trne.lo < 1 < trne.hi and trne.p > 0.05 and trne.n_controls == 0
    damp = eff.loc["Damp k=3000 α=0.5"]
    assert damp.p < 0.05 and not damp.beats_control  # a reduction random units achieve too
    pre_aura = eff[eff.preprompt].loc["AURA"]
    assert pre_aura.zs_delta == pytest.approx(-0.25) and pre_aura.zs_p < 1e-6


def test_reduction_verdicts(grid):
    eff = evidence.effects(grid, evaluators=["max"], n_boot=500)
    # each row carries the MDE of the design it was compared on; the cells' MDEs (``mde``) stand in
    # only for rows without one
    assert eff.mde_compared.between(1, 3).all() and (eff.n_prompts_compared == N).all()
    eff = eff[~eff.preprompt].assign(mde_compared=1.3)
    mde = pd.Series({("m", "rtp-challenging"): 9.0})
    assert evidence.reduction_verdict(eff[eff.method == "aura"], mde, 2.2) == "reproduces in 1 of 1 cells"
    assert evidence.reduction_verdict(eff[eff.method == "det0"], mde, 1.5).startswith("only at > 25% perplexity")
    assert evidence.reduction_verdict(eff[eff.method == "damp"], mde, 1.5).startswith(
        "reduces, but not more than random units")
    # powered (MDE 1.3 <= claimed 1.5) and the CI excludes 1.5: does not reproduce
    trne = eff[eff.method == "trne"]
    if trne.hi.iloc[0] < 1.5:
        assert evidence.reduction_verdict(trne, mde, 1.5) == "does not reproduce in 1 of 1 cells"
    # unpowered (MDE 3 > claimed 1.5): never "does not reproduce"
    assert evidence.reduction_verdict(trne.assign(mde_compared=3.0), mde, 1.5) == \
        "inconclusive (underpowered) in 1 of 1 cells"
    assert evidence.reduction_verdict(trne.drop(columns="mde_compared"), pd.Series({("m", "rtp-challenging"): 3.0}),
                                      1.5) == "inconclusive (underpowered) in 1 of 1 cells"
    assert "MDE 1.30x at 300 × 2" in evidence._cells_text(trne, mde)
    assert evidence.reduction_verdict(trne.iloc[:0], mde, 1.5) == "no runs yet"


def test_reduction_verdict_at_equal_perplexity():
    """A cell that loses to its controls at equal damage because they cost far more perplexity, and one
    that beats them at equal damage only by costing more: the verdict names both."""
    mde = pd.Series({("m", "rtp-challenging"): 1.3})
    cell = dict(model="m", benchmark="rtp-challenging", factor=1.8, lo=1.5, hi=2.2, p_holm=1e-5,
                rel_ppl=0.05, n_controls=2, vs_control_at_ppl="trade-off", equal_ppl_at=0.05)
    cheap = pd.DataFrame([{**cell, "beats_control": False, "equal_ppl_ratio": 1.6, "equal_ppl_lo": 1.3,
                           "equal_ppl_hi": 2.0}])
    assert evidence.reduction_verdict(cheap, mde, 1.5) == \
        "reduces; more than random units only at equal perplexity (interpolated) in 1 of 1 cells"
    dear = pd.DataFrame([{**cell, "beats_control": True, "equal_ppl_ratio": 0.8, "equal_ppl_lo": 0.7,
                          "equal_ppl_hi": 0.9}])
    assert evidence.reduction_verdict(dear, mde, 1.5).startswith(
        "reduces more than random units at equal damage, not at equal perplexity")
    tied = cheap.assign(equal_ppl_lo=0.9)
    assert evidence.reduction_verdict(tied, mde, 1.5).startswith("reduces, but not more than random units")
    # a claimed size (AURA's "up to 2.2x"): a CI wholly below it reduces by less; one reaching it reproduces
    won = cheap.assign(beats_control=True)
    assert evidence.reduction_verdict(won, mde, 2.5, size_claimed=True) == \
        "reduces, by less than the claimed 2.5x in 1 of 1 cells"
    assert evidence.reduction_verdict(won, mde, 2.2, size_claimed=True) == "reproduces in 1 of 1 cells"
    assert evidence.reduction_verdict(won, mde, 2.5) == "reproduces in 1 of 1 cells"
    # a mixed verdict names the cells of each part
    two = pd.concat([cheap, dear.assign(benchmark="slur-prefixes")], ignore_index=True)
    mde2 = pd.Series({("m", "rtp-challenging"): 1.3, ("m", "slur-prefixes"): 1.3})
    text = evidence.reduction_verdict(two, mde2, 1.5)
    assert "in 1 of 2 cells (m/rtp-challenging)" in text and "in 1 of 2 cells (m/slur-prefixes)" in text
    # a frame without the equal-perplexity columns (older callers) keeps the equal-damage rule
    old = cheap.drop(columns=["equal_ppl_ratio", "equal_ppl_lo", "equal_ppl_hi"]).assign(beats_control=True)
    assert evidence.reduction_verdict(old, mde, 1.5) == "reproduces in 1 of 1 cells"


def test_preprompt_and_claims(grid):
    pre = evidence.preprompt_table(grid, n_boot=500)
    assert len(pre) == 1
    row = pre.iloc[0]
    assert row.i_aura_pre > row.i_aura > 1 and row.ii_aura_pre_vs_pre > 1 and row.pre_vs_base < 1.5
    table = evidence.claims(grid)
    by = table.set_index("claim")["verdict"]
    assert by["AURA reduces toxicity up to 2.2x at +0.72 perplexity"].startswith("reproduces")
    assert "reading (i)" in by["Pre-prompting lifts AURA's average mitigation from 1.28x to 2.35x"]
    assert by["AURA preserves zero-shot common-sense accuracy"].startswith("preserved")


def test_power_table_reports_the_design_mde(grid):
    pw = evidence.power_table(grid, n_sim=300)
    mx = pw[pw.evaluator == "max"].iloc[0]
    assert mx.n_prompts == N and mx.n_samples == K and 0.5 < mx.base_tox_prob < 0.8
    assert 1 < mx.mde < 1.6
    assert evidence.power_table(grid.parent / "missing").empty


def test_figures_draw(grid):
    import matplotlib

    matplotlib.use("Agg")
    eff = evidence.effects(grid, evaluators=["max"], n_boot=200)
    fig = evidence.plot_effects(eff)
    assert len(fig.axes) == 1 and fig.axes[0].get_xscale() == "log"
    # drawn at the book's page width: 6.3 in at 110 dpi, no type under 7 pt (~11 px on screen)
    assert fig.get_size_inches()[0] <= 6.5 and fig.dpi == 110
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    assert sizes and min(sizes) >= 7
    rng = np.random.default_rng(0)
    records = [{"model": f"m{L}", "summary": {"post": {"layer_score": {
        "point": rng.random(L).tolist(), "boot": rng.random((20, L)).tolist()}}}} for L in (6, 9)]
    fig = evidence.plot_profiles(records)
    assert len(fig.axes[0].lines) == 3  # two models and the flat line


def test_localization_claims_use_the_whole_profile():
    flat = np.ones(12)
    early = np.r_[np.full(4, 3.0), np.full(8, 0.2)]
    rng = np.random.default_rng(1)
    records = [{"model": name, "summary": {"post": {"layer_score": {
        "point": p.tolist(), "boot": (p + rng.normal(0, 0.05, (200, 12))).clip(0).tolist()}}}}
        for name, p in (("flat", flat), ("early", early))]
    found, compare = evidence.localization_claims(records)
    by = {f["model"]: f for f in found}
    assert by["early"]["lo"] > 1 / 3 and by["flat"]["lo"] <= 1 / 3 <= by["flat"]["hi"]
    assert compare["flat vs early"]["verdict"] == "differs"


def test_evaluator_claim_at_matched_false_positive_rates():
    rng = np.random.default_rng(0)
    n = 3000
    y = rng.random(n) < 0.3
    good = np.where(y, rng.normal(1.5, 1, n), rng.normal(0, 1, n))
    noise = rng.normal(0, 1, n)
    frame = pd.DataFrame({"label": y.astype(int), "score.good": good, "score.noise": noise})
    row = evidence.claims("/nonexistent", validation_scores=frame).iloc[0]
    assert row.verdict.startswith("does not reproduce") and "(good)" in row.verdict
    # two evaluators that each see half of the positives: the union finds more at the same FPR
    half = rng.random(n) < 0.5
    a = np.where(y & half, rng.normal(3, 0.5, n), rng.normal(0, 1, n))
    b = np.where(y & ~half, rng.normal(3, 0.5, n), rng.normal(0, 1, n))
    frame = pd.DataFrame({"label": y.astype(int), "score.a": a, "score.b": b})
    assert evidence.claims("/nonexistent", validation_scores=frame).iloc[0].verdict.startswith("reproduces")


def test_a_grid_with_only_a_baseline(tmp_path):
    _write(tmp_path, np.random.default_rng(0))
    assert evidence.effects(tmp_path).empty and evidence.preprompt_table(tmp_path).empty
    assert len(evidence.power_table(tmp_path, n_sim=100)) == 3  # two evaluators and max
    assert evidence.claims(tmp_path).empty  # nothing to claim yet (no localization, no validation)


def test_mde_table_is_one_row_per_cell(grid):
    table = evidence.mde_table(evidence.power_table(grid, n_sim=200))
    assert len(table) == 1 and list(table.columns)[-1] == "max"
    assert table["max"].iloc[0].endswith(")") and "x (" in table["max"].iloc[0]


def test_zeroshot_claim_rule_is_per_model_holm_and_needs_power():
    def rows(p, mde, delta=-0.01):
        # two cells of one model share its zero-shot measurement: counted once
        return pd.DataFrame([{"model": m, "benchmark": b, "zs_base": 0.5, "zs_method": 0.5 + delta,
                              "zs_delta": delta, "zs_p": p, "zs_n": 600, "zs_mde": mde}
                             for m in ("a", "b") for b in ("x", "y")])
    measured, verdict = evidence._zeroshot_claim(rows(0.3, 0.02))
    assert verdict.startswith("preserved") and measured.count("Holm p") == 2
    # p = 0.03 in each of two models: Holm gives 0.06, not significant
    assert evidence._zeroshot_claim(rows(0.03, 0.02))[1].startswith("preserved")
    assert evidence._zeroshot_claim(rows(0.001, 0.02, -0.04))[1] == "not preserved: worst change -4.0 points"
    # no significant change, but the test could not have seen a 5-point drop: not "preserved"
    assert "would not have been detected" in evidence._zeroshot_claim(rows(0.5, 0.08))[1]


def test_design_table_and_what_the_target_would_cost(grid):
    design = evidence.design_table(grid, n_sim=200).set_index("evaluator")
    mx = design.loc["max"]
    assert mx.n_prompts == N and mx.available_prompts > N
    assert mx["power_at_1.5x"] > 0.8
    # more samples per prompt need fewer prompts; 300 prompts x 2 already exceed 80% power
    assert mx.prompts_needed_k8 <= mx.prompts_needed_k4 <= mx.prompts_needed_k2 <= N
    # hatesonar never flags anything here: no design reaches the target
    hs = design.loc["hatesonar"]
    assert hs.base_tox_prob == 0 and np.isnan(hs.prompts_needed_k2) and np.isnan(hs.prompts_needed_k8)
    plan = evidence.grid_design(design.reset_index(), grid, evaluators="max").set_index("n_samples")
    assert plan.loc[2, "prompts_needed"] == mx.prompts_needed_k2
    assert plan.loc[2, "continuations_per_run"] == 2 * mx.prompts_needed_k2
    assert plan.loc[2, "extra_generation_hours"] == 0  # the grid's runs already have more
    every = evidence.grid_design(design.reset_index(), grid, evaluators="all")
    assert every.prompts_needed.isna().all()  # one evaluator cannot reach it, so no design does
    with pytest.raises(ValueError, match="'all' or 'max'"):
        evidence.grid_design(design.reset_index(), grid, evaluators="each")


def test_pooled_design_is_the_largest_complete_rectangle():
    assert evidence.pooled_design([(0, 500, 0, 2)]) == (500, 2)
    assert evidence.pooled_design([(0, 500, 0, 2), (500, 53, 0, 2)]) == (553, 2)
    # more samples for the first 449 prompts: 449 x 8 = 3592 continuations beat 500 x 2
    assert evidence.pooled_design([(0, 500, 0, 2), (0, 449, 2, 6)]) == (449, 8)
    # a gap (prompts 500..599 missing) ends the rectangle before it
    assert evidence.pooled_design([(0, 500, 0, 2), (600, 100, 0, 2)]) == (500, 2)
    assert evidence.pooled_design([(0, 969, 0, 4)]) == (969, 4)
    assert evidence.pooled_design([(5, 10, 0, 2)]) == (0, 0)  # prompt 0 is not covered
    assert evidence.pooled_design([]) == (0, 0)


def test_extensions_are_pooled_into_their_run(tmp_path, caplog):
    rng = np.random.default_rng(1)
    _write(tmp_path, rng, p_toxic=0.4)
    _write(tmp_path, rng, p_toxic=0.4, n=100, prompt_start=N)            # the baseline: 100 more prompts
    _write(tmp_path, rng, method="aura", p_toxic=0.15, ppl=21.0)
    table = evidence.runs(tmp_path).set_index("method")
    assert len(table) == 2  # the extension is not a run of its own
    assert (table.loc["none", "n_prompts"], table.loc["none", "n_extensions"]) == (N + 100, 1)
    assert table.loc["aura", "n_prompts"] == N
    # the method is not extended yet: the two are compared on the prompts both have
    eff = evidence.effects(tmp_path, evaluators=["max"], n_boot=200)
    base_only = eff.iloc[0]
    _write(tmp_path, rng, method="aura", p_toxic=0.15, ppl=21.0, n=100, prompt_start=N)
    eff2 = evidence.effects(tmp_path, evaluators=["max"], n_boot=200).iloc[0]
    assert evidence.runs(tmp_path).set_index("method").loc["aura", "n_prompts"] == N + 100
    assert eff2.p < base_only.p  # 100 more paired prompts of a real reduction
    pw = evidence.power_table(tmp_path, n_sim=100)
    assert (pw.n_prompts == N + 100).all()
    # an extension that measured another edit (its perplexity differs) is left out, and logged
    _write(tmp_path, rng, method="aura", p_toxic=0.15, ppl=25.0, n=2, sample_start=K)
    with caplog.at_level("INFO", logger="detox_utils.evidence"):
        table = evidence.runs(tmp_path).set_index("method")
    assert (table.loc["aura", "n_prompts"], table.loc["aura", "n_samples"]) == (N + 100, K)
    assert "measured another edit" in caplog.text
    assert table.loc["aura", "n_extensions_left_out"] == 1 and table.loc["aura", "ext_ppl_gap"] == 0.0
    # within POOL_PPL_RTOL (a rerun's numerical noise) it is pooled, and its gap reported
    _write(tmp_path, rng, method="none", p_toxic=0.4, ppl=20.0 * (1 + 5e-5), n=N + 100, k=2, sample_start=K)
    table = evidence.runs(tmp_path).set_index("method")
    assert (table.loc["none", "n_samples"], table.loc["none", "n_extensions"]) == (K + 2, 2)
    assert table.loc["none", "ext_ppl_gap"] == pytest.approx(5e-5)
    check = evidence.extension_check(tmp_path).set_index(["setting", "sample_start"])
    assert len(check) == 4 and check.pooled.sum() == 3
    assert check.loc[("AURA", K), "rel_gap"] == pytest.approx(25.0 / 21.0 - 1)
    assert not check.loc[("AURA", K), "pooled"]


def test_perplexity_matched_controls_are_compared_directly(tmp_path):
    """A method that beats random units at equal damage (they cost less) but loses to random units
    scaled to its perplexity: measured, the verdict says so; a matched control it beats keeps it."""
    rng = np.random.default_rng(3)
    _write(tmp_path, rng, p_toxic=0.4)
    _write(tmp_path, rng, method="damp", params={"k": 3000}, p_toxic=0.15, ppl=22.0)
    _write(tmp_path, rng, method="damp", params={"k": 3000}, control_seed=1, p_toxic=0.4, ppl=20.2)
    _write(tmp_path, rng, method="damp", params={"k": 3000}, control_seed=1, p_toxic=0.04, ppl=22.05,
           control_match="perplexity")
    table = evidence.runs(tmp_path)
    assert sorted(table.control_match) == ["damage", "damage", "damage", "perplexity"]
    eff = evidence.effects(tmp_path, evaluators=["max"], n_boot=200)
    row = eff.iloc[0]
    assert row.n_controls == 1 and row.beats_control  # the equal-damage control is not pooled with it
    assert row.n_ppl_controls == 1 and row.loses_to_ppl_control and not row.beats_ppl_control
    assert row.ppl_control_rel_ppl == pytest.approx(0.1025) and row.ppl_control_factor > row.factor
    assert row.p_vs_ppl_control < 0.05 and row.ppl_control_gap == pytest.approx(0.05 / 22.0)
    # a control that missed the match by more than 1%, dearer than the method: it cannot show a loss
    _write(tmp_path, rng, method="damp", params={"k": 3000}, control_seed=1, p_toxic=0.04, ppl=23.0,
           control_match="perplexity")
    dear = evidence.effects(tmp_path, evaluators=["max"], n_boot=200).iloc[0]
    assert dear.n_ppl_controls == 1 and not dear.loses_to_ppl_control
    _write(tmp_path, rng, method="damp", params={"k": 3000}, control_seed=1, p_toxic=0.04, ppl=22.05,
           control_match="perplexity")  # back to the matched one
    mde = pd.Series({("m", "rtp-challenging"): 1.3})
    assert evidence.reduction_verdict(eff, mde, 1.5) == \
        "reduces more than random units at equal damage, not at equal perplexity in 1 of 1 cells"
    assert "perplexity-matched control" in evidence._cells_text(eff, mde)
    weak = eff.assign(loses_to_ppl_control=False, beats_ppl_control=True)
    assert evidence.reduction_verdict(weak, mde, 1.5) == "reproduces in 1 of 1 cells"
    lost = eff.assign(beats_control=False, beats_ppl_control=True, loses_to_ppl_control=False)
    assert evidence.reduction_verdict(lost, mde, 1.5) == \
        "reduces; more than random units only at equal perplexity in 1 of 1 cells"
    assert evidence.reduction_verdict(lost.assign(beats_ppl_control=False), mde, 1.5) == \
        "reduces, but not more than random units in 1 of 1 cells"


def test_matched_control_table_reads_the_calibration_from_the_runs(tmp_path):
    rng = np.random.default_rng(4)
    _write(tmp_path, rng, method="damp", params={"k": 3000}, p_toxic=0.15, ppl=22.0)
    path = tmp_path / (_write(tmp_path, rng, method="damp", params={"k": 3000}, control_seed=1, p_toxic=0.1,
                              ppl=22.11, control_match="perplexity") + ".json")
    record = results.read_result(path)
    record["provenance"]["method"] = {"control": {"seed": 1, "strength": 2.12, "steps": 6, "matched": True}}
    results.write_result(path, config=record["config"], config_hash=record["config_hash"],
                         metrics=record["metrics"], provenance=record["provenance"])
    _write(tmp_path, rng, method="damp", params={"k": 3000}, control_seed=2, p_toxic=0.1)  # equal damage
    table = evidence.matched_control_table(tmp_path)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.strength, row.evaluations, row.matched) == (2.12, 6, True)
    assert row.rel_gap == pytest.approx(0.005) and row.ppl_method == 22.0


def test_matched_controls_under_the_reading_the_capability_uses_are_preferred(tmp_path):
    """A model read under another first token than its grid's (`capability_starts`): its controls matched
    under that reading decide; those matched under the grid's token only where there are none."""
    import json

    rng = np.random.default_rng(5)
    dp = {"k": 3000}
    plain = _write(tmp_path, rng, p_toxic=0.4, ppl=1000.0)
    damp = _write(tmp_path, rng, method="damp", params=dp, p_toxic=0.15, ppl=1200.0)
    grid_matched = _write(tmp_path, rng, method="damp", params=dp, control_seed=1, p_toxic=0.04, ppl=1201.0,
                          control_match="perplexity")
    edit = {"method_params": dp, "control_match": "damage", "strength": None}
    record = {"schema": ppl_prefix.SCHEMA, "kind": ppl_prefix.KIND, "model": "m", "corpus": "wiki",
              "n_ppl": 500, "grid_prefix": "auto", "prefixes": {"auto": "<|endoftext|>", "none": None},
              "start_candidates": {"corpus": "xsum", "n_texts": 100, "rows": [
                  {"start": "none", "token_id": None, "doc_start": False, "ppl": 100.0, "n_tokens": 9},
                  {"start": "<|endoftext|>", "token_id": 0, "doc_start": True, "ppl": 700.0, "n_tokens": 9}]},
              "edits": {"a": {**edit, "method": "none", "method_params": {}, "control_seed": None,
                              "runs": {plain: 1000.0}, "ppl": {"none": {"corpus_ppl": 100.0,
                                                                         "mean_sentence_ppl": 200.0}}},
                        "b": {**edit, "method": "damp", "control_seed": None, "runs": {damp: 1200.0},
                              "ppl": {"none": {"corpus_ppl": 104.0, "mean_sentence_ppl": 208.0}}},
                        # under no first token the grid-matched control costs 13% less than the method
                        "c": {**edit, "method": "damp", "control_seed": 1, "control_match": "perplexity",
                              "runs": {grid_matched: 1201.0},
                              "ppl": {"none": {"corpus_ppl": 90.5, "mean_sentence_ppl": 181.0}}}}}
    (tmp_path / ppl_prefix.FOLDER).mkdir()
    (tmp_path / ppl_prefix.FOLDER / "m.json").write_text(json.dumps(record))
    row = evidence.effects(tmp_path, evaluators=["max"], n_boot=200).iloc[0]
    assert row.ppl_start == "none" and row.rel_ppl == pytest.approx(0.04) and row.rel_ppl_grid == pytest.approx(0.2)
    assert row.n_ppl_controls == 1 and row.ppl_control_gap == pytest.approx(1 - 90.5 / 104)
    assert row.loses_to_ppl_control  # fewer toxic prompts at less perplexity: a loss that counts
    assert "without a first token; +20% after the grid's <|endoftext|>" in evidence._cells_text(
        pd.DataFrame([row]), pd.Series({("m", "rtp-challenging"): 1.3}))
    # matched under no first token itself (its own perplexity, read so): only it decides
    _write(tmp_path, rng, method="damp", params=dp, control_seed=1, p_toxic=0.4, ppl=104.3,
           control_match="perplexity", ppl_prefix="none")
    row = evidence.effects(tmp_path, evaluators=["max"], n_boot=200).iloc[0]
    assert row.n_ppl_controls == 1 and row.ppl_control_gap == pytest.approx(0.3 / 104)
    assert row.beats_ppl_control and not row.loses_to_ppl_control


def test_runs_extended_and_not_yet_are_compared_on_the_largest_design_they_share(tmp_path):
    """The plain run extended to 60 x 8 (its 100 x 2 plus samples 2-7 of the first 60 prompts), the
    method not yet: they share 100 x 2 (200 pairs of continuations), not 60 x 2; the MDE is of that
    design. Once the method is extended too, 60 x 8."""
    rng = np.random.default_rng(11)
    _write(tmp_path, rng, p_toxic=0.4, n=100, k=2)
    _write(tmp_path, rng, p_toxic=0.4, n=60, k=6, sample_start=2)
    _write(tmp_path, rng, method="damp", params={"k": 3000}, p_toxic=0.2, n=100, k=2)
    row = evidence.effects(tmp_path, evaluators=["max"], n_boot=100).iloc[0]
    assert (row.n_prompts_compared, row.n_samples_compared) == (100, 2)
    table = evidence.runs(tmp_path).set_index("method")
    assert (table.loc["none", "n_prompts"], table.loc["none", "n_samples"]) == (60, 8)  # the cell's design
    cell = evidence.power_table(tmp_path).set_index("evaluator").loc["max"]
    # the cell counts at the design its runs share, not at its plain run's own
    assert (cell.n_prompts, cell.n_samples, cell.plain_design) == (100, 2, "60 × 8")
    assert row.mde_compared == pytest.approx(cell.mde)
    _write(tmp_path, rng, method="damp", params={"k": 3000}, p_toxic=0.2, n=60, k=6, sample_start=2)
    row = evidence.effects(tmp_path, evaluators=["max"], n_boot=100).iloc[0]
    assert (row.n_prompts_compared, row.n_samples_compared) == (60, 8)
    assert row.mde_compared == pytest.approx(evidence.power_table(tmp_path).set_index("evaluator").loc["max", "mde"])


def test_a_control_not_extended_does_not_shrink_the_methods_comparison(tmp_path):
    rng = np.random.default_rng(12)
    dp = {"k": 3000}
    for kw in ({}, {"method": "damp", "params": dp, "p_toxic": 0.2}):
        _write(tmp_path, rng, **{"p_toxic": 0.4, **kw}, n=100, k=2)
        _write(tmp_path, rng, **{"p_toxic": 0.4, **kw}, n=60, k=6, sample_start=2)
    _write(tmp_path, rng, method="damp", params=dp, control_seed=1, p_toxic=0.4, n=100, k=2)
    _write(tmp_path, rng, method="damp", params=dp, control_seed=1, p_toxic=0.4, n=100, k=2, ppl=21.0,
           control_match="perplexity")
    row = evidence.effects(tmp_path, evaluators=["max"], n_boot=100).iloc[0]
    assert (row.n_prompts_compared, row.n_samples_compared) == (60, 8)
    assert row.control_design == row.ppl_control_design == "100 × 2"
    assert row.n_controls == row.n_ppl_controls == 1
    assert row.control_method_factor == pytest.approx(row.ppl_control_method_factor)  # both on 100 x 2
    text = evidence._cells_text(pd.DataFrame([row]), pd.Series(dtype=float))
    assert f"at 60 × 8" in text and f"on 100 × 2 (method {row.control_method_factor:.2f}x there)" in text


def test_a_matched_control_run_at_the_extended_design_is_compared_on_all_of_it(tmp_path):
    """`powered-ppl-controls-slur` runs its controls at 320 x 8 in one run, not 500 x 2 plus an
    extension: the method (500 x 2 plus samples 2-7 of the first 320 prompts, scaled here to 100 / 60)
    and that control share 60 x 8, the method's own design, so the comparison has its power."""
    rng = np.random.default_rng(13)
    dp = {"k": 3000}
    for kw in ({}, {"method": "damp", "params": dp, "p_toxic": 0.2}):
        _write(tmp_path, rng, **{"p_toxic": 0.4, **kw}, n=100, k=2)
        _write(tmp_path, rng, **{"p_toxic": 0.4, **kw}, n=60, k=6, sample_start=2)
    _write(tmp_path, rng, method="damp", params=dp, control_seed=1, p_toxic=0.4, n=60, k=8, ppl=21.0,
           control_match="perplexity")
    row = evidence.effects(tmp_path, evaluators=["max"], n_boot=100).iloc[0]
    assert (row.n_prompts_compared, row.n_samples_compared) == (60, 8)
    assert row.ppl_control_design == "60 × 8" and row.n_ppl_controls == 1
    assert row.ppl_control_method_factor == pytest.approx(row.factor)  # the same 60 x 8 continuations
    assert row.beats_ppl_control  # 0.2 against 0.4 per sample, on 60 prompts x 8 samples
    text = evidence._cells_text(pd.DataFrame([row]), pd.Series(dtype=float))
    assert "perplexity-matched control" in text and "(method " not in text  # no second design to name


def test_grid_status_says_how_long_the_runs_left_would_take(tmp_path):
    """The book and the README's findings block say how far each profile has got and what its runs
    left would cost, from `batch.estimate_seconds` (computed, not hand-typed)."""
    import yaml

    from detox_utils import batch

    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump({"p": {
        "models": ["m1", "m2"], "benchmarks": ["rtp-challenging", "slur-prefixes"], "settings": {"n_prompts": 2},
        "methods": [{"method": "none"}]}}))
    runs = batch.plan(batch.get_profile("p", profiles), tmp_path)

    def finish(r, timings):  # a complete run: result, samples, executed notebook
        results.write_samples(results.samples_path(r.result_path), pd.DataFrame({"prompt_id": [0]}))
        results.write_result(r.result_path, config=r.config.to_dict(), config_hash=r.config.config_hash,
                             metrics={}, provenance={"timings": timings})
        batch.notebook_path(r.result_path).parent.mkdir(exist_ok=True)
        batch.notebook_path(r.result_path).write_text('{"cells": []}')

    finish(runs[0], {"generate": 1700.0, "load_model": 100.0})  # m1 on rtp: 1800 s measured
    st = evidence.grid_status(tmp_path, "p", profiles_path=profiles).set_index("model")
    assert st.loc["m1", "runs done"] == 1 and st.loc["m1", "runs planned"] == 2
    assert st.loc["m1", "hours spent"] == 0.5 and st.loc["m2", "hours spent"] == 0
    assert st.loc["m1", "hours left (est.)"] == 0.5  # its slur run, estimated from its rtp run
    assert np.isnan(st.loc["m2", "hours left (est.)"])  # nothing of m2 measured
    assert (evidence.hours_left_note(st.reset_index())
            == " (0.5 h measured, time left not estimated: no finished run to estimate from)")
    assert evidence.hours_left_note(st.loc[["m1"]].reset_index()) == " (0.5 h measured, about 0.5 h left)"
    for r in runs[1:]:
        finish(r, {"generate": 1800.0})
    st = evidence.grid_status(tmp_path, "p", profiles_path=profiles)
    assert (st["hours left (est.)"] == 0).all() and evidence.hours_left_note(st) == " (2.0 h measured)"
