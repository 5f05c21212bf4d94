"""`_io.compute_once`: check, lock, check, compute; and `compute_once_file` with its checksum sidecar."""
from __future__ import annotations

import json
import threading
import time

import pytest

from detox_utils import _io


def _read_json(path):
    return json.loads(path.read_text()) if path.exists() else None


def test_compute_once_reads_what_is_there_and_computes_what_is_not(tmp_path):
    path = tmp_path / "a.json"
    made = []

    def make(p):
        made.append(p)
        _io.atomic_write_json(p, {"x": 1})
        return {"x": 1}

    assert _io.compute_once(path, _read_json, make) == {"x": 1}
    assert _io.compute_once(path, _read_json, make) == {"x": 1}
    assert made == [path]


def test_a_second_process_waits_on_the_lock_and_reads_the_first_ones_result(tmp_path):
    path = tmp_path / "slow.json"
    made = []

    def make(p):
        made.append(p)
        time.sleep(0.3)
        _io.atomic_write_json(p, {"x": len(made)})
        return {"x": len(made)}

    # file locks are per open file, so two threads take turns as two processes would
    results = []
    threads = [threading.Thread(target=lambda: results.append(_io.compute_once(path, _read_json, make)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert made == [path] and results == [{"x": 1}, {"x": 1}]


def test_a_failed_compute_releases_the_lock_and_leaves_nothing(tmp_path):
    path = tmp_path / "b.pt"

    def broken():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        _io.compute_once_file(path, broken, kind="interventions", load=lambda p: p.read_text(),
                              save=lambda v, p: p.write_text(v))
    assert not path.exists()
    assert _io.compute_once_file(path, lambda: "ok", kind="interventions", load=lambda p: p.read_text(),
                                 save=lambda v, p: p.write_text(v)) == "ok"
    assert _io.verify_checksum(path, "interventions")


def test_compute_once_file_refuses_a_damaged_file_naming_it(tmp_path):
    path = tmp_path / "c.pt"
    kw = dict(kind="gradient_scores", load=lambda p: p.read_text(), save=lambda v, p: p.write_text(v))
    assert _io.compute_once_file(path, lambda: "first", **kw) == "first"
    assert _io.compute_once_file(path, lambda: "second", **kw) == "first"
    path.write_text("tampered")
    with pytest.raises(_io.CacheIntegrityError, match="c.pt"):
        _io.compute_once_file(path, lambda: "third", **kw)
