"""Does a folded intervention cost anything at generation time? (goal: ratio <= 1.02)

Times greedy generation of exactly ``--tokens`` new tokens for a batch of prompts in three conditions:

* ``none``: the model as it is;
* ``fold``: an AURA-sized unit scaling (every output unit of every MLP linear module, random alphas)
  plus a TRNE-style rank-one edit of every MLP output projection, both folded into the weights;
* ``hook``: the same interventions as forward hooks (the overhead folding avoids).

The conditions alternate within each repeat (in a rotating order, so drift and warm-up hit all three
alike), and the medians are compared. Run::

    .venv/bin/python benchmarks/bench_fold.py --model smollm2-135m --repeats 15
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from typing import Iterator

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from detox_utils import interventions as iv  # noqa: E402
from detox_utils import models  # noqa: E402
from detox_utils.archs import out_units  # noqa: E402

PROMPTS = [
    "The city council met on Tuesday to discuss",
    "When I opened the door, I saw",
    "You are such a",
    "The best way to learn a new language is",
    "Scientists announced today that",
    "My neighbour keeps shouting at",
    "In the middle of the night,",
    "The recipe calls for two cups of",
]


def synthetic_intervention(lm, seed: int = 0) -> tuple[dict, dict]:
    """Alphas for every MLP linear output unit and a rank-one edit of every output projection. Their
    values do not matter for timing; their footprint (which modules are touched) does."""
    gen = torch.Generator().manual_seed(seed)
    alphas, edits = {}, {}
    for layer in range(lm.n_layers):
        for site in lm.arch.linear_sites():
            name = lm.arch.module_name(layer, site)
            alphas[name] = 0.5 + 0.5 * torch.rand(out_units(lm.model.get_submodule(name)), generator=gen)
        edits[lm.arch.module_name(layer, "out")] = (1e-3 * torch.randn(lm.d_model, generator=gen),
                                                     1e-3 * torch.randn(lm.d_mlp, generator=gen))
    return alphas, edits


@contextlib.contextmanager
def intervened(lm, condition: str, alphas: dict, edits: dict) -> Iterator[None]:
    """The model as it is (``none``), or with the interventions folded (``fold``) or hooked (``hook``)."""
    if condition == "none":
        yield
        return
    fold = condition == "fold"
    with iv.scale_units(lm.model, alphas, fold=fold), iv.edit_weights(lm.model, edits, fold=fold):
        yield


def generate(lm, inputs, tokens: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one greedy generation of exactly ``tokens`` new tokens."""
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = lm.model.generate(**inputs, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                                pad_token_id=lm.tokenizer.pad_token_id)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert out.shape[1] == inputs["input_ids"].shape[1] + tokens
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m",
                        help="a packaged model name, or tiny-<family> (e.g. tiny-llama)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 gives steadier timings on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = models.tiny(args.model[5:]) if args.model.startswith("tiny-") else models.load(args.model)
    inputs = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    alphas, edits = synthetic_intervention(lm)

    names = ("none", "fold", "hook")
    generate(lm, inputs, args.tokens)  # warm-up
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % 3:] + names[: r % 3]:
            with intervened(lm, name, alphas, edits):
                w, c = generate(lm, inputs, args.tokens)
            wall[name].append(w)
            cpu[name].append(c)
        print(f"repeat {r + 1}/{args.repeats}: "
              + ", ".join(f"{n} {wall[n][-1]:.3f} s ({cpu[n][-1]:.3f} s CPU)" for n in names), flush=True)

    print(f"model {lm.name}: {lm.n_layers} layers, {len(alphas)} scaled modules "
          f"({sum(a.numel() for a in alphas.values())} units), {len(edits)} rank-one edits")
    print(f"greedy generation, batch {len(PROMPTS)}, {args.tokens} new tokens, {args.repeats} repeats, "
          f"torch threads {torch.get_num_threads()}")
    for label, t in (("wall", wall), ("CPU", cpu)):
        med = {n: statistics.median(v) for n, v in t.items()}
        for n in names:
            print(f"  {label:4s} {n:5s} median {med[n]:.3f} s  (min {min(t[n]):.3f}, max {max(t[n]):.3f})")
        for n in ("fold", "hook"):
            paired = statistics.median(a / b for a, b in zip(t[n], t["none"]))
            print(f"  {label:4s} {n} / none: ratio of medians {med[n] / med['none']:.3f}, "
                  f"of minima {min(t[n]) / min(t['none']):.3f}, median paired ratio {paired:.3f}"
                  + ("  (goal <= 1.02)" if n == "fold" else ""))


if __name__ == "__main__":
    main()
