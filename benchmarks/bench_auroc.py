"""AUROC of every unit: `detox_utils.localization.auroc` vs scikit-learn the way apple/ml-aura does it.

The reference (ml-aura ``src/utils/auroc.py``) calls ``roc_auc_score(labels[:, None].repeat(10, 1),
responses[:, chunk], average=None)`` over chunks of 10 units. Here: 2,000 texts (half toxic) x 20,000
units of random data with many ties (values rounded to one decimal). Prints both times, the speed-up
(goal >= 25x) and the largest absolute difference (goal <= 1e-9). ``--sklearn-chunks N`` times only the
first N chunks and extrapolates linearly (said in the output).

    .venv/bin/python benchmarks/bench_auroc.py [--texts 2000] [--units 20000] [--sklearn-chunks N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detox_utils.localization import auroc

CHUNK = 10  # units per roc_auc_score call, as in ml-aura


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--units", type=int, default=20000)
    parser.add_argument("--sklearn-chunks", type=int, default=None, help="time only this many chunks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    responses = (torch.randn(args.texts, args.units, generator=gen) * 10).round() / 10  # many ties
    labels = np.zeros(args.texts, dtype=int)
    labels[: args.texts // 2] = 1
    responses[: args.texts // 2] += 0.05 * torch.randn(args.units, generator=gen)  # some units informative
    toxic, neutral = responses[: args.texts // 2], responses[args.texts // 2 :]

    start = time.perf_counter()
    ours = auroc(toxic, neutral).numpy()
    t_ours = time.perf_counter() - start

    x = responses.numpy()
    starts = list(range(0, args.units, CHUNK))
    timed = starts if args.sklearn_chunks is None else starts[: args.sklearn_chunks]
    start = time.perf_counter()
    ref = [roc_auc_score(labels[:, None].repeat(x[:, s : s + CHUNK].shape[1], 1), x[:, s : s + CHUNK], average=None)
           for s in timed]
    t_timed = time.perf_counter() - start
    ref = np.concatenate(ref)
    t_sklearn = t_timed * len(starts) / len(timed)

    n_ties = int((np.diff(np.sort(x[:, :100], axis=0), axis=0) == 0).mean() * 100)
    print(f"data: {args.texts} texts ({len(toxic)} toxic) x {args.units} units; ~{n_ties}% of sorted "
          f"neighbours tied; torch threads: {torch.get_num_threads()}")
    print(f"detox_utils.localization.auroc: {t_ours:.2f} s")
    if len(timed) == len(starts):
        print(f"sklearn roc_auc_score, {len(starts)} chunks of {CHUNK} units: {t_sklearn:.2f} s")
    else:
        print(f"sklearn roc_auc_score: {t_timed:.2f} s for {len(timed)} of {len(starts)} chunks of {CHUNK} units, "
              f"extrapolated linearly to {t_sklearn:.2f} s for all")
    print(f"speed-up: {t_sklearn / t_ours:.1f}x (goal >= 25x)")
    diff = np.abs(ours[: len(ref)] - ref).max()
    print(f"max |ours - sklearn| over {len(ref)} units: {diff:.3g} (goal <= 1e-9)")


if __name__ == "__main__":
    main()
