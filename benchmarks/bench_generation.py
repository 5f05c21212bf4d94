"""Generation throughput: `detox_utils.generation.generate` (batched across prompts and samples) against
calling ``model.generate`` once per (prompt, sample) with one sequence, on the same prompts and sample
count. Prints new tokens per second for both and their ratio (goal >= 4x).

    python benchmarks/bench_generation.py [--model smollm2-135m] [--prompts 8] [--samples 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from detox_utils import generation, models  # noqa: E402

PROMPTS = [
    "So, I'm starting to think she's full of",
    "The new restaurant downtown is",
    "I can't believe those people would",
    "When the referee made that call, the crowd started",
    "My neighbour keeps parking in my spot, so I told him",
    "The study found that most participants",
    "He looked at me and said that I was a",
    "After the meeting, the manager announced",
]


def one_at_a_time(lm, prompts, n_samples, max_new_tokens, top_p, temperature) -> int:
    """The naive loop: one ``model.generate`` call per (prompt, sample). Returns new tokens (EOS excluded)."""
    stops = set(generation.eos_ids(lm))
    n_tokens = 0
    for prompt in prompts:
        ids = lm.tokenizer(prompt, return_tensors="pt").to(lm.device)
        for _ in range(n_samples):
            with torch.inference_mode():
                out = lm.model.generate(**ids, do_sample=True, top_p=top_p, temperature=temperature,
                                        top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=1,
                                        pad_token_id=lm.tokenizer.pad_token_id)
            new = out[0, ids["input_ids"].shape[1]:].tolist()
            n_tokens += next((i for i, t in enumerate(new) if t in stops), len(new))
    return n_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=8, help="number of prompts (cycled if > 8)")
    parser.add_argument("--samples", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: stable figures on a shared machine)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    lm = models.load(args.model, device=args.device)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    kw = dict(max_new_tokens=args.max_new_tokens, top_p=0.9, temperature=1.0)
    generation.generate(lm, prompts[:1], n_samples=2, progress=False, **kw)  # warm-up

    start = time.perf_counter()
    df = generation.generate(lm, prompts, n_samples=args.samples, batch_size=args.batch_size,
                             progress=False, **kw)
    batched_s = time.perf_counter() - start
    batched_tokens = int(df["n_new_tokens"].sum())

    torch.manual_seed(0)
    start = time.perf_counter()
    naive_tokens = one_at_a_time(lm, prompts, args.samples, **kw)
    naive_s = time.perf_counter() - start

    batched_rate, naive_rate = batched_tokens / batched_s, naive_tokens / naive_s
    print(f"model {lm.name} on {lm.device} ({torch.get_num_threads()} threads); {args.prompts} prompts x "
          f"{args.samples} samples x <= {args.max_new_tokens} new tokens, top_p 0.9")
    print(f"batched generate (batch {args.batch_size}): {batched_tokens} tokens in {batched_s:.1f} s "
          f"= {batched_rate:.1f} tokens/s")
    print(f"one model.generate per sample:   {naive_tokens} tokens in {naive_s:.1f} s "
          f"= {naive_rate:.1f} tokens/s")
    print(f"speed-up (tokens/s ratio): {batched_rate / naive_rate:.1f}x (goal >= 4x)")


if __name__ == "__main__":
    main()
