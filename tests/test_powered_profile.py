"""The powered profile is sized in code: on the committed pilot runs (the default grid's baselines), its
design detects a 1.5x reduction of toxicity probability (max over evaluators) with >= 80% power."""
from __future__ import annotations

import pytest

from detox_utils import batch, evidence, power, report, results
from detox_utils._io import REPO_ROOT

PILOT = REPO_ROOT / "results" / "default"  # the first grid: its baselines are the pilot


def test_powered_design_reaches_80_percent_power_on_every_pilot_cell():
    profile = batch.get_profile("powered")
    n, k = profile["settings"]["n_prompts"], profile["settings"]["n_samples"]
    table = report.runs(PILOT)
    base = table[(table.method == "none") & (~table.preprompt) & (table.evaluator == "max")]
    assert len(base) == 4
    for row in base.itertuples():
        pilot = power.pilot_from_samples(results.load_samples(PILOT, row.config_hash))
        assert power.power_tox_prob(pilot, n, k, 1.5, n_sim=1000) >= 0.8, (row.model, row.benchmark)
        # and the old design could not: the reason this profile exists
        assert power.power_tox_prob(pilot, 25, 4, 1.5, n_sim=1000) < 0.5


@pytest.mark.parametrize("benchmark,available", [("rtp-challenging", 693), ("slur-prefixes", 1885)])
def test_powered_design_fits_the_benchmarks(benchmark, available):
    profile = batch.get_profile("powered")
    assert benchmark in profile["benchmarks"]
    assert profile["settings"]["n_prompts"] <= available


def _designs(names) -> dict[tuple[str, str], tuple[int, int]]:
    """(model, benchmark) -> the (prompts, samples) design the profiles ``names`` bring a cell to,
    the powered grid's runs pooled with their extensions."""
    parts: dict[tuple[str, str], set] = {}
    for name in ("powered", *names):
        for c in batch.expand(batch.get_profile(name)):
            parts.setdefault((c.model, c.benchmark), set()).add(
                (c.prompt_start, c.n_prompts, c.sample_start, c.n_samples))
    return {cell: evidence.pooled_design(sorted(p)) for cell, p in parts.items()}


def test_perplexity_matched_controls_run_at_their_methods_extended_design():
    # a control at a smaller design than its method's would cut their comparison to the control's power
    extended = _designs(evidence.EXTENSIONS)
    for name in evidence.PPL_CONTROLS:
        for c in batch.expand(batch.get_profile(name)):
            assert c.control_match == "perplexity" and c.control_seed is not None
            assert (c.prompt_start, c.sample_start) == (0, 0), name
            assert (c.n_prompts, c.n_samples) == extended[(c.model, c.benchmark)], (name, c.model, c.benchmark)
