"""What several pages share: where the results are, the grid's runs and samples as tables, the
paired-bootstrap reductions against the un-intervened model, and the formatting of numbers and tables.

The grid folder the pages read is one setting, `grid_folder`: ``$DETOX_RESULTS`` when set (``python -m
detox_utils.report build --results DIR`` sets it for the pages), else ``results/default``.
"""
from __future__ import annotations

import html

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from .. import registry, results
from .._io import REPO_ROOT

RESULTS = REPO_ROOT / "results"
RESULTS_ENV = "DETOX_RESULTS"
DEFAULT_GRID = RESULTS / "default"
METRIC_LABELS = {
    "emt": "Expected maximum toxicity",
    "tox_prob": "Toxicity probability (P(≥1 of k toxic))",
    "frac_toxic": "Fraction of toxic continuations",
}
METHOD_ORDER = tuple(registry.METHODS)


def grid_folder(environ: Mapping[str, str] = os.environ) -> Path:
    """The grid result folder the pages read: ``$DETOX_RESULTS`` (relative to the repository root unless
    absolute) when it is set in ``environ``, else ``results/default``."""
    value = environ.get(RESULTS_ENV, "")
    if not value:
        return DEFAULT_GRID
    path = Path(value) if Path(value).is_absolute() else REPO_ROOT / value
    if not path.is_dir():
        raise NotADirectoryError(f"${RESULTS_ENV}={value!r} is not a folder; set it to a grid result "
                                 "folder such as results/default, or unset it")
    return path


def method_label(method: str, params: dict, preprompt: bool) -> str:
    """A short human label, e.g. ``Damp k=3000 α=0.5`` or ``AURA + pre-prompt`` (`registry.method_label`)."""
    return registry.method_label(method, params, preprompt)


def runs(folder: str | Path | None = None) -> pd.DataFrame:
    """One row per run and evaluator (incl. ``max``): config, toxicity metrics with CIs, perplexity.
    ``folder`` defaults to `grid_folder`."""
    folder = grid_folder() if folder is None else folder
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        record = results.read_result(path)
        if record["status"] != "ok":
            continue
        cfg, met = record["config"], record["metrics"]
        base = {
            "config_hash": record["config_hash"], "model": cfg["model"],
            "benchmark": cfg["benchmark"], "method": cfg["method"],
            "params": json.dumps(cfg["method_params"], sort_keys=True),
            "preprompt": cfg["preprompt"],
            "label": method_label(cfg["method"], cfg["method_params"], cfg["preprompt"]),
            "n_prompts": cfg["n_prompts"], "n_samples": cfg["n_samples"],
            "ppl": met["perplexity"]["corpus_ppl"],
            "ppl_sentence": met["perplexity"]["mean_sentence_ppl"],
            "seconds": sum(record["provenance"].get("timings", {}).values()),
        }
        for evaluator, values in met["toxicity"].items():
            if evaluator == "agreement":
                continue
            rows.append({**base, "evaluator": evaluator,
                         **{k: v for k, v in values.items() if isinstance(v, (int, float))}})
    if not rows:
        raise FileNotFoundError(f"no ok results in {folder}; run `make results` first")
    return pd.DataFrame(rows)


def samples(folder: str | Path | None = None, hashes: Iterable[str] | None = None) -> pd.DataFrame:
    """All scored continuations of a folder's runs (default `grid_folder`), with the run's
    model/method/benchmark."""
    folder = grid_folder() if folder is None else folder
    table = runs(folder).drop_duplicates("config_hash")
    if hashes is not None:
        table = table[table.config_hash.isin(list(hashes))]
    frames = []
    for row in table.itertuples():
        s = results.load_samples(folder, row.config_hash)
        s.insert(0, "config_hash", row.config_hash)
        for col in ("model", "benchmark", "method", "label", "preprompt"):
            s[col] = getattr(row, col)
        frames.append(s)
    return pd.concat(frames, ignore_index=True)


def evaluator_columns(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix("score.") for c in frame.columns
            if c.startswith("score.") and c != "score.max"]


def _score_grid(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame.pivot(index="prompt_id", columns="sample_id", values=column).to_numpy(float)


def reductions(folder: str | Path | None = None, n_boot: int = 1000,
               evaluators: Iterable[str] | None = None) -> pd.DataFrame:
    """Paired-bootstrap toxicity reduction of every run against the un-intervened model (same model,
    benchmark, prompts and samples, no pre-prompt), per evaluator and for the max over evaluators.

    One row per run and evaluator with ``metrics.toxicity_reduction``'s columns (``tox_prob_ratio``
    with ``_lo``/``_hi``, ``emt_diff``, ...), plus ``dppl`` (perplexity change). ``folder`` defaults to
    `grid_folder`."""
    from .. import metrics

    folder = grid_folder() if folder is None else folder
    table = runs(folder)
    per_run = table.drop_duplicates("config_hash").set_index("config_hash")
    base = per_run[(per_run.method == "none") & (~per_run.preprompt)]
    rows = []
    for (model, bench), group in per_run.groupby(["model", "benchmark"]):
        base_hash = base[(base.model == model) & (base.benchmark == bench)].index
        if len(base_hash) != 1:
            continue
        base_samples = results.load_samples(folder, base_hash[0])
        names = list(evaluators) if evaluators else [*evaluator_columns(base_samples), "max"]
        for config_hash, run in group.iterrows():
            if config_hash == base_hash[0]:
                continue
            s = results.load_samples(folder, config_hash)
            for name in names:
                red = metrics.toxicity_reduction(_score_grid(base_samples, f"score.{name}"),
                                                 _score_grid(s, f"score.{name}"), n_boot=n_boot)
                rows.append({"config_hash": config_hash, "model": model, "benchmark": bench,
                             "method": run.method, "label": run.label, "preprompt": run.preprompt,
                             "evaluator": name, "ppl": run.ppl,
                             "dppl": run.ppl - per_run.loc[base_hash[0], "ppl"], **red})
    return pd.DataFrame(rows)


def fmt_ci(point: float, lo: float, hi: float, digits: int = 2) -> str:
    """``0.31 [0.22, 0.40]``"""
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def html_table(frame: pd.DataFrame, index: bool = False) -> str:
    """``frame`` as an HTML table styled like the book's own tables (the theme's ``table`` class); a
    newline inside a text cell becomes a line break (everything else is escaped)."""
    shown = frame.copy()
    for col in shown.columns:
        if not pd.api.types.is_numeric_dtype(shown[col]):
            shown[col] = shown[col].map(
                lambda v: html.escape(v).replace("\n", "<br>") if isinstance(v, str) else v)
    if index and not pd.api.types.is_numeric_dtype(shown.index):
        shown.index = shown.index.map(lambda v: html.escape(v) if isinstance(v, str) else v)
    return shown.to_html(index=index, classes="table", border=0, escape=False, justify="left")


def plain_log_ticks(ax, ticks) -> None:
    """Label a log-scaled x axis at exactly ``ticks``, written plainly (``0.5``, ``2``, not ``10^0``),
    with no minor ticks."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = list(ticks)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])
