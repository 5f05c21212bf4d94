"""Tables and figures for the book, computed from committed result files; and the book build.

Every number the book states comes from a function here applied to files under ``results/``:
``results/default/*.json`` (+ ``*.samples.csv.gz``) from the batch grid,
``results/localization/*.json`` from the localization notebook, ``results/evaluators/validation.json``
from the evaluator validation. ``python -m detox_utils.report build`` builds the book strictly.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from . import results
from ._io import REPO_ROOT

log = logging.getLogger(__name__)

RESULTS = REPO_ROOT / "results"
METRICS = ("emt", "tox_prob", "frac_toxic")
METRIC_LABELS = {
    "emt": "Expected maximum toxicity",
    "tox_prob": "Toxicity probability (P(≥1 of k toxic))",
    "frac_toxic": "Fraction of toxic continuations",
}
METHOD_ORDER = ("none", "aura", "det0", "damp", "meow2x", "trne")


def method_label(method: str, params: dict, preprompt: bool) -> str:
    """A short human label, e.g. ``Damp k=3000 α=0.5`` or ``AURA + pre-prompt``."""
    names = {"none": "No intervention", "aura": "AURA", "det0": "Det0", "damp": "Damp",
             "meow2x": "Meow2X", "trne": "TRNE"}
    shown = {"det0": ("k",), "damp": ("k", "alpha"), "meow2x": ("scale",), "trne": ("rho",),
             "aura": ("auroc_threshold",)}
    parts = [names.get(method, method)]
    for key in shown.get(method, ()):
        if key in params and not (method == "aura" and params[key] == 0.5):
            parts.append(f"{ {'alpha': 'α', 'rho': 'ρ', 'scale': 's'}.get(key, key)}={params[key]}")
    label = " ".join(parts)
    return label + (" + pre-prompt" if preprompt else "")


def runs(folder: str | Path = RESULTS / "default") -> pd.DataFrame:
    """One row per run and evaluator (incl. ``max``): config, toxicity metrics with CIs, perplexity."""
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


def with_reduction(df: pd.DataFrame) -> pd.DataFrame:
    """Add each run's toxicity relative to the un-intervened model (same model, benchmark,
    evaluator, pre-prompt off): ``reduction_<metric>`` = baseline / method (2.0 = halved) and the
    perplexity change ``dppl``."""
    base = df[(df.method == "none") & (~df.preprompt)].set_index(
        ["model", "benchmark", "evaluator"])
    out = df.copy()
    key = list(zip(out.model, out.benchmark, out.evaluator))
    for metric in METRICS:
        b = base[metric].reindex(key).to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"reduction_{metric}"] = np.where(out[metric] > 0, b / out[metric].to_numpy(),
                                                  np.nan)
    out["dppl"] = out["ppl"].to_numpy() - base["ppl"].reindex(key).to_numpy()
    return out


def pareto_front(points: pd.DataFrame, x: str = "ppl", y: str = "tox_prob") -> pd.Series:
    """Boolean mask of the runs no other run beats on both ``x`` and ``y`` (lower is better)."""
    xs, ys = points[x].to_numpy(), points[y].to_numpy()
    dominated = np.array([
        np.any((xs <= xi) & (ys <= yi) & ((xs < xi) | (ys < yi))) for xi, yi in zip(xs, ys)
    ])
    return pd.Series(~dominated, index=points.index)


def samples(folder: str | Path = RESULTS / "default",
            hashes: Iterable[str] | None = None) -> pd.DataFrame:
    """All scored continuations of a folder's runs, with the run's model/method/benchmark."""
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


def build(strict: bool = True, all_pages: bool = True) -> int:
    """Build the book with jupyter-book 1.x (``-W -n``: every warning is an error)."""
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(REPO_ROOT),
           "--path-output", str(REPO_ROOT / "book")]
    if all_pages:
        cmd.append("--all")
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    log.info("running %s", " ".join(cmd))
    return subprocess.call(cmd, cwd=REPO_ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detox_utils.report")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--no-strict", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    return build(strict=not args.no_strict)


if __name__ == "__main__":
    sys.exit(main())
