"""Two runs at a time with one thread each, or one run at a time with two threads? (``batch --jobs``)

Runs the same real grid slice twice through `detox_utils.batch.run_batch` (papermill, the real
evaluation notebook, a packaged model, all four evaluators, perplexity):

* ``1 job x 2 threads``: ``--jobs 1 --threads 2`` (the grid runner's default on this machine);
* ``2 jobs x 1 thread``: ``--jobs 2 --threads 1`` (the default ``--jobs 2`` now picks).

Each arm starts from its own empty scratch cache (fits, activations and capability results are
computed again; the dequantized model is shared), so both do the same work. It prints each arm's wall
time and the throughput ratio, and checks that both arms give the same toxicity metrics (threads only
change float reduction order, which can flip a sampled token now and then, so a difference is
reported, not hidden). Run::

    .venv/bin/python benchmarks/bench_scheduling.py [--model smollm2-135m] [--n-prompts 32]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load, scratch_cache  # noqa: E402


def slice_profile(model: str, n_prompts: int) -> dict:
    """Four runs of the book's grid (its settings, fewer prompts, no zero-shot): a plain model and three
    edits that share one fitted localization, as the grid's runs do."""
    return {"bench": {
        "models": [model], "benchmarks": ["rtp-challenging"],
        "settings": {"n_prompts": n_prompts, "n_samples": 2, "max_new_tokens": 20, "n_contrast": 200,
                     "n_ppl": 100, "n_boot": 200, "n_zeroshot": 0,
                     "evaluators": ["tox-block", "toxic-comment-classifier", "alt-profanity-check",
                                    "hatesonar"]},
        "methods": [{"method": "none"}, {"method": "aura"}, {"method": "det0", "k": 300},
                    {"method": "damp", "k": 3000, "alpha": 0.5}]}}


def arm(profile: Path, jobs: int, threads: int) -> tuple[float, dict[str, dict]]:
    from detox_utils import batch

    with scratch_cache() as tmp:
        start = time.perf_counter()
        summaries = batch.run_batch("bench", tmp / "out", profiles_path=profile, jobs=jobs,
                                    threads=threads, progress=False)
        wall = time.perf_counter() - start
        bad = [s for s in summaries if s["status"] != "ok"]
        if bad:
            sys.exit(f"runs failed with --jobs {jobs} --threads {threads}: {bad}")
        metrics = {s["config_hash"]: json.loads((tmp / "out" / f"{s['config_hash']}.json").read_text())
                   ["metrics"]["toxicity"]["max"] for s in summaries}
    return wall, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-prompts", type=int, default=32)
    args = parser.parse_args()
    if args.n_prompts < 1:
        parser.error(f"--n-prompts {args.n_prompts}: give an integer >= 1")
    print(f"start {load()}; cores {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "profiles.yaml"
        profile.write_text(yaml.safe_dump(slice_profile(args.model, args.n_prompts)))
        one_wall, one = arm(profile, jobs=1, threads=2)
        two_wall, two = arm(profile, jobs=2, threads=1)
    n = len(one)
    print(f"grid slice: {args.model}, rtp-challenging, {n} runs (none, aura, det0 k=300, damp k=3000), "
          f"{args.n_prompts} prompts x 2 samples, 20 tokens, 4 evaluators, n_ppl 100")
    print(f"1 job  x 2 threads: {one_wall:7.1f} s  ({one_wall / n:.1f} s per run)")
    print(f"2 jobs x 1 thread:  {two_wall:7.1f} s  ({two_wall / n:.1f} s per run)")
    print(f"throughput, 2 jobs x 1 thread / 1 job x 2 threads: {one_wall / two_wall:.2f}x")
    print(f"same toxicity metrics in both arms: {one == two}")
    print(f"end   {load()}")


if __name__ == "__main__":
    main()
