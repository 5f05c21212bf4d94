"""Validate the toxicity evaluators on labelled comments and keep the numbers for the book.

    python -m detox_utils.validate_evaluators            # writes results/evaluators/validation.json

For each evaluator: AUROC (with a bootstrap 95% interval), average precision, and at the threshold
0.5 (a text is flagged when its score is >= 0.5) the positive rate, precision, recall and F1; plus a
downsampled ROC curve. The labelled set is ``detox_utils.data.labelled("test")`` (Kaggle "Detecting
Insults in Social Commentary", the evaluator-validation split, never used for localization).
Insults are one kind of toxicity in one domain: a low recall here can be a difference of definition.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from detox_utils import evaluators
from detox_utils._io import REPO_ROOT, atomic_path, atomic_write_json, sha256_file, stable_hash
from detox_utils.results import read_record, read_samples_csv
from detox_utils.stats import percentile_interval

log = logging.getLogger(__name__)

DEFAULT_OUT = REPO_ROOT / "results" / "evaluators" / "validation.json"


def _check_binary(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (not toxic) or 1 (toxic)")
    if labels.min() == labels.max():
        raise ValueError("labels must contain both classes")
    return scores, labels.astype(np.int64)


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float | None]:
    """Ranking and thresholded metrics of ``scores [n]`` against ``labels [n]`` (1 toxic, 0 not).

    ``auroc``: P(score of a random toxic text > that of a random non-toxic one), ties counted half.
    ``positive_rate``: fraction with score >= threshold; ``precision``/``recall``/``f1`` of that
    decision (precision and F1 are None when nothing is flagged).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, labels = _check_binary(scores, labels)
    flagged = scores >= threshold
    tp = int((flagged & (labels == 1)).sum())
    precision = tp / int(flagged.sum()) if flagged.any() else None
    recall = tp / int((labels == 1).sum())
    f1 = None if not precision or not recall else 2 * precision * recall / (precision + recall)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "positive_rate": float(flagged.mean()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def auroc_interval(scores: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC (texts resampled with replacement, both classes kept)."""
    from sklearn.metrics import roc_auc_score

    scores, labels = _check_binary(scores, labels)
    rng = np.random.default_rng(seed)
    stats = []
    while len(stats) < n_boot:
        idx = rng.integers(0, len(scores), len(scores))
        if labels[idx].min() != labels[idx].max():
            stats.append(roc_auc_score(labels[idx], scores[idx]))
    return percentile_interval(stats, level)


def roc_points(scores: np.ndarray, labels: np.ndarray, n_points: int = 101) -> dict[str, list[float]]:
    """The ROC curve on ``n_points`` evenly spaced false-positive rates: the best TPR reached at FPR <= x."""
    from sklearn.metrics import roc_curve

    scores, labels = _check_binary(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores)
    grid = np.linspace(0.0, 1.0, n_points)
    idx = np.searchsorted(fpr, grid, side="right") - 1
    return {"fpr": [round(float(x), 4) for x in grid], "tpr": [round(float(y), 4) for y in tpr[idx]]}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _environment() -> dict[str, Any]:
    import sklearn
    import torch

    import detox_utils

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "scikit-learn": sklearn.__version__, "detox_utils": detox_utils.__version__, "git_commit": _git_commit()}


def _default_names() -> tuple[str, ...]:
    with_checkpoint = ("detoxify",) if os.environ.get(evaluators.CHECKPOINT_ENV) else ()
    return (*evaluators.OFFLINE, *with_checkpoint)


def validate(names: Sequence[str] | None = None, split: str = "test", frame: pd.DataFrame | None = None,
             out: str | os.PathLike | None = DEFAULT_OUT, threshold: float = 0.5, n_boot: int = 1000,
             roc_n_points: int = 101, progress: bool = True) -> dict[str, Any]:
    """Score the labelled set with each evaluator and return (and write to ``out``, atomically) the metrics.

    ``names``: evaluators (default: the offline ones, plus ``detoxify`` when $DETOXIFY_CHECKPOINT is set).
    ``frame``: a DataFrame with ``text`` and ``label`` instead of ``data.labelled(split)`` (for tests).
    ``out=None`` writes nothing.
    """
    names = tuple(names) if names is not None else _default_names()
    unknown = [n for n in names if n not in evaluators.available()]
    if unknown:
        raise ValueError(f"unknown evaluators {unknown}; available: {', '.join(evaluators.available())}")
    if frame is None:
        from detox_utils import data

        frame = data.labelled(split)
        dataset = data.LABELLED_SPLITS[split]
        data_info = {"split": split, "dataset": dataset, "provenance": data.provenance(dataset)}
    else:
        data_info = {"split": None, "dataset": "given frame", "provenance": None}
    if not {"text", "label"} <= set(frame.columns):
        raise ValueError(f"frame needs columns text and label, has {list(frame.columns)}")
    texts = frame["text"].tolist()
    labels = frame["label"].to_numpy()
    data_info.update(rows=len(texts), positives=int(np.sum(labels == 1)),
                     content_hash=stable_hash([texts, labels.tolist()]))

    results: dict[str, Any] = {}
    per_text = {"label": labels.astype(int)}
    for name in names:
        t0 = time.perf_counter()
        ev = evaluators.load(name)
        t1 = time.perf_counter()
        scores = ev.score(texts, progress=progress)
        t2 = time.perf_counter()
        per_text[f"score.{name}"] = np.asarray(scores, dtype=float)
        metrics = binary_metrics(scores, labels, threshold)
        lo, hi = auroc_interval(scores, labels, n_boot=n_boot)
        results[name] = {
            **metrics, "auroc_lo": lo, "auroc_hi": hi,
            "mean_score": float(scores.mean()),
            "load_seconds": round(t1 - t0, 3), "score_seconds": round(t2 - t1, 3),
            "roc": roc_points(scores, labels, roc_n_points),
            "provenance": ev.provenance,
        }
        log.info("%s: AUROC %.3f [%.3f, %.3f], positive rate %.3f, precision %s, recall %.3f",
                 name, metrics["auroc"], lo, hi, metrics["positive_rate"],
                 "n/a" if metrics["precision"] is None else f"{metrics['precision']:.3f}", metrics["recall"])
    report = {
        "kind": "evaluator-validation",
        "what": ("toxicity evaluators validated on labelled comments (label 1 = insult); a text is flagged "
                 f"when its score >= {threshold}"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threshold": threshold,
        "n_boot": n_boot,
        "data": data_info,
        "evaluators": results,
        "environment": _environment(),
    }
    if out is not None:
        # every text's scores, in the data's row order, for analyses at other thresholds (matched FPR)
        scores_path = scores_file(out)
        with atomic_path(scores_path) as tmp:
            pd.DataFrame(per_text).to_csv(tmp, index=False, compression="gzip")
        report["scores_file"] = {"path": scores_path.name, "sha256": sha256_file(scores_path),
                                 "columns": list(per_text)}
        atomic_write_json(out, report)
        log.info("wrote %s", out)
    return report


def scores_file(out: str | os.PathLike = DEFAULT_OUT) -> Path:
    """Where `validate` writes the per-text scores beside its report (``<out stem>_scores.csv.gz``)."""
    out = Path(out)
    return out.with_name(f"{out.stem}_scores.csv.gz")


def read_scores(out: str | os.PathLike = DEFAULT_OUT) -> pd.DataFrame:
    """The per-text scores written by `validate` (``label`` and one ``score.<name>`` column per
    evaluator), checked against the sha256 its report recorded."""
    report = read_record(out, "evaluator-validation")
    path = scores_file(out)
    info = report.get("scores_file")
    if info is None or not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rerun `python -m detox_utils.validate_evaluators`")
    if sha256_file(path) != info["sha256"]:
        raise ValueError(f"{path} does not match the sha256 recorded in {out}; rerun "
                         "`python -m detox_utils.validate_evaluators`")
    return read_samples_csv(path)  # only \n ends a row (a text may hold a bare \r); "" stays a string


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m detox_utils validate-evaluators", description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", nargs="*", default=None, help=f"evaluators (default: {' '.join(_default_names())})")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    validate(args.names, split=args.split, out=args.out)


if __name__ == "__main__":
    main()
