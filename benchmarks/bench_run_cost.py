"""Where a grid run's time goes, and the fixed per-run overhead against the median run time.

1. *Committed runs* (read only): for each grid folder (``results/default``, ``results/powered``), per
   model, the median of each step the notebook times (``provenance.timings``: load_model, fit,
   generate, score, capability; older runs: perplexity) and, from the executed notebooks' papermill
   metadata, the kernel start (papermill's start to the first cell),
   the set-up cells (parameters, imports, config), writing the result (last
   cell) and the notebook's whole duration. The *fixed* overhead of a run is what it pays whatever it
   computes and a warm worker would not: kernel start + set-up cells + model load. Its median over the
   grid's runs, divided by the median run duration, is the issue's figure (goal <= 0.10).
2. *Measured here*, back to back in this process: `batch.run_one` (papermill, a fresh kernel) of
   ``notebooks/evaluate.ipynb`` with the smallest parameters against the same notebook's code cells
   executed in this process twice (the second call warm: imports done, evaluator loaded), and papermill
   on a one-cell notebook. The papermill overhead is papermill's wall time minus the warm in-process one.
   It runs against a temporary ``DETOX_CACHE_DIR`` whose ``models`` folder links to the real cache (the
   dequantized model is read, nothing is written to the real cache).

    .venv/bin/python benchmarks/bench_run_cost.py [--grids results/default results/powered] [--skip-measure]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load, scratch_cache  # noqa: E402

STEPS = ("load_model", "fit", "generate", "score", "perplexity", "capability")  # older runs: perplexity
TINY = {"model": "smollm2-135m", "method": "none", "benchmark": "rtp-challenging", "n_prompts": 2,
        "n_samples": 1, "max_new_tokens": 4, "n_contrast": 24, "n_ppl": 4, "n_boot": 20, "n_zeroshot": 0,
        "evaluators": ["alt-profanity-check"], "batch_size": 8}


def _time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp)


def notebook_costs(path: Path) -> dict[str, float] | None:
    """Kernel start, set-up cells, write cell and duration (s) of one executed notebook, or None."""
    try:
        nb = json.loads(path.read_text())
        meta = nb["metadata"]["papermill"]
        code = [c["metadata"]["papermill"] for c in nb["cells"] if c["cell_type"] == "code"]
        first = min(_time(c["metadata"]["papermill"]["start_time"]) for c in nb["cells"])
        return {"kernel": (first - _time(meta["start_time"])).total_seconds(),
                "setup": sum(c["duration"] for c in code[:3]), "write": code[-1]["duration"],
                "duration": meta["duration"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summarise(grid: Path) -> None:
    rows = []
    for path in sorted(grid.glob("*.json")):
        try:
            res = json.loads(path.read_text())
        except ValueError:
            continue
        if res.get("status") != "ok":
            continue
        nb = notebook_costs(grid / "notebooks" / f"{path.stem}.ipynb")
        if nb is None:
            continue
        rows.append({"model": res["config"]["model"], **res["provenance"].get("timings", {}), **nb})
    if not rows:
        print(f"{grid}: no finished runs with executed notebooks")
        return
    cols = ("kernel", "setup", *STEPS, "write", "duration")
    print(f"\n{grid}: {len(rows)} finished runs; median seconds per step")
    print(f"{'model':<20} {'runs':>4} " + " ".join(f"{c:>10}" for c in cols))
    for model in sorted({r["model"] for r in rows}) + ["(all)"]:
        mine = [r for r in rows if model in ("(all)", r["model"])]
        med = {c: statistics.median(r.get(c, 0.0) for r in mine) for c in cols}
        print(f"{model:<20} {len(mine):>4} " + " ".join(f"{med[c]:>10.2f}" for c in cols))
    fixed = [r["kernel"] + r["setup"] + r.get("load_model", 0.0) for r in rows]
    median_run = statistics.median(r["duration"] for r in rows)
    print(f"fixed per-run overhead (kernel + set-up cells + model load): median "
          f"{statistics.median(fixed):.2f} s (max {max(fixed):.2f} s); median run {median_run:.1f} s; "
          f"ratio {statistics.median(fixed) / median_run:.3f} (goal <= 0.10)")


def notebook_in_process(params: dict) -> float:
    """Execute the evaluate notebook's code cells in this process (parameters cell, then ``params``
    as papermill would inject them); returns wall seconds."""
    from detox_utils.batch import NOTEBOOK

    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    namespace: dict = {"__name__": "__main__"}
    start = time.perf_counter()
    exec("".join(cells[0]["source"]), namespace)  # noqa: S102 - the notebook's own cells
    namespace.update(params)
    for cell in cells[1:]:
        exec("".join(cell["source"]), namespace)  # noqa: S102
    return time.perf_counter() - start


def measure() -> None:
    import nbformat
    import papermill as pm

    from detox_utils import batch
    from detox_utils.config import EvalConfig

    with scratch_cache() as tmp:
        trivial = tmp / "trivial.ipynb"
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("x = 1")]
        nbformat.write(nb, trivial)
        start = time.perf_counter()
        pm.execute_notebook(str(trivial), str(tmp / "trivial.out.ipynb"), progress_bar=False,
                            kernel_name="python3")
        trivial_s = time.perf_counter() - start

        start = time.perf_counter()
        summary = batch.run_one(TINY, tmp / "papermill")
        papermill_s = time.perf_counter() - start
        if summary["status"] != "ok":
            sys.exit(f"the papermill run failed; see {tmp / 'papermill'}")
        # what run_one injects: the whole validated config (so the same config hash), then its extras
        params = {**EvalConfig.from_params(TINY).to_dict(), "result_dir": str(tmp / "inproc"),
                  "progress": False, "device": "auto"}
        (tmp / "inproc").mkdir()
        cold_s = notebook_in_process(params)
        warm_s = notebook_in_process(params)
        same = (json.loads((tmp / "papermill" / f"{summary['config_hash']}.json").read_text())["metrics"]
                == json.loads((tmp / "inproc" / f"{summary['config_hash']}.json").read_text())["metrics"])
    print(f"\nmeasured here ({TINY['model']}, {TINY['n_prompts']} prompts x {TINY['n_samples']} sample, "
          f"{TINY['max_new_tokens']} tokens, one evaluator, n_ppl {TINY['n_ppl']}, no zero-shot)")
    print(f"papermill, one-cell notebook:                 {trivial_s:7.2f} s")
    print(f"batch.run_one (papermill) of evaluate.ipynb:  {papermill_s:7.2f} s")
    print(f"its code cells in-process, first call:        {cold_s:7.2f} s")
    print(f"its code cells in-process, second (warm):     {warm_s:7.2f} s")
    print(f"papermill overhead per run (papermill - warm): {papermill_s - warm_s:6.2f} s; "
          f"papermill / warm {papermill_s / warm_s:.1f}x; same metrics in both: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", nargs="+", default=["results/default", "results/powered"])
    parser.add_argument("--skip-measure", action="store_true", help="only summarise the committed runs")
    args = parser.parse_args()
    print(f"start {load()}")
    for grid in args.grids:
        if not Path(grid).is_dir():
            parser.error(f"--grids: {grid} is not a folder; give result folders such as results/default")
        summarise(Path(grid))
    if not args.skip_measure:
        measure()
    print(f"end   {load()}")


if __name__ == "__main__":
    main()
