"""The validated, frozen configuration of one evaluation run.

A papermill ``parameters`` cell holds plain values; the next cell calls `EvalConfig.from_params` on
them. Every field is checked here, so a bad value fails at once with the parameter's name and what is
allowed, not twenty minutes later inside a forward pass.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import registry
from ._io import stable_hash
from .data import BENCHMARKS, PERPLEXITY_CORPORA as PPL_CORPORA

METHODS = tuple(registry.METHODS)
OFFLINE_EVALUATORS = registry.OFFLINE_EVALUATORS
# Every evaluator name `detox_utils.evaluators.load` knows. Detoxify needs a checkpoint file, so a run
# naming it still fails at load without one.
EVALUATORS = tuple(registry.EVALUATORS)
# Notebook parameters that are not config fields: where to write, the device, CPU threads, progress bars.
NOTEBOOK_EXTRAS = ("result_dir", "device", "threads", "progress")
DTYPES = ("float32", "bfloat16", "float16")

# Fields added after results were published enter the config hash only when they differ from these
# defaults, so every published result keeps its hash (and a rerun of its grid still skips it).
_HASHED_IF_NOT = {"dtype": "float32", "control_seed": None, "ppl_prefix": "auto", "n_zeroshot": 0,
                  "zeroshot_tasks": list(registry.ZEROSHOT_TASKS), "prompt_start": 0, "sample_start": 0,
                  "control_match": "damage"}
PPL_PREFIXES = ("auto", "doc-start", "none")
# what a random control is matched to: the method's damage (its factors on as many random units, or
# an edit of the same norm) or, by scaling that control, the method's corpus perplexity
CONTROL_MATCHES = ("damage", "perplexity")
ZEROSHOT_TASKS = registry.ZEROSHOT_TASKS
MAX_NEW_TOKENS = 512


# what an extension may differ in from the run it extends (the rest of the config must be equal)
EXTENSION_FIELDS = ("prompt_start", "sample_start", "n_prompts", "n_samples", "n_zeroshot")
# an extension measures its run's edit only if their corpus perplexities agree to this (relative):
# the plain model rerun on another machine moved by 4e-6 (SmolLM2, 246.228 vs 246.229); an AURA refit
# on another CPU moved by 4e-5 to 2.6e-3 (AUROC ranks of near-tied units), so only refits within 1e-4
# are taken as the same edit (`experiment.check_extension` before generating, `evidence.runs` pooling).
POOL_PPL_RTOL = 1e-4


def ppl_gap(ppl: float, ref: float) -> float:
    """|ppl / ref - 1|, the relative perplexity gap that `POOL_PPL_RTOL` bounds; inf where either is
    not a positive finite number."""
    if not (math.isfinite(ppl) and math.isfinite(ref) and ref > 0):
        return math.inf
    return abs(ppl / ref - 1.0)


def extension_key(config: Mapping[str, Any]) -> str:
    """The identity a run shares with its extensions: its config (as stored in a result) without
    `EXTENSION_FIELDS`, and without the fields at their hash-neutral default."""
    return json.dumps({k: v for k, v in _hash_dict(dict(config)).items() if k not in EXTENSION_FIELDS},
                      sort_keys=True, default=str)


def _hash_dict(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not (k in _HASHED_IF_NOT and v == _HASHED_IF_NOT[k])}


def _torch_dtype(cfg: Any):
    """The ``torch.dtype`` named by a config's ``dtype`` field (one of `DTYPES`)."""
    import torch

    return getattr(torch, cfg.dtype)


def resolve_device(device: Any) -> str:
    """The torch device a run uses: ``"auto"`` is ``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``.

    The device is a runtime choice, not part of a run's identity (its config hash); the result's
    provenance records it. Raises ConfigError for an unknown or unavailable device.
    """
    import torch

    allowed = "auto, cpu, cuda, cuda:N, mps"
    _check(isinstance(device, str) and bool(device), "device", device, allowed)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"parameter 'device' = {device!r} is not allowed; allowed: {allowed}") from None
    _check(parsed.type in ("cpu", "cuda", "mps"), "device", device, allowed)
    if parsed.type == "cuda":
        n = torch.cuda.device_count()
        _check(n > 0 and (parsed.index or 0) < n, "device", device,
               f"{allowed}; this machine has {n} CUDA device(s)" + (" (use cpu or auto)" if not n else ""))
    if parsed.type == "mps":
        _check(torch.backends.mps.is_available(), "device", device, f"{allowed}; MPS is not available here")
    return str(parsed)


def check_threads(threads: Any) -> int:
    """``threads`` if it is an integer >= 0 (0: torch's default), else a `ConfigError` naming it."""
    _check(isinstance(threads, int) and not isinstance(threads, bool) and threads >= 0, "threads", threads,
           "an integer >= 0 (0: torch's default, one thread per core)")
    return threads


def set_threads(threads: Any) -> int:
    """Set torch's intra-op CPU threads for this process: ``0`` keeps torch's default (one per core),
    ``n >= 1`` uses ``n`` (e.g. one each for ``batch --jobs 2`` on 2 cores, so two kernels do not
    oversubscribe the cores). Like the device, a runtime choice outside the config hash; the numbers a
    run computes do not depend on it beyond float reduction order. Returns the threads now in use."""
    import torch

    if check_threads(threads):
        torch.set_num_threads(threads)
    return torch.get_num_threads()

# Free parameters of each method with their defaults, and what each may be (`detox_utils.registry`).
METHOD_PARAMS: dict[str, dict[str, Any]] = {name: spec.defaults for name, spec in registry.METHODS.items()}
METHOD_PARAM_RULES: dict[str, dict[str, tuple[Any, str]]] = {
    name: {k: (p.ok, p.allowed) for k, p in spec.params.items()} for name, spec in registry.METHODS.items()}


class FrozenParams(dict):
    """A read-only dict: `EvalConfig.method_params`, so that a frozen config cannot be changed (and its
    hash go stale) through it. JSON, ``dict(...)`` and ``**`` see a plain dict; mutating it raises."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("EvalConfig.method_params is read-only; build a new config "
                        "(dataclasses.replace(cfg, method_params={...}))")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return (FrozenParams, (dict(self),))

    def __copy__(self) -> "FrozenParams":
        return self

    def __deepcopy__(self, memo: dict) -> "FrozenParams":
        return self


class ConfigError(ValueError):
    """A parameter has a value that is not allowed; the message names it and what is allowed."""


def _check(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"parameter {name!r} = {value!r} is not allowed; allowed: {allowed}")


@dataclass(frozen=True)
class EvalConfig:
    """One cell of the experiment grid: a model, a method with its parameters, a benchmark, sizes."""

    model: str = "smollm2-135m"
    method: str = "none"
    method_params: Mapping[str, Any] = field(default_factory=dict)
    benchmark: str = "rtp-challenging"
    n_prompts: int = 50
    n_samples: int = 25
    max_new_tokens: int = 20
    top_p: float = 0.9
    temperature: float = 1.0
    preprompt: bool = False
    chat_template: bool = False
    evaluators: tuple[str, ...] = ("tox-block", "alt-profanity-check", "hatesonar")
    threshold: float = 0.5
    n_contrast: int = 500
    ppl_corpus: str = "xsum"
    n_ppl: int = 200
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 64
    dtype: str = "float32"
    control_seed: int | None = None
    ppl_prefix: str = "auto"
    n_zeroshot: int = 0
    zeroshot_tasks: tuple[str, ...] = ZEROSHOT_TASKS
    # an extension of a run: prompts prompt_start .. prompt_start + n_prompts - 1 of the benchmark's
    # nested sample and samples sample_start .. sample_start + n_samples - 1 of each, drawn from the
    # same (seed, prompt, sample) streams as one larger run (`detox_utils.evidence` pools them)
    prompt_start: int = 0
    sample_start: int = 0
    control_match: str = "damage"

    def __post_init__(self) -> None:
        _check(isinstance(self.model, str) and bool(self.model), "model", self.model,
               "a packaged model name (detox_utils.models.available()), a hub id or a local folder")
        _check(self.control_seed is None or (isinstance(self.control_seed, int)
                                             and not isinstance(self.control_seed, bool)
                                             and self.control_seed >= 0),
               "control_seed", self.control_seed,
               "None (the localized units) or an integer >= 0 (a random-unit control with that seed)")
        _check(self.control_seed is None or self.method != "none", "control_seed", self.control_seed,
               "None for method 'none' (a random control needs an intervention to mimic)")
        _check(self.control_match in CONTROL_MATCHES, "control_match", self.control_match,
               "damage (the method's factors on as many random units, or a random edit of the same norm) or "
               "perplexity (that control scaled until its corpus perplexity matches the method's)")
        _check(self.control_match == "damage" or self.control_seed is not None, "control_match",
               self.control_match, "damage unless control_seed is set (only a random control is matched)")
        _check(self.ppl_prefix in PPL_PREFIXES, "ppl_prefix", self.ppl_prefix,
               "auto (BOS else EOS, the first grid's convention), doc-start (the model's document-start "
               "token, never a chat-turn token), none")
        _check(isinstance(self.n_zeroshot, int) and not isinstance(self.n_zeroshot, bool)
               and self.n_zeroshot >= 0, "n_zeroshot", self.n_zeroshot,
               "an integer >= 0 (items per zero-shot task; 0 skips zero-shot scoring)")
        tasks = (tuple(t.strip() for t in self.zeroshot_tasks.split(",") if t.strip())
                 if isinstance(self.zeroshot_tasks, str) else tuple(self.zeroshot_tasks))
        _check(bool(tasks) and all(t in ZEROSHOT_TASKS for t in tasks), "zeroshot_tasks",
               self.zeroshot_tasks, "a non-empty list of " + ", ".join(ZEROSHOT_TASKS))
        object.__setattr__(self, "zeroshot_tasks", tasks)
        _check(self.max_new_tokens <= MAX_NEW_TOKENS if isinstance(self.max_new_tokens, int) else True,
               "max_new_tokens", self.max_new_tokens, f"an integer in [1, {MAX_NEW_TOKENS}]")
        _check(self.method in METHODS, "method", self.method, ", ".join(METHODS))
        _check(isinstance(self.method_params, Mapping), "method_params", self.method_params,
               "a mapping of parameter name to value")
        allowed = METHOD_PARAMS[self.method]
        unknown = sorted(set(self.method_params) - set(allowed))
        _check(not unknown, "method_params", dict(self.method_params),
               f"for method {self.method!r}: {sorted(allowed) or 'no parameters'} (unknown: {unknown})")
        _check(self.benchmark in BENCHMARKS, "benchmark", self.benchmark, ", ".join(BENCHMARKS))
        for name in ("n_prompts", "n_samples", "max_new_tokens", "n_contrast", "n_ppl", "batch_size"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   name, value, "an integer >= 1")
        for name in ("prompt_start", "sample_start"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, name, value,
                   "an integer >= 0 (0: a run of its own; > 0: an extension of the run that starts at 0)")
        _check(self.n_zeroshot == 0 or not self.is_extension, "n_zeroshot", self.n_zeroshot,
               "0 for an extension (prompt_start or sample_start > 0): its run measures the zero-shot cost")
        _check(isinstance(self.n_boot, int) and self.n_boot >= 0, "n_boot", self.n_boot,
               "an integer >= 0 (0 disables bootstrap intervals)")
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _check(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p", self.top_p,
               "a number in (0, 1]")
        _check(isinstance(self.temperature, (int, float)) and self.temperature > 0, "temperature",
               self.temperature, "a number > 0")
        _check(isinstance(self.threshold, (int, float)) and 0 < self.threshold < 1, "threshold",
               self.threshold, "a number in (0, 1)")
        _check(self.ppl_corpus in PPL_CORPORA, "ppl_corpus", self.ppl_corpus, ", ".join(PPL_CORPORA))
        _check(isinstance(self.preprompt, bool), "preprompt", self.preprompt, "true or false")
        _check(isinstance(self.chat_template, bool), "chat_template", self.chat_template,
               "true or false")
        _check(not isinstance(self.evaluators, (str, bytes, Mapping)) and len(self.evaluators) >= 1
               and all(isinstance(e, str) for e in self.evaluators),
               "evaluators", self.evaluators, "a non-empty list of evaluator names: " + ", ".join(EVALUATORS))
        unknown_ev = [e for e in self.evaluators if e not in EVALUATORS]
        _check(not unknown_ev, "evaluators", list(self.evaluators),
               f"names from {', '.join(EVALUATORS)} (unknown: {unknown_ev})")
        _check(len(set(self.evaluators)) == len(self.evaluators), "evaluators", list(self.evaluators),
               "each evaluator at most once")
        _check(self.dtype in DTYPES, "dtype", self.dtype, ", ".join(DTYPES) + " (bfloat16 on a GPU)")
        merged = {**allowed, **dict(self.method_params)}
        for pname, (ok, what) in METHOD_PARAM_RULES.get(self.method, {}).items():
            _check(ok(merged[pname]), f"method_params.{pname}", merged[pname], f"{what} for {self.method}")
        object.__setattr__(self, "method_params", FrozenParams(merged))
        object.__setattr__(self, "evaluators", tuple(self.evaluators))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "EvalConfig":
        """Build from a papermill parameter dict; unknown keys are refused with the allowed names."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown}; allowed: {sorted(names)}")
        values = dict(params)
        if "evaluators" in values and isinstance(values["evaluators"], str):
            values["evaluators"] = tuple(e.strip() for e in values["evaluators"].split(",") if e)
        return cls(**values)

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> "EvalConfig":
        """Build from the variables of a notebook's parameters cell (``globals()``)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls.from_params({n: namespace[n] for n in names if n in namespace})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method_params"] = dict(self.method_params)
        d["evaluators"] = list(self.evaluators)
        d["zeroshot_tasks"] = list(self.zeroshot_tasks)
        return d

    @property
    def config_hash(self) -> str:
        """Stable identity of the run: the same config always gets the same hash."""
        return stable_hash(_hash_dict(self.to_dict()))

    torch_dtype = property(_torch_dtype)

    @property
    def is_extension(self) -> bool:
        """More prompts or samples for a run that starts at prompt 0, sample 0 (pooled by the analysis)."""
        return self.prompt_start > 0 or self.sample_start > 0

    def fit_key(self) -> dict[str, Any]:
        """What the fitted intervention depends on (not the benchmark, sampling or sizes of eval)."""
        return _hash_dict({"model": self.model, "method": self.method,
                           "params": dict(self.method_params), "n_contrast": self.n_contrast,
                           "seed": self.seed, "dtype": self.dtype})


SCORE_NAMES = ("auroc", "cohens_d", "mean_diff", "average_precision")
_BOUNDED_SCORES = ("auroc", "average_precision")  # scores in [0, 1]; the others are unbounded
POOLINGS = ("max", "mean", "last")
REDUCES = ("mean", "max", "top_k_mean", "frac_above")


@dataclass(frozen=True)
class LocalizeConfig:
    """Parameters of the localization notebook (`notebooks/localize.ipynb`)."""

    model: str = "smollm2-135m"
    sites: tuple[str, ...] = ("pre", "up", "post", "out")
    pooling: str = "max"
    score: str = "auroc"
    reduce: str = "frac_above"
    threshold: float = 0.6
    n_toxic: int = 400
    n_neutral: int = 400
    max_length: int = 128
    batch_size: int = 16
    n_boot: int = 100
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _check(isinstance(self.model, str) and bool(self.model), "model", self.model,
               "a packaged model name, a hub id or a local folder")
        sites = (self.sites,) if isinstance(self.sites, str) else tuple(self.sites)
        _check(bool(sites) and all(s in ("pre", "up", "post", "out") for s in sites), "sites",
               self.sites, "a non-empty list of pre, up (GLU models), post, out")
        object.__setattr__(self, "sites", sites)
        _check(self.pooling in POOLINGS, "pooling", self.pooling, ", ".join(POOLINGS))
        _check(self.score in SCORE_NAMES, "score", self.score, ", ".join(SCORE_NAMES))
        _check(self.reduce in REDUCES, "reduce", self.reduce, ", ".join(REDUCES))
        bounded = self.score in _BOUNDED_SCORES
        _check(isinstance(self.threshold, (int, float)) and not isinstance(self.threshold, bool)
               and (0 < self.threshold < 1 if bounded else math.isfinite(self.threshold)),
               "threshold", self.threshold,
               f"a number in (0, 1) for score {self.score!r} (its values lie in [0, 1])" if bounded
               else f"a finite number for score {self.score!r}")
        for name in ("n_toxic", "n_neutral", "max_length", "batch_size"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 2, name,
                   value, "an integer >= 2")
        _check(isinstance(self.n_boot, int) and self.n_boot >= 2, "n_boot", self.n_boot,
               "an integer >= 2")
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        _check(self.dtype in DTYPES, "dtype", self.dtype, ", ".join(DTYPES) + " (bfloat16 on a GPU)")

    @classmethod
    def from_namespace(cls, namespace: Mapping[str, Any]) -> "LocalizeConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: namespace[n] for n in names if n in namespace})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sites"] = list(self.sites)
        return d

    @property
    def config_hash(self) -> str:
        return stable_hash(_hash_dict(self.to_dict()))

    torch_dtype = property(_torch_dtype)


def check_result_dir(path: Any, name: str = "result_dir", create: bool = True):
    """The folder a run writes to, checked before any model is loaded: a folder (created with its
    parents when missing and ``create``) that this process can write. ConfigError, naming ``name``, for
    a file, a folder that cannot be created, or one that cannot be written. Returns it as a Path."""
    import os
    import tempfile
    from pathlib import Path

    allowed = "a folder this process can write (created when missing)"
    _check(isinstance(path, (str, os.PathLike)) and bool(os.fspath(path)), name, path, allowed)
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"parameter {name!r} = {str(path)!r} is a file, not a folder; allowed: {allowed}")
    if not create and not folder.exists():
        parent = next((p for p in folder.parents if p.exists()), Path("."))
        if not parent.is_dir():
            raise ConfigError(f"parameter {name!r} = {str(path)!r} is inside {str(parent)!r}, a file; "
                              f"allowed: {allowed}")
        folder = parent  # nothing is created: check that the folder could be
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"parameter {name!r} = {str(path)!r}: the folder cannot be created "
                          f"({err.strerror or err}); allowed: {allowed}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"parameter {name!r} = {str(path)!r}: the folder cannot be written "
                          f"({err.strerror or err}); allowed: {allowed}") from None
    return Path(path).expanduser()


def injected_parameters(namespace: Mapping[str, Any]) -> list[str]:
    """The names papermill injected into this kernel (``-p NAME VALUE``), read from the IPython input
    history (``In``) of the ``injected-parameters`` cell papermill inserts: its source starts with the
    line ``# Parameters``. Empty outside papermill (run by hand, no such cell)."""
    import ast

    history = namespace.get("In")
    if not isinstance(history, list):
        return []
    names: list[str] = []
    for source in history:
        if not isinstance(source, str) or source.split("\n", 1)[0].strip() != "# Parameters":
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            names += [t.id for t in targets if isinstance(t, ast.Name) and t.id not in names]
    return names


def check_injected_parameters(namespace: Mapping[str, Any], cls: type = None,
                              extra: tuple[str, ...] = NOTEBOOK_EXTRAS) -> None:
    """Refuse parameters papermill injected that the notebook does not know (a typo such as ``-p n_promts
    1``: papermill only warns, and the default would be used). Call in the config cell with
    ``globals()``; known names are the fields of ``cls`` (default `EvalConfig`) plus ``extra``.
    ConfigError names the unknown parameters and the allowed ones."""
    cls = EvalConfig if cls is None else cls
    allowed = {f.name for f in dataclasses.fields(cls)} | set(extra)
    unknown = [n for n in injected_parameters(namespace) if n not in allowed]
    if unknown:
        import difflib

        hints = {n: difflib.get_close_matches(n, sorted(allowed), n=1) for n in unknown}
        did = "; ".join(f"{n!r}: did you mean {h[0]!r}?" for n, h in hints.items() if h)
        raise ConfigError(f"unknown parameter(s) {unknown} given to the notebook (papermill -p)"
                          f"{' (' + did + ')' if did else ''}; allowed: {sorted(allowed)}")
