"""The powered profile is sized in code: on the committed pilot runs (the default grid's baselines), its
design detects a 1.5x reduction of toxicity probability (max over evaluators) with >= 80% power."""
from __future__ import annotations

import pytest

from detox_utils import batch, power, report, results
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
