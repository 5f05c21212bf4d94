"""How fast is each toxicity evaluator? Prints texts/second on 1,000 texts, plus load time.

Texts: the first ``--n`` comments of the evaluator-validation set (``data.labelled("test")``, median
~100 characters; comments longer than a BiLSTM's 100-word window cost one pass per window) and, for
the generation-sized case, the same texts cut to their first 20 words (what a 20-token continuation
looks like). Each evaluator is loaded once, warmed up on a few texts, then timed ``--repeats`` times;
the median is reported. Run::

    .venv/bin/python benchmarks/bench_evaluators.py            # offline evaluators
    DETOXIFY_CHECKPOINT=... .venv/bin/python benchmarks/bench_evaluators.py --names detoxify
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from detox_utils import data, evaluators  # noqa: E402


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", nargs="*", default=list(evaluators.OFFLINE))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    comments = data.labelled("test")["text"].tolist()[: args.n]
    short = [" ".join(t.split()[:20]) for t in comments]
    print(f"{len(comments)} texts (mean {sum(map(len, comments)) / len(comments):.0f} chars; short: first 20 words), "
          f"batch_size={args.batch_size}, median of {args.repeats}")
    print(f"{'evaluator':26s} {'load s':>7s} {'texts/s':>9s} {'texts/s (short)':>16s}")
    for name in args.names:
        load_s = _timed(evaluators.load, name)
        ev = evaluators.load(name)
        ev.score(comments[:8])
        rates = []
        for texts in (comments, short):
            secs = statistics.median(_timed(ev.score, texts, batch_size=args.batch_size)
                                     for _ in range(args.repeats))
            rates.append(len(texts) / secs)
        print(f"{name:26s} {load_s:7.2f} {rates[0]:9.0f} {rates[1]:16.0f}")


if __name__ == "__main__":
    main()
