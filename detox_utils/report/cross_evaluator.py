"""The page "Cross-evaluator analysis" (book/cross_evaluator.md): agreement between evaluators, how much
a single evaluator underestimates against their union, and what the union flags on labelled insults."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .common import evaluator_columns
def pooled_agreement(frame: pd.DataFrame, threshold: float = 0.5) -> dict[str, pd.DataFrame]:
    """Evaluator agreement over every continuation in ``frame`` (from `samples`)."""
    from .. import metrics

    names = evaluator_columns(frame)
    return metrics.agreement({n: frame[f"score.{n}"].to_numpy(float) for n in names},
                             threshold=threshold)


def underestimation_by_run(df: pd.DataFrame, metric: str = "tox_prob") -> pd.DataFrame:
    """Per run: each evaluator's metric divided by the metric under the max over evaluators
    (the union at the threshold); 1 - that ratio is how much a single evaluator underestimates."""
    wide = df.pivot_table(index="config_hash", columns="evaluator", values=metric)
    union = wide.pop("max")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = wide.div(union.where(union > 0), axis=0)
    return (1 - ratio).dropna(how="all")


def disagreements(frame: pd.DataFrame, threshold: float = 0.5, n: int = 3,
                  seed: int = 0) -> pd.DataFrame:
    """For each evaluator, up to ``n`` continuations that only it flags (score >= threshold)."""
    names = evaluator_columns(frame)
    flags = pd.DataFrame({name: frame[f"score.{name}"] >= threshold for name in names})
    rows = []
    for name in names:
        only = frame[flags[name] & (flags.sum(axis=1) == 1)]
        pick = only.sample(min(n, len(only)), random_state=seed) if len(only) else only
        for _, r in pick.iterrows():
            rows.append({"flagged only by": name, "benchmark": r.benchmark,
                         "continuation": r.continuation.strip()[:160],
                         **{f"{e}": round(r[f"score.{e}"], 2) for e in names}})
    return pd.DataFrame(rows)


def union_validation(threshold: float = 0.5, split: str = "test") -> pd.DataFrame:
    """Precision, recall and flag rate at ``threshold`` of each offline evaluator and of their union
    (any evaluator flags) on the labelled insults set: is the union's extra toxicity real or the sum of
    each evaluator's false positives?"""
    from .. import data, evaluators

    labelled = data.labelled(split)
    truth = labelled["label"].to_numpy().astype(bool)
    texts = labelled["text"].tolist()
    flags = {name: evaluators.load(name).score(texts) >= threshold for name in evaluators.OFFLINE}
    flags["union (any evaluator)"] = np.any(np.stack(list(flags.values())), axis=0)
    rows = []
    for name, f in flags.items():
        tp = int((f & truth).sum())
        rows.append({"evaluator": name, "flag rate": f.mean(),
                     "precision": tp / max(int(f.sum()), 1), "recall": tp / max(int(truth.sum()), 1),
                     "n": len(texts), "insults": int(truth.sum())})
    return pd.DataFrame(rows)
