"""The shared I/O helpers: atomic writes leave nothing half-written; `file_lock` serialises processes."""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from detox_utils._io import atomic_path, atomic_write, file_lock


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path):
    dest = tmp_path / "result.json"
    atomic_write(dest, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def _hold(target: str, events: str, hold_s: float) -> None:
    with file_lock(target):
        with open(events, "a") as f:
            f.write(f"start {time.monotonic()}\n")
        time.sleep(hold_s)
        with open(events, "a") as f:
            f.write(f"end {time.monotonic()}\n")


def test_file_lock_serialises_processes(tmp_path: Path):
    target, events = str(tmp_path / "artefact.pt"), str(tmp_path / "events.txt")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hold, args=(target, events, 0.5)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    kinds = [line.split()[0] for line in Path(events).read_text().splitlines()]
    assert kinds == ["start", "end", "start", "end"]  # never two holders at once
    assert not Path(target).exists()  # the lock is a side file; the artefact is the caller's to write


def test_file_lock_released_after_exception(tmp_path: Path):
    target = tmp_path / "x"
    with pytest.raises(ValueError):
        with file_lock(target):
            raise ValueError("boom")
    import fcntl

    with open(tmp_path / ".x.lock", "w") as probe:  # non-blocking: raises if the lock were still held
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_set_progress_switches_every_bar_off_and_on():
    import transformers

    from detox_utils import set_progress
    from detox_utils._progress import tqdm

    try:
        set_progress(False)
        assert tqdm(range(3)).disable
        assert not transformers.utils.logging.is_progress_bar_enabled()
        set_progress(True)
        assert not tqdm(range(3)).disable
        assert tqdm(range(3), disable=True).disable  # a call's own progress=False still wins
        assert transformers.utils.logging.is_progress_bar_enabled()
        with pytest.raises(TypeError, match="progress must be True or False"):
            set_progress("no")
    finally:
        set_progress(True)


def test_cache_command_lists_and_clears(tmp_path, monkeypatch, capsys):
    from detox_utils.__main__ import main

    monkeypatch.setenv("DETOX_CACHE_DIR", str(tmp_path))
    atomic_write(tmp_path / "activations" / "m-post-abc" / "chunk0.pt", b"x" * 2048)
    atomic_write(tmp_path / "interventions" / "aura-1.pt", b"y" * 10)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "activations" in out and "1 entries" in out
    assert main(["cache", "--clear", "activations"]) == 0
    assert not (tmp_path / "activations").exists() and (tmp_path / "interventions").exists()
    assert main(["cache", "--clear", "everything"]) == 2
    assert "allowed: models, activations, gradient_scores, interventions, capability, all" in capsys.readouterr().err
    assert main(["cache", "--clear", "all"]) == 0
    assert not (tmp_path / "interventions").exists()


def test_check_texts_is_the_one_text_check():
    import pandas as pd

    from detox_utils._io import check_texts

    assert check_texts(("a", "")) == ["a", ""]
    assert check_texts(pd.Series(["x", "y"]), "prompts") == ["x", "y"]
    assert check_texts([], allow_empty=True) == []
    with pytest.raises(TypeError, match=r"prompts must be a sequence of str .*not a single str; wrap it"):
        check_texts("one text", "prompts")
    with pytest.raises(TypeError, match="not a single bytes"):
        check_texts(b"raw")
    with pytest.raises(TypeError, match="got int"):
        check_texts(3)
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType, not str; every item of texts must be a str$"):
        check_texts(["a", None])
    with pytest.raises(TypeError, match=r"toxic_texts\[0\] is int.*2 items are not str, positions \[0, 2\]"):
        check_texts([1, "b", 2.0], "toxic_texts")
    with pytest.raises(ValueError, match="neutral_texts is empty; give at least one text"):
        check_texts([], "neutral_texts")
