"""The registry declares each method once; the config, the interventions and the report read it."""
from __future__ import annotations

import pytest

from detox_utils import config, data, interventions, registry, report


def test_every_method_is_declared_once_and_implemented():
    assert tuple(registry.METHODS) == config.METHODS
    assert set(registry.METHODS) == set(interventions.METHODS)
    for name, spec in registry.METHODS.items():
        assert config.METHOD_PARAMS[name] == spec.defaults
        assert set(spec.shown) <= set(spec.params)
        for key, param in spec.params.items():
            assert param.ok(param.default), (name, key)  # every default passes its own check


def test_config_uses_the_data_table():
    assert config.BENCHMARKS == data.BENCHMARKS and config.PPL_CORPORA == data.PERPLEXITY_CORPORA


@pytest.mark.parametrize("method,params,pre,seed,label", [
    ("damp", {"k": 3000, "alpha": 0.5}, False, None, "Damp k=3000 α=0.5"),
    ("aura", {"auroc_threshold": 0.5}, True, None, "AURA + pre-prompt"),
    ("aura", {"auroc_threshold": 0.55}, False, None, "AURA auroc_threshold=0.55"),
    ("trne", {"n_layers": 3, "rho": 0.2, "ridge": 0.01}, False, 1, "TRNE ρ=0.2 (random control, seed 1)"),
    ("meow2x", {"n_layers": 3, "k_neurons": 512, "scale": 0.0}, False, None, "Meow2X s=0.0"),
    ("none", {}, False, None, "No intervention"),
])
def test_labels(method, params, pre, seed, label):
    assert registry.method_label(method, params, pre, seed) == label
    if seed is None:
        assert report.method_label(method, params, pre) == label
