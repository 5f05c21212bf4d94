"""Each method declared once: its label, defaults, value checks and the parameters a table shows; each
evaluator (how it is built, its package, what it needs); and the zero-shot task names. Torch-free, so the config can check a run before any model is loaded, and
the report can label it without importing the pipeline.

Where the other concepts are declared: data sets and benchmarks in `detox_utils.data.DATASETS` (by
role), packaged models in `detox_utils.packaged.PACKAGED`,
architectures in `detox_utils.archs.ARCHS`, experiment grids in ``profiles.yaml``.
To add a method: one `MethodSpec` here, naming its class (with its fit recipe, ``_fit``) in a module of
`detox_utils.interventions`; `detox_utils.interventions.METHODS` is built from this table. To add an evaluator: one `EvaluatorSpec` here, plus
its class in `detox_utils.evaluators`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


def _int_at_least(least: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least


def _number_in(ok: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and ok(float(v))


@dataclass(frozen=True)
class Param:
    """A free parameter of a method: its default, a check of its value and what is allowed (in words)."""

    default: Any
    ok: Callable[[Any], bool]
    allowed: str
    symbol: str = ""  # how a table shows it (e.g. "α"); "" = its name


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    impl: str  # its class, "module:Class" in `detox_utils.interventions` (with its fit recipe, ``_fit``)
    params: Mapping[str, Param] = field(default_factory=dict)
    shown: tuple[str, ...] = ()  # the parameters that tell its settings apart in a table

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}


_DAMPENING = "a number in [0, 1] (a dampening)"

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("none", "No intervention", "base:NoIntervention"),
    MethodSpec("aura", "AURA", "aura:Aura", {"auroc_threshold": Param(0.5, _number_in(lambda x: 0.5 <= x < 1),
                                                          "a number in [0.5, 1)")},
               shown=("auroc_threshold",)),
    MethodSpec("det0", "Det0", "aura:Det0", {"k": Param(1000, _int_at_least(1), "an integer >= 1 (units to zero)")},
               shown=("k",)),
    MethodSpec("damp", "Damp", "aura:Damp", {"k": Param(1000, _int_at_least(1), "an integer >= 1 (units to dampen)"),
                                "alpha": Param(0.5, _number_in(lambda x: 0 <= x <= 1), _DAMPENING, "α")},
               shown=("k", "alpha")),
    MethodSpec("meow2x", "Meow2X", "meow2x:Meow2X", {"n_layers": Param(3, _int_at_least(1), "an integer >= 1"),
                                    "k_neurons": Param(256, _int_at_least(1), "an integer >= 1"),
                                    "scale": Param(0.5, _number_in(lambda x: 0 <= x <= 1), _DAMPENING, "s")},
               shown=("scale",)),
    MethodSpec("trne", "TRNE", "trne:Trne", {"n_layers": Param(3, _int_at_least(1), "an integer >= 1"),
                                "rho": Param(0.1, _number_in(lambda x: 0 < x <= 1),
                                             "a number in (0, 1] (||delta||_F / ||W||_F)", "ρ"),
                                "ridge": Param(1e-2, _number_in(lambda x: 0 <= x < float("inf")),
                                               "a finite number >= 0")},
               shown=("rho",)),
)}

# zero-shot task -> its curated data set (a `capability` entry of `detox_utils.data.DATASETS`)
ZEROSHOT: dict[str, str] = {"piqa": "piqa", "arc_easy": "arc-easy", "hellaswag": "hellaswag"}
ZEROSHOT_TASKS: tuple[str, ...] = tuple(ZEROSHOT)


@dataclass(frozen=True)
class EvaluatorSpec:
    """A toxicity evaluator: its name, the `detox_utils.evaluators` attribute that builds it (a class or
    ``Class.constructor``), the PyPI distribution whose version each result records, and what it needs
    before it loads ("" = nothing: its package ships every file, it works offline)."""

    name: str
    factory: str
    package: str
    needs: str = ""

    @property
    def offline(self) -> bool:
        return not self.needs


EVALUATORS: dict[str, EvaluatorSpec] = {spec.name: spec for spec in (
    EvaluatorSpec("tox-block", "BiLSTMEvaluator.tox_block", "tox-block"),
    EvaluatorSpec("toxic-comment-classifier", "BiLSTMEvaluator.toxic_comment_classifier",
                  "toxic-comment-classifier"),
    EvaluatorSpec("alt-profanity-check", "ProfanityCheckEvaluator", "alt-profanity-check"),
    EvaluatorSpec("hatesonar", "HateSonarEvaluator", "hatesonar"),
    EvaluatorSpec("detoxify", "DetoxifyEvaluator", "detoxify",
                  needs="a Detoxify checkpoint file: load('detoxify', checkpoint=PATH) or "
                        "$DETOXIFY_CHECKPOINT=PATH; offline also a folder with the model's Hugging Face "
                        "config and tokenizer: huggingface_config_path=DIR or $DETOXIFY_CONFIG=DIR"),
)}
OFFLINE_EVALUATORS: tuple[str, ...] = tuple(n for n, s in EVALUATORS.items() if s.offline)


def method_label(method: str, params: Mapping[str, Any], preprompt: bool = False,
                 control_seed: int | None = None) -> str:
    """A short human label, e.g. ``Damp k=3000 α=0.5``, ``AURA + pre-prompt`` or
    ``TRNE ρ=0.2 (random control, seed 1)``. A shown parameter at its default is left out for AURA
    (its threshold 0.5 is the paper's rule)."""
    spec = METHODS.get(method)
    if spec is None:
        return method
    parts = [spec.label]
    for key in spec.shown:
        if key in params and not (method == "aura" and params[key] == spec.params[key].default):
            parts.append(f"{spec.params[key].symbol or key}={params[key]}")
    label = " ".join(parts)
    if control_seed is not None:
        label += f" (random control, seed {control_seed})"
    return label + (" + pre-prompt" if preprompt else "")
