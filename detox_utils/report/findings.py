"""The README's findings block, written from the committed results, never typed by hand.

``python -m detox_utils findings`` recomputes every claim's verdict (`detox_utils.evidence.claims`,
the same call as the book's front page) and writes it between the two markers in ``README.md``;
``--check`` only compares and exits 1 when the block is out of date (so CI or a reviewer can tell a
stale README from a current one without rewriting it). The block names the runs it was computed
from, so a reader can tell how much of the grid it covers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .._io import REPO_ROOT, atomic_write

START = "<!-- findings:start (written by `python -m detox_utils findings` from the committed results; do not edit) -->"
END = "<!-- findings:end -->"
README = REPO_ROOT / "README.md"


def _cell(text: str) -> str:
    return "; ".join(" ".join(line.split()) for line in str(text).splitlines() if line.strip()).replace("|", "\\|")


def markdown(table: pd.DataFrame, done: int, planned: int, power_note: str = "") -> str:
    """The block's body: one line on what it covers, then claim | source | verdict."""
    if not len(table):
        return f"*No claim can be answered yet: the powered grid holds {done} of {planned} runs.*\n"
    head = (f"Computed from the powered grid ({done} of {planned} planned runs"
            + (", complete" if done == planned else ", still running") + "), the localization results and "
            "the evaluator validation; the book's *Evidence* page gives each number behind a verdict."
            + (f" {power_note}" if power_note else ""))
    lines = [head, "", "| claim | source | verdict |", "|---|---|---|"]
    lines += [f"| {_cell(r.claim)} | {_cell(r.source)} | {_cell(r.verdict)} |" for r in table.itertuples()]
    return "\n".join(lines) + "\n"


def splice(text: str, body: str) -> str:
    """``text`` with the part between `START` and `END` replaced by ``body``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"the README must hold the findings markers once each, in order: {START!r} ... {END!r}")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{body}{END}{after}"


def power_note(pw: pd.DataFrame, target: float | None = None, power: float | None = None) -> str:
    """One sentence on `evidence.power_table` ``pw``: how many model x benchmark cells reach ``power``
    to detect a ``target``-fold reduction for the max over evaluators (naming the cells that fall
    short), and how many (cell, evaluator) pairs reach it per evaluator."""
    from .. import evidence

    target = evidence.TARGET_REDUCTION if target is None else target
    power = evidence.TARGET_POWER if power is None else power
    col = f"power_at_{target}x"
    mx, each = pw[pw.evaluator == "max"], pw[pw.evaluator != "max"]
    short = mx[mx[col] < power]
    text = (f"{len(mx) - len(short)} of {len(mx)} model × benchmark cells have at least {power:.0%} power "
            f"to detect a {target}x reduction of the max over evaluators"
            + ("" if not len(short) else " (short: " + ", ".join(
                f"{r.model}/{r.benchmark}, power {r[col]:.2f}" for _, r in short.iterrows()) + ")"))
    if len(each):
        met = each[each[col] >= power]
        lacking = sorted({f"{r.model}/{r.benchmark}" for _, r in each[each[col] < power].iterrows()})
        text += (f"; per evaluator {len(met)} of {len(each)} (cell, evaluator) pairs do"
                 + (f" (cells with a shortfall: {', '.join(lacking)})" if lacking else ""))
    return text + "."


def compute() -> str:
    """The block's body from the committed results (a few minutes: effects, power, claims)."""
    from .. import evidence
    from ..validate_evaluators import read_scores
    from . import VALIDATION_FILE, load_localization

    status = evidence.grid_status()
    done, planned = int(status["runs done"].sum()), int(status["runs planned"].sum())
    eff = evidence.effects(evaluators=["max"]) if done else pd.DataFrame()
    pw = evidence.power_table() if done else pd.DataFrame()
    table = evidence.claims(loc_records=load_localization(), validation_scores=read_scores(VALIDATION_FILE),
                            eff=eff, pw=pw if len(pw) else None)
    note = power_note(pw) if len(pw) else ""
    ext = evidence.extension_status().groupby("profile", sort=False)
    ext_note = "; ".join(f"{p}: {int(st['runs done'].sum())} of {int(st['runs planned'].sum())} runs"
                         + evidence.hours_left_note(st) for p, st in ext)
    if ext_note:
        check = evidence.extension_check()
        left = int((~check.pooled).sum()) if len(check) else 0
        ext_note += (f"; {left} extension runs left out (their perplexity shows another edit than their run's)"
                     if left else "")
        note = (f"Extensions (more prompts or samples, pooled into the grid's runs) and perplexity-matched "
                f"controls: {ext_note}. {note}").strip()
    if done:
        note = (f"The grid's runs took {status['hours spent'].sum():.1f} h (hours measured: the sum of the "
                "finished runs' step times; hours left: `batch --dry-run`'s estimate from them). " + note)
    note = " ".join(part for part in (note, evidence.first_token_summary(evidence.ppl_prefix_starts()),
                                      evidence.prefix_edits_summary(evidence.ppl_prefix_table(), eff),
                                      evidence.capability_start_summary(evidence.capability_starts())) if part)
    return markdown(table, done, planned, note.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detox_utils findings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", default=str(README), help="the file holding the markers (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the block is out of date")
    args = parser.parse_args(argv)
    path = Path(args.readme)
    if not path.is_file():
        print(f"error: {path} is not a file; pass --readme PATH", file=sys.stderr)
        return 2
    text = path.read_text(encoding="utf-8")
    try:
        new = splice(text, compute())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            print(f"{path}: the findings block is out of date; run python -m detox_utils findings", file=sys.stderr)
            return 1
        print(f"{path}: the findings block is current")
        return 0
    if new != text:
        atomic_write(path, new)
    print(f"{path}: findings block written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
