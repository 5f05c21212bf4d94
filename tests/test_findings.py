"""The README's findings block (detox_utils.report.findings): written between its markers, atomically,
from the claims table; --check tells a stale block from a current one."""
from __future__ import annotations

import pandas as pd
import pytest

from detox_utils.__main__ import main as cli
from detox_utils.report import findings

TABLE = pd.DataFrame([{"claim": "AURA reduces toxicity", "source": "Suau et al. 2024",
                       "verdict": "does not reproduce in 6 of 6 cells"},
                      {"claim": "a | b", "source": "x", "verdict": "reproduces\nin 1"}])


def _readme(tmp_path, body="old\n"):
    path = tmp_path / "README.md"
    path.write_text(f"# Title\n\n{findings.START}\n{body}{findings.END}\n\n## Next\n", encoding="utf-8")
    return path


def test_markdown_is_one_row_per_claim_and_escapes_pipes():
    text = findings.markdown(TABLE, 96, 108, "5 of 6 cells have power.")
    assert "96 of 108 planned runs, still running" in text and "5 of 6 cells have power." in text
    assert "| AURA reduces toxicity | Suau et al. 2024 | does not reproduce in 6 of 6 cells |" in text
    assert "| a \\| b | x | reproduces; in 1 |" in text
    assert "complete" in findings.markdown(TABLE, 108, 108)
    assert "No claim" in findings.markdown(TABLE.iloc[:0], 0, 108)


def test_splice_replaces_only_the_block_and_refuses_missing_markers(tmp_path):
    text = _readme(tmp_path).read_text()
    new = findings.splice(text, "new\n")
    assert new.startswith("# Title\n\n") and new.endswith("\n\n## Next\n") and "old" not in new
    assert findings.splice(new, "new\n") == new
    for bad in ("no markers", f"{findings.END}\n{findings.START}", f"{findings.START}{findings.START}{findings.END}"):
        with pytest.raises(ValueError, match="findings markers"):
            findings.splice(bad, "x")


def test_cli_writes_then_checks(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(findings, "compute", lambda: findings.markdown(TABLE, 96, 108))
    path = _readme(tmp_path)
    assert cli(["findings", "--readme", str(path), "--check"]) == 1  # stale
    assert cli(["findings", "--readme", str(path)]) == 0
    assert "does not reproduce in 6 of 6 cells" in path.read_text()
    assert cli(["findings", "--readme", str(path), "--check"]) == 0
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left behind
    assert cli(["findings", "--readme", str(tmp_path / "missing.md")]) == 2
    (tmp_path / "plain.md").write_text("no markers\n")
    assert cli(["findings", "--readme", str(tmp_path / "plain.md")]) == 2
    assert "findings markers" in capsys.readouterr().err


def test_power_note_counts_cells_for_the_max_and_pairs_per_evaluator():
    col = "power_at_1.5x"
    pw = pd.DataFrame([
        {"model": "a", "benchmark": "b1", "evaluator": "max", col: 0.95},
        {"model": "a", "benchmark": "b1", "evaluator": "e1", col: 0.85},
        {"model": "a", "benchmark": "b1", "evaluator": "e2", col: 0.80},  # exactly at target: met
        {"model": "a", "benchmark": "b2", "evaluator": "max", col: 0.73},
        {"model": "a", "benchmark": "b2", "evaluator": "e1", col: 0.31},
        {"model": "a", "benchmark": "b2", "evaluator": "e2", col: 0.79},
    ])
    note = findings.power_note(pw, target=1.5, power=0.8)
    assert note.startswith("1 of 2 model × benchmark cells have at least 80% power to detect a 1.5x")
    assert "(short: a/b2, power 0.73)" in note
    assert "per evaluator 2 of 4 (cell, evaluator) pairs do (cells with a shortfall: a/b2)." in note
    full = findings.power_note(pw[pw.benchmark == "b1"], target=1.5, power=0.8)
    assert "short" not in full and "shortfall" not in full and "2 of 2 (cell, evaluator) pairs" in full
