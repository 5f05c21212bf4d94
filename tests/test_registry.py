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


def test_every_evaluator_is_declared_once_and_buildable():
    from detox_utils import evaluators, results

    assert config.EVALUATORS == tuple(registry.EVALUATORS) == tuple(evaluators.available())
    assert config.OFFLINE_EVALUATORS == evaluators.OFFLINE == ("tox-block", "toxic-comment-classifier",
                                                              "alt-profanity-check", "hatesonar")
    for name, spec in registry.EVALUATORS.items():
        factory = evaluators
        for attr in spec.factory.split("."):
            factory = getattr(factory, attr)
        assert callable(factory), name
        assert spec.package in results.TRACKED_PACKAGES
        assert (evaluators.requirements()[name] == "nothing: packaged, works offline") == spec.offline
    with pytest.raises(ValueError, match="unknown evaluator 'perspective'; available: tox-block, "):
        evaluators.load("perspective")


def test_method_classes_come_from_the_registry():
    for name, spec in registry.METHODS.items():
        cls = interventions.METHODS[name]
        assert spec.impl.endswith(":" + cls.__name__) and cls.name == name
    bad = registry.MethodSpec("aura2", "AURA 2", "aura:Aura")
    with pytest.raises(TypeError, match="registry method 'aura2' names aura:Aura, whose name is 'aura'"):
        interventions.methods._implementation(bad)


def test_every_packaged_model_is_declared_once_and_tracked():
    import subprocess
    import sys

    from detox_utils import models, packaged, results

    assert models.PACKAGED is packaged.PACKAGED is registry.PACKAGED
    for name, spec in registry.PACKAGED.items():
        assert spec.name == name and spec.packages
        assert set(spec.packages) <= set(results.TRACKED_PACKAGES), name  # versions in every provenance
    code = "import sys, detox_utils.registry, detox_utils.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the declarations load without the pipeline


def test_config_uses_the_data_table():
    assert config.BENCHMARKS == data.BENCHMARKS and config.PPL_CORPORA == data.PERPLEXITY_CORPORA
    assert config.ZEROSHOT_TASKS == tuple(registry.ZEROSHOT)
    for task, dataset in registry.ZEROSHOT.items():
        assert data.DATASETS[dataset].role == "capability", task


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
