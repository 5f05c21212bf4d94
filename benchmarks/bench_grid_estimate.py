"""How good is ``batch --dry-run``'s wall-time estimate of a grid? A backtest on the committed runs.

For a grid folder (default ``results/powered``, the book's grid) the finished runs are taken in the
order they finished (papermill's ``end_time``). Each run is estimated exactly as ``batch --dry-run``
would have estimated it just before it started: `detox_utils.batch.estimate_seconds` over the plan
with only the runs finished by then marked done. The estimate is set against the run's measured wall
time (papermill's ``duration``: kernel start to last cell). Printed: per model, the median ratio
estimate / measured and the sum of estimates over the sum of measured times (runs that had a peer to
be estimated from), then the whole grid's measured wall time so far and the current dry-run estimate
of what is left.

    .venv/bin/python benchmarks/bench_grid_estimate.py [--out results/powered] [--profile powered]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detox_utils import batch  # noqa: E402


def _papermill(run: batch.PlannedRun) -> dict:
    nb = batch.notebook_path(run.result_path)
    return json.loads(nb.read_text(encoding="utf-8"))["metadata"]["papermill"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/powered", help="grid folder (default results/powered)")
    ap.add_argument("--profile", default="powered", help="its profile (default powered)")
    args = ap.parse_args(argv)
    runs = batch.plan(batch.get_profile(args.profile), args.out)
    done = [r for r in runs if r.done]
    if not done:
        print(f"{args.out}: no finished run of profile {args.profile}; nothing to backtest")
        return 0
    meta = {r.config.config_hash: _papermill(r) for r in done}
    end = {h: dt.datetime.fromisoformat(m["end_time"]) for h, m in meta.items()}
    order = sorted(done, key=lambda r: end[r.config.config_hash])
    rows = []
    for i, run in enumerate(order):
        finished_before = {r.config.config_hash for r in order[:i]}
        view = [replace(r, done=r.config.config_hash in finished_before) if r.done else r for r in runs]
        view = [replace(r, done=False) if r.config.config_hash == run.config.config_hash else r for r in view]
        est = batch.estimate_seconds(view).get(run.config.config_hash)
        rows.append((run.config.model, est, float(meta[run.config.config_hash]["duration"])))
    print(f"{args.out} ({args.profile}): {len(done)} finished runs of {len(runs)}, backtested in finishing order")
    print(f"{'model':20s} {'runs':>5s} {'estimated':>9s} {'median est/measured':>20s} {'sum est / sum measured':>23s}")
    total_est = total_meas = 0.0
    for model in sorted({m for m, _, _ in rows}) + ["(all)"]:
        sub = [(e, d) for m, e, d in rows if (model == "(all)" or m == model)]
        have = [(e, d) for e, d in sub if e is not None]
        if not have:
            print(f"{model:20s} {len(sub):5d} {0:9d} {'-':>20s} {'-':>23s}")
            continue
        med = statistics.median(e / d for e, d in have)
        se, sd = sum(e for e, _ in have), sum(d for _, d in have)
        if model == "(all)":
            total_est, total_meas = se, sd
        print(f"{model:20s} {len(sub):5d} {len(have):9d} {med:20.3f} {se / sd:23.3f}")
    measured = sum(d for _, _, d in rows)
    left = batch.estimate_seconds(runs)
    todo = [r for r in runs if not r.done]
    print(f"measured wall time of the {len(done)} finished runs: {measured / 3600:.2f} h "
          f"(median run {statistics.median(d for _, _, d in rows):.0f} s)")
    print(f"dry-run estimate of the {len(todo)} runs left: {sum(left.values()) / 3600:.2f} h "
          f"({len(todo) - len(left)} without a peer); whole grid ≈ {(measured + sum(left.values())) / 3600:.1f} h")
    if total_meas:
        print(f"ratio estimate / measured over the backtested runs: {total_est / total_meas:.3f} "
              "(the estimate sums the notebook's step timings, so it leaves out kernel start and set-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
