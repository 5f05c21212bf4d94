"""The steps of one evaluation run, as the evaluation notebook calls them.

Each function is one step (fit, generate, score, measure, write) so the notebook reads as the
protocol; the batch runner executes that notebook once per grid cell. Fitted interventions are cached
on disk keyed by what they depend on (model, method, parameters, contrast data, seed), so the runs of a
grid that share a method reuse one localization.
"""
from __future__ import annotations

import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from . import data, evaluators, generation, interventions, metrics, models, results
from ._io import (CacheIntegrityError, atomic_path, cache_dir, compute_once, compute_once_file, stable_hash,
                  verify_checksum, write_checksum)
from .config import EvalConfig

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _evaluator(name: str) -> evaluators.Evaluator:
    """Each evaluator is loaded once per process (scoring and provenance share it)."""
    return evaluators.load(name)


def fit_method(cfg: EvalConfig, lm: models.LoadedModel, progress: bool = True,
               result_dir: str | Path | None = None, publish: bool = True):
    """The fitted intervention for ``cfg``; with ``cfg.control_seed`` set, its random-unit control
    (`interventions.random_control`).

    ``result_dir``: the grid's result folder, whose fits are published in `results.fits_folder`. A fit
    found there (checked against its sha256 record) is used as it is; otherwise the machine's cache, else a
    new fit, which is then published there (unless ``publish`` is false: `detox_utils.export` reads a
    grid's fits and never writes into it). A fit recomputed on another CPU can move a unit at a
    selection boundary (`detox_utils.verify.compare_fits`), so a published fit is what keeps every run
    of a grid, and every rerun, on one fit. An extension (``cfg.is_extension``) reads a published fit
    but never publishes one: where its run's fit was not published, a refit here need not be it."""
    method = _fitted(cfg, lm, progress, None if result_dir is None else results.fits_folder(result_dir),
                     publish=publish and not cfg.is_extension)
    if cfg.control_seed is not None and cfg.control_match == "perplexity":
        return _matched_control(cfg, lm, method)
    if cfg.control_seed is not None:
        return interventions.random_control(method, cfg.control_seed)
    return method


# a control is calibrated on the run's whole perplexity corpus (`control_match="perplexity"`): on the
# first 50 of 500 wiki sentences a SmolLM2 Damp control matched to 0.7% came out 6.5% cheaper on all
# 500, since the damage of a few critical units falls on a few texts
MATCH_VERSION = 2  # bump when `interventions.matched_control` changes: cached strengths are then redone


def _matched_control(cfg: EvalConfig, lm: models.LoadedModel, method):
    """The random control of ``method`` scaled to the method's corpus perplexity on the run's own
    perplexity texts (``cfg.ppl_corpus``, ``cfg.n_ppl``; `interventions.matched_control`); the strength
    found is cached on disk, keyed by the edited weights, the seed and the calibration settings."""
    import json

    from .activations import weight_fingerprint
    from ._io import atomic_write_json

    texts = data.perplexity_texts(cfg.ppl_corpus, n=cfg.n_ppl)

    def cost(m) -> float:
        with m.apply(lm, fold=True):
            return float(metrics.perplexity(lm, texts, prefix=cfg.ppl_prefix, progress=False)["corpus_ppl"])

    with method.apply(lm, fold=True):
        edit = weight_fingerprint(lm.model)
    key = stable_hash({"edit": edit, "seed": cfg.control_seed, "dtype": cfg.dtype, "version": MATCH_VERSION,
                       "calibration": [cfg.ppl_corpus, len(texts), cfg.ppl_prefix]})
    path = cache_dir("controls") / f"{lm.name.replace('/', '--')}-{key}.json"

    def read(p: Path):
        try:
            blob = json.loads(p.read_text())
            return blob["info"] if blob.get("key") == key else None
        except (OSError, ValueError, KeyError):
            return None

    def compute(p: Path):
        _, info = interventions.matched_control(method, cfg.control_seed, cost)
        atomic_write_json(p, {"key": key, "info": info})
        return info

    info = compute_once(path, read, compute)
    if not info["matched"]:
        log.warning("the control of %s (seed %s) reaches perplexity %.4g against the method's %.4g "
                    "(strength %.3g): the closest it gets", cfg.method, cfg.control_seed, info["cost"],
                    info["target"], info["strength"])
    return interventions.matched_from(method, cfg.control_seed, info)


def _fitted(cfg: EvalConfig, lm: models.LoadedModel, progress: bool, published: Path | None = None,
            publish: bool = True):
    from .activations import weight_fingerprint

    # keyed by the weights themselves: a changed folder, an updated hub model or a new GGUF is refitted
    key = stable_hash({**cfg.fit_key(), "weights": weight_fingerprint(lm.model)})
    name = results.fit_name(cfg.method, key)
    path = cache_dir("interventions") / name
    shared = None if published is None else published / name
    if shared is not None and shared.is_file():
        try:
            trusted = verify_checksum(shared, "interventions")
        except CacheIntegrityError as err:  # a committed file, not a cache entry: say how to restore it
            raise ValueError(
                f"published fit {shared} does not match its sha256 record ({err.reason}); restore it "
                f"(e.g. git checkout -- {shared}) or delete it and its record to refit") from None
        if trusted:
            log.info("loading the published fit %s", shared)
            return interventions.load(shared)

    def load(path: Path):
        log.info("loading fitted %s from %s", cfg.method, path)
        return interventions.load(path)

    def fit():
        toxic, neutral = data.contrast_texts(cfg.n_contrast, cfg.n_contrast, seed=cfg.seed)
        return interventions.fit(cfg.method, lm, toxic, neutral, progress=progress, **cfg.method_params)

    # a concurrent run (batch --jobs N) may be fitting the same method: it is fitted once
    method = compute_once_file(path, fit, kind="interventions", load=load, save=lambda m, tmp: m.save(tmp))
    if publish and shared is not None and not shared.is_file():
        shared.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(shared) as tmp:
            shutil.copyfile(path, tmp)
        write_checksum(shared)
    return method


def generate(cfg: EvalConfig, lm: models.LoadedModel, method, progress: bool = True) -> pd.DataFrame:
    """Continuations of the benchmark prompts with the intervention folded into the weights."""
    # the benchmark's nested sample: an extension (prompt_start > 0) takes the prompts after its run's
    prompts = data.prompts(cfg.benchmark, n=cfg.prompt_start + cfg.n_prompts, seed=cfg.seed)[cfg.prompt_start:]
    preprompt = generation.DEFAULT_PREPROMPT if cfg.preprompt else None
    with method.apply(lm, fold=True):
        return generation.generate(
            lm, prompts, n_samples=cfg.n_samples, max_new_tokens=cfg.max_new_tokens,
            top_p=cfg.top_p, temperature=cfg.temperature, seed=cfg.seed,
            batch_size=cfg.batch_size, preprompt=preprompt, chat_template=cfg.chat_template,
            progress=progress, prompt_offset=cfg.prompt_start, sample_offset=cfg.sample_start)


def perplexity(cfg: EvalConfig, lm: models.LoadedModel, method, progress: bool = True) -> dict:
    texts = data.perplexity_texts(cfg.ppl_corpus, n=cfg.n_ppl)
    with method.apply(lm, fold=True):
        return metrics.perplexity(lm, texts, prefix=cfg.ppl_prefix, progress=progress)


# Bump when what `capability` computes changes: cached capability records are then recomputed.
CAPABILITY_VERSION = 1


def capability(cfg: EvalConfig, lm: models.LoadedModel, method, progress: bool = True) -> dict:
    """What the edit costs: perplexity (corpus and mean per-sentence) and, when ``cfg.n_zeroshot`` > 0,
    zero-shot accuracy on ``cfg.zeroshot_tasks`` (`detox_utils.zeroshot`).

    Neither depends on the benchmark or the pre-prompt, so the record is cached on disk, keyed by the
    fingerprint of the weights actually evaluated (the intervention folded in, so the model, the method,
    its parameters and a random control are all part of it) and by the capability settings; the runs of
    a grid that share a model and an edit compute it once. Returns ``{"perplexity": {...}}`` plus
    ``"zeroshot": {task: {...}}`` when zero-shot is on.
    """
    from . import activations
    from ._io import atomic_write_json

    ppl_texts = data.perplexity_texts(cfg.ppl_corpus, n=cfg.n_ppl)
    with method.apply(lm, fold=True):
        key = stable_hash({"weights": activations.weight_fingerprint(lm.model),
                           "ppl": [cfg.ppl_corpus, cfg.n_ppl, cfg.ppl_prefix],
                           "zeroshot": [list(cfg.zeroshot_tasks), cfg.n_zeroshot, cfg.seed],
                           "dtype": cfg.dtype, "version": CAPABILITY_VERSION})
        path = cache_dir("capability") / f"{lm.name.replace('/', '--')}-{key}.json"

        def read(path: Path) -> dict[str, Any] | None:
            cached = _read_capability(path, key)
            if cached is not None:
                log.info("capability of this edit read from %s", path)
            return cached

        def measure(path: Path) -> dict[str, Any]:
            out: dict[str, Any] = {"perplexity": metrics.perplexity(lm, ppl_texts, prefix=cfg.ppl_prefix,
                                                                    progress=progress)}
            if cfg.n_zeroshot:
                from . import zeroshot

                out["zeroshot"] = {task: _compact_items(rec) for task, rec in zeroshot.score(
                    lm, tasks=cfg.zeroshot_tasks, n=cfg.n_zeroshot, seed=cfg.seed, progress=progress,
                    per_item=True).items()}
            atomic_write_json(path, {"key": key, "record": out, "check": stable_hash(out)})
            return out

        return compute_once(path, read, measure)


def check_extension(cfg: EvalConfig, lm: models.LoadedModel, method, result_dir: str | Path,
                    progress: bool = True) -> None:
    """Before an extension (``cfg.is_extension``) generates anything: the run it extends must be in
    ``result_dir`` (an ``ok`` result whose config equals this one but for `config.EXTENSION_FIELDS`)
    and this edit's corpus perplexity must match that run's to `config.POOL_PPL_RTOL` (relative), or
    its continuations would be of another edit and could never be pooled. The perplexity is measured
    by `capability`, so the capability step then reads it from the cache. Raises ValueError (no run to
    extend) or RuntimeError (another edit); a run that is not an extension passes at once."""
    from .config import POOL_PPL_RTOL, extension_key, ppl_gap

    if not cfg.is_extension:
        return
    run = results.runs_and_extensions(result_dir)[0].get(extension_key(cfg.to_dict()), [None])[0]
    if run is None:
        raise ValueError(f"extension {cfg.config_hash} (prompt_start={cfg.prompt_start}, sample_start="
                         f"{cfg.sample_start}) has no finished run to extend in {result_dir}: run the "
                         f"profile it extends there first (same config, prompt_start=0, sample_start=0)")
    want = run["metrics"]["perplexity"]["corpus_ppl"]
    got = capability(cfg, lm, method, progress)["perplexity"]["corpus_ppl"]
    if not ppl_gap(got, want) <= POOL_PPL_RTOL:
        raise RuntimeError(
            f"extension {cfg.config_hash} measures another edit than run {run['config_hash']}: corpus "
            f"perplexity {got:.6g} against the run's {want:.6g} (relative gap {ppl_gap(got, want):.1e}, "
            f"allowed {POOL_PPL_RTOL:.0e}); its fit is not the run's (a refit on another machine?). "
            f"Publish the run's fit in {results.fits_folder(result_dir)} or rerun the run itself")
    log.info("extension %s: perplexity %.6g matches run %s", cfg.config_hash, got, run["config_hash"])


def _compact_items(record: Mapping[str, Any]) -> dict[str, Any]:
    """A task's zero-shot record with its per-item correctness kept as two strings of 0/1 (item order
    of `zeroshot.items`), so two runs can be compared item by item (paired) without storing logits."""
    per_item = record["per_item"]
    out = {k: v for k, v in record.items() if k != "per_item"}
    out["correct"] = "".join("1" if c else "0" for c in per_item["correct"])
    out["correct_per_char"] = "".join("1" if c else "0" for c in per_item["correct_per_char"])
    return out


def _read_capability(path: Path, key: str) -> dict | None:
    """A cached capability record, or None when missing; a damaged one is removed and recomputed."""
    import json

    if not path.exists():
        return None
    try:
        blob = json.loads(path.read_text())
        if blob["key"] == key and blob["check"] == stable_hash(blob["record"]):
            return blob["record"]
    except (ValueError, KeyError, TypeError):
        pass
    log.warning("%s is damaged (content check failed); recomputing it", path)
    path.unlink(missing_ok=True)
    return None


def score(cfg: EvalConfig, samples: pd.DataFrame, progress: bool = True) -> pd.DataFrame:
    """Add one ``score.<evaluator>`` column per evaluator and ``score.max`` (max over them)."""
    out = samples.copy()
    texts = out["continuation"].tolist()
    for name in cfg.evaluators:
        out[f"score.{name}"] = _evaluator(name).score(texts, progress=progress)
    out["score.max"] = out[[f"score.{n}" for n in cfg.evaluators]].max(axis=1)
    return out


def _grid(scored: pd.DataFrame, column: str) -> np.ndarray:
    """[n_prompts, k] matrix of one score column."""
    wide = scored.pivot(index="prompt_id", columns="sample_id", values=column)
    return wide.to_numpy(dtype=float)


def toxicity(cfg: EvalConfig, scored: pd.DataFrame) -> dict[str, Any]:
    """Toxicity metrics per evaluator and for the max over evaluators, plus their agreement."""
    out: dict[str, Any] = {}
    for name in (*cfg.evaluators, "max"):
        out[name] = metrics.toxicity_metrics(_grid(scored, f"score.{name}"),
                                             threshold=cfg.threshold, n_boot=cfg.n_boot,
                                             seed=cfg.seed)
    flat = {name: scored[f"score.{name}"].to_numpy(dtype=float) for name in cfg.evaluators}
    agree = metrics.agreement(flat, threshold=cfg.threshold)
    out["agreement"] = {key: _records(value) for key, value in agree.items()}
    return out


def _records(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return value.reset_index().to_dict(orient="records")
    return value


def write(cfg: EvalConfig, result_dir: str | Path, *, lm: models.LoadedModel, method,
          scored: pd.DataFrame, tox: Mapping[str, Any], ppl: Mapping[str, Any],
          timings: Mapping[str, float]) -> Path:
    """Write the result JSON and the scored samples for this run (atomically).

    ``ppl`` is the `perplexity` record or the `capability` record (``{"perplexity": ..., "zeroshot":
    ...}``); the metrics also hold the diversity of the continuations (`metrics.diversity`)."""
    capab = dict(ppl) if "perplexity" in ppl else {"perplexity": dict(ppl)}
    diversity = metrics.diversity(scored["continuation"].fillna("").astype(str).tolist())
    result_dir = Path(result_dir)
    results.write_samples(result_dir / f"{cfg.config_hash}.samples.csv.gz", scored)
    prov = results.provenance(
        seed=cfg.seed, config_hash=cfg.config_hash, model=lm.provenance,
        method=method.describe(),
        data={name: data.provenance(name) for name in
              (cfg.benchmark, cfg.ppl_corpus, "insults-train")},
        evaluators={name: _evaluator(name).provenance for name in cfg.evaluators},
        timings=dict(timings),
    )
    return results.write_result(result_dir / f"{cfg.config_hash}.json", config=cfg.to_dict(),
                                config_hash=cfg.config_hash,
                                metrics={"toxicity": dict(tox), **capab, "diversity": diversity},
                                provenance=prov)


class Timer:
    """Collects wall-clock seconds per named step: ``with timer("generate"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> "_Step":
        return _Step(self, name)


class _Step:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.seconds[self.name] = round(time.perf_counter() - self.start, 3)


# --------------------------------------------------------------------------------------------------
# localization analysis (notebooks/localize.ipynb)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def localize(cfg, lm: models.LoadedModel, progress: bool = True) -> dict[str, Any]:
    """Record the contrast set, score every unit, and summarise per layer and site.

    Returns ``{"unit_scores": {site: [L, u]}, "summary": {site: {...}}}``; the summary holds the
    per-layer score with bootstrap CIs (``cfg.reduce`` of the unit scores), per-layer quantiles of the
    unit scores, where the top 1% of units sit, and the early-layer test.
    """
    from . import activations, localization

    sites = tuple(s for s in cfg.sites if s in lm.arch.sites)
    toxic, neutral = data.contrast_texts(cfg.n_toxic, cfg.n_neutral, seed=cfg.seed)
    rec = dict(sites=sites, pooling=cfg.pooling, batch_size=cfg.batch_size,
               max_length=cfg.max_length, progress=progress)
    # toxic and neutral recorded separately, as interventions.fit does, so they share the cache
    resp_t, resp_n = activations.record(lm, toxic, **rec), activations.record(lm, neutral, **rec)
    score_fn = localization.SCORES[cfg.score]
    reduce_kw = {"reduce": cfg.reduce, "threshold": cfg.threshold}
    if cfg.reduce == "top_k_mean":
        reduce_kw = {"reduce": cfg.reduce, "k": None}
    unit_scores, summary = {}, {}
    for site in sites:
        t, n = resp_t[site], resp_n[site]
        scores = score_fn(t, n)
        if cfg.reduce == "top_k_mean":
            reduce_kw["k"] = max(1, scores.shape[1] // 100)
        ci = localization.bootstrap_layer_ci(t, n, score=cfg.score, n_boot=cfg.n_boot,
                                             seed=cfg.seed, progress=progress, **reduce_kw)
        top_k = max(1, round(0.01 * scores.numel()))
        top_layers = scores.flatten().topk(top_k).indices // scores.shape[1]
        test = localization.early_layer_test(ci["point"], seed=cfg.seed)
        q = torch_quantiles(scores, QUANTILES)
        unit_scores[site] = scores
        summary[site] = {
            "n_layers": int(scores.shape[0]), "n_units": int(scores.shape[1]),
            "layer_score": {"point": ci["point"].tolist(), "lo": ci["lo"].tolist(),
                            "hi": ci["hi"].tolist(), "ci": ci["ci"], "n_boot": ci["n_boot"],
                            "boot": ci["boot"].tolist()},
            "quantiles": {str(k): v for k, v in zip(QUANTILES, q.T.tolist())},
            "top1pct_per_layer": np.bincount(top_layers.numpy(),
                                             minlength=scores.shape[0]).tolist(),
            "top1pct_k": top_k,
            "early_test": test,
        }
    return {"unit_scores": unit_scores, "summary": summary, "n_toxic": len(toxic),
            "n_neutral": len(neutral)}


def torch_quantiles(scores, qs) -> "np.ndarray":
    """``[L, len(qs)]`` quantiles of each layer's unit scores."""
    import torch

    return torch.quantile(scores.double(), torch.tensor(qs, dtype=torch.float64), dim=1).T.numpy()


def write_localization(cfg, result_dir: str | Path, lm: models.LoadedModel,
                       found: Mapping[str, Any]) -> Path:
    """``<result_dir>/<model>__<score>-<pooling>.json`` with config, summary and provenance, for the
    book's settings (the notebook's defaults, any model and dtype); any other settings get their config
    hash in the name, ``<model>__<score>-<pooling>__<hash>.json``, so they never overwrite the
    book's result."""
    from ._io import atomic_write_json
    from .config import LocalizeConfig

    stem = f"{lm.name.replace('/', '--')}__{cfg.score}-{cfg.pooling}"
    book = {k: v for k, v in LocalizeConfig().to_dict().items() if k not in ("model", "dtype")}
    mine = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "dtype")}
    name = f"{stem}.json" if mine == book else f"{stem}__{cfg.config_hash}.json"
    record = {
        "kind": "localization", "config": cfg.to_dict(), "config_hash": cfg.config_hash,
        "model": lm.name, "model_type": lm.model.config.model_type,
        "n_toxic": found["n_toxic"], "n_neutral": found["n_neutral"],
        "summary": found["summary"],
        "provenance": results.provenance(model=lm.provenance,
                                         data=data.provenance("insults-train")),
    }
    return atomic_write_json(Path(result_dir) / name, results.jsonable(record))
